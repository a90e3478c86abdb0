"""Cancelling a job by hanging up, as GIMP's Cancel button does (it SIGKILLs the plug-in).

A killed client writes nothing more, and a job waiting in line or between progress reports gives the
daemon nothing to write that could fail: the daemon has to notice the closed connection itself.
"""

from __future__ import annotations

import http.client
import threading

import numpy as np
import pytest

from core.actions.inputs import to_wire
from core.protocol import ErrorCode, JobRequest, SemanticError, encode_frame_parts, read_frame
from tests.e2e.harness import RunningDaemon, start_daemon


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    running = start_daemon(tmp_path_factory.mktemp("state"), "--idle-exit", "0")
    yield running
    running.stop()


class Blocker:
    """An echo job that holds the daemon's one compute slot until released."""

    def __init__(self, daemon: RunningDaemon):
        self.running, self.release = threading.Event(), threading.Event()
        self.error: list[SemanticError] = []
        image = to_wire("image", np.zeros((8, 8, 3), np.uint8))
        client = daemon.client()

        def work():
            try:
                client.run("echo", {"delay_s": 3600}, [image], on_progress=lambda f, t: self.running.set(),
                           should_cancel=self.release.is_set)
            except SemanticError as exc:
                self.error.append(exc)

        self.thread = threading.Thread(target=work, daemon=True)
        self.thread.start()
        assert self.running.wait(60), "the blocking job never started"

    def finish(self) -> None:
        self.release.set()
        self.thread.join(60)


def start_job_and_hang_up(daemon: RunningDaemon, action: str, params: dict) -> str:
    """Send a job, read its 'accepted' frame, close the connection the way a killed process's kernel does."""
    request = JobRequest(action, params, {"image": to_wire("image", np.zeros((8, 8, 3), np.uint8))})
    body = b"".join(bytes(p) for p in encode_frame_parts(request.to_frame()))
    conn = http.client.HTTPConnection("127.0.0.1", daemon.discovery.port, timeout=30)
    conn.request("POST", "/v1/jobs", body=body,
                 headers={"Authorization": f"Bearer {daemon.discovery.read_token()}"})
    response = conn.getresponse()
    assert response.status == 200
    accepted = read_frame(response.read)
    assert accepted.kind == "accepted"
    conn.close()
    return accepted.header["job"]


def test_queued_job_whose_client_hangs_up_is_dropped_without_running(daemon):
    blocker = Blocker(daemon)
    try:
        job = start_job_and_hang_up(daemon, "echo", {"delay_s": 0})
        daemon.wait_for_log(rf"job {job} echo: cancelled")
        # Dropped while the blocker still held the slot: it did not wait its turn to compute for nobody.
        assert blocker.thread.is_alive() and not blocker.release.is_set()
    finally:
        blocker.finish()
    assert blocker.error and blocker.error[0].code is ErrorCode.cancelled
    assert f"job {job} echo done" not in daemon.log()


def test_running_job_whose_client_hangs_up_stops(daemon):
    job = start_job_and_hang_up(daemon, "echo", {"delay_s": 3600})
    daemon.wait_for_log(rf"job {job} echo: cancelled")
    out = daemon.client().run("echo", {}, [to_wire("image", np.ones((4, 4, 3), np.uint8))])
    assert out.arrays["image"].shape == (4, 4, 3)
