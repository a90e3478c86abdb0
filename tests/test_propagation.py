"""Strokes, SLIC, Eq. 15 smoothing, the applications and the propagate action."""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import pytest
import torch

from core.actions.base import JobContext, ModelCache
from core.actions.propagate import CACHE_PREFIX
from core.actions.propagate import run as run_action
from core.imaging.color import rgb_to_lab
from core.models.deepprop import DeepPropConfig
from core.propagation.pipeline import PropagationOptions, propagate
from core.propagation.slic import slic
from core.propagation.smoothing import EdgeGraph, SmoothingConfig, eroded_edge_weights, smooth
from core.propagation.strokes import (
    CSS_COLORS,
    StrokePath,
    color_from_name,
    default_brush_width,
    labels_for_selection,
    labels_from_scribbles,
    parse_path_data,
    paths_from_params,
    rasterize_paths,
    read_svg_paths,
    selection_side,
)
from core.protocol import SemanticError

# --- strokes ---------------------------------------------------------------------------------------


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(
    "name, color",
    [
        ("sky #4080ff", (64, 128, 255)),
        ("#F80 hair", (255, 136, 0)),
        ("grass green", (0, 128, 0)),
        ("light blue water", (173, 216, 230)),
        ("Hair: SaddleBrown", (139, 69, 19)),
        ("fg", (255, 0, 0)),
        ("object (foreground)", (255, 0, 0)),
        ("bg 2", (0, 0, 255)),
        ("reduced", None),
        ("Path #2", None),
    ],
)
def test_color_from_name(name, color):
    assert color_from_name(name) == color


def test_css_table_is_complete_and_exact():
    assert len(CSS_COLORS) == 148
    assert CSS_COLORS["rebeccapurple"] == (102, 51, 153) and CSS_COLORS["gray"] == CSS_COLORS["grey"]


def test_rasterize_paths_brush_width_and_colors():
    paths = paths_from_params(
        [
            {"name": "a red", "color": None, "strokes": [[10, 20, 50, 20]]},
            {"name": "b", "color": "#00ff00", "strokes": [[20, 40, 20, 40]]},  # a dot, color from the tag
        ],
        offset=(5, 0),
    )
    raster = rasterize_paths(paths, 60, 80, brush_width=5)
    red = (raster[..., 0] == 255) & (raster[..., 3] == 255)
    ys, xs = np.nonzero(red)
    assert ys.min() >= 17 and ys.max() <= 23 and 3 <= ys.max() - ys.min() + 1 <= 6
    assert xs.min() >= 2 and xs.max() <= 48  # shifted by the layer offset
    assert raster[40, 15, 1] == 255  # the dot, painted around (15, 40)
    strokes = labels_from_scribbles(raster)
    assert strokes.num_classes == 2 and set(strokes.keys()) == {"#ff0000", "#00ff00"}


def test_rasterize_reports_paths_without_color_or_outside():
    with pytest.raises(SemanticError, match="'mystery' has no color"):
        rasterize_paths([StrokePath("mystery", [np.array([[1.0, 1.0], [5.0, 5.0]])], [False])], 10, 10, 3)
    with pytest.raises(SemanticError, match="outside the layer"):
        rasterize_paths(
            [StrokePath("far red", [np.array([[100.0, 100.0], [120.0, 130.0]])], [False])], 10, 10, 3
        )
    with pytest.raises(SemanticError, match="no paths"):
        rasterize_paths([], 10, 10, 3)


def test_gimp_svg_export_is_parsed(tmp_path):
    svg = tmp_path / "paths.svg"
    svg.write_text("""<?xml version="1.0" encoding="UTF-8" standalone="no"?>
<!DOCTYPE svg PUBLIC "-//W3C//DTD SVG 20010904//EN" "http://www.w3.org/TR/2001/REC-SVG-20010904/DTD/svg10.dtd">
<svg xmlns="http://www.w3.org/2000/svg" width="1.6in" height="1.2in" viewBox="0 0 160 120">
  <path id="sky #4080ff" fill="none" stroke="black" stroke-width="1"
        d="M 10.00,10.00
           C 10.00,10.00 50.00,10.00 50.00,10.00
           C 50.00,10.00 50.00,40.00 50.00,40.00 Z" />
  <path id="tree" fill="none" stroke="black" stroke-width="1" d="M 100,100 l 10,0 h 5 v -5" />
</svg>""")
    paths, size = read_svg_paths(str(svg))
    assert size == (160.0, 120.0)
    assert [p.name for p in paths] == ["sky #4080ff", "tree"]
    pts = paths[0].polylines[0]
    assert paths[0].closed == [True]
    assert np.allclose(pts[0], [10, 10]) and np.allclose(pts[-1], [50, 40])
    assert np.allclose(paths[1].polylines[0], [[100, 100], [110, 100], [115, 100], [115, 95]])
    assert paths[1].fallback_color is None  # GIMP's default black is no color


