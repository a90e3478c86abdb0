"""The applications of Sec. 6 on top of the propagated class probabilities P (H×W×n):
colorization, recoloring, foreground selection and per-class masks.

Each one turns P into a small set of per-pixel edit parameters that are linear in P, so the Eq. 15
smoothing can run on whichever is smaller: P itself or the parameters (see smoothing.py).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from core.imaging.color import _KAPPA, _WHITE_D65, _XYZ_TO_SRGB, lab_to_rgb, rgb_to_lab, rgb_to_lightness
from core.protocol import bad_input

Smooth = Callable[[np.ndarray], np.ndarray]  # H×W×C → H×W×C (Eq. 15 with the run's data weights)
MODES = ("colorize", "recolor", "select", "masks")
# What the action, the CLI and the plug-in do when no mode is given: a selection from FG/BG strokes,
# the one mode GIMP's default swatches (black and white) mean something for.
DEFAULT_MODE = "select"


def _smooth_linear(probs: np.ndarray, params: np.ndarray, smooth: Smooth) -> np.ndarray:
    """Per-pixel Σ_k P_k params_k, smoothed; params: n×D → H×W×D."""
    if params.shape[1] <= probs.shape[2]:
        return smooth(probs @ params.astype(np.float32))
    return smooth(probs) @ params.astype(np.float32)


# CIELab's f⁻¹ is f³ above the knee f = 6/29 and (116 f − 16)/κ below it, the two meeting with the
# same value there, so f⁻¹(f) = max(f, knee)³ + 116/κ · min(f, knee) − (knee³ + 16/κ): no branch
# (a per-element select costs ~10 multiply-adds' time on CPU).
_KNEE = 6 / 29
_KNEE_OFFSET = _KNEE**3 + 16 / _KAPPA


def _f_inverse_shifted(f: torch.Tensor) -> torch.Tensor:
    """f⁻¹(f) + knee³ + 16/κ (callers fold the constant in)."""
    cube = f.clamp_min(_KNEE)
    cube = cube * cube * cube
    return cube.add_(f.clamp_max(_KNEE), alpha=116 / _KAPPA)


class ChromaScaler:
    """Linear sRGB of (L, t·a, t·b) for per-pixel chroma scales t, with L fixed.

    With L fixed, Y is fixed, and X and Z each depend on one of a, b: the test "is this pixel in
    the sRGB gamut at scale t" is a few multiply-adds per channel on precomputed terms.
    """

    def __init__(self, lab: torch.Tensor):
        L, a, b = (c.contiguous() for c in lab.unbind(1))
        self.fy = (L + 16) / 116
        self.da, self.db = a / 500, b / -200  # f_x = f_y + t a/500, f_z = f_y − t b/200
        self.rows = (_XYZ_TO_SRGB * _WHITE_D65.view(1, 3)).tolist()  # linear sRGB from X/Xn, Y/Yn, Z/Zn
        y = _f_inverse_shifted(self.fy) - _KNEE_OFFSET
        # Each channel minus ½ (so the gamut test is one |·| ≤ ½), with X's and Z's constants folded in.
        self.offsets = [y * row[1] - (row[0] + row[2]) * _KNEE_OFFSET - 0.5 for row in self.rows]

    def in_gamut(self, t: torch.Tensor, slack: float = 1e-6) -> torch.Tensor:
        x = _f_inverse_shifted(torch.addcmul(self.fy, t, self.da))
        z = _f_inverse_shifted(torch.addcmul(self.fy, t, self.db))
        worst = None
        for row, offset in zip(self.rows, self.offsets):
            centered = torch.add(offset, x, alpha=row[0]).add_(z, alpha=row[2]).abs_()
            worst = centered if worst is None else torch.maximum(worst, centered, out=worst)
        return worst <= 0.5 + slack


def lab_to_rgb_keep_lightness(lab: np.ndarray, steps: int = 8) -> np.ndarray:
    """Lab → sRGB, pulling out-of-gamut colors toward gray (bisection on the chroma scale) instead of
    clipping the channels, so the result keeps the image's L as the applications promise."""
    flat = torch.from_numpy(lab.reshape(-1, 3).astype(np.float32))
    outside = torch.nonzero(~ChromaScaler(flat).in_gamut(torch.ones(len(flat)))).flatten()
    if len(outside):
        sub = flat[outside]
        scaler = ChromaScaler(sub)
        # Every pixel's bracket starts at [0, 1] (gray is in gamut for L in [0, 100]) and halves each
        # step, so only its lower end is kept; 2^-8 of the chroma is below one 8-bit step.
        scale = torch.zeros(len(sub))
        for step in range(1, steps + 1):
            half = 0.5**step
            scale += scaler.in_gamut(scale + half) * half
        flat[outside, 1:] = sub[:, 1:] * scale[:, None]
    return lab_to_rgb(flat.numpy().reshape(lab.shape))


