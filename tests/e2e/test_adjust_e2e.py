"""Semantic Auto-Adjust... and Adjust with My Map... inside a real GIMP 3, talking to a real daemon that
loads the committed SA-AdjustNet weights."""

from __future__ import annotations

import re

import numpy as np
import pytest

from core.weights import Manifest, WeightStatus
from tests.e2e.harness import SKIP_REASON, Gimp, gimp_console_command, start_daemon, temp_root

GIMP = gimp_console_command()
HAVE_WEIGHTS = "sa-adjustnet-pop-out" in Manifest.load().entries and \
    Manifest.load().status("sa-adjustnet-pop-out") is WeightStatus.ok
pytestmark = [pytest.mark.gimp, pytest.mark.skipif(GIMP is None, reason=SKIP_REASON),
              pytest.mark.skipif(not HAVE_WEIGHTS, reason="weights/sa-adjustnet-pop-out is not committed")]

# A 96×72 layer at offset (10, 8) in a 120×90 image: a bright saturated disc on a muted, textured ground.
BUILD_IMAGE = """
image = Gimp.Image.new(120, 90, Gimp.ImageBaseType.RGB)
base = Gimp.Layer.new(image, "base", 120, 90, Gimp.ImageType.RGBA_IMAGE, 100.0, Gimp.LayerMode.NORMAL)
image.insert_layer(base, None, 0)
layer = Gimp.Layer.new(image, "photo", 96, 72, Gimp.ImageType.RGBA_IMAGE, 100.0, Gimp.LayerMode.NORMAL)
image.insert_layer(layer, None, 0)
layer.set_offsets(10, 8)
pixels = bytearray()
for y in range(72):
    for x in range(96):
        if (x - 48) ** 2 + (y - 36) ** 2 < 20 ** 2:
            pixels += bytes((200, 60 + (x * 3) % 40, 40, 255))
        else:
            pixels += bytes((90 + (x * 7) % 50, 110 + (y * 5) % 40, 80 + (x + y) % 30, 255))
buf = layer.get_buffer()
buf.set(Gegl.Rectangle.new(0, 0, 96, 72), "R'G'B'A u8", bytes(pixels))
buf.flush()
def run_proc(name, **props):
    proc = Gimp.get_pdb().lookup_procedure(name)
    cfg = proc.create_config()
    cfg.set_property("run-mode", Gimp.RunMode.NONINTERACTIVE)
    cfg.set_property("image", image)
    cfg.set_core_object_array("drawables", [layer])
    for key, value in props.items():
        cfg.set_property(key, value)
    res = proc.run(cfg)
    error = res.index(1) if res.length() > 1 else None
    message = error.message if error is not None and hasattr(error, "message") else str(error)
    return res.index(0) == Gimp.PDBStatusType.SUCCESS, message
def above():
    return image.get_layers()[image.get_item_position(layer) - 1]
def dump(name, drawable, fmt="R'G'B'A u8"):
    rect = Gegl.Rectangle.new(0, 0, drawable.get_width(), drawable.get_height())
    with open(RESULT_PATH + "." + name, "wb") as f:
        f.write(drawable.get_buffer().get(rect, 1.0, fmt, Gegl.AbyssPolicy.CLAMP))
"""


@pytest.fixture(scope="module")
def daemon():
    running = start_daemon(temp_root("semantic-e2e-state-") / "state", "--idle-exit", "0")
    yield running
    running.stop()


def read(stem: str, name: str, shape) -> np.ndarray:
    return np.fromfile(f"{stem}.{name}", dtype=np.uint8).reshape(shape).astype(int)


