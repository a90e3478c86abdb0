"""Remote GPU inside a real GIMP 3: the plug-in set up as the README's "Remote GPU" section does it,
talking to a real daemon through a real second port (a Python forwarder standing in for ``ssh -L``)."""

from __future__ import annotations

import shutil

import pytest

from tests.e2e.harness import SKIP_REASON, Gimp, gimp_console_command, install, start_daemon, temp_root
from tests.e2e.tunnel import PortForward

GIMP = gimp_console_command()
pytestmark = [pytest.mark.gimp, pytest.mark.skipif(GIMP is None, reason=SKIP_REASON)]

SCRIPT = """
image = Gimp.Image.new(64, 48, Gimp.ImageBaseType.RGB)
layer = Gimp.Layer.new(image, "photo", 64, 48, Gimp.ImageType.RGBA_IMAGE, 100.0, Gimp.LayerMode.NORMAL)
image.insert_layer(layer, None, 0)
pixels = bytes(v for y in range(48) for x in range(64) for v in (200 - y, 120 + x, 40 if x < 32 else 220, 255))
layer.get_buffer().set(Gegl.Rectangle.new(0, 0, 64, 48), "R'G'B'A u8", pixels)
image.select_rectangle(Gimp.ChannelOps.REPLACE, 24, 12, 16, 20)
status, error = run_procedure("plug-in-semantic-harmonize", image, [layer], method="statistics")
save_result({"success": status == Gimp.PDBStatusType.SUCCESS, "message": str(error),
             "layers": [l.get_name() for l in image.get_layers()]})
"""


def test_harmonize_through_the_tunnel_and_a_clear_message_when_it_is_down():
    gpu_box = start_daemon(temp_root("semantic-e2e-gpu-") / "state", "--idle-exit", "0", "--token-file",
                           str(temp_root("semantic-e2e-gpu-token-") / "remote-token"))
    try:
        laptop = temp_root("semantic-e2e-laptop-")
        token_copy = laptop / "gpu-token"
        shutil.copyfile(gpu_box.discovery.token_file, token_copy)  # the README's scp
        with PortForward(gpu_box.discovery.port) as tunnel:
            # An empty state folder: no discovery file could lead the plug-in to the daemon directly.
            gimp = Gimp(GIMP, laptop, laptop / "state", remote=install.remote_settings(tunnel.port, token_copy))
            run = gimp.run(SCRIPT)
            assert run.result.get("success"), run.output
            assert run.result["layers"][0].startswith("photo harmonized") and tunnel.connections >= 2
        down = gimp.run(SCRIPT)  # the tunnel is closed now
    finally:
        gpu_box.stop()
    assert down.result and not down.result["success"], down.output
    assert f"ssh -N -L {tunnel.port}:127.0.0.1:{tunnel.port}" in down.result["message"], down.result
    assert down.result["layers"] == ["photo"]
