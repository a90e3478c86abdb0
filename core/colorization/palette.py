"""Semantic-map colors: one flat color per class, and reading maps back from ids or colors.

Colors follow the PASCAL VOC color map (bit-interleaved class id): deterministic for any class count
up to 256, distinct, and id 0 (unlabeled) is black, so "no map" (all zeros) means "all unlabeled".
"""

from __future__ import annotations

import numpy as np

from core.protocol import bad_input


def class_colors(count: int) -> np.ndarray:
    """count×3 uint8 palette; row i is class i's color."""
    colors = np.zeros((count, 3), np.uint8)
    for i in range(count):
        c, r, g, b = i, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        colors[i] = (r, g, b)
    return colors


def render(ids: np.ndarray, count: int) -> np.ndarray:
    """H×W class ids → H×W×3 uint8 palette colors."""
    colors = class_colors(max(count, int(ids.max()) + 1 if ids.size else 1))
    return colors[ids]


def map_input(ids: np.ndarray, count: int) -> np.ndarray:
    """H×W ids → H×W×3 float32 in [0, 1]: what the colorizer's map stream reads (unlabeled = 0)."""
    return render(ids, count).astype(np.float32) / 255.0


def _describe(rows: np.ndarray, cols: np.ndarray) -> str:
    y0, y1, x0, x1 = int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())
    return f"x {x0}–{x1}, y {y0}–{y1}"


def read_map(array: np.ndarray, class_names: tuple[str, ...] | list[str], snap: bool = False) -> np.ndarray:
    """A user's map (ids in one channel, or palette colors in RGB/RGBA) → H×W uint8 class ids.

    Colors not in the palette raise an error naming where they are, unless ``snap`` picks the
    nearest class color (painting with antialiased brushes leaves such pixels on edges).
    """
    count = len(class_names)
    if array.dtype != np.uint8:
        raise bad_input("The semantic map must be 8-bit (class ids or palette colors).")
    if array.ndim == 3 and array.shape[2] in (2, 4):
        array = array[..., :-1]  # alpha does not carry classes
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim == 3 and np.array_equal(array[..., 0], array[..., 1]) and np.array_equal(
            array[..., 0], array[..., 2]) and int(array.max()) < count:
        array = array[..., 0]  # ids saved as gray RGB
    if array.ndim == 2:
        bad = array >= count
        if bad.any():
            rows, cols = np.nonzero(bad)
            raise bad_input(
                f"The semantic map has class ids up to {int(array.max())}, but only 0–{count - 1} exist "
                f"({bad.sum()} pixels at {_describe(rows, cols)}). Use ids from classes.txt or the palette "
                "'Semantic classes'.")
        return array.astype(np.uint8)
    colors = class_colors(count).astype(np.int32)
    packed = (array[..., 0].astype(np.int32) << 16) | (array[..., 1].astype(np.int32) << 8) | array[..., 2]
    keys = (colors[:, 0] << 16) | (colors[:, 1] << 8) | colors[:, 2]
    order = np.argsort(keys)
    pos = np.searchsorted(keys[order], packed).clip(0, count - 1)
    ids = order[pos]
    unknown = keys[ids] != packed
    if unknown.any():
        if not snap:
            rows, cols = np.nonzero(unknown)
            sample = array[rows[0], cols[0]]
            raise bad_input(
                f"{int(unknown.sum())} pixels of the semantic map ({100 * unknown.mean():.2f}%) have colors that "
                f"are not class colors, e.g. #{sample[0]:02x}{sample[1]:02x}{sample[2]:02x} at x {cols[0]}, "
                f"y {rows[0]}; they lie at {_describe(rows, cols)}. Paint with the palette 'Semantic classes' "
                "with antialiasing off, or choose 'snap to nearest class'.")
        values = np.unique(packed[unknown], return_inverse=True)
        rgb = np.stack([(values[0] >> 16) & 255, (values[0] >> 8) & 255, values[0] & 255], axis=1)
        nearest = ((rgb[:, None, :] - colors[None]) ** 2).sum(-1).argmin(1)
        ids = ids.copy()
        ids[unknown] = nearest[values[1].reshape(-1)]
    return ids.astype(np.uint8)


def gimp_palette(class_names: tuple[str, ...] | list[str], name: str = "Semantic classes") -> str:
    """The class list as a GIMP .gpl palette (entries named '<id> <class>')."""
    lines = ["GIMP Palette", f"Name: {name}", "Columns: 4", "#"]
    for i, (color, label) in enumerate(zip(class_colors(len(class_names)), class_names)):
        lines.append(f"{color[0]:3d} {color[1]:3d} {color[2]:3d}\t{i} {label}")
    return "\n".join(lines) + "\n"
