"""Cancel from GIMP: the plug-in dies mid-job, the daemon drops the job, the image stays as it was.

GIMP 3's Cancel button (on the progress bar a plug-in opens with Gimp.progress_init) runs
gimp_plug_in_progress_cancel_callback, which calls gimp_plug_in_close (plug_in, TRUE): a GP_QUIT
message, 10 ms, then SIGKILL of the plug-in's process (app/plug-in/gimpplugin-progress.c and
gimpplugin.c). Headless GIMP opens no progress bar to press, so this test does what that button does
to the running plug-in, a SIGKILL, while the plug-in waits on the daemon.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import numpy as np
import pytest

from core.actions.inputs import to_wire
from core.protocol import SemanticError
from tests.e2e.harness import SKIP_REASON, Gimp, gimp_console_command, start_daemon, temp_root

GIMP = gimp_console_command()
pytestmark = [pytest.mark.gimp, pytest.mark.skipif(GIMP is None, reason=SKIP_REASON)]

SCRIPT = """
image = Gimp.Image.new(64, 48, Gimp.ImageBaseType.RGB)
layer = Gimp.Layer.new(image, "photo", 64, 48, Gimp.ImageType.RGBA_IMAGE, 100.0, Gimp.LayerMode.NORMAL)
image.insert_layer(layer, None, 0)
pixels = bytes(v for y in range(48) for x in range(64) for v in (x * 4 % 256, y * 5 % 256, (x + y) % 256, 255))
layer.get_buffer().set(Gegl.Rectangle.new(0, 0, 64, 48), "R'G'B'A u8", pixels)
image.select_rectangle(Gimp.ChannelOps.REPLACE, 16, 12, 24, 20)
def read():
    return bytes(layer.get_buffer().get(Gegl.Rectangle.new(0, 0, 64, 48), 1.0, "R'G'B'A u8",
                                         Gegl.AbyssPolicy.CLAMP))
before, layers_before = read(), [l.get_name() for l in image.get_layers()]
status, error = run_procedure("plug-in-semantic-harmonize", image, [layer], method="statistics")
save_result({"success": status == Gimp.PDBStatusType.SUCCESS, "message": str(error),
             "layers_before": layers_before, "layers_after": [l.get_name() for l in image.get_layers()],
             "unchanged": read() == before})
"""


def plugin_pids(plugin_file: Path) -> list[int]:
    """Processes whose command line names this test's installed plug-in (GIMP runs it as python3 FILE)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if str(plugin_file).encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass  # gone meanwhile
    return found


def test_cancel_kills_the_plugin_drops_the_job_and_leaves_the_image(tmp_path):
    daemon = start_daemon(temp_root("semantic-e2e-state-") / "state", "--idle-exit", "0")
    release, holding = threading.Event(), threading.Event()
    blocker_error: list[SemanticError] = []

    def hold_the_compute_slot():
        # The plug-in's job then waits in line, so it is still running, deterministically, when killed.
        try:
            daemon.client().run("echo", {"delay_s": 3600}, [to_wire("image", np.zeros((4, 4, 3), np.uint8))],
                                on_progress=lambda f, t: holding.set(), should_cancel=release.is_set)
        except SemanticError as exc:
            blocker_error.append(exc)

    blocker = threading.Thread(target=hold_the_compute_slot, daemon=True)
    try:
        blocker.start()
        assert holding.wait(60)
        gimp = Gimp(GIMP, temp_root("semantic-e2e-"), daemon.state_dir)
        log_start = len(daemon.log())
        running = gimp.start(SCRIPT)
        try:
            job = daemon.wait_for_log(r"job (\w+) harmonize accepted", start=log_start).group(1)
        except AssertionError:
            raise AssertionError(running.wait().output) from None
        pids = plugin_pids(gimp.plugin_file)
        assert len(pids) == 1, pids
        os.kill(pids[0], signal.SIGKILL)  # what gimp_plug_in_close (plug_in, TRUE) does after GP_QUIT
        daemon.wait_for_log(rf"job {job} harmonize: cancelled")
        # Dropped while the blocker still held the slot: it never computed for the dead plug-in.
        assert blocker.is_alive() and not release.is_set()
        run = running.wait()
    finally:
        release.set()
        blocker.join(60)
        log = daemon.log()
        daemon.stop()
    assert run.result, run.output
    assert not run.result["success"], run.result
    assert run.result["unchanged"] and run.result["layers_after"] == run.result["layers_before"], run.result
    assert f"job {job} harmonize done" not in log
    assert blocker_error and blocker_error[0].code.value == "cancelled"
