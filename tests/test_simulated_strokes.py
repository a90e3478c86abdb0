"""Strokes like a user's (core/propagation/simulate.py): thick, inside their side, on every part of the
object, and a correction stroke where a result is most wrong."""

from __future__ import annotations

import cv2
import numpy as np

from core.propagation.simulate import correction_stroke, user_brush, user_strokes
from core.propagation.strokes import labels_for_selection

FG, BG = (255, 0, 0), (0, 0, 255)


def two_part_object(h=120, w=160) -> np.ndarray:
    mask = np.zeros((h, w), bool)
    cv2.ellipse(mask.view(np.uint8), (50, 60), (30, 45), 0, 0, 360, 1, -1)  # a body
    mask[20:100, 110:125] = True  # a separate thin post
    return mask


def test_user_strokes_are_thick_inside_their_side_and_touch_every_part():
    mask = two_part_object()
    strokes = user_strokes(mask)
    assert strokes.brush == user_brush(mask.shape) == 3  # 2% of the short side, at least 3
    labels = labels_for_selection(strokes.raster(mask.shape, FG, BG), FG, BG).labels
    assert mask[labels == 0].all() and not mask[labels == 1].any()
    count, parts = cv2.connectedComponents(mask.astype(np.uint8))
    for k in range(1, count):
        assert (labels[parts == k] == 0).sum() > 20, f"part {k} has no stroke"
    # The body's stroke runs along it (not a dot), and the background strokes spread over the image.
    fg_ys = np.nonzero(labels == 0)[0]
    assert fg_ys.max() - fg_ys.min() > 50
    bg_ys, bg_xs = np.nonzero(labels == 1)
    assert np.ptp(bg_xs) > 0.5 * mask.shape[1] and np.ptp(bg_ys) > 0.5 * mask.shape[0]
    share = (labels >= 0).mean()
    assert 0.02 < share < 0.15, share


def test_correction_goes_where_the_result_is_most_wrong():
    mask = two_part_object()
    result = mask.copy()
    result[20:100, 110:125] = False  # missed the post: a foreground correction there
    result[5:15, 5:40] = True  # a smaller false positive
    line, is_fg = correction_stroke(mask, result, brush=3)
    assert is_fg
    xs, ys = line[:, 0], line[:, 1]
    assert (110 <= xs).all() and (xs < 125).all() and (20 <= ys).all() and (ys < 100).all()
    assert correction_stroke(mask, mask, brush=3) is None  # nothing wrong, nothing to correct
    # Thin slivers along the boundary are not where a user corrects.
    sliver = mask ^ cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    assert correction_stroke(mask, mask | sliver, brush=5) is None


def test_correction_never_paints_across_the_true_outline():
    # Two legs, each half missed, and the gap between them filled: missed and extra pixels touch, and
    # together the extra ones are the majority. One stroke along the whole wrong blob would paint
    # background over the legs; the correction marks only pixels of its own side.
    mask = np.zeros((120, 160), bool)
    mask[10:60, 40:120] = True  # the body
    mask[60:115, 40:60] = mask[60:115, 100:120] = True  # two legs
    result = mask.copy()
    result[60:115, 40:120] = True  # the gap between the legs filled
    result[85:115, 40:60] = result[85:115, 100:120] = False  # the legs' lower halves missed
    brush = 5
    line, is_fg = correction_stroke(mask, result, brush)
    strokes = user_strokes(mask, brush)
    fg_lines = strokes.fg + [line] if is_fg else strokes.fg
    bg_lines = strokes.bg if is_fg else strokes.bg + [line]
    raster = type(strokes)(fg_lines, bg_lines, brush).raster(mask.shape, FG, BG)
    labels = labels_for_selection(raster, FG, BG).labels
    assert not is_fg  # the gap is the largest single wrong region
    assert mask[labels == 0].all() and not mask[labels == 1].any()
