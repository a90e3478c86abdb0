"""Propagate Path Strokes... inside a real GIMP 3, talking to a real daemon."""

from __future__ import annotations

import os

import numpy as np
import pytest

from core.imaging.color import rgb_to_lab
from tests.e2e.harness import SKIP_REASON, Gimp, gimp_console_command, start_daemon, temp_root

GIMP = gimp_console_command()
pytestmark = [pytest.mark.gimp, pytest.mark.skipif(GIMP is None, reason=SKIP_REASON)]

# A 140×100 photo-like layer at offset (10, 6) in a 160×120 RGB image: a gray textured left part and a
# brighter striped right part (x ≥ 70). Two paths: one in each part, named with their colors.
BUILD_IMAGE = """
image = Gimp.Image.new(160, 120, Gimp.ImageBaseType.RGB)
layer = Gimp.Layer.new(image, "photo", 140, 100, Gimp.ImageType.RGBA_IMAGE, 100.0, Gimp.LayerMode.NORMAL)
image.insert_layer(layer, None, 0)
layer.set_offsets(10, 6)
pixels = bytearray()
for y in range(100):
    for x in range(140):
        if x < 70:
            v = 70 + (x * 7 + y * 13) % 23
            pixels += bytes((v, v, v, 255))
        else:
            v = 170 + 30 * ((x // 3) % 2)
            pixels += bytes((v, v - 5, v - 10, 255))
buf = layer.get_buffer()
buf.set(Gegl.Rectangle.new(0, 0, 140, 100), "R'G'B'A u8", bytes(pixels))
buf.flush()
def add_path(name, points):
    p = Gimp.Path.new(image, name)
    image.insert_path(p, None, 0)
    flat = []
    for x, y in points:
        flat += [x, y, x, y, x, y]
    p.stroke_new_from_points(Gimp.PathStrokeType.BEZIER, flat, False)
    return p
"""


def call_procedure(args: str) -> str:
    return f"""
proc = Gimp.get_pdb().lookup_procedure("plug-in-semantic-propagate-paths")
cfg = proc.create_config()
cfg.set_property("run-mode", Gimp.RunMode.NONINTERACTIVE)
cfg.set_property("image", image)
cfg.set_core_object_array("drawables", [layer])
{args}
res = proc.run(cfg)
status = res.index(0)
error = res.index(1) if res.length() > 1 else None
message = error.message if error is not None and hasattr(error, "message") else str(error)
"""


@pytest.fixture(scope="module")
def daemon():
    # One compute thread: the test machines are shared, and oversubscribed cores slow training ~10×.
    env = dict(os.environ, OMP_NUM_THREADS="1")
    running = start_daemon(temp_root("semantic-e2e-state-") / "state", "--idle-exit", "0", env=env)
    yield running
    running.stop()


def test_two_paths_colorize_into_a_new_layer(daemon):
    gimp = Gimp(GIMP, temp_root("semantic-e2e-"), daemon.state_dir)
    script = (
        BUILD_IMAGE
        + """
add_path("rock #2060ff", [(30, 20), (40, 50), (45, 85)])
add_path("sand orange", [(110, 20), (120, 50), (130, 85)])
n_before = len(image.get_layers())
"""
        + call_procedure('cfg.set_property("mode", "colorize"); cfg.set_property("brush-width", 5.0)')
        + """
top = image.get_layers()[0]
ok, ox, oy = top.get_offsets()
rect = Gegl.Rectangle.new(0, 0, 140, 100)
with open(RESULT_PATH + ".result", "wb") as f:
    f.write(top.get_buffer().get(rect, 1.0, "R'G'B'A u8", Gegl.AbyssPolicy.CLAMP))
with open(RESULT_PATH + ".source", "wb") as f:
    f.write(layer.get_buffer().get(rect, 1.0, "R'G'B'A u8", Gegl.AbyssPolicy.CLAMP))
save_result({"ok": status == Gimp.PDBStatusType.SUCCESS, "message": message,
             "layers_before": n_before, "layers_after": len(image.get_layers()),
             "name": top.get_name(), "offsets": [ox, oy], "size": [top.get_width(), top.get_height()]})
"""
    )
    run = gimp.run(script, timeout=600)
    assert run.result, run.output
    assert run.result["ok"], run.result["message"] + run.output[-2000:]
    assert run.result["layers_after"] == run.result["layers_before"] + 1
    assert run.result["offsets"] == [10, 6] and run.result["size"] == [140, 100]
    assert "colorized" in run.result["name"]
    stem = str(next(gimp.root.glob("result-*.json.result")))[: -len(".result")]
    result = np.fromfile(stem + ".result", np.uint8).reshape(100, 140, 4)
    source = np.fromfile(stem + ".source", np.uint8).reshape(100, 140, 4)
    lab_out = rgb_to_lab(result[..., :3] / 255.0)
    lab_in = rgb_to_lab(source[..., :3] / 255.0)
    assert np.abs(lab_out[..., 0] - lab_in[..., 0]).mean() < 3.0, "colorize keeps the lightness"
    left, right = lab_out[10:90, 5:60], lab_out[10:90, 80:135]
    assert left[..., 2].mean() < -15, "the left part turns blue (b < 0)"
    assert right[..., 1].mean() > 5 and right[..., 2].mean() > 15, "the right part turns orange"
    assert (result[..., 3] == 255).all()


