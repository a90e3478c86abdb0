"""The daemon as a real subprocess on a real loopback port."""

from __future__ import annotations

import http.client
import json
import os
import stat
import threading

import numpy as np
import pytest

from core.actions.inputs import to_numpy, to_wire
from core.protocol import DaemonClient, ErrorCode, JobRequest, SemanticError, encode_frame_parts
from tests.e2e.harness import start_daemon


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    running = start_daemon(tmp_path_factory.mktemp("state"), "--idle-exit", "0", "--max-payload-mb", "8")
    yield running
    running.stop()


def sample(h=48, w=64, seed=0):
    rng = np.random.default_rng(seed)
    image = (rng.random((h, w, 4)) * 255).astype(np.uint8)
    mask = np.zeros((h, w, 1), np.uint8)
    mask[10:30, 10:40] = 255
    return image, mask


def run(client, action, params, **arrays):
    frame = client.run(action, params, [to_wire(k, v) for k, v in arrays.items()])
    return {k: to_numpy(v) for k, v in frame.arrays.items()}


def raw_request(daemon, method, path, body=b"", headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", daemon.discovery.port, timeout=10)
    conn.request(method, path, body=body, headers=headers or {})
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, json.loads(data or b"{}")


def test_discovery_and_token_files_are_private(daemon):
    for name in ("daemon.json", "token"):
        mode = stat.S_IMODE(os.stat(daemon.state_dir / name).st_mode)
        assert mode == 0o600, (name, oct(mode))
    assert daemon.discovery.address == "127.0.0.1" and daemon.discovery.pid == daemon.process.pid


def test_health_lists_actions(daemon):
    health = daemon.client().health()
    assert health["protocol"] == 1 and "harmonize" in health["actions"] and health["device"] == "cpu"


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "token"}])
def test_missing_or_wrong_token_is_401(daemon, headers):
    status, body = raw_request(daemon, "GET", "/v1/health", headers=headers)
    assert status == 401 and body["error"]["code"] == "unauthorized"


def test_harmonize_roundtrip_matches_in_process(daemon):
    from core.harmonization.statistics import harmonize_statistics

    image, mask = sample()
    out = run(daemon.client(), "harmonize", {"method": "statistics", "strength": 0.7},
              image=image, mask=mask)["image"]
    expected = harmonize_statistics(image, mask[..., 0] / np.float32(255), 0.7)
    assert np.array_equal(out, expected)


def test_float_images_roundtrip(daemon):
    image = np.random.default_rng(1).random((20, 30, 3)).astype(np.float32)
    out = run(daemon.client(), "echo", {}, image=image)["image"]
    assert out.dtype == np.float32 and np.array_equal(out, image)


@pytest.mark.parametrize("case,code,needle", [
    ("unknown_action", ErrorCode.unknown_action, "unknown action"),
    ("size_mismatch", ErrorCode.bad_input, "same size"),
    ("empty_mask", ErrorCode.bad_input, "empty"),
    ("bad_shape", ErrorCode.bad_input, "channels"),
    ("bad_param", ErrorCode.bad_input, "strength"),
    ("no_mask", ErrorCode.bad_input, "mask"),
])
def test_bad_input_is_a_clear_error_and_daemon_keeps_serving(daemon, case, code, needle):
    image, mask = sample()
    arrays, params, action = {"image": image, "mask": mask}, {"method": "statistics"}, "harmonize"
    if case == "unknown_action":
        action = "levitate"
    elif case == "size_mismatch":
        arrays["mask"] = mask[:20]
    elif case == "empty_mask":
        arrays["mask"] = np.zeros_like(mask)
    elif case == "bad_shape":
        arrays["image"] = np.zeros((8, 8, 7), np.uint8)
    elif case == "bad_param":
        params["strength"] = 3
    elif case == "no_mask":
        del arrays["mask"]
    with pytest.raises(SemanticError) as info:
        run(daemon.client(), action, params, **arrays)
    assert info.value.code is code
    assert needle in info.value.message.lower()
    assert daemon.client().health()["protocol"] == 1


def test_payload_over_limit_is_413(daemon):
    big = np.zeros((2000, 1500, 4), np.uint8)  # 12 MB > 8 MB limit
    with pytest.raises(SemanticError) as info:
        run(daemon.client(), "echo", {}, image=big)
    assert info.value.code is ErrorCode.payload_too_large and "limit" in info.value.message
    assert daemon.client().health()["protocol"] == 1


def test_protocol_version_mismatch(daemon):
    image, _ = sample()
    request = JobRequest("echo", {}, {"image": to_wire("image", image)}, protocol=99, client_version="9.9")
    body = b"".join(bytes(p) for p in encode_frame_parts(request.to_frame()))
    token = daemon.discovery.read_token()
    status, data = raw_request(daemon, "POST", "/v1/jobs", body, {"Authorization": f"Bearer {token}"})
    assert status == 409 and data["error"]["code"] == "version_mismatch"
    assert "re-run the installer" in data["error"]["message"].lower()
    status, data = raw_request(daemon, "POST", "/v1/jobs", body,
                               {"Authorization": f"Bearer {token}", "X-Semantic-Protocol": "2"})
    assert status == 409