def test_auto_adjust_and_my_map_in_gimp(daemon):
    gimp = Gimp(GIMP, temp_root("semantic-e2e-"), daemon.state_dir)
    script = BUILD_IMAGE + """
n0 = len(image.get_layers())
ok_auto, msg_auto = run_proc("plug-in-semantic-auto-adjust", style="pop-out", **{"export-map": True})
auto = above()
auto_name, auto_offsets = auto.get_name(), list(auto.get_offsets()[1:])
dump("auto", auto)
dump("source", layer)
channels = [c.get_name() for c in image.get_channels()]
for c in image.get_channels():
    dump("channel" + c.get_name().split(":")[0].split(" ")[1], c, "Y u8")
ok_channels, msg_channels = run_proc("plug-in-semantic-adjust-my-map", style="pop-out", source="channels")
dump("from_channels", above())
image.select_rectangle(Gimp.ChannelOps.REPLACE, 10, 8, 40, 72)
ok_sel, msg_sel = run_proc("plug-in-semantic-adjust-my-map", style="pop-out", source="selection", preset=1,
                           **{"outside-preset": -1})
mine = above()
dump("mine", mine)
ok_two, msg_two = run_proc("plug-in-semantic-adjust-my-map", style="pop-out", source="selection", preset=0,
                           **{"outside-preset": 1})
two = above()
dump("two", two)
dump("mask", image.get_selection(), "Y u8")
Gimp.Selection.none(image)
ok_none, msg_none = run_proc("plug-in-semantic-adjust-my-map", style="pop-out", source="selection", preset=1)
save_result({"ok_auto": ok_auto, "msg_auto": msg_auto, "ok_channels": ok_channels, "msg_channels": msg_channels,
             "ok_sel": ok_sel, "msg_sel": msg_sel, "ok_two": ok_two, "msg_two": msg_two,
             "ok_none": ok_none, "msg_none": msg_none,
             "layers_before": n0, "layers_after": len(image.get_layers()), "auto_name": auto_name,
             "auto_offsets": auto_offsets, "mine_name": mine.get_name(), "two_name": two.get_name(),
             "channels": channels})
"""
    run = gimp.run(script)
    r = run.result
    assert r, run.output
    assert r["ok_auto"], r["msg_auto"]
    assert r["ok_channels"], r["msg_channels"]
    assert r["ok_sel"], r["msg_sel"]
    assert r["ok_two"], r["msg_two"]
    assert r["layers_after"] == r["layers_before"] + 4
    assert r["auto_name"] == "photo adjusted (pop-out)" and r["auto_offsets"] == [10, 8]
    assert "preset 1 in selection" in r["mine_name"] and "preset 0 in selection, 1 outside" in r["two_name"]
    # K = 2 channels named by what each preset does, e.g. "preset 0: darker, less saturated (pop-out)"
    assert len(r["channels"]) == 2
    assert all(re.fullmatch(rf"preset {k}: [a-z ,]+ \(pop-out\)", name) for k, name in enumerate(r["channels"])), \
        r["channels"]
    stem = str(next(gimp.root.glob("result-*.json.auto")))[: -len(".auto")]
    source, auto = read(stem, "source", (72, 96, 4)), read(stem, "auto", (72, 96, 4))
    assert np.abs(auto[..., :3] - source[..., :3]).mean() > 2, "Auto-Adjust must change the photo"
    assert np.array_equal(auto[..., 3], source[..., 3])
    # the map is discrete: every pixel of the layer is white in exactly one channel
    maps = np.stack([read(stem, f"channel{k}", (90, 120))[8:80, 10:106] for k in range(2)], -1)
    assert set(np.unique(maps)) <= {0, 255} and (maps.sum(-1) == 255).all()
    index = maps.argmax(-1)
    # the exported channels, given back unchanged, reproduce the automatic result bit for bit
    assert np.array_equal(read(stem, "from_channels", (72, 96, 4)), auto)
    # the selection (left 40 columns of the layer) replaces the map there only
    mine = read(stem, "mine", (72, 96, 4))
    mask = read(stem, "mask", (90, 120))[8:80, 10:106]
    inside, outside = mask == 255, mask == 0
    assert inside[:, :40].all() and outside[:, 40:].all()
    assert np.array_equal(mine[outside], auto[outside])
    assert np.array_equal(mine[inside & (index == 1)], auto[inside & (index == 1)])
    flipped = inside & (index == 0)
    if flipped.any():
        assert (np.abs(mine[flipped][:, :3] - auto[flipped][:, :3]).max(-1) > 0).mean() > 0.3
    # preset 0 inside, preset 1 outside: equal to the automatic result exactly where it chose the same
    two = read(stem, "two", (72, 96, 4))
    agree = (inside & (index == 0)) | (outside & (index == 1))
    assert np.array_equal(two[agree], auto[agree])
    assert (np.abs(two[~agree][:, :3] - auto[~agree][:, :3]).max(-1) > 0).mean() > 0.3
    # without a selection the procedure fails with a message and adds nothing
    assert not r["ok_none"] and "selection" in r["msg_none"].lower()
