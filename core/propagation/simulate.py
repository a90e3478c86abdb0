"""Strokes like a user's, drawn from a ground-truth mask, for the bench and the tests.

A user selecting an object draws a few thick strokes: along the object's body (one per visible part),
one reaching out into a limb or corner toward the boundary, and a few through the background around
it; after looking at the result, one more stroke where it is most wrong. This module draws the same
from a mask: each stroke follows the geodesic "spine" of a region's interior (the longest shortest
path inside it, so it bends with the shape instead of crossing out of it), and branches go from the
spine to the interior point farthest from it. Strokes keep half a brush width clear of the boundary,
as a careful user does. Everything is deterministic: the same mask gives the same strokes.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import cv2
import numpy as np

from core.propagation.strokes import RGB, StrokePath, rasterize_paths

# A user's brush: about 2 % of the image's short side (the paper's strokes cover 5–9 % of the image).
BRUSH_FRACTION = 0.02
# Background regions smaller than this share of the image get no stroke of their own (a user marks
# the surroundings, not every gap between an object's parts).
MIN_BACKGROUND_SHARE = 0.02
MAX_BACKGROUND_REGIONS = 3


@dataclass(frozen=True)
class UserStrokes:
    """Polylines per side and the brush width they are drawn with."""

    fg: list[np.ndarray]
    bg: list[np.ndarray]
    brush: int

    def raster(self, shape: tuple[int, int], fg: RGB, bg: RGB) -> np.ndarray:
        """H×W×4 scribbles: background strokes first, foreground strokes painted over them."""
        h, w = shape
        raster = np.zeros((h, w, 4), np.uint8)
        for lines, color in ((self.bg, bg), (self.fg, fg)):
            if lines:
                path = StrokePath("stroke", list(lines), [False] * len(lines), fallback_color=color)
                layer = rasterize_paths([path], h, w, self.brush, fg, bg)
                raster[layer[..., 3] > 0] = layer[layer[..., 3] > 0]
        return raster


def user_brush(shape: tuple[int, int]) -> int:
    return max(3, round(BRUSH_FRACTION * min(shape)))


def user_strokes(mask: np.ndarray, brush: int | None = None) -> UserStrokes:
    """Strokes for a selection of ``mask`` (H×W bool): a spine and one branch in every part of the
    object big enough to hold a stroke; a spine and two branches in the largest background region,
    a spine in up to two more."""
    mask = mask.astype(bool)
    brush = brush or user_brush(mask.shape)
    min_part = max(4 * brush * brush, 0.001 * mask.size)
    fg: list[np.ndarray] = []
    # A small object still gets its stroke: the largest part, whatever its size.
    for part in components(mask, min_part) or components(mask, 1)[:1]:
        fg.extend(region_strokes(part, brush, branches=1))
    bg: list[np.ndarray] = []
    big = (components(~mask, MIN_BACKGROUND_SHARE * mask.size) or components(~mask, 1))[
        :MAX_BACKGROUND_REGIONS
    ]
    for index, part in enumerate(big):
        bg.extend(region_strokes(part, brush, branches=2 if index == 0 else 0))
    return UserStrokes(fg, bg, brush)


def correction_stroke(mask: np.ndarray, foreground: np.ndarray, brush: int) -> tuple[np.ndarray, bool] | None:
    """Where the result ``foreground`` (H×W bool) is most wrong against ``mask``: the largest region
    of missed or of extra pixels once slivers thinner than the brush are removed, and a stroke along
    its spine. Missed and extra pixels are separate regions and the stroke must stay on its side
    of the true outline: a user correcting a dog whose legs were missed and the gaps between them
    filled paints the legs or a gap, never a stroke across both that erases the legs.
    Returns (polyline, True for a foreground stroke) or None when no wrong region can hold a stroke."""
    mask = mask.astype(bool)
    foreground = foreground.astype(bool)
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (brush, brush))
    regions: list[tuple[np.ndarray, bool]] = []
    for is_fg, wrong in ((True, mask & ~foreground), (False, ~mask & foreground)):
        opened = cv2.morphologyEx(wrong.astype(np.uint8), cv2.MORPH_OPEN, disk).astype(bool)
        regions.extend((part, is_fg) for part in components(opened, brush * brush))
    regions.sort(key=lambda region: -int(region[0].sum()))
    for part, is_fg in regions:
        lines = region_strokes(part, brush, branches=0, margin=brush / 2)
        if lines and stays_on_side(lines[0], mask == is_fg, brush):
            return lines[0], is_fg
    return None


def stays_on_side(line: np.ndarray, side: np.ndarray, brush: int) -> bool:
    """Whether ``line`` drawn with ``brush`` (as the scribble raster draws it) covers only ``side``."""
    h, w = side.shape
    path = StrokePath("stroke", [line], [False], fallback_color=(255, 0, 0))
    covered = rasterize_paths([path], h, w, brush, (255, 0, 0), (0, 0, 255))[..., 3] > 0
    return bool(side[covered].all())


def components(region: np.ndarray, min_area: float) -> list[np.ndarray]:
    """Connected parts of ``region`` with at least ``min_area`` pixels, largest first."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(region.astype(np.uint8), connectivity=8)
    order = sorted(range(1, count), key=lambda k: -stats[k, cv2.CC_STAT_AREA])
    return [labels == k for k in order if stats[k, cv2.CC_STAT_AREA] >= min_area]