def stroke_lab(colors: np.ndarray) -> np.ndarray:
    return rgb_to_lab(colors.reshape(1, -1, 3).astype(np.float32) / 255.0).reshape(-1, 3)


# Where colorization mixes the strokes' chroma (``colorize(space=...)``). "lab" (the paper, Sec. 6):
# CIELab a, b with the image's L* kept, the lightness of a gray made from luminance (GIMP's
# Grayscale mode and Desaturate "Luminance"). "luma": the I, Q of NTSC YIQ added to the gray value as
# luma Y' = 0.299 R' + 0.587 G' + 0.114 B', the gray most software makes (and Levin et al. 2004's
# space). On a luma-made gray the Lab route gives a saturated colour a far too low L*, so it falls
# out of gamut and is pulled toward gray: Levin's example2 with the TRUE chroma scores ΔE 11.3 in
# Lab against 4.0 in YIQ; on a luminance-made gray it is the other way round.
#
# "auto": the space in which the strokes' own colours sit at the lightness of the gray under them
# (``matching_color_space``): strokes sampled from a colour original match its L* when the gray is
# L*, its luma when the gray is luma, so the strokes say how the gray was made.
COLOR_SPACES = ("lab", "luma", "auto")
_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], np.float32)
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ.astype(np.float64)).astype(np.float32)


def luma_chroma_to_rgb(luma: np.ndarray, iq: np.ndarray) -> np.ndarray:
    """Y' (H×W) and I, Q (H×W×2) → RGB with Y' kept: a chroma the gamut cannot hold at this luma is
    scaled toward gray until it fits (clipping the channels instead would change the luma)."""
    offset = iq.astype(np.float32) @ _YIQ_TO_RGB[:, 1:].T  # RGB − Y', per channel
    y = luma.astype(np.float32)[..., None]
    with np.errstate(divide="ignore", invalid="ignore"):
        room = np.where(offset > 0, (1 - y) / offset, np.where(offset < 0, -y / offset, np.inf))
    scale = np.clip(room.min(axis=2, keepdims=True), 0, 1)
    return np.clip(y + scale * offset, 0, 1)


def matching_color_space(gray: np.ndarray, labels: np.ndarray, colors: np.ndarray) -> str:
    """"lab" or "luma": whichever lightness of the stroke colours (CIELab L* or luma Y') is closer, in
    L* units, to the gray image under the strokes (gray: H×W×C float, labels: H×W class or −1)."""
    marked = labels >= 0
    if not marked.any():
        return "lab"

    def lightness(values: np.ndarray) -> np.ndarray:  # L* of gray RGB with these values
        return rgb_to_lightness(np.repeat(values.reshape(1, -1, 1), 3, axis=2))[0]

    target = lightness(gray[..., 0][marked].astype(np.float32))
    # each stroke colour's L* and the L* of a gray at its luma, once per colour, then per marked pixel
    painted = labels[marked]
    lab_error = np.abs(stroke_lab(colors)[:, 0][painted] - target).mean()
    luma = (colors.astype(np.float32) / 255.0) @ _RGB_TO_YIQ[0]
    luma_error = np.abs(lightness(luma)[painted] - target).mean()
    return "luma" if luma_error < lab_error else "lab"