def test_select_mode_sets_the_selection(daemon):
    gimp = Gimp(GIMP, temp_root("semantic-e2e-"), daemon.state_dir)
    script = (
        BUILD_IMAGE
        + """
add_path("fg", [(110, 20), (120, 50), (130, 85)])
add_path("bg", [(30, 20), (40, 50), (45, 85)])
n_channels = len(image.get_channels())
"""
        + call_procedure('cfg.set_property("mode", "select")')
        + """
with open(RESULT_PATH + ".mask", "wb") as f:
    f.write(image.get_selection().get_buffer().get(Gegl.Rectangle.new(10, 6, 140, 100), 1.0, "Y u8",
                                                   Gegl.AbyssPolicy.NONE))
save_result({"ok": status == Gimp.PDBStatusType.SUCCESS, "message": message,
             "channels_added": len(image.get_channels()) - n_channels})
"""
    )
    run = gimp.run(script, timeout=600)
    assert run.result, run.output
    assert run.result["ok"], run.result["message"] + run.output[-2000:]
    assert run.result["channels_added"] == 1
    stem = str(next(gimp.root.glob("result-*.json.mask")))[: -len(".mask")]
    mask = np.fromfile(stem + ".mask", np.uint8).reshape(100, 140)
    assert (mask[:, 80:] > 127).mean() > 0.95 and (mask[:, :60] < 128).mean() > 0.95


@pytest.mark.parametrize(
    "paths, expected",
    [
        ([], "no paths"),
        ([("rock #2060ff", [(30, 20), (40, 80)])], "one stroke class"),
        ([("rock #2060ff", [(30, 20), (40, 80)]), ("mystery", [(110, 20), (120, 80)])], "mystery"),
        (
            [("rock #2060ff", [(30, 20), (40, 80)]), ("far red", [(400, 300), (420, 330)])],
            "outside the layer",
        ),
    ],
)
def test_bad_paths_report_and_change_nothing(daemon, paths, expected):
    gimp = Gimp(GIMP, temp_root("semantic-e2e-"), daemon.state_dir)
    adds = "\n".join(f"add_path({name!r}, {pts!r})" for name, pts in paths)
    script = (
        BUILD_IMAGE
        + adds
        + """
before = layer.get_buffer().get(Gegl.Rectangle.new(0, 0, 140, 100), 1.0, "R'G'B'A u8", Gegl.AbyssPolicy.CLAMP)
n_before, c_before = len(image.get_layers()), len(image.get_channels())
"""
        + call_procedure('cfg.set_property("mode", "colorize")')
        + """
after = layer.get_buffer().get(Gegl.Rectangle.new(0, 0, 140, 100), 1.0, "R'G'B'A u8", Gegl.AbyssPolicy.CLAMP)
save_result({"success": status == Gimp.PDBStatusType.SUCCESS, "message": message,
             "unchanged": bytes(before) == bytes(after) and len(image.get_layers()) == n_before
                          and len(image.get_channels()) == c_before})
"""
    )
    run = gimp.run(script, timeout=600)
    assert run.result, run.output
    assert not run.result["success"]
    assert expected in run.result["message"].lower(), run.result
    assert "Traceback" not in run.result["message"]
    assert run.result["unchanged"]