def region_strokes(
    region: np.ndarray, brush: int, branches: int, margin: float | None = None
) -> list[np.ndarray]:
    """The spine of ``region``'s interior and up to ``branches`` branches off it, as N×2 (x, y)
    polylines; the interior is where a stroke of ``brush`` keeps ``margin`` pixels (default half a
    brush) off the boundary (the image frame counts as boundary)."""
    margin = brush / 2 if margin is None else margin
    padded = cv2.copyMakeBorder(region.astype(np.uint8), 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    depth = cv2.distanceTransform(padded, cv2.DIST_L2, 5)[1:-1, 1:-1]
    if depth.max() < 1:
        return []
    inside = depth > brush / 2 + margin
    if not inside.any():  # a part thinner than brush + margins: the user still strokes its middle
        inside = depth >= depth.max() * 0.75
    # Walk a grid of one brush width: strokes that wide cannot follow finer detail anyway, and the
    # search stays cheap (pure Python, ~0.1 s for a 480-pixel image).
    step = max(1, brush - 1)
    grid = inside[::step, ::step].copy()
    # Moving through shallow interior costs more, so paths keep to the middle of a region (its medial
    # axis) as a user's stroke does, instead of hugging the boundary as plain shortest paths would.
    cost = 1.0 / np.maximum(depth[::step, ::step], 1.0)
    if not grid.any():
        ys, xs = np.unravel_index(int(np.argmax(depth)), depth.shape)
        return [np.array([[xs, ys], [xs, ys]], np.float64)]
    seed = np.unravel_index(int(np.argmax(depth[::step, ::step] * grid)), grid.shape)
    seed = (int(seed[0]), int(seed[1]))
    reach, _ = flood(grid, cost, [seed])
    grid &= np.isfinite(reach)  # the piece of interior around the deepest point
    start = farthest(reach)
    far, parent = flood(grid, cost, [start])
    spine = trace(parent, farthest(far))
    lines = [spine]
    on_spine = [(int(y), int(x)) for y, x in spine]
    for _ in range(branches):
        steps_from, parent = flood(grid, np.ones_like(cost), on_spine)
        tip = farthest(steps_from)
        if steps_from[tip] < 3 * brush / step:  # nothing sticks out farther than a few brush widths
            break
        _, parent = flood(grid, cost, on_spine)
        branch = trace(parent, tip)
        lines.append(branch)
        on_spine.extend((int(y), int(x)) for y, x in branch)
    # Grid (row, column) → image (x, y).
    return [np.stack([line[:, 1] * step, line[:, 0] * step], 1).astype(np.float64) for line in lines]


_STEPS = [(dy, dx, float(np.hypot(dy, dx))) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]


def flood(grid: np.ndarray, cost: np.ndarray, seeds: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Dijkstra within ``grid`` (8-connected) from the nearest seed, each move costing its length times
    the mean ``cost`` of its two cells → (distance, inf where unreachable; parent cell index, -1 at
    seeds)."""
    h, w = grid.shape
    dist = np.full(h * w, np.inf)
    parent = np.full(h * w, -1, np.int64)
    allowed = grid.ravel()
    cell_cost = cost.ravel()
    heap = []
    for y, x in seeds:
        dist[y * w + x] = 0.0
        heap.append((0.0, y * w + x))
    heapq.heapify(heap)
    while heap:
        d, index = heapq.heappop(heap)
        if d > dist[index]:
            continue
        y, x = divmod(index, w)
        for dy, dx, length in _STEPS:
            ny, nx = y + dy, x + dx
            if 0 <= ny < h and 0 <= nx < w:
                other = ny * w + nx
                if allowed[other]:
                    nd = d + length * 0.5 * (cell_cost[index] + cell_cost[other])
                    if nd < dist[other]:
                        dist[other] = nd
                        parent[other] = index
                        heapq.heappush(heap, (nd, other))
    return dist.reshape(h, w), parent.reshape(h, w)


def farthest(dist: np.ndarray) -> tuple[int, int]:
    finite = np.where(np.isfinite(dist), dist, -1.0)
    y, x = np.unravel_index(int(np.argmax(finite)), dist.shape)
    return int(y), int(x)


def trace(parent: np.ndarray, end: tuple[int, int]) -> np.ndarray:
    """The path from ``end`` back along the parents to its seed: K×2 (row, column)."""
    w = parent.shape[1]
    index = end[0] * w + end[1]
    flat = parent.ravel()
    path = [divmod(index, w)]
    while flat[index] >= 0:
        index = int(flat[index])
        path.append(divmod(index, w))
    if len(path) == 1:  # a dot: a polyline needs two points to be drawn
        path.append(path[0])
    return np.array(path, np.float64)
