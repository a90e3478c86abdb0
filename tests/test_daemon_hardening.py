"""Issue 15, daemon hardening: each case here once broke the real daemon subprocess or a client of it.

Raw sockets stand in for broken or hostile clients and for foreign programs that took a daemon's port;
everything else is the real daemon, the real client and the plug-in's daemon finder as installed.
"""

from __future__ import annotations

import errno
import http.client
import http.server
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from core import __version__
from core.actions.inputs import to_numpy, to_wire
from core.daemon.server import MAX_CONNECTIONS
from core.gimp_dirs import GimpConfigDir
from core.protocol import (
    FRAME_MAGIC,
    FRAME_PREFIX,
    DaemonClient,
    ErrorCode,
    JobRequest,
    SemanticError,
    encode_frame_parts,
    read_frame,
)
from tests.e2e.harness import REPO, RunningDaemon, install, start_daemon

DECLARED_PAYLOAD = 1_900_000_000  # what a 77-byte request once made the daemon reserve up front


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    root = tmp_path_factory.mktemp("hardening")
    running = start_daemon(root / "state", "--idle-exit", "0", stderr_path=root / "stderr.txt")
    yield running
    running.stop()


# --- helpers ------------------------------------------------------------------------------------


def image_and_mask(h: int = 24, w: int = 32) -> tuple[np.ndarray, np.ndarray]:
    image = np.full((h, w, 3), 90, np.uint8)
    image[:, : w // 2] = 200
    mask = np.zeros((h, w, 1), np.uint8)
    mask[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = 255
    return image, mask


def run_job(client: DaemonClient, action: str, params: dict, on_progress=None, **arrays) -> dict:
    frame = client.run(action, params, [to_wire(k, v) for k, v in arrays.items()], on_progress)
    return {k: to_numpy(v) for k, v in frame.arrays.items()}


def frame_bytes(header: bytes, payload: bytes = b"", declared_payload: int | None = None) -> bytes:
    """A frame whose header is any bytes (valid JSON or not) and whose payload may be announced, not sent."""
    size = len(payload) if declared_payload is None else declared_payload
    return FRAME_PREFIX.pack(FRAME_MAGIC, len(header), size) + header + payload


def post_head(token: str, content_length: int, extra: str = "") -> bytes:
    return (f"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Length: {content_length}\r\n{extra}\r\n").encode()


def exchange(port: int, data: bytes, close_write: bool = False) -> tuple[int, dict]:
    """Send raw bytes, read one HTTP response: (status, JSON body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(data)
        if close_write:
            sock.shutdown(socket.SHUT_WR)
        response = http.client.HTTPResponse(sock)
        response.begin()
        body = response.read()
    return response.status, json.loads(body or b"{}")


def proc_status(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def wait_until_healthy(running: RunningDaemon, attempts: int = 100) -> dict:
    for _ in range(attempts):
        try:
            return running.client().health()
        except SemanticError:
            time.sleep(0.1)
    return running.client().health()


# --- 1. malformed frame headers get a 400, not a dropped connection ----------------------------


def _request(**descriptor) -> bytes:
    base = {"name": "image", "dtype": "u8", "shape": [8, 8, 3], "offset": 0, "nbytes": 192}
    return json.dumps({"action": "echo", "protocol": 1, "params": {}, "arrays": [dict(base, **descriptor)]}).encode()


MALFORMED_HEADERS = {
    "list": (b"[]", 0),
    "null": (b"null", 0),
    "number": (b"5", 0),
    "arrays_not_a_list": (b'{"action": "echo", "protocol": 1, "arrays": 5}', 0),
    "descriptor_not_an_object": (b'{"action": "echo", "protocol": 1, "arrays": [5]}', 0),
    "shape_of_strings": (_request(shape=["x"]), 192),
    "shape_of_floats": (_request(shape=[8.7, 8, 3]), 192),
    "shape_of_booleans": (_request(shape=[True, 8, 3], nbytes=24), 24),
    "shape_not_a_list": (_request(shape=5), 192),
    "protocol_not_a_number": (b'{"action": "echo", "protocol": "one"}', 0),
    "protocol_null": (b'{"action": "echo", "protocol": null}', 0),
}


@pytest.mark.parametrize("case", sorted(MALFORMED_HEADERS))
def test_malformed_frame_header_is_a_400_with_a_message(daemon, case):
    header, payload_size = MALFORMED_HEADERS[case]
    body = frame_bytes(header, bytes(payload_size))
    status, data = exchange(daemon.discovery.port, post_head(daemon.discovery.read_token(), len(body)) + body)
    assert status == 400, (status, data)
    assert data["error"]["code"] == "bad_request" and len(data["error"]["message"]) > 10
    if case.startswith("shape"):
        assert "shape" in data["error"]["message"]
    assert daemon.client().health()["protocol"] == 1


# --- 2. a daemon that dies or is stopped mid-job -------------------------------------------------


def test_daemon_killed_mid_job_is_a_clear_error(tmp_path):
    running = start_daemon(tmp_path / "state", "--idle-exit", "0")
    try:
        image, _ = image_and_mask()
        with pytest.raises(SemanticError) as info:
            run_job(running.client(), "echo", {"delay_s": 60}, on_progress=lambda *_: running.process.kill(),
                    image=image)
        assert info.value.code is ErrorCode.daemon_unavailable
        assert "during the job" in info.value.message and "again" in info.value.message
    finally:
        running.stop()


def test_daemon_stopped_mid_job_tells_the_job_why(tmp_path):
    running = start_daemon(tmp_path / "state", "--idle-exit", "0")
    sent = []

    def terminate_once(fraction, text):
        if not sent:
            sent.append(True)
            running.process.terminate()

    try:
        image, _ = image_and_mask()
        with pytest.raises(SemanticError) as info:
            run_job(running.client(), "echo", {"delay_s": 60}, on_progress=terminate_once, image=image)
        assert info.value.code is ErrorCode.daemon_unavailable
        assert "was stopped" in info.value.message
        assert running.process.wait(30) == 0
        assert not (tmp_path / "state" / "daemon.json").exists()
    finally:
        running.stop()


# --- 3. memory is held only for bytes that arrived -----------------------------------------------


def test_declared_payload_is_not_reserved_before_it_arrives(daemon):
    header = _request(nbytes=DECLARED_PAYLOAD, shape=[DECLARED_PAYLOAD // 3, 1, 3])
    start = frame_bytes(header, declared_payload=DECLARED_PAYLOAD)
    peak_before = proc_status(daemon.process.pid, "VmHWM")
    request = post_head(daemon.discovery.read_token(), len(start) + DECLARED_PAYLOAD) + start
    # The body stops after 1 MB; closing our side makes the daemon answer, so the peak is final then.
    status, data = exchange(daemon.discovery.port, request + bytes(1 << 20), close_write=True)
    peak_after = proc_status(daemon.process.pid, "VmHWM")
    assert status == 400 and "middle" in data["error"]["message"]
    assert (peak_after - peak_before) * 1024 < 100e6, (peak_before, peak_after)


def test_frame_larger_than_its_body_is_refused_before_reading(daemon):
    start = frame_bytes(_request(), declared_payload=DECLARED_PAYLOAD)
    status, data = exchange(daemon.discovery.port, post_head(daemon.discovery.read_token(), len(start)) + start)
    assert status == 400 and "Content-Length" in data["error"]["message"]


# --- 4. nothing on the daemon's stderr for ordinary use -------------------------------------------


def test_jobs_leave_no_traceback_on_stderr(tmp_path):
    stderr_path = tmp_path / "stderr.txt"
    running = start_daemon(tmp_path / "state", "--idle-exit", "0", stderr_path=stderr_path)
    try:
        image, _ = image_and_mask()
        for _ in range(3):
            run_job(running.client(), "echo", {"delay_s": 0.2}, image=image)
        # A client that closes with the stream's last chunk unread (as the plug-in once did): the
        # daemon's next read on that connection gets a reset.
        job = json.dumps({"action": "echo", "protocol": 1, "params": {"delay_s": 0.2},
                          "arrays": [{"name": "image", "dtype": "u8", "shape": [2, 2, 3], "offset": 0,
                                      "nbytes": 12}]}).encode()
        body = frame_bytes(job, bytes(12))
        with socket.create_connection(("127.0.0.1", running.discovery.port), timeout=60) as sock:
            sock.sendall(post_head(running.discovery.read_token(), len(body)) + body)
            while (unread := sock.recv(1 << 20, socket.MSG_PEEK)) and not unread.endswith(b"0\r\n\r\n"):
                time.sleep(0.05)
        assert running.client().health()["protocol"] == 1
    finally:
        running.stop()
    text = stderr_path.read_text(errors="replace")
    assert "Traceback" not in text, text[-3000:]


# --- 5. deep harmonization on sides past OpenCV's remap limit --------------------------------------


def test_deep_harmonization_on_a_layer_wider_than_32767(daemon):
    from core.harmonization.deep import DEFAULT_WEIGHTS
    from core.weights import Manifest, WeightStatus

    manifest = Manifest.load()  # 'deep' loads DEFAULT_WEIGHTS: skip on exactly the weights it needs
    if manifest.entries.get(DEFAULT_WEIGHTS) is None or manifest.status(DEFAULT_WEIGHTS) != WeightStatus.ok:
        pytest.skip(f"{DEFAULT_WEIGHTS} weights are not installed")
    width = 33_000
    image, mask = image_and_mask(4, width)
    mask[:] = 0
    mask[1:3, 10:width - 10] = 255
    out = run_job(daemon.client(), "harmonize", {"method": "deep"}, image=image, mask=mask)["image"]
    assert out.shape == image.shape
    assert np.array_equal(out[mask[..., 0] == 0], image[mask[..., 0] == 0])


# --- 6. a discovery file with the wrong JSON type ---------------------------------------------------


@pytest.mark.parametrize("content", ["null", "[]"])
def test_daemon_starts_over_a_discovery_file_of_the_wrong_type(tmp_path, content):
    state = tmp_path / "state"
    state.mkdir()
    (state / "daemon.json").write_text(content)
    running = start_daemon(state, "--idle-exit", "0")
    try:
        assert running.client().health()["pid"] == running.process.pid
    finally:
        running.stop()


# --- 7. the plug-in's finder facing something that is not the daemon --------------------------------


@pytest.fixture
def plugin_link(link):
    """The installed plug-in's daemon finder (conftest's `link`): (module, its config, state dir)."""
    module, _, state = link
    return module, module.load_config(), state


class _Foreign:
    """Another program on a port: answers every connection with fixed bytes, and records what it got."""

    def __init__(self, answer: bytes):
        self.answer = answer
        self.received: list[bytes] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                try:
                    self.received.append(conn.recv(65536))
                    conn.sendall(self.answer)
                except OSError:
                    pass

    def close(self) -> None:
        self.listener.close()


def _write_discovery(state: Path, port: int, pid: int, token: str = "old-token") -> None:
    (state / "token").write_text(token + "\n")
    (state / "daemon.json").write_text(json.dumps({
        "address": "127.0.0.1", "port": port, "token_file": str(state / "token"), "pid": pid,
        "version": __version__, "protocol": 1}))


def _http_answer(status: int, body: bytes) -> bytes:
    return (f"HTTP/1.1 {status} Whatever\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n").encode() + body


@pytest.mark.parametrize("answer", [
    b"SSH-2.0-OpenSSH_9.2\r\n",  # not HTTP at all: http.client's BadStatusLine
    _http_answer(200, b'{"max_payload_bytes": [1], "protocol": 1}'),
    _http_answer(200, b"[1, 2]"),
    _http_answer(401, b"<html>log in first</html>"),
    _http_answer(401, b'{"error": "nope"}'),
], ids=["not_http", "wrong_types", "json_list", "html_401", "error_string"])
def test_plugin_does_not_mistake_another_program_for_the_daemon(plugin_link, answer):
    module, config, state = plugin_link
    foreign = _Foreign(answer)
    try:
        _write_discovery(state, foreign.port, os.getpid())
        assert module.try_connect(config) is None
    finally:
        foreign.close()


@pytest.mark.parametrize("content", ["null", "[]", '{"address": null, "port": null}', '{"port": "x"}'])
def test_plugin_ignores_a_malformed_discovery_file(plugin_link, content):
    module, config, state = plugin_link
    (state / "daemon.json").write_text(content)
    assert module.try_connect(config) is None


def test_stale_discovery_sends_no_token_to_the_port(plugin_link):
    module, config, state = plugin_link
    foreign = _Foreign(_http_answer(401, b'{"error": {"code": "unauthorized", "message": "no"}}'))
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    try:
        _write_discovery(state, foreign.port, gone.pid)
        assert module.try_connect(config) is None
        assert not any(b"old-token" in data for data in foreign.received)
    finally:
        foreign.close()


def test_plugin_starts_its_own_daemon_when_another_program_holds_the_port(plugin_link):
    module, config, state = plugin_link
    foreign = _Foreign(b"SSH-2.0-OpenSSH_9.2\r\n")
    try:
        _write_discovery(state, foreign.port, os.getpid())
        client = module.connect()
        assert client.port != foreign.port and client.health()["version"] == __version__
    finally:
        foreign.close()


# --- 8. the HTTP edge: 100-continue, timeouts, connection cap, backlog, action errors ----------------


def _first_line(sock: socket.socket) -> bytes:
    return sock.makefile("rb").readline()


def test_expect_100_continue_checks_the_token_first(daemon):
    with socket.create_connection(("127.0.0.1", daemon.discovery.port), timeout=30) as sock:
        sock.sendall(post_head("wrong", 1_000_000, "Expect: 100-continue\r\n"))
        assert _first_line(sock).startswith(b"HTTP/1.1 401")


def test_expect_100_continue_refuses_an_oversized_body_before_it_is_sent(daemon):
    token = daemon.discovery.read_token()
    with socket.create_connection(("127.0.0.1", daemon.discovery.port), timeout=30) as sock:
        sock.sendall(post_head(token, 10**12, "Expect: 100-continue\r\n"))
        assert _first_line(sock).startswith(b"HTTP/1.1 413")


def test_expect_100_continue_still_runs_a_job(daemon):
    image, _ = image_and_mask()
    job = json.dumps({"action": "echo", "protocol": 1, "params": {}, "arrays": [
        {"name": "image", "dtype": "u8", "shape": list(image.shape), "offset": 0, "nbytes": image.nbytes}]})
    body = frame_bytes(job.encode(), image.tobytes())
    with socket.create_connection(("127.0.0.1", daemon.discovery.port), timeout=30) as sock:
        sock.sendall(post_head(daemon.discovery.read_token(), len(body), "Expect: 100-continue\r\n"))
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"HTTP/1.1 100")
        while reader.readline() not in (b"\r\n", b""):
            pass
        sock.sendall(body)
        assert reader.readline().startswith(b"HTTP/1.1 200")


def test_idle_and_slow_connections_are_closed(tmp_path):
    running = start_daemon(tmp_path / "state", "--idle-exit", "0", "--socket-timeout", "1")
    try:
        with socket.create_connection(("127.0.0.1", running.discovery.port), timeout=30) as idle, \
                socket.create_connection(("127.0.0.1", running.discovery.port), timeout=30) as slow:
            slow.sendall(b"GET /v1/hea")
            assert idle.recv(1024) == b"" and slow.recv(1024) == b""
        assert running.client().health()["protocol"] == 1
    finally:
        running.stop()


def test_connections_are_capped_and_the_rest_told_why(daemon):
    pid, port = daemon.process.pid, daemon.discovery.port
    threads_before = proc_status(pid, "Threads")
    held = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(200)]
    try:
        # Accepted in order: once this answer is back, the daemon has taken all 200 above.
        with pytest.raises(SemanticError) as info:
            daemon.client().health()
        assert info.value.code is ErrorCode.busy and "connections" in info.value.message
        assert proc_status(pid, "Threads") - threads_before <= 70
    finally:
        for sock in held:
            sock.close()
    assert wait_until_healthy(daemon)["protocol"] == 1


def test_a_refused_client_is_not_read_to_its_end_on_the_accepting_thread(daemon):
    """The accepting thread writes the 503 and reads one bounded piece of what a refused client sent: were
    it to read on while the client keeps sending, no other client would be accepted meanwhile. A client
    with half a megabyte sent gets the 503, then a reset instead of being read to the end."""
    pid, port = daemon.process.pid, daemon.discovery.port
    held = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(MAX_CONNECTIONS)]
    try:
        with pytest.raises(SemanticError) as info:  # accepted in order: all held connections are taken
            daemon.client().health()
        assert info.value.code is ErrorCode.busy
        os.kill(pid, signal.SIGSTOP)  # all of it is sent before the daemon looks at the connection
        try:
            refused = socket.create_connection(("127.0.0.1", port), timeout=30)
            refused.sendall(post_head(daemon.discovery.read_token(), 1 << 30) + bytes(1 << 19))
        finally:
            os.kill(pid, signal.SIGCONT)
        # Accepted in order: once this answer is back, the daemon is done with the refused connection.
        with pytest.raises(SemanticError) as info:
            daemon.client().health()
        assert info.value.code is ErrorCode.busy
        with refused:
            answer = b"".join(iter(lambda: refused.recv(1 << 16), b""))
            # Reset after its FIN (Linux then reports EPIPE): the daemon closed with the rest unread.
            assert refused.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) in (errno.EPIPE, errno.ECONNRESET)
        assert answer.startswith(b"HTTP/1.1 503")
    finally:
        for sock in held:
            sock.close()
    assert wait_until_healthy(daemon)["protocol"] == 1


def test_a_burst_of_connections_waits_in_the_listen_queue(daemon):
    pid, port = daemon.process.pid, daemon.discovery.port
    os.kill(pid, signal.SIGSTOP)  # nothing accepted: only the kernel's listen queue holds the burst
    burst = []
    try:
        for _ in range(60):
            sock = socket.socket()
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", port))
            burst.append(sock)
        pending = set(burst)
        for _ in range(50):
            _, writable, _ = select.select([], list(pending), [], 0.1)
            pending -= {s for s in writable if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0}
            if not pending:
                break
        assert len(burst) - len(pending) == 60
    finally:
        os.kill(pid, signal.SIGCONT)
        for sock in burst:
            sock.close()
    assert wait_until_healthy(daemon)["protocol"] == 1


@pytest.mark.parametrize("offset", [["left", 0], [None, 0], [1, {"x": 2}]])
def test_propagate_offset_of_the_wrong_type_is_bad_input(daemon, offset):
    image, _ = image_and_mask()
    paths = [{"name": "fg", "color": "#ff0000", "strokes": [[2, 2, 10, 10]]}]
    with pytest.raises(SemanticError) as info:
        run_job(daemon.client(), "propagate", {"mode": "select", "paths": paths, "offset": offset}, image=image)
    assert info.value.code is ErrorCode.bad_input and "offset" in info.value.message


def test_unreadable_manifest_is_a_message_naming_it(tmp_path):
    weights = tmp_path / "weights"
    weights.mkdir()
    manifest = weights / "manifest.json"
    running = start_daemon(tmp_path / "state", "--idle-exit", "0",
                           env=dict(os.environ, SEMANTIC_WEIGHTS_DIR=str(weights)))
    try:
        image, mask = image_and_mask()
        for content in ["{not json", "[]", '{"weights": 5}', '{"weights": [{"id": "dih-small"}]}', "\xff\xfe"]:
            manifest.write_bytes(content.encode("latin-1"))
            with pytest.raises(SemanticError) as info:
                run_job(running.client(), "harmonize", {"method": "deep"}, image=image, mask=mask)
            assert info.value.code is ErrorCode.weights_corrupt, (content, info.value.message)
            assert str(manifest) in info.value.message and "installer" in info.value.message
    finally:
        running.stop()


# --- 9. a job's stream after its 200: a failure ends it cleanly and cancels the job ------------------


def start_daemon_running(tmp_path: Path, startup_code: str,
                         files: dict[str, str] | None = None) -> RunningDaemon:
    """A real daemon whose process first runs ``startup_code`` (a sitecustomize module on PYTHONPATH):
    the way to give it many open files, or an action with a bug, from outside."""
    hook = tmp_path / "startup"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(startup_code)
    for name, text in (files or {}).items():
        (hook / name).parent.mkdir(parents=True, exist_ok=True)
        (hook / name).write_text(text)
    path = os.pathsep.join(p for p in (str(hook), os.environ.get("PYTHONPATH")) if p)
    return start_daemon(tmp_path / "state", "--idle-exit", "0", env=dict(os.environ, PYTHONPATH=path))


def hang_up_after_accepted(running: RunningDaemon, action: str, params: dict) -> str:
    """Send a job, read its 'accepted' frame and close the connection, as GIMP's Cancel does."""
    image = to_wire("image", np.zeros((8, 8, 3), np.uint8))
    request = JobRequest(action, params, {"image": image})
    body = b"".join(bytes(p) for p in encode_frame_parts(request.to_frame()))
    conn = http.client.HTTPConnection("127.0.0.1", running.discovery.port, timeout=60)
    try:
        token = running.discovery.read_token()
        conn.request("POST", "/v1/jobs", body=body, headers={"Authorization": f"Bearer {token}"})
        response = conn.getresponse()
        assert response.status == 200
        accepted = read_frame(response.read)
        assert accepted.kind == "accepted"
        return accepted.header["job"]
    finally:
        conn.close()


MANY_OPEN_FILES = """
import os, resource
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
HELD = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]  # sockets opened from here on get fds >= 1024
"""


def test_a_daemon_with_many_open_files_still_notices_a_client_hang_up(tmp_path):
    import resource

    if resource.getrlimit(resource.RLIMIT_NOFILE)[1] < 2048:
        pytest.skip("this system allows a process fewer than 2048 open files")
    running = start_daemon_running(tmp_path, MANY_OPEN_FILES)
    client, image = running.client(), to_wire("image", np.zeros((8, 8, 3), np.uint8))
    blocking_started, release, blocking_error = threading.Event(), threading.Event(), []

    def blocking_job():
        try:
            client.run("echo", {"delay_s": 3600}, [image], on_progress=lambda f, t: blocking_started.set(),
                       should_cancel=release.is_set)
        except SemanticError as exc:
            blocking_error.append(exc)

    blocker = threading.Thread(target=blocking_job, daemon=True)
    blocker.start()
    try:
        assert blocking_started.wait(60)
        # Waiting in line, the job's stream writes nothing: only watching its socket shows the hang-up.
        job = hang_up_after_accepted(running, "echo", {"delay_s": 0})
        running.wait_for_log(rf"job {job} echo: cancelled", timeout=60)
        assert blocker.is_alive()
    finally:
        release.set()
        blocker.join(60)
        running.stop()
    assert blocking_error and blocking_error[0].code is ErrorCode.cancelled
    assert "failed:" not in running.log(), running.log()


FAULTY_ACTIONS = """
import time

import numpy as np

from core.actions.base import Action


def numpy_fraction(arrays, params, ctx):
    ctx.progress(np.float32(0.5), "A NumPy fraction")  # JobContext.report converts it; this call does not
    return {"image": arrays["image"]}


def unencodable_progress(arrays, params, ctx):
    ctx.progress(0.5, {"a set is no JSON": {1}})
    while True:  # computes until cancelled
        ctx.report(0.5, "Still computing")
        time.sleep(0.05)


ACTIONS = [Action("numpy_fraction", "progress with a NumPy fraction", numpy_fraction),
           Action("unencodable_progress", "progress the stream cannot encode", unencodable_progress)]
"""
EXTRA_ACTIONS = """
import pathlib

import core.actions

core.actions.__path__.append(str(pathlib.Path(__file__).parent / "extra_actions"))
"""


@pytest.fixture(scope="module")
def faulty_daemon(tmp_path_factory):
    running = start_daemon_running(tmp_path_factory.mktemp("faulty"), EXTRA_ACTIONS,
                                   {"extra_actions/faulty.py": FAULTY_ACTIONS})
    yield running
    running.stop()


def test_a_numpy_progress_fraction_reaches_the_client(faulty_daemon):
    image, _ = image_and_mask()
    fractions = []
    out = run_job(faulty_daemon.client(), "numpy_fraction", {}, on_progress=lambda f, t: fractions.append(f),
                  image=image)
    assert np.array_equal(out["image"], image) and fractions == [0.5]


def test_a_stream_that_fails_ends_with_an_error_frame_and_cancels_its_job(faulty_daemon):
    image, _ = image_and_mask()
    log_start = len(faulty_daemon.log())
    with pytest.raises(SemanticError) as info:
        run_job(faulty_daemon.client(), "unencodable_progress", {}, image=image)
    assert info.value.code is ErrorCode.internal, info.value.message
    assert "TypeError" in info.value.message and "daemon.log" in info.value.message
    job = faulty_daemon.wait_for_log(r"job (\w+) unencodable_progress accepted", start=log_start).group(1)
    faulty_daemon.wait_for_log(rf"job {job} unencodable_progress: cancelled", timeout=60, start=log_start)
    assert faulty_daemon.client().health()["protocol"] == 1


# --- doctor ------------------------------------------------------------------------------------------


def _doctor(tmp_path: Path, *args: str, weights: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, SEMANTIC_STATE_DIR=str(tmp_path / "doctor-state"),
               SEMANTIC_LOG_DIR=str(tmp_path / "doctor-log"), HOME=str(tmp_path / "home"),
               XDG_CONFIG_HOME=str(tmp_path / "home" / ".config"))
    env.pop("GIMP3_DIRECTORY", None)
    if weights is not None:
        env["SEMANTIC_WEIGHTS_DIR"] = str(weights)
    else:
        env.pop("SEMANTIC_WEIGHTS_DIR", None)
    return subprocess.run([sys.executable, "-m", "core", "doctor", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def test_doctor_fails_when_no_weights_are_listed(tmp_path):
    empty = tmp_path / "no-weights"
    empty.mkdir()
    done = _doctor(tmp_path, weights=empty)
    assert done.returncode == 1, done.stdout + done.stderr
    assert str(empty) in done.stdout and "Traceback" not in done.stderr


def test_doctor_fails_on_an_unreadable_manifest(tmp_path):
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "manifest.json").write_text("{not json")
    done = _doctor(tmp_path, weights=weights)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stdout + done.stderr
    assert str(weights / "manifest.json") in done.stdout + done.stderr


def test_doctor_checks_the_gimp_folder_it_was_given(tmp_path):
    import torch

    from core.weights import register_weights, save_tensors

    weights = tmp_path / "weights"
    weights.mkdir()
    save_tensors(weights / "tiny.safetensors", {"w": torch.zeros(2)})
    register_weights(weights / "tiny.safetensors", "tiny", "test", {}, directory=weights)
    gimp = tmp_path / "my-gimp"
    missing = _doctor(tmp_path, "--gimp-dir", str(gimp), weights=weights)
    assert missing.returncode == 1, missing.stdout + missing.stderr
    assert str(gimp / "plug-ins" / "gimp-semantic") in missing.stdout and "NOT installed" in missing.stdout
    assert str(tmp_path / "home") not in missing.stdout  # not the default folders it was not asked about

    install.install_plugin(GimpConfigDir(gimp, "custom"), install.plugin_settings(["x"], tmp_path / "s"))
    present = _doctor(tmp_path, "--gimp-dir", str(gimp), weights=weights)
    assert present.returncode == 0, present.stdout + present.stderr
    assert str(gimp / "plug-ins" / "gimp-semantic") in present.stdout and "NOT" not in present.stdout
