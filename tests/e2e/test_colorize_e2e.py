"""Colorize... and Colorize from Semantic Map... inside a real GIMP 3, talking to a real daemon."""

from __future__ import annotations

import numpy as np
import pytest

from core.colorization.palette import class_colors
from core.colorization.pipeline import COLORIZER_WEIGHTS, PRETRAINED_SEGMENTER_WEIGHTS
from core.imaging.color import rgb_to_lab
from core.models.efficientnet_lite import WEIGHT_ID as BACKBONE_WEIGHTS
from core.weights import Manifest
from tests.e2e.harness import SKIP_REASON, Gimp, gimp_console_command, start_daemon, temp_root

GIMP = gimp_console_command()
pytestmark = [pytest.mark.gimp, pytest.mark.skipif(GIMP is None, reason=SKIP_REASON)]
W, H = 128, 96

# A grayscale-mode photo-like image: bright smooth top (sky-like), darker textured bottom.
BUILD_GRAY_IMAGE = f"""
image = Gimp.Image.new({W}, {H}, Gimp.ImageBaseType.GRAY)
layer = Gimp.Layer.new(image, "photo", {W}, {H}, Gimp.ImageType.GRAY_IMAGE, 100.0, Gimp.LayerMode.NORMAL)
image.insert_layer(layer, None, 0)
pixels = bytearray()
for y in range({H}):
    for x in range({W}):
        pixels.append(200 - y // 2 if y < {H} // 2 else 70 + (x * 7 + y * 13) % 40)
buf = layer.get_buffer()
buf.set(Gegl.Rectangle.new(0, 0, {W}, {H}), "Y' u8", bytes(pixels))
buf.flush()
"""


def call(name: str, drawable: str, args: str = "") -> str:
    return f"""
proc = Gimp.get_pdb().lookup_procedure("{name}")
cfg = proc.create_config()
cfg.set_property("run-mode", Gimp.RunMode.NONINTERACTIVE)
cfg.set_property("image", image)
cfg.set_core_object_array("drawables", [{drawable}])
{args}
res = proc.run(cfg)
status = res.index(0)
error = res.index(1) if res.length() > 1 else None
message = error.message if error is not None and hasattr(error, "message") else str(error)
"""


DUMP = """
def dump(name, drawable):
    rect = Gegl.Rectangle.new(0, 0, drawable.get_width(), drawable.get_height())
    with open(RESULT_PATH + "." + name, "wb") as f:
        f.write(drawable.get_buffer().get(rect, 1.0, "R'G'B'A u8", Gegl.AbyssPolicy.CLAMP))
"""


@pytest.fixture(scope="module")
def daemon():
    manifest = Manifest.load()
    for weight_id in (PRETRAINED_SEGMENTER_WEIGHTS, BACKBONE_WEIGHTS, COLORIZER_WEIGHTS):
        if weight_id not in manifest.entries or manifest.status(weight_id).value != "ok":
            pytest.skip(f"weights '{weight_id}' are not in weights/")
    running = start_daemon(temp_root("semantic-e2e-state-") / "state", "--idle-exit", "0")
    yield running
    running.stop()


