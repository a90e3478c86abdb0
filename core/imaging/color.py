"""CIELab (D65 white, sRGB primaries and transfer curve) in float, computed one way everywhere.

The torch functions are the single implementation (differentiable, GPU-ready, multi-threaded on
CPU); the NumPy wrappers call them on H×W×3 arrays without copies. L is in [0, 100]; a and b are
roughly in [-128, 127].
"""

from __future__ import annotations

import numpy as np
import torch

_SRGB_TO_XYZ = torch.tensor(
    [[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]],
    dtype=torch.float64,
)
_XYZ_TO_SRGB = torch.linalg.inv(_SRGB_TO_XYZ)
_WHITE_D65 = torch.tensor([0.950456, 1.0, 1.088754], dtype=torch.float64)
_EPS = 216 / 24389
_KAPPA = 24389 / 27


def _mix(matrix: torch.Tensor, x: torch.Tensor, dim: int) -> torch.Tensor:
    x = x.movedim(dim, -1)
    return (x @ matrix.T.to(x)).movedim(-1, dim)


def srgb_to_linear_torch(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB transfer curve undone: values in [0, 1] (clamped) → linear light, elementwise."""
    rgb = rgb.clamp(0, 1)
    return torch.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)


def _lab_f(t: torch.Tensor) -> torch.Tensor:
    return torch.where(t > _EPS, t.clamp_min(1e-12) ** (1 / 3), (_KAPPA * t + 16) / 116)


def rgb_to_lab_torch(rgb: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """sRGB in [0, 1] → Lab, channels along ``dim`` (default N×3×H×W)."""
    linear = srgb_to_linear_torch(rgb)
    scale = (1 / _WHITE_D65).view(3, 1)
    xyz = _mix(_SRGB_TO_XYZ * scale, linear, dim)
    fx, fy, fz = _lab_f(xyz).unbind(dim)
    return torch.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], dim=dim)


def linear_to_lightness_torch(linear: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Linear-light RGB (channels along ``dim``) → CIELab L alone, the channel dim removed: the L of
    rgb_to_lab_torch without computing a and b (a third of the work on a 24 MP photo)."""
    luminance = _mix(_SRGB_TO_XYZ[1:2] / _WHITE_D65[1], linear, dim).squeeze(dim)
    return 116 * _lab_f(luminance) - 16


def lab_to_rgb_torch(lab: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Lab → sRGB clipped to [0, 1], channels along ``dim``."""
    L, a, b = lab.unbind(dim)
    fy = (L + 16) / 116
    f = torch.stack([fy + a / 500, fy, fy - b / 200], dim=dim)
    f3 = f ** 3
    xyz = torch.where(f3 > _EPS, f3, (116 * f - 16) / _KAPPA)
    linear = _mix(_XYZ_TO_SRGB * _WHITE_D65.view(1, 3), xyz, dim).clamp(0, 1)
    rgb = torch.where(linear <= 0.0031308, linear * 12.92, 1.055 * linear.clamp_min(1e-12) ** (1 / 2.4) - 0.055)
    return rgb.clamp(0, 1)


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """H×W×3 float sRGB in [0, 1] → float32 Lab."""
    with torch.no_grad():
        return rgb_to_lab_torch(torch.from_numpy(np.asarray(rgb, dtype=np.float32)), dim=-1).numpy()


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """H×W×3 float Lab → float32 sRGB in [0, 1]."""
    with torch.no_grad():
        return lab_to_rgb_torch(torch.from_numpy(np.asarray(lab, dtype=np.float32)), dim=-1).numpy()


def rgb_to_lightness(rgb: np.ndarray) -> np.ndarray:
    """H×W×3 float sRGB in [0, 1] → H×W float32 CIELab L (rgb_to_lab(rgb)[..., 0], computed alone)."""
    with torch.no_grad():
        linear = srgb_to_linear_torch(torch.from_numpy(np.asarray(rgb, dtype=np.float32)))
        return linear_to_lightness_torch(linear, dim=-1).numpy()
