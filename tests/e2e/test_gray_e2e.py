"""The colorization bench's gray (bench/propagation.gray_of) is the one GIMP 3 makes: Image ▸ Mode ▸
Grayscale on an 8-bit RGB image, read back and compared pixel for pixel."""

from __future__ import annotations

import numpy as np
import pytest

from bench.propagation import gray_of
from tests.e2e.harness import SKIP_REASON, Gimp, gimp_console_command, temp_root

GIMP = gimp_console_command()
pytestmark = [pytest.mark.gimp, pytest.mark.skipif(GIMP is None, reason=SKIP_REASON)]
W, H = 96, 64


def test_bench_gray_is_gimps_grayscale_mode():
    rng = np.random.default_rng(3)
    # Saturated colours (where luminance weights differ most) and random photo-like values.
    rgb = rng.integers(0, 256, (H, W, 3)).astype(np.uint8)
    rgb[:8, :6] = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (255, 0, 255)]
    root = temp_root("semantic-e2e-gray-")
    (root / "rgb.raw").write_bytes(rgb.tobytes())
    gimp = Gimp(GIMP, root, root / "state")
    run = gimp.run(f"""
image = Gimp.Image.new({W}, {H}, Gimp.ImageBaseType.RGB)
layer = Gimp.Layer.new(image, "photo", {W}, {H}, Gimp.ImageType.RGB_IMAGE, 100.0, Gimp.LayerMode.NORMAL)
image.insert_layer(layer, None, 0)
rect = Gegl.Rectangle.new(0, 0, {W}, {H})
buf = layer.get_buffer()
buf.set(rect, "R'G'B' u8", open({str(root / "rgb.raw")!r}, "rb").read())
buf.flush()
image.convert_grayscale()
gray = image.get_layers()[0]
dump("gray", gray.get_buffer().get(rect, 1.0, "Y' u8", Gegl.AbyssPolicy.CLAMP))
save_result({{"base": int(image.get_base_type())}})
""")
    assert run.result.get("base") == 1, run.output[-2000:]  # GIMP_GRAY
    gimps = run.array("gray", (H, W))
    ours = (gray_of(rgb.astype(np.float32) / 255)[..., 0] * 255).round().astype(np.uint8)
    # babl's float path rounds a value within ~1e-4 of a half level the other way now and then.
    difference = np.abs(ours.astype(int) - gimps)
    assert difference.max() <= 1 and (difference > 0).mean() <= 0.001, difference.max()
    luma = (gray_of(rgb.astype(np.float32) / 255, "luma")[..., 0] * 255).round().astype(np.uint8)
    assert not np.array_equal(luma, gimps)  # the test tells the two grays apart