def test_scribble_layer_masks_become_channels(daemon):
    gimp = Gimp(GIMP, temp_root("semantic-e2e-"), daemon.state_dir)
    script = (
        BUILD_IMAGE
        + """
scribbles = Gimp.Layer.new(image, "scribbles", 160, 120, Gimp.ImageType.RGBA_IMAGE, 100.0,
                           Gimp.LayerMode.NORMAL)
image.insert_layer(scribbles, None, 0)
paint = bytearray(160 * 120 * 4)
for y in range(20, 100):
    for x in list(range(36, 41)) + list(range(126, 131)):
        i = (y * 160 + x) * 4
        paint[i:i + 4] = bytes((255, 0, 0, 255)) if x < 80 else bytes((0, 0, 255, 255))
sbuf = scribbles.get_buffer()
sbuf.set(Gegl.Rectangle.new(0, 0, 160, 120), "R'G'B'A u8", bytes(paint))
sbuf.flush()
n_channels = len(image.get_channels())
proc = Gimp.get_pdb().lookup_procedure("plug-in-semantic-propagate-scribbles")
cfg = proc.create_config()
cfg.set_property("run-mode", Gimp.RunMode.NONINTERACTIVE)
cfg.set_property("image", image)
cfg.set_core_object_array("drawables", [layer])
cfg.set_property("mode", "masks")
res = proc.run(cfg)
status = res.index(0)
error = res.index(1) if res.length() > 1 else None
message = error.message if error is not None and hasattr(error, "message") else str(error)
names = [c.get_name() for c in image.get_channels()]
for c in image.get_channels():
    with open(RESULT_PATH + "." + c.get_name().split("#")[-1], "wb") as f:
        f.write(c.get_buffer().get(Gegl.Rectangle.new(10, 6, 140, 100), 1.0, "Y u8", Gegl.AbyssPolicy.NONE))
save_result({"ok": status == Gimp.PDBStatusType.SUCCESS, "message": message, "names": names,
             "channels_added": len(image.get_channels()) - n_channels})
"""
    )
    run = gimp.run(script, timeout=600)
    assert run.result, run.output
    assert run.result["ok"], run.result["message"] + run.output[-2000:]
    assert run.result["channels_added"] == 2
    assert sorted(run.result["names"]) == ["propagated #0000ff", "propagated #ff0000"]
    stem = str(next(gimp.root.glob("result-*.json.ff0000")))[: -len(".ff0000")]
    red = np.fromfile(stem + ".ff0000", np.uint8).reshape(100, 140)
    blue = np.fromfile(stem + ".0000ff", np.uint8).reshape(100, 140)
    assert (red[:, :60] > 127).mean() > 0.95 and (red[:, 80:] < 128).mean() > 0.95
    assert (blue[:, 80:] > 127).mean() > 0.95


# Scribbles painted the way a user paints them: GIMP's paintbrush with a soft round brush (antialiased
# edges), the foreground color on the object (the bright right part, image x ≥ 80), then the colors
# swapped (X in GIMP) and the background color on the gray left part.
PAINT_SCRIBBLES = """
scribbles = Gimp.Layer.new(image, "scribbles", 160, 120, Gimp.ImageType.RGBA_IMAGE, 100.0,
                           Gimp.LayerMode.NORMAL)
image.insert_layer(scribbles, None, 0)
brush = Gimp.Brush.new("e2e soft round")
brush.set_shape(Gimp.BrushGeneratedShape.CIRCLE)
brush.set_radius(4.0)
brush.set_hardness(0.5)
Gimp.context_set_brush(brush)
Gimp.context_set_brush_size(8.0)
Gimp.paintbrush_default(scribbles, [115.0, 20.0, 125.0, 60.0, 135.0, 95.0])
Gimp.paintbrush_default(scribbles, [95.0, 40.0, 140.0, 45.0])
Gimp.context_swap_colors()
Gimp.paintbrush_default(scribbles, [35.0, 20.0, 45.0, 60.0, 50.0, 95.0])
Gimp.paintbrush_default(scribbles, [20.0, 80.0, 65.0, 75.0])
Gimp.context_swap_colors()
painted = scribbles.get_buffer().get(Gegl.Rectangle.new(0, 0, 160, 120), 1.0, "R'G'B'A u8",
                                     Gegl.AbyssPolicy.NONE)
"""


