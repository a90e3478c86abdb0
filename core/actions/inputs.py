"""Validation of an action's arrays and parameters, with messages a user can act on."""

from __future__ import annotations

import numpy as np

from core.imaging.io import mask_to_float
from core.protocol import Array, bad_input

MAX_SIDE = 65_536
_NUMPY_DTYPES = {"u8": np.uint8, "u16": np.uint16, "f32": np.float32}
_WIRE_DTYPES = {np.dtype(v): k for k, v in _NUMPY_DTYPES.items()}


def to_numpy(array: Array) -> np.ndarray:
    """A wire array as a NumPy view (no copy); read-only."""
    return np.frombuffer(array.data, dtype=_NUMPY_DTYPES[array.dtype]).reshape(array.shape)


def to_wire(name: str, array: np.ndarray) -> Array:
    array = np.ascontiguousarray(array)
    if array.dtype not in _WIRE_DTYPES:
        array = array.astype(np.float32)
    return Array(name, _WIRE_DTYPES[array.dtype], array.shape, memoryview(array).cast("B"))


def require_image(arrays: dict[str, np.ndarray], name: str = "image",
                  channels: tuple[int, ...] = (1, 2, 3, 4)) -> np.ndarray:
    if name not in arrays:
        raise bad_input(f"No '{name}' was sent with the request.")
    image = arrays[name]
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[2] not in channels:
        raise bad_input(f"'{name}' must be height×width×channels with {channels} channels; "
                        f"got shape {list(arrays[name].shape)}.")
    if image.shape[0] < 1 or image.shape[1] < 1 or max(image.shape[:2]) > MAX_SIDE:
        raise bad_input(f"'{name}' is {image.shape[1]}×{image.shape[0]} pixels; sides must be 1–{MAX_SIDE}.")
    if image.dtype not in (np.uint8, np.uint16, np.float32):
        raise bad_input(f"'{name}' has pixel type {image.dtype}; use 8-bit, 16-bit or float.")
    if image.dtype == np.float32 and not np.isfinite(image).all():
        raise bad_input(f"'{name}' contains NaN or infinite values.")
    return image


def require_mask(arrays: dict[str, np.ndarray], like: np.ndarray, name: str = "mask") -> np.ndarray:
    """The mask as H×W float32 in [0, 1], checked against the image's size."""
    if name not in arrays:
        raise bad_input(f"No '{name}' was sent: make a selection (or give --mask) for the foreground.")
    mask = arrays[name]
    if mask.ndim == 3 and mask.shape[2] != 1:
        raise bad_input(f"'{name}' must have one channel; got {mask.shape[2]}.")
    if mask.shape[:2] != like.shape[:2]:
        raise bad_input(f"The {name} is {mask.shape[1]}×{mask.shape[0]} but the image is "
                        f"{like.shape[1]}×{like.shape[0]}; they must be the same size.")
    if mask.dtype == np.float32 and not np.isfinite(mask).all():
        raise bad_input(f"'{name}' contains NaN or infinite values.")
    return mask_to_float(mask)


def get_float(params: dict, name: str, default: float, low: float, high: float) -> float:
    value = params.get(name, default)
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise bad_input(f"'{name}' must be a number; got {value!r}.") from None
    if not low <= value <= high:
        raise bad_input(f"'{name}' must be between {low} and {high}; got {value}.")
    return value


def get_int(params: dict, name: str, default: int, low: int, high: int) -> int:
    value = get_float(params, name, default, low, high)
    if value != int(value):
        raise bad_input(f"'{name}' must be a whole number; got {value}.")
    return int(value)


def get_bool(params: dict, name: str, default: bool) -> bool:
    value = params.get(name, default)
    if not isinstance(value, bool):
        raise bad_input(f"'{name}' must be true or false; got {value!r}.")
    return value


def get_choice(params: dict, name: str, default: str, choices: tuple[str, ...] | list[str]) -> str:
    value = params.get(name, default)
    if value not in choices:
        raise bad_input(f"'{name}' must be one of {', '.join(choices)}; got {value!r}.")
    return value