def test_path_data_curves_and_relative_commands():
    ((pts, closed),) = parse_path_data("m 0,0 c 0,10 10,10 10,0 s 10,-10 10,0", curve_steps=4)
    assert not closed and np.allclose(pts[-1], [20, 0]) and len(pts) == 9
    assert pts[2][1] == pytest.approx(7.5)  # the cubic's midpoint


def test_scribbles_merge_antialiased_edges_and_need_alpha():
    raster = np.zeros((40, 40, 4), np.uint8)
    raster[5:15, 5:15] = (255, 0, 0, 255)
    raster[25:35, 25:35] = (0, 0, 255, 255)
    raster[15, 5:9] = (250, 10, 5, 200)  # soft edge of the red stroke
    raster[0, 0] = (0, 255, 0, 40)  # nearly transparent: no stroke
    strokes = labels_from_scribbles(raster)
    assert strokes.num_classes == 2
    assert (strokes.labels[15, 5:9] == strokes.labels[10, 10]).all()
    assert strokes.labels[0, 0] == -1
    with pytest.raises(SemanticError, match="alpha"):
        labels_from_scribbles(raster[..., :3])
    with pytest.raises(SemanticError, match="no strokes"):
        labels_from_scribbles(np.zeros((5, 5, 4), np.uint8))


BLACK, WHITE = (0, 0, 0), (255, 255, 255)


def fg_bg_scribbles(fg=BLACK, bg=WHITE) -> np.ndarray:
    """A soft-brush FG stroke and BG stroke as GIMP paints them on a transparent layer: the color
    exact, the alpha falling off at the edges."""
    raster = np.zeros((40, 40, 4), np.uint8)
    raster[5:15, 5:9, :3] = fg
    raster[25:35, 30:34, :3] = bg
    raster[5:15, 5:9, 3] = 255
    raster[25:35, 30:34, 3] = 255
    raster[5:15, 9, :3], raster[5:15, 9, 3] = fg, 180  # soft edge, still a stroke
    raster[25:35, 34, :3], raster[25:35, 34, 3] = bg, 60  # fainter edge: no stroke
    return raster


def test_selection_strokes_are_the_pixels_near_fg_and_bg():
    raster = fg_bg_scribbles()
    raster[14, 5] = (30, 25, 35, 255)  # recompressed / slightly recolored: still foreground
    raster[26, 31] = (235, 240, 250, 255)
    raster[10, 6] = (128, 128, 128, 255)  # an FG stroke softly crossing a BG one: neither
    strokes = labels_for_selection(raster, BLACK, WHITE)
    assert strokes.keys() == ["#000000", "#ffffff"]  # foreground first
    labels = strokes.labels
    assert (labels[5:15, 5:10] == 0).sum() == 10 * 5 - 1 and labels[14, 5] == 0
    assert (labels[25:35, 30:34] == 1).all() and (labels[25:35, 34] == -1).all()
    assert labels[10, 6] == -1 and labels[0, 0] == -1
    # Any pair of distinct colors works, red/blue (the earlier fixed pair) included.
    red_blue = labels_for_selection(fg_bg_scribbles((255, 0, 0), (0, 0, 255)), (255, 0, 0), (0, 0, 255))
    assert red_blue.keys() == ["#ff0000", "#0000ff"]
    assert (red_blue.labels >= 0).sum() == (
        labels_for_selection(fg_bg_scribbles(), BLACK, WHITE).labels >= 0
    ).sum()


def test_selection_strokes_in_other_colors_are_reported():
    raster = fg_bg_scribbles((255, 0, 0), (0, 0, 255))  # painted red/blue ...
    with pytest.raises(SemanticError, match=r"other colors \(#ff0000, #0000ff\).*FG/BG swatches"):
        labels_for_selection(raster, BLACK, WHITE)  # ... but the colors are GIMP's defaults
    raster = fg_bg_scribbles()
    raster[0, 0:3] = (0, 200, 0, 255)  # a few stray pixels of another color are ignored
    assert labels_for_selection(raster, BLACK, WHITE).labels[0, 0] == -1
    raster[0:2, 0:10] = (0, 200, 0, 255)
    with pytest.raises(SemanticError, match="20 stroke pixels have other colors"):
        labels_for_selection(raster, BLACK, WHITE)


def test_selection_needs_distinct_fg_bg_and_both_strokes():
    raster = fg_bg_scribbles()
    with pytest.raises(SemanticError, match="are the same color \\(#808080 and #808080\\)"):
        labels_for_selection(raster, (128, 128, 128), (128, 128, 128))
    with pytest.raises(SemanticError, match="nearly the same color"):
        labels_for_selection(raster, (128, 128, 128), (140, 135, 128))
    only_fg = raster.copy()
    only_fg[25:35, 30:35, 3] = 0
    with pytest.raises(SemanticError, match="no background stroke \\(color #ffffff\\)"):
        labels_for_selection(only_fg, BLACK, WHITE)
    only_bg = raster.copy()
    only_bg[5:15, 5:10, 3] = 0
    with pytest.raises(SemanticError, match="no foreground stroke"):
        labels_for_selection(only_bg, BLACK, WHITE)
    with pytest.raises(SemanticError, match="alpha"):
        labels_for_selection(raster[..., :3], BLACK, WHITE)
    with pytest.raises(SemanticError, match="no strokes"):
        labels_for_selection(np.zeros((5, 5, 4), np.uint8), BLACK, WHITE)


