"""Classical harmonization: match the foreground's CIELab statistics to the background's.

Reinhard-style colour transfer (per-channel mean and standard deviation in Lab), weighted by the
soft mask, blended by strength and composited with the same soft mask, so that pixels where the
mask is 0 come back bit-identical. Cost is linear in the masked area: statistics come from a
strided sample of at most ~2 MP, and the Lab round trip touches only the mask's bounding box.
"""

from __future__ import annotations

import numpy as np

from core.imaging.color import lab_to_rgb, rgb_to_lab
from core.imaging.io import from_float, to_float
from core.protocol import bad_input

STATS_SAMPLE_PIXELS = 2_000_000
CHUNK_PIXELS = 1 << 20
# A nearly flat foreground has a tiny deviation; an unbounded ratio would blow noise up to the
# background's full contrast, so the per-channel gain is kept within these bounds.
MIN_GAIN, MAX_GAIN = 0.25, 4.0
MIN_WEIGHT_PIXELS = 1.0


def weighted_lab_stats(lab: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation per Lab channel; ``lab`` N×3, ``weight`` N."""
    total = float(weight.sum(dtype=np.float64))
    mean = (lab * weight[:, None]).sum(axis=0, dtype=np.float64) / total
    var = ((lab - mean) ** 2 * weight[:, None]).sum(axis=0, dtype=np.float64) / total
    return mean, np.sqrt(np.maximum(var, 1e-6))


def harmonize_statistics(image: np.ndarray, mask: np.ndarray, strength: float = 1.0) -> np.ndarray:
    """Harmonize the masked foreground of ``image`` (H×W×C, C in 1–4, u8/u16/f32).

    ``mask`` is H×W float in [0, 1] (soft values respected). Returns an array of the input's shape
    and dtype; alpha is kept; where ``mask`` is 0 the result equals the input bit for bit.
    """
    if not 0.0 <= strength <= 1.0:
        raise bad_input(f"Strength must be between 0 and 1, got {strength}.")
    height, width = image.shape[:2]
    channels = image.shape[2] if image.ndim == 3 else 1
    color_channels = 3 if channels >= 3 else 1
    image3 = image if image.ndim == 3 else image[..., None]
    alpha = to_float(image3[..., color_channels]) if channels in (2, 4) else None

    step = max(1, int(np.ceil(np.sqrt(height * width / STATS_SAMPLE_PIXELS))))
    sample_lab = _lab(image3[::step, ::step, :color_channels]).reshape(-1, 3)
    sample_mask = mask[::step, ::step].reshape(-1)
    visible = alpha[::step, ::step].reshape(-1) if alpha is not None else 1.0
    fg_weight = sample_mask * visible
    bg_weight = (1.0 - sample_mask) * visible
    if fg_weight.sum() * step * step < MIN_WEIGHT_PIXELS:
        raise bad_input("The selection (foreground mask) is empty: select the pasted object first.")
    if bg_weight.sum() * step * step < MIN_WEIGHT_PIXELS:
        raise bad_input("The selection covers the whole layer, so there is no background to match. "
                        "Select only the pasted object, or use 'invert mask' if you selected the background.")
    fg_mean, fg_std = weighted_lab_stats(sample_lab, fg_weight)
    bg_mean, bg_std = weighted_lab_stats(sample_lab, bg_weight)
    gain = np.clip(bg_std / fg_std, MIN_GAIN, MAX_GAIN)
    if color_channels == 1:  # gray: a and b carry no information
        gain[1:], fg_mean[1:], bg_mean[1:] = 1.0, 0.0, 0.0
    # Eq. of Reinhard et al.: lab' = (lab - mu_fg) * sigma_bg / sigma_fg + mu_bg, then blend by strength.
    scale = (1.0 + strength * (gain - 1.0)).astype(np.float32)
    offset = (strength * (bg_mean - gain * fg_mean)).astype(np.float32)

    result = image.copy()
    rows, cols = np.nonzero(mask.max(axis=1) > 0)[0], np.nonzero(mask.max(axis=0) > 0)[0]
    x0, x1 = int(cols[0]), int(cols[-1]) + 1
    rows_per_chunk = max(1, CHUNK_PIXELS // (x1 - x0))
    out3 = result if result.ndim == 3 else result[..., None]
    for y0 in range(int(rows[0]), int(rows[-1]) + 1, rows_per_chunk):
        y1 = min(y0 + rows_per_chunk, int(rows[-1]) + 1)
        block = image3[y0:y1, x0:x1, :color_channels]
        weight = mask[y0:y1, x0:x1, None].astype(np.float32)
        original = to_float(block)
        lab = _lab(block)
        lab = lab * scale + offset
        adjusted = lab_to_rgb(lab)
        if color_channels == 1:
            adjusted = adjusted.mean(axis=2, keepdims=True)
        blended = original + weight * (adjusted - original)
        new = from_float(blended, image.dtype)
        out3[y0:y1, x0:x1, :color_channels] = np.where(weight > 0, new, block)
    return result


def _lab(pixels: np.ndarray) -> np.ndarray:
    rgb = to_float(pixels)
    if rgb.shape[-1] == 1:
        rgb = np.repeat(rgb, 3, axis=-1)
    return rgb_to_lab(rgb)
