"""What every harmonization method checks and prepares the same way: bad input, alpha, the small copy."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from core.imaging.io import to_float
from core.protocol import bad_input


@dataclass(frozen=True)
class Composite:
    image3: np.ndarray  # H×W×C view of the caller's image (C in 1–4)
    mask: np.ndarray  # H×W float32 in [0, 1]
    color_channels: int  # 3 (RGB) or 1 (gray)
    alpha: np.ndarray | None  # H×W in the image's dtype, None when the image has no alpha


def check_composite(image: np.ndarray, mask: np.ndarray, strength: float) -> Composite:
    """The checks shared by the methods. As in statistics transfer, invisible pixels (alpha 0) belong to
    neither the foreground nor the background: their colours are whatever the layer happens to hold."""
    if not 0.0 <= strength <= 1.0:
        raise bad_input(f"Strength must be between 0 and 1, got {strength}.")
    image3 = image if image.ndim == 3 else image[..., None]
    if image3.shape[:2] != mask.shape[:2]:
        raise bad_input(f"The mask is {mask.shape[1]}×{mask.shape[0]} but the image is "
                        f"{image3.shape[1]}×{image3.shape[0]}; they must match.")
    color_channels = 3 if image3.shape[2] >= 3 else 1
    mask = np.asarray(mask, dtype=np.float32)
    alpha = image3[..., color_channels] if image3.shape[2] in (2, 4) else None
    visible = alpha > 0 if alpha is not None else np.True_
    if not np.any((mask > 0) & visible):
        raise bad_input("The selection (foreground mask) is empty: select the pasted object first.")
    if not np.any((mask < 1) & visible):
        raise bad_input("The selection covers the whole layer, so there is no background to match. "
                        "Select only the pasted object, or use 'invert mask' if you selected the background.")
    return Composite(image3, mask, color_channels, alpha)


def small_rgb(pixels: np.ndarray, size: tuple[int, int], alpha: np.ndarray | None,
              small_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Area-downscaled float RGB and alpha at ``size`` = (width, height). Where the layer is (partly)
    transparent, the visible colours are laid over the alpha-weighted mean colour of their own region
    (foreground or background, by ``small_mask``), so invisible pixels add nothing but that region's mean."""
    width, height = size
    if alpha is None or to_float(np.array([alpha.min()], alpha.dtype))[0] >= 1:
        # Opaque: downscale in the native dtype (no full-size float copy).
        small = cv2.resize(np.ascontiguousarray(pixels), size, interpolation=cv2.INTER_AREA)
        small = to_float(small.reshape(height, width, -1))
        small_alpha = np.ones((height, width), np.float32)
    else:
        weight = to_float(alpha)
        premultiplied = to_float(pixels).reshape(*weight.shape, -1) * weight[..., None]
        small = cv2.resize(premultiplied, size, interpolation=cv2.INTER_AREA).reshape(height, width, -1)
        small_alpha = cv2.resize(weight, size, interpolation=cv2.INTER_AREA)
        region_means = []
        for region in (small_mask, 1 - small_mask):
            w = region * small_alpha
            region_means.append(np.einsum("hwc,hw->c", small, region) / max(float(w.sum()), 1e-6))
        backdrop = small_mask[..., None] * region_means[0] + (1 - small_mask[..., None]) * region_means[1]
        small = small + (1 - small_alpha[..., None]) * backdrop
    if small.shape[2] == 1:
        small = np.repeat(small, 3, axis=2)
    return np.ascontiguousarray(small, dtype=np.float32), np.ascontiguousarray(small_alpha, dtype=np.float32)