def test_selection_side_and_default_brush_width():
    assert selection_side((10, 10, 10), BLACK, WHITE) == 0
    assert selection_side((250, 250, 240), BLACK, WHITE) == 1
    assert selection_side((128, 128, 128), BLACK, WHITE) is None
    assert selection_side((209, 60, 60), (255, 0, 0), (0, 0, 255)) is None  # GIMP's red color tag
    assert default_brush_width(480, 640) == 10 and default_brush_width(3000, 4000) == 60
    assert default_brush_width(40, 60) == 3  # never thinner than 3 px


# --- SLIC and smoothing ----------------------------------------------------------------------------


def test_slic_follows_edges_and_covers_the_image():
    img = np.zeros((60, 90, 3), np.float32)
    img[:, 43:] = (80, 40, -30)  # a vertical Lab edge at x = 43, off the 10-pixel grid
    result = slic(img, 54)
    assert result.labels.shape == (60, 90)
    assert set(np.unique(result.labels)) == set(range(result.count))
    assert 30 <= result.count <= 80
    left = np.unique(result.labels[:, :43])
    right = np.unique(result.labels[:, 43:])
    assert not set(left) & set(right), "no superpixel straddles the edge"


def dense_laplacian(lab: np.ndarray, sigma: float) -> np.ndarray:
    """L = D − A of Eq. 15's 4-neighbor affinities, pixel pair by pixel pair."""
    h, w = lab.shape[:2]
    lap = np.zeros((h * w, h * w))
    for y in range(h):
        for x in range(w):
            for dy, dx in ((0, 1), (1, 0)):
                if y + dy < h and x + dx < w:
                    p, q = y * w + x, (y + dy) * w + x + dx
                    a = np.exp(-np.sum((lab[y, x] - lab[y + dy, x + dx]) ** 2) / (2 * sigma**2))
                    lap[p, q] = lap[q, p] = -a
                    lap[p, p] += a
                    lap[q, q] += a
    return lap


def test_smoothing_solves_eq15():
    rng = np.random.default_rng(0)
    lab = np.zeros((30, 40, 3), np.float32)
    lab[:, 20:, 0] = 60
    lab += rng.normal(0, 4, lab.shape).astype(np.float32)  # affinities strictly between 0 and 1
    graph = EdgeGraph(lab, sigma=6.0)
    y = rng.random((30, 40, 2)).astype(np.float32)
    weights = rng.random((30, 40))
    cfg = SmoothingConfig(strength=2.0, tolerance=1e-8, max_iterations=2000)
    x, _ = smooth(graph, y, weights, cfg)
    # Residual of (W + λL) x = W y, built independently of the solver.
    a = np.diag(weights.ravel()) + 2.0 * dense_laplacian(lab, 6.0)
    residual = a @ x.reshape(-1, 2) - weights.reshape(-1, 1) * y.reshape(-1, 2)
    assert np.abs(residual).max() < 1e-4
    ones, _ = smooth(graph, np.ones((30, 40, 1), np.float32), weights, cfg)
    assert np.allclose(ones, 1, atol=1e-5)  # constants are fixed points
    loose = SmoothingConfig(strength=2.0)
    _, cold = smooth(graph, y, weights, loose)
    again, warm = smooth(graph, y, weights, loose, start=x)  # started at the answer
    assert warm == 1 < cold and np.abs(again - x).max() < 1e-4


def test_eroded_edge_weights():
    labels = np.zeros((20, 20), int)
    labels[:, 10:] = 1
    w = eroded_edge_weights(labels, 3)
    assert w[:, 7:13].max() == 0 and w[:, :5].min() == 1 and w[:, 15:].min() == 1


def test_beta_erodes_the_input_images_edges_and_phi_is_levins_local_affinity():
    from core.propagation.smoothing import image_edge_weights, local_variance

    rng = np.random.default_rng(1)
    lab = np.full((30, 40, 3), 30.0, np.float32)
    lab[:, 20:, 0] = 70  # one vertical edge
    lab += rng.normal(0, 0.5, lab.shape).astype(np.float32)
    beta = image_edge_weights(lab, 3)
    assert beta[:, 18:22].max() == 0 and beta[:, :14].min() == 1 and beta[:, 26:].min() == 1
    graph = EdgeGraph(lab)  # σ from the local variance
    var = local_variance(lab)
    assert var.min() >= 1.0 and var[:, 19:21].mean() > 100 * var[:, :10].mean()
    # Across the edge the affinity is small; along it (on either side) far larger.
    assert graph.right[:, 19].max() < 0.01
    assert graph.down[:, :15].mean() > 30 * graph.right[:, 19].mean()
    x, _ = smooth(
        graph,
        np.zeros((30, 40, 1), np.float32) + (np.arange(40) >= 20)[None, :, None],
        beta,
        SmoothingConfig(strength=5.0, tolerance=1e-8, max_iterations=4000),
    )
    assert x[:, :18].max() < 0.1 and x[:, 22:].min() > 0.9  # the step survives λ = 5