def test_colorize_then_recolorize_from_edited_map(daemon):
    classes = Manifest.load().entry(COLORIZER_WEIGHTS).config["classes"]
    tree = class_colors(len(classes))[classes.index("tree")]
    person = class_colors(len(classes))[classes.index("person")]
    gimp = Gimp(GIMP, temp_root("semantic-e2e-"), daemon.state_dir)
    script = BUILD_GRAY_IMAGE + DUMP + f"""
# a palette of the same name and length left by other weights, with other classes: must be replaced
old = Gimp.Palette.get_by_name("Semantic classes")
if old is not None:
    old.delete()
stale = Gimp.Palette.new("Semantic classes")
for i in range({len(classes)}):
    stale.add_entry(f"{{i}} stale", Gegl.Color.new("#010203"))
""" + """
def entry_names(palette):
    names = [palette.get_entry_name(i) for i in range(len(palette.get_colors()))]
    return [n[-1] if isinstance(n, tuple) else n for n in names]

n_before = len(image.get_layers())
""" + call("plug-in-semantic-colorize", "layer", 'cfg.set_property("add-map-layer", True)') + """
first = {"status": int(status), "ok": status == Gimp.PDBStatusType.SUCCESS, "message": message,
         "rgb": image.get_base_type() == Gimp.ImageBaseType.RGB, "layers": [l.get_name() for l in image.get_layers()]}
palette = Gimp.Palette.get_by_name("Semantic classes")
first["palette"] = entry_names(palette) if palette is not None else []
first["palette_colors"] = [c.get_rgba() for c in palette.get_colors()] if palette is not None else []
colorized = image.get_layers()[0]
map_layer = [l for l in image.get_layers() if l.get_name() == "Semantic map"][0]
dump("source", layer)
dump("colorized", colorized)
dump("map", map_layer)
""" + f"""
# repaint the lower-left block of the map as 'tree' and the upper-left one as 'person' (exact palette colors)
block = bytes(({tree[0]}, {tree[1]}, {tree[2]}, 255)) * (48 * 40)
mbuf = map_layer.get_buffer()
mbuf.set(Gegl.Rectangle.new(0, {H - 40}, 48, 40), "R'G'B'A u8", block)
person_block = bytes(({person[0]}, {person[1]}, {person[2]}, 255)) * (40 * 32)
mbuf.set(Gegl.Rectangle.new(0, 0, 40, 32), "R'G'B'A u8", person_block)
mbuf.flush()
""" + call("plug-in-semantic-colorize-from-map", "layer", 'cfg.set_property("map-layer", map_layer)') + """
second = {"ok": status == Gimp.PDBStatusType.SUCCESS, "message": message, "top": image.get_layers()[0].get_name()}
dump("recolorized", image.get_layers()[0])
# an off-palette color: a clear error naming where it is, then success when snapping is asked for
mbuf.set(Gegl.Rectangle.new(100, 10, 3, 2), "R'G'B'A u8", bytes((1, 250, 3, 255)) * 6)
mbuf.flush()
n_mid = len(image.get_layers())
""" + call("plug-in-semantic-colorize-from-map", "layer", 'cfg.set_property("map-layer", map_layer)') + """
third = {"ok": status == Gimp.PDBStatusType.SUCCESS, "message": message, "added": len(image.get_layers()) - n_mid}
""" + call("plug-in-semantic-colorize-from-map", "layer",
           'cfg.set_property("map-layer", map_layer); cfg.set_property("snap", True)') + """
fourth = {"ok": status == Gimp.PDBStatusType.SUCCESS, "message": message}
save_result({"n_before": n_before, "first": first, "second": second, "third": third, "fourth": fourth})
"""
    run = gimp.run(script, timeout=600)
    assert run.result, run.output
    r = run.result
    assert r["first"]["ok"], r["first"]["message"]
    assert r["first"]["rgb"], "a grayscale image must be converted to RGB"
    assert len(r["first"]["layers"]) == r["n_before"] + 2
    assert "Semantic map" in r["first"]["layers"] and r["first"]["layers"][0] == "photo colorized"
    assert r["first"]["palette"] == [f"{i} {name}" for i, name in enumerate(classes)], "every class, in id order"
    assert "18 person" in r["first"]["palette"]
    assert len({tuple(c) for c in r["first"]["palette_colors"]}) == len(classes), "one distinct color per class"
    stem = str(next(gimp.root.glob("result-*.json.colorized")))[: -len(".colorized")]

    def read(name):
        return np.fromfile(f"{stem}.{name}", dtype=np.uint8).reshape(H, W, 4)

    source, colorized, recolorized, semantic = read("source"), read("colorized"), read("recolorized"), read("map")
    lab_src = rgb_to_lab(source[..., :3].astype(np.float32) / 255)
    lab_col = rgb_to_lab(colorized[..., :3].astype(np.float32) / 255)
    lab_re = rgb_to_lab(recolorized[..., :3].astype(np.float32) / 255)
    assert np.abs(lab_col[..., 0] - lab_src[..., 0]).mean() < 0.6, "the photo's lightness must be kept"
    assert np.hypot(lab_col[..., 1], lab_col[..., 2]).mean() > 2, "the result must have color"
    palette = {tuple(c) for c in class_colors(len(classes))}
    assert all(tuple(p) in palette for p in semantic[..., :3].reshape(-1, 3)[::97]), "map: class colors only"
    assert r["second"]["ok"], r["second"]["message"]
    assert "colorized from Semantic map" in r["second"]["top"]
    delta = np.linalg.norm(lab_re[..., 1:] - lab_col[..., 1:], axis=2)
    assert delta[H - 32:, :40].mean() > 2.0 and delta[H - 32:, :40].mean() > 2 * delta[:24, 88:].mean()
    # the person block is read as person: colored unlike the tree block of the same gray image
    lab_person = rgb_to_lab(recolorized[4:28, 4:36, :3].astype(np.float32) / 255)[..., 1:].mean((0, 1))
    lab_tree = rgb_to_lab(recolorized[H - 32:, 4:40, :3].astype(np.float32) / 255)[..., 1:].mean((0, 1))
    assert delta[4:28, 4:36].mean() > 2.0 and np.linalg.norm(lab_person - lab_tree) > 3.0
    assert not r["third"]["ok"] and r["third"]["added"] == 0
    assert "x 100–102, y 10–11" in r["third"]["message"], r["third"]["message"]
    assert r["fourth"]["ok"], r["fourth"]["message"]
