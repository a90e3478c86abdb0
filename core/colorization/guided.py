"""Edge-aware chroma upsampling: the full-resolution L guides the model-size ab (guided detail transfer).

The colorizer predicts ab on a grid of about input_size² pixels; a 24 MP photo is ~15–45× larger on each
side, so a plain (bilinear or bicubic) upsample smears every colour edge over tens of pixels: sky blue
bleeds into the roof, skin into the background. The photo's own L has those edges at full resolution, and
within a small window chroma is close to a linear function of L (two regions meeting at an edge: two
points, one line). As in the guided filter (He, Sun, Tang, ECCV 2010) and its fast variant (He & Sun,
2015), the slope d(ab)/dL is fitted per window on a reduced grid — here the chroma grid itself — and only
the smooth slope is interpolated; the full-resolution result is

    ab = up(ab_grid) + up(slope) · (L − up(L_grid))

the smooth (bicubic) upsample plus the L detail that the grid lost, turned into colour by the local
slope: a sharp L edge gives a sharp colour edge, a flat colour (slope 0) stays exactly the bicubic one.

Measured (``bench/chroma_upsampling.py``: the true ab of the 200 BSDS500 *train* photos area-reduced to
the grid and brought back; mean |Δab| over all pixels / over the colour-edge band):

| upsampling | ~12× (grid side 32) | ~4× (grid side 96) |
|---|---|---|
| bilinear | 2.67 / 6.77 | 1.15 / 2.60 |
| bicubic (before) | 2.43 / 6.10 | 0.95 / 1.95 |
| this | 2.33 / 5.52 | 1.05 / 2.37 |

On a synthetic step edge at 28× (``tests/test_colorization_pipeline.py``) bilinear and bicubic leave a
colour error up to 35 ab units 3+ pixels from the edge on 5 % of the pixels; this, 14 on 2.8 %. A 24 MP
photo is the first column's case or beyond; at small upsampling factors bicubic alone is a little better.
Choices measured there (the first column; the first 40 photos for the rejected variants) and on that step
edge (mean |Δab|: bilinear 1.16):

* the fit is on the chroma's own grid, L area-reduced to it (the very L the colorizer saw): area
  reduction is linear, so where a grid pixel straddles an edge its ab and its L are the same mixture of
  the two sides and still lie on the line. On a finer grid (L reduced less, ab interpolated up) sharp L
  meets smeared ab: the step edge bled as much as bilinear (1.02–1.47);
* the guided filter's own output (slope·L + box-smoothed offset) blurs flat colour: 3.4–3.6 on photos;
* the slope fitted from grid L alone copies luminance texture into colour (photos 2.48–2.75): within a
  grid pixel a textured L varies far more than between grid pixels. So the variance of the fit adds the
  within-pixel variance of full-resolution L — the window's *least* textured pixel's (an edge puts
  within-pixel variance in the one grid pixel it crosses, texture in all of them; the window's mean
  instead halves the step edge's sharpness: 0.73 vs 0.41). Its weight at eps 25: 1 → 2.39, 4 → 2.33,
  16 → 2.32 on photos; 2 → 0.42, 4 → 0.43, 8 → 0.45 on the step edge; eps 9 at weight 4: 2.35.

All float32 with OpenCV box filters; L is centred on 50 for the variances (float32 loses digits in
E[L²] − E[L]² at L ≈ 100 otherwise). The full-resolution work — interpolation and one multiply-add per
pixel — runs in strips (``ChromaCoefficients.rows``).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

L_CENTRE = 50.0
CUBIC_A = -0.75  # OpenCV's bicubic kernel, so the strips match cv2.resize(…, INTER_CUBIC)


@dataclass(frozen=True)
class GuidedUpsampling:
    # box radius, in chroma-grid pixels, of the window the slope d(ab)/dL is fitted in: 1 (3×3) reaches
    # past the network's own 1–2 pixel wide colour edges; 2 was worse on photos (2.47 vs 2.33)
    radius: int = 1
    # regularisation in L² units: where L varies less than ~sqrt(eps) across a window the slope → 0 and
    # the chroma stays the smooth upsample instead of turning noise into colour
    eps: float = 25.0
    # weight of the within-grid-pixel (texture) variance of full-resolution L in the fit's variance
    texture_weight: float = 4.0


@dataclass(frozen=True)
class ChromaCoefficients:
    """Chroma-grid channels, already interpolated to the full width (grid rows × W): the slope (2,
    bilinear) and ab and L of the grid (2 + 1, bicubic). ``rows`` interpolates them vertically."""
    slope: torch.Tensor  # h×W×2
    smooth: torch.Tensor  # h×W×3: ab, L of the grid
    full_height: int

    def rows(self, lightness_rows: np.ndarray, start: int, out: np.ndarray | None = None) -> np.ndarray:
        """ab (n×W×2 float32) for full-resolution rows start … start + n − 1 with their L (n×W);
        written into ``out`` (any n×W×2 float32 view, e.g. the ab channels of a Lab strip) if given."""
        n, width = lightness_rows.shape
        grid = self.slope.shape[0]
        y = torch.arange(start, start + n, dtype=torch.float64)
        slope = _vertical(self.slope, _linear_weights(y, grid, self.full_height)).view(n, width, 2)
        smooth = _vertical(self.smooth, _cubic_weights(y, grid, self.full_height)).view(n, width, 3)
        guide = torch.from_numpy(np.ascontiguousarray(lightness_rows, dtype=np.float32))[..., None]
        if out is None:
            out = np.empty((n, width, 2), np.float32)
        # written in place: a strided copy into the Lab array afterwards cost 0.5 s of CPU at 24 MP
        torch.addcmul(smooth[..., :2], slope, guide - smooth[..., 2:], out=torch.from_numpy(out))
        return out


def _source_rows(y: torch.Tensor, grid: int, full: int) -> torch.Tensor:
    # OpenCV / align_corners=False geometry: full row y samples grid row (y + ½)·grid/H − ½
    return (y + 0.5) * (grid / full) - 0.5


def _linear_weights(y: torch.Tensor, grid: int, full: int) -> tuple[torch.Tensor, torch.Tensor]:
    source = _source_rows(y, grid, full).clamp(0, grid - 1)
    top = source.floor()
    frac = source - top
    index = torch.stack([top, top + 1], dim=1).long().clamp(0, grid - 1)
    return index, torch.stack([1 - frac, frac], dim=1)


def _cubic_weights(y: torch.Tensor, grid: int, full: int) -> tuple[torch.Tensor, torch.Tensor]:
    source = _source_rows(y, grid, full)
    base = source.floor()
    t = source - base
    a = CUBIC_A
    w0 = ((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a
    w1 = ((a + 2) * t - (a + 3)) * t * t + 1
    w2 = ((a + 2) * (1 - t) - (a + 3)) * (1 - t) * (1 - t) + 1
    index = torch.stack([base - 1, base, base + 1, base + 2], dim=1).long().clamp(0, grid - 1)
    return index, torch.stack([w0, w1, w2, 1 - w0 - w1 - w2], dim=1)


def _vertical(wide: torch.Tensor, taps: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Rows of ``wide`` (grid rows × W × C) mixed by per-output-row taps → n × (W·C), as one small
    matrix product over the few grid rows the strip touches (no per-row copies)."""
    index, weight = taps
    first, last = int(index.min()), int(index.max())
    mixing = torch.zeros(index.shape[0], last - first + 1, dtype=torch.float64)
    mixing.scatter_add_(1, index - first, weight)
    return mixing.to(torch.float32) @ wide[first:last + 1].reshape(last - first + 1, -1)


