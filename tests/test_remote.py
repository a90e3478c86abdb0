"""A daemon on "another machine": a real daemon with a kept token, reached through a real second port
(a Python forwarder standing in for ``ssh -N -L``, as no sshd runs here), by the installed plug-in's
daemon finder and by ``gimp-semantic doctor``."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import stat
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from core.actions.inputs import to_wire
from core.cli import main as cli_main
from core.gimp_dirs import GimpConfigDir
from tests.e2e.harness import REPO, RunningDaemon, install, start_daemon
from tests.e2e.tunnel import PortForward


@pytest.fixture(scope="module")
def gpu_box(tmp_path_factory) -> RunningDaemon:
    """The daemon as the README starts it on the GPU machine: a fixed port and a kept token file."""
    root = tmp_path_factory.mktemp("gpu-box")
    running = start_daemon(root / "state", "--idle-exit", "0", "--token-file", str(root / "remote-token"))
    yield running
    running.stop()


@pytest.fixture
def tunnel(gpu_box):
    with PortForward(gpu_box.discovery.port) as forward:
        yield forward


@pytest.fixture
def plugin(tmp_path, gpu_box, tunnel, monkeypatch):
    """The plug-in's daemon finder, installed with the installer's remote settings and a copied token."""
    token_copy = tmp_path / "laptop" / "gpu-token"
    token_copy.parent.mkdir()
    shutil.copyfile(gpu_box.discovery.token_file, token_copy)
    marker = tmp_path / "local-daemon-started"
    # Were a local daemon ever started, this command would leave the marker behind.
    spawn = [sys.executable, "-c", f"open({str(marker)!r}, 'w')"]
    settings = install.plugin_settings(spawn, tmp_path / "laptop-state",
                                       install.remote_settings(tunnel.port, token_copy))
    folder = install.install_plugin(GimpConfigDir(tmp_path / "gimp", "3.2"), settings)
    monkeypatch.syspath_prepend(str(folder))
    for name in ("daemon_link", "semantic_protocol"):
        sys.modules.pop(name, None)
    yield importlib.import_module("daemon_link"), folder, token_copy, marker
    for name in ("daemon_link", "semantic_protocol"):
        sys.modules.pop(name, None)


def test_kept_token_file_is_private_and_named_in_discovery(gpu_box):
    token_file = Path(gpu_box.discovery.token_file)
    assert token_file.name == "remote-token" and stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert gpu_box.discovery.address == "127.0.0.1"


def test_plugin_runs_jobs_through_the_tunnel_and_starts_no_daemon(plugin, tunnel):
    daemon_link, _, _, marker = plugin
    statuses = []
    client = daemon_link.connect(statuses.append)
    assert (client.host, client.port) == ("127.0.0.1", tunnel.port)
    image = np.arange(6 * 5 * 3, dtype=np.uint8).reshape(6, 5, 3)
    result = client.run("echo", {}, [to_wire("image", image)])
    assert bytes(result.arrays["image"].data) == image.tobytes()
    assert tunnel.connections >= 2 and "remote daemon" in statuses[0]
    assert not marker.exists()


def test_tunnel_down_says_so_and_starts_no_daemon(plugin, tunnel):
    daemon_link, _, _, marker = plugin
    tunnel.close()
    with pytest.raises(Exception) as info:
        daemon_link.connect()
    message = str(info.value)
    assert info.value.code.value == "daemon_unavailable", message
    assert f"ssh -N -L {tunnel.port}:127.0.0.1:{tunnel.port}" in message and "tunnel" in message
    assert not marker.exists()


def test_tunnel_up_but_daemon_gone_says_so(plugin, tmp_path):
    daemon_link, folder, _, marker = plugin
    with PortForward(_closed_port()) as dead_end:  # ssh accepts, then finds nothing on the far side
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps(dict(config, port=dead_end.port)))
        with pytest.raises(Exception) as info:
            daemon_link.connect()
    assert info.value.code.value == "daemon_unavailable" and "daemon runs there" in str(info.value)
    assert not marker.exists()


def test_wrong_or_missing_token_names_the_file(plugin):
    daemon_link, _, token_copy, _ = plugin
    token_copy.write_text("a-token-from-an-earlier-daemon-start\n")
    with pytest.raises(Exception) as info:
        daemon_link.connect()
    assert info.value.code.value == "unauthorized" and str(token_copy) in str(info.value)
    token_copy.unlink()
    with pytest.raises(Exception) as info:
        daemon_link.connect()
    assert info.value.code.value == "daemon_unavailable" and "scp" in str(info.value)


def test_tunnel_dropping_mid_job_cancels_it_on_the_gpu_box(plugin, tunnel, gpu_box):
    daemon_link, _, _, _ = plugin
    client = daemon_link.connect()
    image = to_wire("image", np.zeros((4, 4, 3), np.uint8))
    started, errors = threading.Event(), []

    def work():
        try:
            client.run("echo", {"delay_s": 3600}, [image], on_progress=lambda f, t: started.set())
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            errors.append(exc)

    log_start = len(gpu_box.log())
    worker = threading.Thread(target=work)
    worker.start()
    assert started.wait(60)
    tunnel.close()
    worker.join(60)
    assert errors and errors[0].code.value == "daemon_unavailable", errors
    job = gpu_box.wait_for_log(r"job (\w+) echo accepted", start=log_start).group(1)
    gpu_box.wait_for_log(rf"job {job} echo: cancelled")


def test_doctor_checks_the_remote_connection(plugin, tunnel, monkeypatch, capsys):
    _, folder, _, _ = plugin
    monkeypatch.setenv("GIMP3_DIRECTORY", str(folder.parents[1]))
    cli_main(["doctor", "--json"])
    ours = [r for r in json.loads(capsys.readouterr().out)["remote"] if r["config"] == str(folder / "config.json")]
    assert len(ours) == 1 and ours[0]["ok"] and ours[0]["port"] == tunnel.port, ours
    tunnel.close()
    assert cli_main(["doctor"]) != 0
    out = capsys.readouterr().out
    assert "remote   FAILED" in out and "tunnel" in out


def test_daemon_refuses_a_token_file_others_can_read(tmp_path):
    token = tmp_path / "token"
    token.write_text("x" * 40 + "\n")
    token.chmod(0o644)
    env = dict(os.environ, SEMANTIC_STATE_DIR=str(tmp_path / "state"), SEMANTIC_LOG_DIR=str(tmp_path / "log"))
    done = subprocess.run([sys.executable, "-m", "core", "daemon", "--token-file", str(token)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and f"chmod 600 {token}" in done.stderr
    assert not (tmp_path / "state" / "daemon.json").exists()


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]



@pytest.mark.parametrize("port, problem", [
    ("", None),  # the plug-in reads an empty port as "no remote daemon" and starts a local one
    (None, None),
    ("8765", "'port' must be the tunnel's local port"),  # a string, as a hand-edited config may hold
    (0, "'port' must be the tunnel's local port"),
])
def test_doctor_reads_a_plugin_config_as_the_plugin_does(tmp_path, port, problem):
    gimp = tmp_path / "gimp"
    install.install_plugin(GimpConfigDir(gimp, "3.2"), install.plugin_settings(["x"], tmp_path / "state"))
    config_file = gimp / "plug-ins" / "gimp-semantic" / "config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps(dict(config, port=port, token_file=str(tmp_path / "gpu-token"))))
    env = dict(os.environ, SEMANTIC_STATE_DIR=str(tmp_path / "state"), SEMANTIC_LOG_DIR=str(tmp_path / "log"))
    done = subprocess.run([sys.executable, "-m", "core", "doctor", "--json", "--gimp-dir", str(gimp)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert "Traceback" not in done.stderr, done.stderr
    report = json.loads(done.stdout)
    if problem is None:
        assert report["remote"] == [] and not any("remote" in p for p in report["problems"])
    else:
        assert [r["ok"] for r in report["remote"]] == [False] and problem in report["remote"][0]["message"]
        assert any(problem in p and str(config_file) in p for p in report["problems"]), report["problems"]
        assert done.returncode == 1


def test_daemon_command_refuses_to_leave_another_daemon_in_place_of_the_one_asked_for(tmp_path):
    """The README's GPU-machine command, run while a daemon started without it (e.g. by a local plug-in)
    still runs: it must not report success with no daemon on the port and no token file."""
    running = start_daemon(tmp_path / "state", "--idle-exit", "0")
    env = dict(os.environ, SEMANTIC_STATE_DIR=str(tmp_path / "state"), SEMANTIC_LOG_DIR=str(tmp_path / "log"))

    def daemon_command(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "core", "daemon", "--idle-exit", "0", *args], cwd=REPO,
                              env=env, capture_output=True, text=True, timeout=120)

    try:
        port, token_file = _closed_port(), tmp_path / "remote-token"
        for asked in (["--port", str(port), "--token-file", str(token_file)], ["--port", str(port)],
                      ["--token-file", str(token_file)]):
            done = daemon_command(*asked)
            assert done.returncode == 2, (asked, done.returncode, done.stderr)
            pid = running.process.pid
            assert f"pid {pid}" in done.stderr and f":{running.discovery.port}" in done.stderr, done.stderr
            assert f"kill {pid}" in done.stderr and "Traceback" not in done.stderr, done.stderr
            assert not token_file.exists()
        # What it has, or nothing in particular: the running daemon is the one asked for.
        for asked in ([], ["--port", str(running.discovery.port)],
                      ["--token-file", running.discovery.token_file]):
            done = daemon_command(*asked)
            assert done.returncode == 0 and "already running" in done.stderr, (asked, done.stderr)
        assert running.client().health()["pid"] == running.process.pid
    finally:
        running.stop()


def test_readme_opens_the_tunnel_before_the_installer_checks_it():
    """The installer ends with doctor, which checks the remote daemon through the tunnel: the README's
    GIMP-machine recipe must open the tunnel first, or its own check reports 'remote FAILED'."""
    section = (REPO / "README.md").read_text(encoding="utf-8").split("\n## Remote GPU\n")[1].split("\n## ")[0]
    commands = [line.strip() for line in section.splitlines()]
    tunnel = next(i for i, line in enumerate(commands) if line.startswith("ssh ") and " -L 8765:" in line)
    installer = next(i for i, line in enumerate(commands) if "install.py" in line and "--remote-port" in line)
    assert tunnel < installer, (commands[tunnel], commands[installer])
    assert not commands[tunnel].endswith("&")  # ssh -f returns once connected; '&' returns at once