# --- applications ----------------------------------------------------------------------------------

FAST = DeepPropConfig()


def scene(h=48, w=64, seed=0):
    """Left: dark noisy gray; right: bright striped; strokes well inside each half."""
    rng = np.random.default_rng(seed)
    img = np.empty((h, w, 3), np.float32)
    img[:, : w // 2] = 0.3 + 0.05 * rng.standard_normal((h, w // 2, 1))
    stripes = 0.75 + 0.1 * np.sign(np.sin(np.arange(w - w // 2) * 1.5))
    img[:, w // 2 :] = stripes[None, :, None] * np.array([1.0, 0.9, 0.7])
    labels = np.full((h, w), -1, np.int32)
    labels[8:40, 8:12] = 0
    labels[8:40, 50:54] = 1
    return np.clip(img, 0, 1), labels


def stroke_set(labels, colors):
    from core.propagation.strokes import Strokes

    return Strokes(labels, np.array(colors, np.uint8))


def test_colorize_keeps_lightness_and_takes_stroke_colors():
    img, labels = scene()
    gray = np.repeat(img.mean(2, keepdims=True), 3, axis=2)
    strokes = stroke_set(labels, [(30, 90, 220), (230, 140, 30)])
    result, _ = propagate(gray, strokes, PropagationOptions(mode="colorize", model=FAST))
    lab_in, lab_out = rgb_to_lab(gray), rgb_to_lab(result.output)
    assert np.abs(lab_in[..., 0] - lab_out[..., 0]).max() < 2.0  # gamut clipping only
    left, right = lab_out[:, :28], lab_out[:, 36:]
    assert left[..., 2].mean() < -15 and right[..., 2].mean() > 15  # blue vs orange
    assert gray.shape == result.output.shape


def test_gamut_mapping_keeps_lightness_and_hue_and_takes_the_most_chroma():
    from core.imaging.color import lab_to_rgb
    from core.propagation.apps import ChromaScaler, lab_to_rgb_keep_lightness

    rng = np.random.default_rng(0)
    lab = np.stack([rng.uniform(2, 98, 4000), rng.uniform(-120, 120, 4000), rng.uniform(-120, 120, 4000)], 1)
    lab = lab.astype(np.float32)[None]
    inside = rgb_to_lab(rng.random((1, 500, 3)).astype(np.float32))  # colors that exist in sRGB
    out = lab_to_rgb_keep_lightness(np.concatenate([lab, inside], 1))
    np.testing.assert_allclose(out[:, 4000:], lab_to_rgb(inside), atol=1e-4)  # in gamut: untouched
    back = rgb_to_lab(out[:, :4000])
    assert np.abs(back[..., 0] - lab[..., 0]).max() < 0.5  # L kept (8-bit steps aside)
    chroma_in, chroma_out = np.hypot(*lab[0, :, 1:].T), np.hypot(*back[0, :, 1:].T)
    hue_in, hue_out = np.arctan2(lab[0, :, 2], lab[0, :, 1]), np.arctan2(back[0, :, 2], back[0, :, 1])
    hue_shift = np.angle(np.exp(1j * (hue_out - hue_in)))
    assert np.abs(hue_shift[chroma_out > 5]).max() < 0.05  # pulled straight toward gray
    assert (chroma_out <= chroma_in + 0.5).all()
    # ... and only as far as needed: 1/128 more of the original chroma leaves the gamut.
    scale = chroma_out / chroma_in
    moved = scale < 0.99
    assert moved.sum() > 1000
    flat = torch.from_numpy(lab[0, moved])
    assert not ChromaScaler(flat).in_gamut(torch.from_numpy(scale[moved] + 1 / 128).float()).any()


def test_recolor_changes_hue_where_stroked_and_keeps_texture():
    img, labels = scene()
    keep = img[labels == 0].mean(0)
    strokes = stroke_set(labels, [tuple(int(v * 255) for v in keep), (40, 200, 60)])
    result, _ = propagate(img, strokes, PropagationOptions(mode="recolor", model=FAST))
    lab_in, lab_out = rgb_to_lab(img), rgb_to_lab(result.output)
    assert np.abs(lab_out[..., 0] - lab_in[..., 0]).mean() < 2.0
    right_in, right_out = lab_in[:, 36:], lab_out[:, 36:]
    assert right_out[..., 1].mean() < right_in[..., 1].mean() - 15  # toward green (a < 0)
    assert np.abs(lab_out[:, :28] - lab_in[:, :28]).mean() < 3.0  # a stroke in its own color keeps it


def test_select_and_masks_respect_strokes():
    img, labels = scene()
    strokes = stroke_set(labels, [(0, 0, 255), (255, 0, 0)])  # left bg (blue), right fg (red)
    result, state = propagate(img, strokes, PropagationOptions(mode="select", model=FAST))
    mask = result.output
    assert mask.shape == labels.shape and 0 <= mask.min() and mask.max() <= 1
    assert (mask[labels == 1] > 0.5).all() and (mask[labels == 0] < 0.5).all()
    assert (mask[:, 36:] > 0.5).mean() > 0.95 and (mask[:, :28] < 0.5).mean() > 0.95
    masks, _ = propagate(img, strokes, PropagationOptions(mode="masks", model=FAST), state)
    assert masks.output.shape == (48, 64, 2)
    assert np.allclose(masks.output.sum(2), 1, atol=1e-3)
    assert masks.log is None  # same strokes: network reused as is


def test_select_needs_fg_and_bg_colors():
    img, labels = scene()
    with pytest.raises(SemanticError, match="other colors"):
        propagate(img, stroke_set(labels, [(0, 255, 0), (255, 0, 0)]), PropagationOptions(mode="select"))
    one = np.where(labels == 1, 0, -1).astype(np.int32)
    with pytest.raises(SemanticError, match="one stroke class"):
        propagate(img, stroke_set(one, [(255, 0, 0)]), PropagationOptions(mode="select"))


def test_incremental_update_after_adding_a_stroke_reuses_the_network():
    img, labels = scene()
    strokes = stroke_set(labels, [(0, 0, 255), (255, 0, 0)])
    first, state = propagate(img, strokes, PropagationOptions(mode="masks", model=FAST))
    vfe_before = state.model.vfe.conv2.weight.detach().clone()
    le_before = state.model.le.weight.detach().clone()
    more = labels.copy()
    more[42:46, 20:44] = 2
    second, state2 = propagate(
        img,
        stroke_set(more, [(0, 0, 255), (255, 0, 0), (0, 255, 0)]),
        PropagationOptions(mode="masks", model=FAST),
        state,
    )
    assert state2 is state and second.incremental
    assert not second.log.pretrain_errors  # no pre-training the second time
    model = state.model
    assert model.num_classes == 3
    # Training continued from the old parameters: they moved, but stay close to where they were.
    drift = (model.vfe.conv2.weight - vfe_before).norm() / vfe_before.norm()
    assert 0 < drift < 0.5
    assert torch.nn.functional.cosine_similarity(model.le.weight[:2].flatten(), le_before.flatten(), 0) > 0.5
    assert first.timings["learn"] > 0


def test_strokes_redrawn_elsewhere_start_learning_over():
    img, labels = scene()
    colors = [(0, 0, 255), (255, 0, 0)]
    _, state = propagate(img, stroke_set(labels, colors), PropagationOptions(mode="masks", model=FAST))
    extended = labels.copy()
    extended[40:44, 8:12] = 0  # one path made longer: the class keeps what it learned
    assert state.surviving_rows(["#0000ff", "#ff0000"], extended) == [0, 1]
    swapped = np.where(labels >= 0, 1 - labels, -1)  # the same colors on the other sides
    assert state.surviving_rows(["#0000ff", "#ff0000"], swapped) == [None, None]
    result, _ = propagate(
        img, stroke_set(swapped, colors), PropagationOptions(mode="masks", model=FAST), state
    )
    assert not result.incremental and result.log.pretrain_errors  # Algorithm 1 from scratch
    assert result.output[:, :24, 1].mean() > 0.9 and result.output[:, 40:, 0].mean() > 0.9


# --- the action ------------------------------------------------------------------------------------


def test_action_caches_state_per_image_and_rasterizes_paths():
    img, labels = scene()
    image = (img * 255).astype(np.uint8)
    alpha = np.full(image.shape[:2] + (1,), 200, np.uint8)
    rgba = np.concatenate([image, alpha], axis=2)
    ctx = JobContext(torch.device("cpu"), ModelCache())
    paths = [
        {"name": "left blue", "color": None, "strokes": [[10, 8, 10, 40]]},
        {"name": "right", "color": "#ff8000", "strokes": [[52, 8, 52, 40]]},
    ]
    params = {"mode": "colorize", "paths": paths, "brush_width": 4, "image_key": "img-1"}
    out = run_action({"image": rgba}, params, ctx)
    assert out["image"].shape == rgba.shape and out["image"].dtype == np.uint8
    assert (out["image"][..., 3] == 200).all()
    assert [tuple(c) for c in out["class_colors"].reshape(-1, 3)] == [(0, 0, 255), (255, 128, 0)]
    slot = ctx.models.peek(CACHE_PREFIX + "img-1")
    state = slot.state
    paths[1]["strokes"] = [[50, 8, 54, 40]]  # edit one path
    out2 = run_action({"image": rgba}, dict(params, mode="masks"), ctx)
    assert slot.state is state and out2["masks"].shape == (48, 64, 2)
    assert state.class_keys == ["#0000ff", "#ff8000"]
    with pytest.raises(SemanticError, match="No strokes were sent"):
        run_action({"image": rgba}, {"mode": "masks"}, ctx)


def test_cancelled_update_keeps_the_previous_network():
    img, labels = scene()
    image = (img * 255).astype(np.uint8)
    ctx = JobContext(torch.device("cpu"), ModelCache())
    two = [{"name": "a blue", "strokes": [[10, 8, 10, 40]]}, {"name": "b red", "strokes": [[52, 8, 52, 40]]}]
    run_action({"image": image}, {"mode": "masks", "paths": two, "image_key": "k"}, ctx)
    state = ctx.models.peek(CACHE_PREFIX + "k").state

    def cancel_when_training(fraction, text):
        if text.startswith("Training"):
            ctx.cancel_event.set()

    ctx.progress = cancel_when_training
    three = [*two, {"name": "c lime", "strokes": [[30, 44, 40, 44]]}]
    with pytest.raises(SemanticError) as err:
        run_action({"image": image}, {"mode": "masks", "paths": three, "image_key": "k"}, ctx)
    assert err.value.code.value == "cancelled"
    assert state.class_keys == ["#0000ff", "#ff0000"] and state.model.num_classes == 2
    ctx.cancel_event.clear()
    ctx.progress = lambda fraction, text: None
    out = run_action({"image": image}, {"mode": "masks", "paths": three, "image_key": "k"}, ctx)
    assert out["masks"].shape[2] == 3 and state.model.num_classes == 3


def test_action_selects_by_default_from_fg_bg_scribbles_soft_or_hard():
    img, labels = scene()
    image = (img * 255).astype(np.uint8)
    scribbles = np.zeros(image.shape[:2] + (4,), np.uint8)
    scribbles[labels == 1] = (20, 20, 20, 255)  # the right part in (nearly) black: foreground
    scribbles[labels == 0] = (255, 255, 255, 255)
    ctx = JobContext(torch.device("cpu"), ModelCache())
    params = {"fg_color": "#000000", "bg_color": "white", "image_key": "gimp:1:2"}
    soft = run_action({"image": image, "strokes": scribbles}, params, ctx)  # no mode: select
    assert set(soft) == {"mask", "class_colors"} and soft["mask"].shape == (48, 64, 1)
    assert [tuple(c) for c in soft["class_colors"].reshape(-1, 3)] == [BLACK, WHITE]
    mask = soft["mask"][..., 0]
    assert (mask[:, 36:] > 127).mean() > 0.95 and (mask[:, :28] < 128).mean() > 0.95
    hard = run_action({"image": image, "strokes": scribbles}, dict(params, hard_selection=True), ctx)
    assert set(np.unique(hard["mask"])) <= {0, 255}
    assert ((hard["mask"] == 255) == (soft["mask"] >= 128)).mean() > 0.99  # the soft one at 0.5, ±rounding
    only_fg = scribbles.copy()
    only_fg[labels == 0] = 0
    with pytest.raises(SemanticError, match="no background stroke"):
        run_action({"image": image, "strokes": only_fg}, params, ctx)


def test_path_brush_width_defaults_to_a_fraction_of_the_short_side():
    from core.actions.propagate import read_strokes

    path = [{"name": "fg", "strokes": [[10, 100, 290, 100]]}, {"name": "bg", "strokes": [[10, 20, 290, 20]]}]
    for height, width, brush in ((200, 300, 0), (200, 300, None), (200, 300, 9.0)):
        params = {"paths": path} if brush is None else {"paths": path, "brush_width": brush}
        strokes = read_strokes({}, params, height, width, (255, 0, 0), (0, 0, 255), "select")
        thickness = (strokes.labels[:, 150] == 0).sum()
        assert thickness == (9 if brush else 4), (brush, thickness)  # 2 % of 200 px = 4 px
    with pytest.raises(SemanticError, match="0 \\(automatic\\) or between 1 and 500"):
        read_strokes({}, {"paths": path, "brush_width": 0.5}, 200, 300, (255, 0, 0), (0, 0, 255))


def test_select_paths_must_be_fg_or_bg():
    from core.actions.propagate import read_strokes

    paths = [
        {"name": "fg", "strokes": [[10, 10, 50, 10]]},
        {"name": "Path #1", "color": "#d13c3c", "strokes": [[10, 30, 50, 30]]},  # GIMP's red color tag
    ]
    with pytest.raises(SemanticError, match="Path 'Path #1' has the color #d13c3c.*Name it 'fg' or 'bg'"):
        read_strokes({}, {"paths": paths}, 40, 60, BLACK, WHITE, "select")
    paths[1]["name"] = "background"
    strokes = read_strokes({}, {"paths": paths}, 40, 60, BLACK, WHITE, "select")
    assert strokes.keys() == ["#000000", "#ffffff"] and (strokes.labels[30] == 1).sum() > 30


def test_cli_action_and_plugin_default_to_the_same_mode():
    import argparse
    import re
    from pathlib import Path

    from core.commands import propagate as command
    from core.propagation.apps import DEFAULT_MODE

    parser = argparse.ArgumentParser()
    command.register(parser.add_subparsers())
    args = parser.parse_args(["propagate", "photo.png", "--strokes", "s.png", "-o", "out.png"])
    assert args.mode == DEFAULT_MODE == "select" and not args.hard_selection and args.brush_width == 0
    # The plug-in runs in GIMP's Python (no numpy, no core): its default is checked in its source here
    # and by the GIMP e2e test that runs it without a mode.
    source = (Path(__file__).parents[1] / "plug-ins/gimp-semantic/proc_propagate.py").read_text()
    assert re.search(r'^DEFAULT_MODE = "(\w+)"', source, re.M).group(1) == DEFAULT_MODE
    from core.propagation.pipeline import CONFIGS, DEFAULT_CONFIG

    assert args.config == DEFAULT_CONFIG and args.smoothing is None
    assert re.search(r'^DEFAULT_METHOD = "(\w+)"', source, re.M).group(1) == DEFAULT_CONFIG
    listed = re.search(r"^METHODS = \((.*?)^\)", source, re.M | re.S).group(1)
    assert sorted(re.findall(r'^    \("(\w+)"', listed, re.M)) == sorted(CONFIGS)
    # The menu says which one is the default.
    assert re.search(rf'\("{DEFAULT_CONFIG}", "[^"]*default', listed)


def test_semantic_features_of_a_photo():
    from pathlib import Path

    from core.imaging.io import load_image, to_float
    from core.models.efficientnet_lite import load_pretrained
    from core.propagation.semantic import SemanticConfig, semantic_features

    photo = to_float(load_image(Path(__file__).resolve().parents[1] / "core/demo/photos/chelsea.jpg"))[..., :3]
    photo = photo[::4, ::4]
    backbone = load_pretrained()
    cfg = SemanticConfig(channels=6, max_side=128)
    features = semantic_features(photo, backbone, cfg)
    assert features.shape == (*photo.shape[:2], 6) and features.dtype == np.float32
    assert np.isfinite(features).all()
    np.testing.assert_array_equal(features, semantic_features(photo, backbone, cfg))  # deterministic
    spread = features.reshape(-1, 6).std(0)
    assert 0.5 < spread[0] < 1.5 and (np.diff(spread) <= 1e-3).all()  # principal components in order
    # A gray image (3 equal channels or 1) and a tiny one (fewer grid cells than channels) work too.
    gray = np.repeat(photo.mean(2, keepdims=True), 3, axis=2)
    assert semantic_features(gray[..., :1], backbone, cfg).shape[2] == 6
    tiny = semantic_features(photo[:10, :12], backbone, SemanticConfig(channels=8))
    assert tiny.shape == (10, 12, 8) and np.isfinite(tiny).all()


def test_strokes_are_hard_constraints_of_the_post_processing():
    img, labels = scene()
    strokes = stroke_set(labels, [(0, 0, 255), (255, 0, 0)])
    # A stroke of the background class inside the bright half: the network, fitting both classes by
    # appearance, cannot reproduce it, the constraint does.
    labels = labels.copy()
    labels[20:24, 40:46] = 0
    strokes = stroke_set(labels, [(0, 0, 255), (255, 0, 0)])
    hard = SmoothingConfig(stroke_weight=100.0, data_weight=0.1)
    result, _ = propagate(img, strokes, PropagationOptions(mode="select", model=FAST, smoothing=hard))
    mask = result.output
    assert (mask[labels == 1] > 0.95).all() and (mask[labels == 0] < 0.05).all()
    assert (mask[:, :28] < 0.5).mean() > 0.95
    assert np.abs(result.probabilities.sum(2) - 1).max() < 1e-4  # the raw estimate is returned as is
    # The paper's post-processing holds stroke pixels only as firmly as the estimate there.
    paper, _ = propagate(img, strokes, PropagationOptions(mode="select", model=FAST))
    assert not ((paper.output[labels == 1] > 0.95).all() and (paper.output[labels == 0] < 0.05).all())


def test_colorize_in_luma_keeps_the_gray_value_as_luma():
    img, labels = scene()
    gray = np.repeat(img.mean(2, keepdims=True), 3, axis=2)
    strokes = stroke_set(labels, [(30, 90, 220), (230, 140, 30)])
    options = PropagationOptions(mode="colorize", model=FAST, color_space="luma")
    result, _ = propagate(gray, strokes, options)
    luma = result.output @ np.array([0.299, 0.587, 0.114], np.float32)
    assert np.abs(luma - gray[..., 0]).max() < 2e-3  # out-of-gamut chroma shrinks, the luma stays
    assert ((result.output <= 1e-6) | (result.output >= 1 - 1e-6)).any()  # ... up to the gamut's edge
    lab = rgb_to_lab(result.output)
    assert lab[:, :28, 2].mean() < -15 and lab[:, 36:, 2].mean() > 15  # blue vs orange


def test_named_configurations():
    from core.propagation.pipeline import CONFIGS, configured

    paper = configured("select", "paper", seed=3)
    assert paper.model == DeepPropConfig() and paper.smoothing == SmoothingConfig() and paper.seed == 3
    assert paper.color_space == "lab" and paper.model.semantic_channels == 0
    assert set(CONFIGS) >= {"paper", "semantic"}
    assert configured("select").model.semantic_channels > 0  # the default adds the semantic features
    with pytest.raises(SemanticError, match="Unknown DeepProp configuration"):
        configured("select", "best")


def test_default_configuration_fills_regions_up_to_the_frame():
    # The GIMP e2e masks scene: strokes stop 14 px short of the top and bottom. The backbone's zero
    # padding once made the top rows' features unlike the rest of their region (wrong class there).
    from core.propagation.pipeline import configured

    h, w = 100, 140
    y, x = np.mgrid[0:h, 0:w]
    gray = (70 + (x * 7 + y * 13) % 23) / 255
    bright = (170 + 30 * ((x // 3) % 2)) / 255
    img = np.where((x < 70)[..., None], gray[..., None], np.stack([bright, bright - 5 / 255, bright - 10 / 255], 2))
    labels = np.full((h, w), -1, np.int32)
    labels[14:94, 116:121] = 0  # the class order of the e2e scene's scribble layer: blue, then red
    labels[14:94, 26:31] = 1
    result, _ = propagate(img.astype(np.float32), stroke_set(labels, [(0, 0, 255), (255, 0, 0)]), configured("masks"))
    red = result.output[..., 1]
    assert (red[:14, :50] > 0.5).all() and (red[-6:, :50] > 0.5).all()  # the bands off the strokes
    assert (red[:, :60] > 0.5).mean() > 0.98 and (red[:, 80:] < 0.5).mean() > 0.98


def test_stroke_prior_reweights_the_estimate_by_the_classes_stroke_shares():
    from dataclasses import replace

    img, labels = scene()
    labels = labels.copy()
    labels[8:40, 50:54] = -1
    labels[8:40, 46:58] = 1  # class 1 has 3× class 0's stroke pixels
    strokes = stroke_set(labels, [(0, 0, 255), (255, 0, 0)])
    plain, _ = propagate(img, strokes, PropagationOptions(mode="masks", model=FAST))
    model = replace(FAST, stroke_prior=1.0)
    weighted, _ = propagate(img, strokes, PropagationOptions(mode="masks", model=model))
    expected = plain.probabilities * np.array([0.5, 1.5], np.float32)  # share × classes
    expected /= expected.sum(2, keepdims=True)
    np.testing.assert_allclose(weighted.probabilities, expected, atol=1e-5)


def test_a_correction_changes_the_selection_only_near_the_edit():
    # Two bright bars alike on a dark noisy ground; a background stroke on the right bar deselects it.
    # The previous selection also held a patch of ground far from that stroke (as if an earlier round
    # got it wrong there): the correction does not touch it, only --config semantic's local rule
    # keeps it, and the result is the state's new previous selection.
    rng = np.random.default_rng(0)
    img = (0.25 + 0.04 * rng.standard_normal((48, 72, 1))).repeat(3, 2).astype(np.float32)
    img[6:42, 10:22] = img[6:42, 50:62] = (0.85, 0.8, 0.6)
    labels = np.full((48, 72), -1, np.int32)
    labels[10:38, 14:18] = 0  # foreground (red) on the left bar
    labels[2:4, 4:68] = labels[44:46, 4:68] = labels[8:40, 34:38] = 1  # background (blue) around
    colors = [(255, 0, 0), (0, 0, 255)]
    options = PropagationOptions(mode="select", model=FAST, fg=colors[0], bg=colors[1], local_corrections=True)
    first, state = propagate(img, stroke_set(labels, colors), options)
    assert (first.output[6:42, 10:22] > 0.5).mean() > 0.95 and (first.output[20:30, 25:31] < 0.5).all()
    state.last_selection = first.output.copy()
    state.last_selection[20:30, 25:31] = 1.0
    corrected_labels = labels.copy()
    corrected_labels[10:38, 54:58] = 1  # the correction: the right bar is background
    for local in (True, False):
        second, after = propagate(
            img, stroke_set(corrected_labels, colors), replace(options, local_corrections=local), copy.deepcopy(state)
        )
        assert second.incremental
        assert (second.output[6:42, 50:62] < 0.5).mean() > 0.9
        assert (second.output[6:42, 10:22] > 0.5).mean() > 0.95
        assert (second.output[20:30, 25:31] > 0.5).all() == local
        assert after.last_selection is second.output
