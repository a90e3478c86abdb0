"""Image files and pixel-format conversions shared by the CLI, the actions and the training code."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from core.protocol import bad_input

Image.MAX_IMAGE_PIXELS = 400_000_000  # 24 MP scans and larger are normal input here


def load_image(path: str | Path) -> np.ndarray:
    """Read an RGB/RGBA/gray file as H×W×C (C = 3 or 4) uint8 or uint16 array."""
    image = _open(path)
    if image.mode in ("I;16", "I;16B", "I"):
        gray = np.asarray(image, dtype=np.uint16 if image.mode.startswith("I;16") else np.int32)
        gray = np.clip(gray, 0, 65535).astype(np.uint16)
        return np.repeat(gray[..., None], 3, axis=2)
    if image.mode not in ("RGB", "RGBA"):
        image = image.convert("RGBA" if "A" in image.getbands() or image.mode == "P" else "RGB")
    return np.asarray(image)


def load_mask(path: str | Path) -> np.ndarray:
    """Read a mask file as H×W uint8 (soft values kept; RGB masks are averaged, alpha ignored)."""
    image = _open(path)
    if image.mode in ("I;16", "I;16B", "I"):
        return (np.asarray(image, dtype=np.float32) / 257.0 + 0.5).clip(0, 255).astype(np.uint8)
    return np.asarray(image.convert("L"))


def save_image(path: str | Path, array: np.ndarray) -> None:
    path = Path(path)
    if array.dtype != np.uint8:
        array = to_uint8(array)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        Image.fromarray(array).save(path)
    except (KeyError, ValueError, OSError) as exc:
        raise bad_input(f"Cannot write {path}: {exc}. Use a .png, .jpg or .tif name.") from None


def _open(path: str | Path) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()
        return image
    except FileNotFoundError:
        raise bad_input(f"File not found: {path}") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise bad_input(f"Cannot read {path} as an image: {exc}") from None


def to_float(array: np.ndarray) -> np.ndarray:
    """uint8/uint16/float pixels → float32 in [0, 1]."""
    if array.dtype == np.uint8:
        return array.astype(np.float32) * np.float32(1 / 255)
    if array.dtype == np.uint16:
        return array.astype(np.float32) * np.float32(1 / 65535)
    return np.clip(array.astype(np.float32, copy=False), 0.0, 1.0)


def from_float(array: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """float32 in [0, 1] → the given pixel dtype (rounded)."""
    if dtype == np.uint8:
        return (np.clip(array, 0, 1) * 255 + 0.5).astype(np.uint8)
    if dtype == np.uint16:
        return (np.clip(array, 0, 1) * 65535 + 0.5).astype(np.uint16)
    return array.astype(np.float32)


def to_uint8(array: np.ndarray) -> np.ndarray:
    return array if array.dtype == np.uint8 else from_float(to_float(array), np.uint8)


def mask_to_float(mask: np.ndarray) -> np.ndarray:
    """H×W or H×W×1 mask of any pixel dtype → H×W float32 in [0, 1]."""
    if mask.ndim == 3:
        mask = mask[..., 0]
    return to_float(mask)


def split_alpha(image: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """H×W×C → (color channels, alpha or None); gray images become 3-channel."""
    if image.ndim == 2:
        image = image[..., None]
    channels = image.shape[2]
    if channels in (2, 4):
        color, alpha = image[..., :-1], image[..., -1:]
    else:
        color, alpha = image, None
    if color.shape[2] == 1:
        color = np.repeat(color, 3, axis=2)
    return color, alpha