def colorize(
    rgb: np.ndarray,
    probs: np.ndarray,
    colors: np.ndarray,
    smooth: Smooth,
    lab: np.ndarray | None = None,
    space: str = "lab",
) -> np.ndarray:
    """ab = Σ_k P_k ab_k of the strokes' colors, L kept from the image → H×W×3 float RGB
    (``space="luma"``: IQ = Σ_k P_k IQ_k with the image's luma kept)."""
    if space == "luma":
        luma = rgb[..., :3].astype(np.float32) @ _RGB_TO_YIQ[0]
        iq = _smooth_linear(probs, (colors.astype(np.float32) / 255.0) @ _RGB_TO_YIQ[1:].T, smooth)
        return luma_chroma_to_rgb(luma, iq)
    lab = rgb_to_lab(rgb) if lab is None else lab
    ab = _smooth_linear(probs, stroke_lab(colors)[:, 1:], smooth)
    return lab_to_rgb_keep_lightness(np.concatenate([lab[..., :1], ab], axis=2))


def recolor_transforms(
    lab: np.ndarray,
    labels: np.ndarray,
    colors: np.ndarray,
    neutral_chroma: float = 4.0,
    max_gain: float = 5.0,
) -> np.ndarray:
    """Per class an affine map of (a, b): rotate the stroke region's mean hue onto the stroke's hue and
    scale its mean chroma to the stroke's chroma (n×6: 2×2 matrix row-major, then offset).

    The image's own chroma texture survives; a region that is (nearly) gray has no hue to rotate, so
    it takes the stroke's ab directly. A stroke painted in the region's own color leaves it unchanged.
    """
    targets = stroke_lab(colors)[:, 1:]
    out = np.zeros((len(colors), 6), np.float64)
    for k, target in enumerate(targets):
        ab = lab[labels == k][:, 1:].astype(np.float64)
        chroma = np.linalg.norm(ab, axis=1).mean() if len(ab) else 0.0
        if chroma < neutral_chroma:
            out[k, 4:] = target
            continue
        mean = ab.mean(0)
        turn = np.arctan2(target[1], target[0]) - np.arctan2(mean[1], mean[0])
        gain = min(max_gain, float(np.hypot(*target)) / chroma)
        c, s = np.cos(turn) * gain, np.sin(turn) * gain
        out[k, :4] = (c, -s, s, c)
    return out


def recolor(
    rgb: np.ndarray,
    probs: np.ndarray,
    labels: np.ndarray,
    colors: np.ndarray,
    smooth: Smooth,
    lab: np.ndarray | None = None,
) -> np.ndarray:
    lab = rgb_to_lab(rgb) if lab is None else lab
    field = _smooth_linear(probs, recolor_transforms(lab, labels, colors), smooth)  # H×W×6
    a, b = lab[..., 1], lab[..., 2]
    new_a = field[..., 0] * a + field[..., 1] * b + field[..., 4]
    new_b = field[..., 2] * a + field[..., 3] * b + field[..., 5]
    return lab_to_rgb_keep_lightness(np.stack([lab[..., 0], new_a, new_b], axis=2))


def foreground_classes(colors: np.ndarray, fg: tuple[int, int, int], bg: tuple[int, int, int]) -> np.ndarray:
    """Which classes are foreground; every class must be the fg or the bg color, both present."""
    keys = [tuple(int(v) for v in c) for c in colors]
    other = [k for k in keys if k not in (tuple(fg), tuple(bg))]
    if other:
        names = ", ".join("#{:02x}{:02x}{:02x}".format(*k) for k in other)
        raise bad_input(
            f"Select mode needs foreground strokes in #{bytes(fg).hex()} and background strokes in "
            f"#{bytes(bg).hex()}; found other colors: {names}. Recolor them or set the fg/bg colors."
        )
    is_fg = np.array([k == tuple(fg) for k in keys])
    if is_fg.all() or not is_fg.any():
        missing = "background" if is_fg.all() else "foreground"
        raise bad_input(
            f"Select mode needs both foreground and background strokes; there is no {missing} stroke."
        )
    return is_fg


def select(probs: np.ndarray, is_fg: np.ndarray, smooth: Smooth) -> np.ndarray:
    """Soft foreground mask H×W in [0, 1]."""
    return np.clip(_smooth_linear(probs, is_fg.astype(np.float32)[:, None], smooth)[..., 0], 0, 1)


def masks(probs: np.ndarray, smooth: Smooth) -> np.ndarray:
    """One soft probability channel per class, H×W×n, each in [0, 1]."""
    return np.clip(smooth(probs), 0, 1)
