"""The demo's inputs: the bundled photos, a pasted object with its mask, and strokes on the cat.

All geometry is written as fractions of the photo's width and height, so the scenes work at any demo
size. The shapes were traced by hand on the bundled photos (see photos/NOTICE for their sources).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from core.imaging.io import load_image
from core.propagation.strokes import StrokePath, paths_from_params, rasterize_paths, rgb_hex

PHOTOS = Path(__file__).resolve().parent / "photos"

Point = tuple[float, float]  # (x, y) as fractions of the image's width and height


def photo(name: str, longest_side: int | None = None) -> np.ndarray:
    """A bundled photo as H×W×3 uint8, shrunk (never enlarged) so its longest side is ``longest_side``."""
    image = load_image(PHOTOS / f"{name}.jpg")[..., :3]
    height, width = image.shape[:2]
    if longest_side is None or max(height, width) <= longest_side:
        return image
    scale = longest_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


# --- harmonization: the coffee cup, lit by a warm lamp, pasted into the rocket's blue dusk -------------


@dataclass(frozen=True)
class Ellipse:
    center: Point
    radii: tuple[float, float]  # both as fractions of the image's width (the photo's aspect is fixed)
    angle_deg: float = 0.0  # clockwise, as cv2.ellipse turns it


# Traced on coffee.jpg: the saucer's rim, the cup's rim (it rises above the saucer) and the spoon's
# handle, whose tip pokes out past the saucer.
SAUCER = Ellipse((0.458, 0.556), (0.338, 0.276), 6.0)
CUP_RIM = Ellipse((0.49, 0.28), (0.20, 0.16))
SPOON_HANDLE = ((0.655, 0.30), (0.665, 0.17), (0.685, 0.16), (0.705, 0.18), (0.69, 0.30))

# Where the cup goes in the rocket photo: its bottom on the image's bottom edge, right of the rocket,
# in front of the launch tower; its height as a fraction of the scene's height.
PASTE_CENTER_X = 0.74
PASTE_HEIGHT = 0.42


def _pixels(points, width: int, height: int) -> np.ndarray:
    return np.array([(x * width, y * height) for x, y in points], np.float64)


def cup_mask(height: int, width: int) -> np.ndarray:
    """H×W float32 in [0, 1]: the cup, saucer and spoon of coffee.jpg, edges softened by about a pixel."""
    shift = 4  # cv2's fixed-point sub-pixel bits
    scale = 1 << shift
    mask = np.zeros((height, width), np.uint8)
    for shape in (SAUCER, CUP_RIM):
        center = (round(shape.center[0] * width * scale), round(shape.center[1] * height * scale))
        axes = (round(shape.radii[0] * width * scale), round(shape.radii[1] * width * scale))
        cv2.ellipse(mask, center, axes, shape.angle_deg, 0, 360, 255, -1, cv2.LINE_AA, shift)
    polygon = np.round(_pixels(SPOON_HANDLE, width, height) * scale).astype(np.int32)
    cv2.fillPoly(mask, [polygon], 255, cv2.LINE_AA, shift)
    # One pixel in from the traced outline, so no wood from the table comes along with the cup.
    mask = cv2.erode(mask, np.ones((3, 3), np.uint8))
    return cv2.GaussianBlur(mask.astype(np.float32) / 255.0, (0, 0), 0.8)


@dataclass(frozen=True)
class Composite:
    image: np.ndarray  # H×W×3 uint8: the scene with the object pasted in
    mask: np.ndarray  # H×W uint8: where the object is (soft edges), the selection a user would make


def _to_u8(values: np.ndarray) -> np.ndarray:
    return (np.clip(values, 0, 255) + 0.5).astype(np.uint8)


def pasted_cup(longest_side: int | None = None) -> Composite:
    """The cup photo's cup, scaled to the scene and pasted with its soft mask into the rocket photo."""
    scene = photo("rocket", longest_side)
    cup = photo("coffee")
    mask = cup_mask(*cup.shape[:2])
    rows, cols = np.nonzero(mask > 0)
    top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    cup, mask = cup[top:bottom, left:right], mask[top:bottom, left:right]
    scene_h, scene_w = scene.shape[:2]
    new_h = max(2, round(PASTE_HEIGHT * scene_h))
    new_w = max(2, round(cup.shape[1] * new_h / cup.shape[0]))
    cup = cv2.resize(cup, (new_w, new_h), interpolation=cv2.INTER_AREA).astype(np.float32)
    mask = cv2.resize(mask, (new_w, new_h), interpolation=cv2.INTER_AREA)
    y0 = scene_h - new_h
    x0 = min(max(0, round(PASTE_CENTER_X * scene_w - new_w / 2)), scene_w - new_w)
    full_mask = np.zeros((scene_h, scene_w), np.float32)
    full_mask[y0:, x0:x0 + new_w] = mask
    pasted = scene.astype(np.float32)
    region = pasted[y0:, x0:x0 + new_w]
    region += (cup - region) * mask[..., None]
    return Composite(_to_u8(pasted), _to_u8(full_mask * 255))