def _box(x: np.ndarray, radius: int) -> np.ndarray:
    side = 2 * radius + 1
    return cv2.boxFilter(x, -1, (side, side), borderType=cv2.BORDER_REFLECT)


def chroma_coefficients(lightness: np.ndarray, chroma_small: np.ndarray,
                        params: GuidedUpsampling = GuidedUpsampling(),
                        lightness_small: np.ndarray | None = None) -> ChromaCoefficients:
    """Fit the slope d(ab)/dL on the chroma grid. lightness: H×W float32 L; chroma_small: h×w×2 ab.

    ``lightness_small``: L already area-reduced to h×w, if the caller has it.
    """
    full_h, full_w = lightness.shape
    h, w = chroma_small.shape[:2]
    if lightness_small is None:
        lightness_small = cv2.resize(lightness, (w, h), interpolation=cv2.INTER_AREA)
    guide = lightness_small.astype(np.float32) - np.float32(L_CENTRE)
    chroma = np.ascontiguousarray(chroma_small, dtype=np.float32)
    mean_guide = _box(guide, params.radius)
    variance = _box(guide * guide, params.radius) - mean_guide * mean_guide
    if params.texture_weight > 0:
        centred = lightness - np.float32(L_CENTRE)
        within = cv2.resize(centred * centred, (w, h), interpolation=cv2.INTER_AREA) - guide * guide
        side = 2 * params.radius + 1
        least = cv2.erode(np.maximum(within, 0), np.ones((side, side), np.uint8), borderType=cv2.BORDER_REFLECT)
        variance = variance + np.float32(params.texture_weight) * least
    mean_chroma = _box(chroma, params.radius)
    covariance = _box(chroma * guide[..., None], params.radius) - mean_chroma * mean_guide[..., None]
    slope = _box(covariance / (np.maximum(variance, 0)[..., None] + np.float32(params.eps)), params.radius)
    smooth = np.concatenate([chroma, lightness_small.astype(np.float32)[..., None]], axis=2)
    return ChromaCoefficients(
        torch.from_numpy(np.ascontiguousarray(cv2.resize(slope, (full_w, h), interpolation=cv2.INTER_LINEAR))),
        torch.from_numpy(np.ascontiguousarray(cv2.resize(smooth, (full_w, h), interpolation=cv2.INTER_CUBIC))),
        full_h)


def upsample_chroma(lightness: np.ndarray, chroma_small: np.ndarray,
                    params: GuidedUpsampling = GuidedUpsampling()) -> np.ndarray:
    """Full-resolution ab (H×W×2 float32) from model-size ab, guided by the full-resolution L."""
    return chroma_coefficients(lightness, chroma_small, params).rows(lightness, 0)