@pytest.mark.parametrize(
    "paint_fg, paint_bg, context_after, properties",
    [
        # GIMP's default swatches (black/white) and every other setting left at its default.
        (None, None, None, ""),
        # A non-default pair, with a hard selection.
        ("#2a7f3c", "#d0a020", None, 'cfg.set_property("hard-selection", True)'),
        # The earlier behaviour: red/blue strokes with the typed colors, whatever the swatches are.
        ("#ff0000", "#0000ff", "default", 'cfg.set_property("stroke-colors", "typed")'),
    ],
    ids=["default-swatches", "custom-swatches-hard", "typed-red-blue"],
)
def test_select_from_scribbles_painted_with_the_fg_bg_colors(daemon, paint_fg, paint_bg, context_after, properties):
    gimp = Gimp(GIMP, temp_root("semantic-e2e-"), daemon.state_dir)
    set_colors = "Gimp.context_set_default_colors()\n"
    if paint_fg:
        set_colors += f"Gimp.context_set_foreground(Gegl.Color.new({paint_fg!r}))\n"
        set_colors += f"Gimp.context_set_background(Gegl.Color.new({paint_bg!r}))\n"
    after = "Gimp.context_set_default_colors()\n" if context_after == "default" else ""
    script = (
        BUILD_IMAGE
        + set_colors
        + PAINT_SCRIBBLES
        + after
        + """
n_channels = len(image.get_channels())
proc = Gimp.get_pdb().lookup_procedure("plug-in-semantic-propagate-scribbles")
cfg = proc.create_config()
cfg.set_property("run-mode", Gimp.RunMode.NONINTERACTIVE)
cfg.set_property("image", image)
cfg.set_core_object_array("drawables", [layer])
"""
        + properties
        + """
res = proc.run(cfg)
status = res.index(0)
error = res.index(1) if res.length() > 1 else None
message = error.message if error is not None and hasattr(error, "message") else str(error)
dump("painted", bytes(painted))
dump("mask", image.get_selection().get_buffer().get(Gegl.Rectangle.new(10, 6, 140, 100), 1.0, "Y u8",
                                                     Gegl.AbyssPolicy.NONE))
save_result({"ok": status == Gimp.PDBStatusType.SUCCESS, "message": message,
             "channels_added": len(image.get_channels()) - n_channels})
"""
    )
    run = gimp.run(script, timeout=600)
    assert run.result, run.output
    assert run.result["ok"], run.result["message"] + run.output[-2000:]
    assert run.result["channels_added"] == 1
    painted = run.array("painted", (120, 160, 4))
    fg = bytes.fromhex((paint_fg or "#000000")[1:])
    strokes = painted[..., 3] > 0
    soft_edges = strokes & (painted[..., 3] < 255)
    assert soft_edges.sum() > 50, "the brush is antialiased: its edges are partly transparent"
    assert (painted[strokes][:, :3] == np.frombuffer(fg, np.uint8)).all(axis=1).mean() > 0.3
    mask = run.array("mask", (100, 140))
    assert (mask[:, 80:] > 127).mean() > 0.95 and (mask[:, :60] < 128).mean() > 0.95
    if "hard-selection" in properties:
        assert set(np.unique(mask)) <= {0, 255}


@pytest.mark.parametrize("gray", [False, True], ids=["rgb", "grayscale"])
def test_fg_equal_to_bg_is_a_clear_error_and_changes_nothing(daemon, gray):
    gimp = Gimp(GIMP, temp_root("semantic-e2e-"), daemon.state_dir)
    # In a grayscale image red (#ff0000) paints gray #828282 (babl's Y', as GIMP's own fill does): the
    # two swatches differ, but the strokes would not.
    colors = ("#ff0000", "#828282") if gray else ("#808080", "#808080")
    script = (
        BUILD_IMAGE
        + ("image.convert_grayscale()\n" if gray else "")
        + f"""
Gimp.context_set_foreground(Gegl.Color.new({colors[0]!r}))
Gimp.context_set_background(Gegl.Color.new({colors[1]!r}))
"""
        + PAINT_SCRIBBLES.replace("RGBA_IMAGE", "GRAYA_IMAGE" if gray else "RGBA_IMAGE")
        + """
n_layers, n_channels = len(image.get_layers()), len(image.get_channels())
status, message = run_procedure("plug-in-semantic-propagate-scribbles", image, [layer])
_, non_empty, *_ = Gimp.Selection.bounds(image)
save_result({"success": status == Gimp.PDBStatusType.SUCCESS, "message": message,
             "unchanged": len(image.get_layers()) == n_layers and len(image.get_channels()) == n_channels
                          and not non_empty})
"""
    )
    run = gimp.run(script, timeout=600)
    assert run.result, run.output
    assert not run.result["success"]
    message = run.result["message"]
    assert "foreground and background colors are both" in message and "Press D" in message, message
    assert ("grayscale" in message) == gray
    assert run.result["unchanged"]