# --- colorization: the rocket photo in gray ----------------------------------------------------------


def gray_photo(name: str, longest_side: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(gray H×W×3 uint8 — what a user's black-and-white photo looks like in RGB — , the original)."""
    original = photo(name, longest_side)
    luma = cv2.cvtColor(original, cv2.COLOR_RGB2GRAY)
    return np.repeat(luma[..., None], 3, axis=2), original


# --- propagation: strokes on the cat ------------------------------------------------------------------


@dataclass(frozen=True)
class StrokeClass:
    label: str  # what the strokes mark, for the page
    polylines: tuple[tuple[Point, ...], ...]


# Strokes a user might draw on chelsea.jpg: the cat's fur (across the dark stripes too, so they stay
# fur), eyes, pupils, nose and white muzzle, and the blurred room around it (the right edge and the
# two top corners). Pupils have their own strokes: without them select mode took the dark pupils for
# room, and in colorize mode they would dilute the eyes' sampled green.
FUR = StrokeClass("fur", (
    ((0.22, 0.14), (0.40, 0.07), (0.60, 0.10), (0.72, 0.22)),
    ((0.50, 0.30), (0.51, 0.50), (0.54, 0.66)),
    ((0.06, 0.45), (0.14, 0.62), (0.24, 0.80)),
    ((0.66, 0.58), (0.73, 0.72)),
    ((0.74, 0.18), (0.79, 0.10), (0.83, 0.03)),
    ((0.15, 0.36), (0.22, 0.33), (0.28, 0.36)),
    ((0.55, 0.28), (0.62, 0.33)),
))
EYES = StrokeClass("eyes", (
    ((0.325, 0.34), (0.33, 0.43)), ((0.425, 0.35), (0.425, 0.42)),
    ((0.665, 0.41), (0.665, 0.49)), ((0.725, 0.40), (0.73, 0.50)),
))
PUPILS = StrokeClass("pupils", (
    ((0.38, 0.33), (0.38, 0.42)), ((0.69, 0.40), (0.69, 0.48)),
))
NOSE = StrokeClass("nose", (((0.54, 0.77), (0.59, 0.79), (0.62, 0.77)),))
MUZZLE = StrokeClass("white muzzle", (
    ((0.30, 0.88), (0.40, 0.90), (0.47, 0.94)), ((0.06, 0.80), (0.12, 0.93)),
))
ROOM = StrokeClass("room", (
    ((0.93, 0.28), (0.95, 0.55), (0.93, 0.95)),
    ((0.02, 0.04), (0.03, 0.30)),
    ((0.92, 0.02), (0.98, 0.12)),
))
CAT = (FUR, EYES, PUPILS, NOSE, MUZZLE)
BRUSH_FRACTION = 0.012  # stroke width as a fraction of the longest side (5 px at 451 px)


def brush_width(height: int, width: int) -> float:
    return max(2.0, BRUSH_FRACTION * max(height, width))


def _polylines(stroke_class: StrokeClass, height: int, width: int) -> list[list[float]]:
    return [_pixels(line, width, height).ravel().tolist() for line in stroke_class.polylines]


def selection_paths(height: int, width: int) -> list[dict]:
    """GIMP-style paths (as the plug-in sends them) for select mode: the cat is 'fg', the room 'bg'."""
    cat = [line for stroke_class in CAT for line in _polylines(stroke_class, height, width)]
    return [{"name": "fg", "color": None, "strokes": cat},
            {"name": "bg", "color": None, "strokes": _polylines(ROOM, height, width)}]


def colorize_paths(original: np.ndarray) -> list[dict]:
    """One path per stroke class, named by the mean color of the original photo under its strokes
    (as if the user had picked each color from a reference)."""
    height, width = original.shape[:2]
    brush = brush_width(height, width)
    paths = []
    for stroke_class in (*CAT, ROOM):
        lines = _polylines(stroke_class, height, width)
        # Any color will do here: only where the strokes fall is used.
        shape = StrokePath(stroke_class.label, [np.reshape(line, (-1, 2)) for line in lines],
                           [False] * len(lines), fallback_color=(255, 255, 255))
        under = rasterize_paths([shape], height, width, brush)[..., 3] > 0
        color = tuple(int(v + 0.5) for v in original[under].mean(axis=0))
        paths.append({"name": f"{stroke_class.label} {rgb_hex(color)}", "color": None, "strokes": lines})
    return paths


def draw_paths(image: np.ndarray, paths: list[dict], brush: float) -> np.ndarray:
    """The image with the paths painted over it (what the user sees in GIMP), for the page."""
    height, width = image.shape[:2]
    raster = rasterize_paths(paths_from_params(paths), height, width, brush)
    painted = raster[..., 3:] > 0
    return np.where(painted, raster[..., :3], image[..., :3])
