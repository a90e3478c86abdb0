"""Deep harmonization at any resolution: the network sees a small copy, the photo keeps its detail.

1. The composite and mask are resized to the network's input (R×R, the paper's practice).
2. Deep Image Harmonization (core/models/dih.py) predicts the harmonized small image.
3. A smooth, spatially varying colour transform is fitted from the small input to the small output:
   at every low-resolution pixel an affine map out = A·in + b (3×3 matrix, 3-vector) from the
   foreground pixels of a local window, as in the guided filter (He et al., TPAMI 2013) used for
   upsampling, but regularized towards the identity so flat regions keep their texture, and backed
   by the global fit where a window holds no foreground.
4. The coefficient maps are bilinearly upsampled and applied to the full-resolution pixels, strip
   by strip (24 MP stays within a few hundred MB), then composited with the user's soft mask:
   every pixel where the mask is 0 is returned bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np
import torch

from core.harmonization.inputs import check_composite, small_rgb
from core.imaging.io import from_float, to_float
from core.models.dih import DeepHarmonization, DIHConfig
from core.protocol import ErrorCode, SemanticError
from core.weights import Manifest, load_verified_state

DEFAULT_WEIGHTS = "dih-paper-small"  # the paper's network (dih-small: the earlier v1 layout)
STRIP_PIXELS = 1 << 20  # full-resolution pixels per strip: ~50 MB of float32 coefficients
REMAP_MAX_COLUMNS = 16_384  # OpenCV's remap refuses maps of 32767 (SHRT_MAX) columns or more
FIT_EPS = 2e-3  # ridge towards the identity, in variance units of [0, 1] colour (σ ≈ 0.045)
PRIOR_FRACTION = 0.1  # weight of the global fit inside each window, as a fraction of the window


def load_model(weight_id: str = DEFAULT_WEIGHTS, manifest: Manifest | None = None,
               device: torch.device | str = "cpu") -> DeepHarmonization:
    """The network with verified weights (sha256 checked); a clear error naming the file otherwise."""
    manifest = manifest or Manifest.load()
    try:
        model = DeepHarmonization(DIHConfig.from_dict(manifest.entry(weight_id).config))
    except (TypeError, ValueError) as exc:
        raise SemanticError(ErrorCode.weights_corrupt, f"The manifest's configuration of '{weight_id}' does "
                            f"not describe a harmonization network: {exc}. Re-run the installer.") from None
    load_verified_state(model, manifest, weight_id, "the harmonization network")
    return model.to(device).eval()


def harmonize_deep(image: np.ndarray, mask: np.ndarray, model: DeepHarmonization, strength: float = 1.0,
                   progress: Callable[[float, str], None] | None = None) -> np.ndarray:
    """Harmonize the masked foreground of ``image`` (H×W×C, C in 1–4, u8/u16/f32) with the network.

    ``mask`` is H×W float in [0, 1] (soft values respected). Returns the input's shape and dtype;
    alpha is kept; where ``mask`` is 0 the result equals the input bit for bit.
    """
    checked = check_composite(image, mask, strength)
    mask, alpha = checked.mask, checked.alpha
    report = progress or (lambda fraction, text: None)

    size = model.config.resolution
    small_mask = cv2.resize(mask, (size, size), interpolation=cv2.INTER_AREA)
    small, small_alpha = small_rgb(checked.image3[..., :checked.color_channels], (size, size), alpha, small_mask)
    report(0.1, "Running the harmonization network")
    device = next(model.parameters()).device
    with torch.no_grad():
        x = torch.from_numpy(small).permute(2, 0, 1)[None].to(device)
        m = torch.from_numpy(small_mask)[None, None].to(device)
        out = model(x, m)["image"].clamp(0, 1)[0].permute(1, 2, 0).cpu().numpy()
    report(0.3, "Fitting the colour transform")
    coeffs = fit_local_affine(small, out, small_mask * small_alpha)
    return apply_local_affine(image, mask, coeffs, strength, report)


def fit_local_affine(source: np.ndarray, target: np.ndarray, weight: np.ndarray,
                     radius: int | None = None, eps: float = FIT_EPS) -> np.ndarray:
    """Per-pixel affine colour maps ``target ≈ A·source + b`` fitted over weighted windows.

    ``source``/``target`` h×w×3 float, ``weight`` h×w. Returns h×w×12 (A row-major, then b), box-
    averaged like the guided filter's second pass so the maps are smooth.
    """
    h, w = weight.shape
    radius = radius or max(2, min(h, w) // 16)
    ksize = (2 * radius + 1, 2 * radius + 1)

    def box(a):
        return cv2.boxFilter(a, -1, ksize, normalize=False, borderType=cv2.BORDER_REFLECT)

    wt = weight.astype(np.float32)[..., None]
    src, dst = source.astype(np.float32), target.astype(np.float32)
    outer_ss = (src[..., :, None] * src[..., None, :]).reshape(h, w, 9)
    outer_ds = (dst[..., :, None] * src[..., None, :]).reshape(h, w, 9)
    moments = np.concatenate([np.ones((h, w, 1), np.float32), src, dst, outer_ss, outer_ds], axis=2)
    weighted = moments * wt
    local = np.stack([box(np.ascontiguousarray(weighted[..., i])) for i in range(weighted.shape[2])], axis=2)
    total = weighted.reshape(-1, weighted.shape[2]).sum(axis=0, dtype=np.float64)
    global_mean = (total / max(total[0], 1e-6)).astype(np.float32)
    prior = PRIOR_FRACTION * ksize[0] * ksize[1]
    stats = (local + prior * global_mean) / (local[..., :1] + prior)

    mu_s, mu_d = stats[..., 1:4], stats[..., 4:7]
    cov_ss = stats[..., 7:16].reshape(h, w, 3, 3) - mu_s[..., :, None] * mu_s[..., None, :]
    cov_ds = stats[..., 16:25].reshape(h, w, 3, 3) - mu_d[..., :, None] * mu_s[..., None, :]
    eye = np.eye(3, dtype=np.float32) * eps
    # A (Σ_ss + εI) = Σ_ds + εI: ridge regression whose prior is the identity map.
    a = np.linalg.solve(cov_ss + eye, np.swapaxes(cov_ds + eye, -1, -2)).swapaxes(-1, -2)
    b = mu_d - np.einsum("hwij,hwj->hwi", a, mu_s)
    coeffs = np.concatenate([a.reshape(h, w, 9), b], axis=2).astype(np.float32)
    return np.stack([cv2.blur(np.ascontiguousarray(coeffs[..., i]), ksize, borderType=cv2.BORDER_REFLECT)
                     for i in range(12)], axis=2)


def apply_local_affine(image: np.ndarray, mask: np.ndarray, coeffs: np.ndarray, strength: float = 1.0,
                       progress: Callable[[float, str], None] | None = None) -> np.ndarray:
    """Apply h×w×12 coefficient maps to the full-resolution image inside the mask's bounding box."""
    report = progress or (lambda fraction, text: None)
    image3 = image if image.ndim == 3 else image[..., None]
    height, width = image3.shape[:2]
    color_channels = 3 if image3.shape[2] >= 3 else 1
    result = image.copy()
    out3 = result if result.ndim == 3 else result[..., None]
    rows = np.nonzero(mask.max(axis=1) > 0)[0]
    cols = np.nonzero(mask.max(axis=0) > 0)[0]
    y_start, y_stop, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    h, w = coeffs.shape[:2]
    # Horizontal pass once for the box's columns (h × box width × 12), vertical interpolation per strip.
    # cv2.remap takes maps below 32767 columns, so wider boxes go in pieces (columns are independent).
    xs = (np.arange(x0, x1, dtype=np.float32) + 0.5) * (w / width) - 0.5
    map_y = np.repeat(np.arange(h, dtype=np.float32)[:, None], min(x1 - x0, REMAP_MAX_COLUMNS), axis=1)
    wide = np.empty((h, x1 - x0, 12), np.float32)
    for c0 in range(0, x1 - x0, REMAP_MAX_COLUMNS):
        map_x = np.repeat(xs[None, c0:c0 + REMAP_MAX_COLUMNS], h, axis=0)
        for i in range(12):
            wide[:, c0:c0 + map_x.shape[1], i] = cv2.remap(
                np.ascontiguousarray(coeffs[..., i]), map_x, map_y[:, :map_x.shape[1]], cv2.INTER_LINEAR,
                borderMode=cv2.BORDER_REPLICATE)
    rows_per_strip = max(1, STRIP_PIXELS // (x1 - x0))
    for y0 in range(y_start, y_stop, rows_per_strip):
        y1 = min(y0 + rows_per_strip, y_stop)
        sy = np.clip((np.arange(y0, y1, dtype=np.float32) + 0.5) * (h / height) - 0.5, 0, h - 1)
        top = np.floor(sy).astype(np.int64)
        bottom = np.minimum(top + 1, h - 1)
        frac = (sy - top)[:, None, None]
        c = wide[top] * (1 - frac) + wide[bottom] * frac  # strip × box width × 12
        block = image3[y0:y1, x0:x1, :color_channels]
        original = to_float(block)
        rgb = np.repeat(original, 3, axis=2) if color_channels == 1 else original
        a = c[..., :9].reshape(*c.shape[:2], 3, 3)
        adjusted = np.einsum("yxij,yxj->yxi", a, rgb) + c[..., 9:]
        if color_channels == 1:
            adjusted = adjusted.mean(axis=2, keepdims=True)
        weight = mask[y0:y1, x0:x1, None].astype(np.float32) * np.float32(strength)
        blended = original + weight * (np.clip(adjusted, 0, 1) - original)
        new = from_float(blended, image.dtype)
        out3[y0:y1, x0:x1, :color_channels] = np.where(mask[y0:y1, x0:x1, None] > 0, new, block)
        report(0.3 + 0.7 * (y1 - y_start) / (y_stop - y_start), "Applying at full resolution")
    return result
