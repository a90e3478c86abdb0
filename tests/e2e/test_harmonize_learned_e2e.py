"""Harmonize Selection... with each learned method inside a real GIMP 3, talking to a real daemon that loads
the committed weights: the default learned colour transform and the paper's Deep Image Harmonization."""

from __future__ import annotations

import numpy as np
import pytest

from core.actions.harmonize import DEFAULT_METHOD
from core.harmonization.deep import DEFAULT_WEIGHTS as DIH_WEIGHTS
from core.harmonization.transform import DEFAULT_WEIGHTS as TRANSFORM_WEIGHTS
from tests.e2e.harness import SKIP_REASON, Gimp, gimp_console_command, start_daemon, temp_root

GIMP = gimp_console_command()
pytestmark = [pytest.mark.gimp, pytest.mark.skipif(GIMP is None, reason=SKIP_REASON)]
METHOD_WEIGHTS = {"transform": TRANSFORM_WEIGHTS, "dih": DIH_WEIGHTS}

# A 160×120 layer at offset (20, 10) in a 200×150 image: a warm, textured background and a cold
# blue-grey square pasted in the middle; a feathered rectangular selection around the square.
BUILD_IMAGE = """
image = Gimp.Image.new(200, 150, Gimp.ImageBaseType.RGB)
base = Gimp.Layer.new(image, "base", 200, 150, Gimp.ImageType.RGBA_IMAGE, 100.0, Gimp.LayerMode.NORMAL)
image.insert_layer(base, None, 0)
layer = Gimp.Layer.new(image, "composite", 160, 120, Gimp.ImageType.RGBA_IMAGE, 100.0, Gimp.LayerMode.NORMAL)
image.insert_layer(layer, None, 0)
layer.set_offsets(20, 10)
pixels = bytearray()
for y in range(120):
    for x in range(160):
        if 50 <= x < 110 and 30 <= y < 90:
            pixels += bytes((30 + (x * 3) % 20, 60 + (y * 7) % 20, 170 + (x + y) % 30, 255))
        else:
            pixels += bytes((190 + (x * 5) % 40, 130 + (y * 3) % 30, 70 + (x * y) % 25, 255))
buf = layer.get_buffer()
buf.set(Gegl.Rectangle.new(0, 0, 160, 120), "R'G'B'A u8", bytes(pixels))
buf.flush()
image.select_rectangle(Gimp.ChannelOps.REPLACE, 65, 35, 70, 70)
Gimp.Selection.feather(image, 8.0)
n_before = len(image.get_layers())
status, error = run_procedure("plug-in-semantic-harmonize", image, [layer], method=METHOD, strength=1.0)
top = image.get_layers()[0]
ok, ox, oy = top.get_offsets()
rect = Gegl.Rectangle.new(0, 0, top.get_width(), top.get_height())
dump("result", top.get_buffer().get(rect, 1.0, "R'G'B'A u8", Gegl.AbyssPolicy.CLAMP))
dump("source", layer.get_buffer().get(Gegl.Rectangle.new(0, 0, 160, 120), 1.0, "R'G'B'A u8",
                                      Gegl.AbyssPolicy.CLAMP))
dump("mask", image.get_selection().get_buffer().get(Gegl.Rectangle.new(20, 10, 160, 120), 1.0, "Y u8",
                                                     Gegl.AbyssPolicy.NONE))
save_result({"ok": status == Gimp.PDBStatusType.SUCCESS,
             "message": str(error),
             "layers_before": n_before, "layers_after": len(image.get_layers()),
             "name": top.get_name(), "offsets": [ox, oy], "size": [top.get_width(), top.get_height()]})
"""


@pytest.fixture(scope="module")
def daemon():
    running = start_daemon(temp_root("semantic-e2e-state-") / "state", "--idle-exit", "0")
    yield running
    running.stop()


def test_the_default_is_a_learned_method_tested_here():
    assert DEFAULT_METHOD in METHOD_WEIGHTS


@pytest.mark.parametrize("method", sorted(METHOD_WEIGHTS))
def test_harmonize_selection_with_learned_method(daemon, method):
    gimp = Gimp(GIMP, temp_root("semantic-e2e-"), daemon.state_dir)
    run = gimp.run(BUILD_IMAGE.replace("METHOD", repr(method)))
    assert run.result, run.output
    assert run.result["ok"], run.result.get("message") or run.output
    assert run.result["layers_after"] == run.result["layers_before"] + 1
    assert run.result["offsets"] == [20, 10] and run.result["size"] == [160, 120]
    assert "harmonized" in run.result["name"] and method in run.result["name"]
    result = run.array("result", (120, 160, 4)).astype(int)
    source = run.array("source", (120, 160, 4)).astype(int)
    mask = run.array("mask", (120, 160))
    outside, inside, soft = mask == 0, mask == 255, (mask > 0) & (mask < 255)
    assert outside.sum() > 5000 and inside.sum() > 1000 and soft.sum() > 200
    assert (result[outside] == source[outside]).all(), "pixels outside the selection must be untouched"
    assert (result[..., 3] == source[..., 3]).all(), "alpha is kept"
    inside_change = np.abs(result[inside][:, :3] - source[inside][:, :3]).mean()
    edge_change = np.abs(result[soft][:, :3] - source[soft][:, :3]).mean()
    assert inside_change > 1.0, "the network must change the pasted square"
    assert edge_change < inside_change + 1.0, "the feathered edge blends, it does not overshoot"
    # Detail survives the full-resolution path: the square's texture is still there.
    crop = (slice(40, 80), slice(60, 100), 0)  # well inside both the square and the selection
    assert (mask[crop[:2]] == 255).all()
    src_texture = np.abs(np.diff(source[crop], axis=1)).mean()
    out_texture = np.abs(np.diff(result[crop], axis=1)).mean()
    assert out_texture > 0.5 * src_texture