def test_garbage_body_is_rejected(daemon):
    token = daemon.discovery.read_token()
    status, data = raw_request(daemon, "POST", "/v1/jobs", b"not a frame at all, sorry",
                               {"Authorization": f"Bearer {token}"})
    assert status == 400 and data["error"]["code"] == "bad_request"


def test_concurrent_clients_get_their_own_results(daemon):
    results, errors = {}, []

    def worker(seed):
        try:
            image, mask = sample(40 + seed, 50 + seed, seed)
            out = run(daemon.client(), "echo", {"delay_s": 0.2}, image=image)["image"]
            results[seed] = np.array_equal(out, image)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(results) == 6 and all(results.values())


def finishes(work, guard_s: float = 120.0):
    """Runs `work` in a thread and returns its result, or fails if it is still running after `guard_s`.

    The jobs below would hold the daemon for an hour if cancelling did not work, so finishing at all is the
    check; the guard only keeps a broken daemon from hanging the suite (it is not a speed assertion).
    """
    outcome: dict = {}

    def target():
        try:
            outcome["value"] = work()
        except BaseException as exc:  # handed to the test thread below
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(guard_s)
    assert not thread.is_alive(), "the job was not cancelled: it still holds the daemon"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def test_progress_streams_and_cancel_stops_the_job(daemon):
    client = daemon.client()
    image, _ = sample()
    seen = []

    def cancelled_run():
        with pytest.raises(SemanticError) as info:
            client.run("echo", {"delay_s": 3600}, [to_wire("image", image)],
                       on_progress=lambda f, t: seen.append(f), should_cancel=lambda: len(seen) >= 3)
        return info.value.code

    assert finishes(cancelled_run) is ErrorCode.cancelled
    assert len(seen) >= 3
    assert client.health()["protocol"] == 1


def test_client_disconnect_cancels_and_daemon_keeps_serving(daemon):
    image, _ = sample()
    request = JobRequest("echo", {"delay_s": 3600}, {"image": to_wire("image", image)})
    body = b"".join(bytes(p) for p in encode_frame_parts(request.to_frame()))
    conn = http.client.HTTPConnection("127.0.0.1", daemon.discovery.port, timeout=10)
    conn.request("POST", "/v1/jobs", body=body,
                 headers={"Authorization": f"Bearer {daemon.discovery.read_token()}"})
    response = conn.getresponse()
    assert response.status == 200
    response.read(64)
    conn.close()
    # The next job must not wait an hour behind the abandoned one.
    out = finishes(lambda: run(daemon.client(), "echo", {}, image=image)["image"])
    assert np.array_equal(out, image)


def test_idle_exit_removes_discovery(tmp_path):
    running = start_daemon(tmp_path / "state", "--idle-exit", "1")
    try:
        running.process.wait(30)
    finally:
        running.stop()
    assert running.process.returncode == 0
    assert not (tmp_path / "state" / "daemon.json").exists()


def test_unreachable_daemon_is_a_clear_error():
    client = DaemonClient("127.0.0.1", 1, "token")
    with pytest.raises(SemanticError) as info:
        client.health()
    assert info.value.code is ErrorCode.daemon_unavailable and "gimp-semantic daemon" in info.value.message


def test_client_checks_the_limit_before_sending(daemon):
    client = daemon.client()
    assert client.health()["max_payload_bytes"] == 8_000_000
    with pytest.raises(SemanticError) as info:
        run(client, "echo", {}, image=np.zeros((2000, 1500, 4), np.uint8))
    assert info.value.code is ErrorCode.payload_too_large


def test_missing_or_corrupt_weights_name_the_file(tmp_path):
    import shutil

    from core.harmonization.deep import DEFAULT_WEIGHTS
    from core.weights import Manifest, bundled_weights_dir

    bundled = Manifest.load(bundled_weights_dir())  # 'deep' loads DEFAULT_WEIGHTS: corrupt exactly that file
    if DEFAULT_WEIGHTS not in bundled.entries:
        pytest.skip(f"{DEFAULT_WEIGHTS} is not in weights/manifest.json")
    weights = tmp_path / "weights"
    weights.mkdir()
    shutil.copyfile(bundled.directory / "manifest.json", weights / "manifest.json")
    target = weights / bundled.entries[DEFAULT_WEIGHTS].file
    shutil.copyfile(bundled.path(DEFAULT_WEIGHTS), target)
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x55
    target.write_bytes(bytes(data))
    running = start_daemon(tmp_path / "state", "--idle-exit", "0",
                           env=dict(os.environ, SEMANTIC_WEIGHTS_DIR=str(weights)))
    try:
        image, mask = sample()
        with pytest.raises(SemanticError) as info:
            run(running.client(), "harmonize", {"method": "deep"}, image=image, mask=mask)
        assert info.value.code is ErrorCode.weights_corrupt and str(target) in info.value.message
        target.unlink()
        with pytest.raises(SemanticError) as info:
            run(running.client(), "harmonize", {"method": "deep"}, image=image, mask=mask)
        assert info.value.code is ErrorCode.weights_missing and str(target) in info.value.message
        out = run(running.client(), "harmonize", {"method": "statistics"}, image=image, mask=mask)["image"]
        assert out.shape == image.shape
    finally:
        running.stop()
