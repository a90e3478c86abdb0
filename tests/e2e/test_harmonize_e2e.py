"""Harmonize Selection... inside a real GIMP 3, talking to a real daemon."""

from __future__ import annotations

import numpy as np
import pytest

from tests.e2e.harness import SKIP_REASON, Gimp, gimp_console_command, start_daemon, temp_root

GIMP = gimp_console_command()
pytestmark = [pytest.mark.gimp, pytest.mark.skipif(GIMP is None, reason=SKIP_REASON)]

# A 120×100 layer at offset (30, 20) in a 200×160 image: warm background, a cold blue square
# pasted in the middle; a feathered elliptic selection around the square.
BUILD_IMAGE = """
image = Gimp.Image.new(200, 160, Gimp.ImageBaseType.RGB)
base = Gimp.Layer.new(image, "base", 200, 160, Gimp.ImageType.RGBA_IMAGE, 100.0, Gimp.LayerMode.NORMAL)
image.insert_layer(base, None, 0)
layer = Gimp.Layer.new(image, "composite", 120, 100, Gimp.ImageType.RGBA_IMAGE, 100.0, Gimp.LayerMode.NORMAL)
image.insert_layer(layer, None, 0)
layer.set_offsets(30, 20)
pixels = bytearray()
for y in range(100):
    for x in range(120):
        if 40 <= x < 80 and 30 <= y < 70:
            pixels += bytes((40 + x % 7, 60 + y % 5, 200, 255))
        else:
            pixels += bytes((200 + x % 40, 140 + y % 30, 60 + (x * y) % 25, 255))
buf = layer.get_buffer()
buf.set(Gegl.Rectangle.new(0, 0, 120, 100), "R'G'B'A u8", bytes(pixels))
buf.flush()
"""

DUMP = """
top = image.get_layers()[0]
ok, ox, oy = top.get_offsets()
rect = Gegl.Rectangle.new(0, 0, top.get_width(), top.get_height())
dump("result", top.get_buffer().get(rect, 1.0, "R'G'B'A u8", Gegl.AbyssPolicy.CLAMP))
dump("source", layer.get_buffer().get(Gegl.Rectangle.new(0, 0, 120, 100), 1.0, "R'G'B'A u8",
                                      Gegl.AbyssPolicy.CLAMP))
dump("mask", image.get_selection().get_buffer().get(Gegl.Rectangle.new(30, 20, 120, 100), 1.0, "Y u8",
                                                     Gegl.AbyssPolicy.NONE))
"""


@pytest.fixture(scope="module")
def daemon():
    running = start_daemon(temp_root("semantic-e2e-state-") / "state", "--idle-exit", "0")
    yield running
    running.stop()


@pytest.mark.parametrize("precision", ["U8_NON_LINEAR", "FLOAT_NON_LINEAR"])
def test_harmonize_selection_writes_new_layer(daemon, precision):
    gimp = Gimp(GIMP, temp_root("semantic-e2e-"), daemon.state_dir)
    script = BUILD_IMAGE + f"""
image.convert_precision(Gimp.Precision.{precision})
""" + """
image.select_ellipse(Gimp.ChannelOps.REPLACE, 60, 40, 60, 60)
Gimp.Selection.feather(image, 10.0)
n_before = len(image.get_layers())
status, error = run_procedure("plug-in-semantic-harmonize", image, [layer], method="statistics", strength=1.0)
""" + DUMP + """
save_result({"status": int(status), "ok": status == Gimp.PDBStatusType.SUCCESS,
             "layers_before": n_before, "layers_after": len(image.get_layers()),
             "name": top.get_name(), "offsets": [ox, oy], "size": [top.get_width(), top.get_height()],
             # value_name, not str(): PyGObject >= 3.52 (GIMP 3.2 on Debian sid) makes GEnums IntEnums,
             # whose str() is the bare number ('150'); value_name is 'GIMP_PRECISION_...' on both.
             "precision": image.get_precision().value_name})
"""
    run = gimp.run(script)
    assert run.result, run.output
    assert run.result["ok"], run.output
    assert precision in run.result["precision"]
    assert run.result["layers_after"] == run.result["layers_before"] + 1
    assert run.result["offsets"] == [30, 20] and run.result["size"] == [120, 100]
    assert "harmonized" in run.result["name"] and "statistics" in run.result["name"]
    result = run.array("result", (100, 120, 4)).astype(int)
    source = run.array("source", (100, 120, 4)).astype(int)
    mask = run.array("mask", (100, 120))
    outside, inside = mask == 0, mask == 255
    assert outside.sum() > 1000 and inside.sum() > 500
    assert (result[outside] == source[outside]).all(), "pixels outside the selection must be untouched"
    changed = np.abs(result[inside][:, :3] - source[inside][:, :3]).max(axis=1) > 0
    assert changed.mean() > 0.95, "pixels inside the selection must change"
    # The cold blue square takes on the warm background's colour: blue falls, red rises.
    square = np.zeros_like(mask, dtype=bool)
    square[30:70, 40:80] = True
    core = square & inside
    assert result[core][:, 2].mean() < source[core][:, 2].mean() - 40
    assert result[core][:, 0].mean() > source[core][:, 0].mean() + 40
    soft = (mask > 0) & (mask < 255)
    assert soft.sum() > 100, "the feathered edge must reach the plug-in as soft values"
    edge_change = np.abs(result[soft][:, :3] - source[soft][:, :3]).mean()
    inside_change = np.abs(result[inside][:, :3] - source[inside][:, :3]).mean()
    assert 0 < edge_change < inside_change


def test_harmonize_without_selection_reports_error_and_changes_nothing(daemon):
    gimp = Gimp(GIMP, temp_root("semantic-e2e-"), daemon.state_dir)
    script = BUILD_IMAGE + """
Gimp.Selection.none(image)
before = layer.get_buffer().get(Gegl.Rectangle.new(0, 0, 120, 100), 1.0, "R'G'B'A u8", Gegl.AbyssPolicy.CLAMP)
n_before = len(image.get_layers())
status, error = run_procedure("plug-in-semantic-harmonize", image, [layer], method="statistics")

after = layer.get_buffer().get(Gegl.Rectangle.new(0, 0, 120, 100), 1.0, "R'G'B'A u8", Gegl.AbyssPolicy.CLAMP)
save_result({"status": int(status), "success": status == Gimp.PDBStatusType.SUCCESS,
             "message": str(error),
             "layers_before": n_before, "layers_after": len(image.get_layers()),
             "unchanged": bytes(before) == bytes(after)})
"""
    run = gimp.run(script)
    assert run.result, run.output
    assert not run.result["success"]
    assert "selection" in run.result["message"].lower(), run.result
    assert "Traceback" not in run.result["message"]
    assert run.result["layers_after"] == run.result["layers_before"]
    assert run.result["unchanged"]
