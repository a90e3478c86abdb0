import importlib
import json
import os
import signal
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


@pytest.fixture()
def one_thread():
    """Tiny networks run fastest on one thread; several threads on a shared, busy CPU spin-wait instead.
    Test modules that run networks opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def link(tmp_path, monkeypatch):
    """The plug-in's daemon finder imported from a freshly installed plug-in folder, run with plain Python exactly
    as installed (no GIMP needed): (daemon_link module, plug-in folder, state dir). A daemon it started is stopped."""
    sys.path.insert(0, str(REPO / "installer"))
    import install

    from core.gimp_dirs import GimpConfigDir

    state = tmp_path / "state"
    state.mkdir()
    command = [sys.executable, "-m", "core", "daemon", "--idle-exit", "60"]
    folder = install.install_plugin(GimpConfigDir(tmp_path / "gimp", "3.0"), install.plugin_settings(command, state))
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delenv("SEMANTIC_STATE_DIR", raising=False)
    monkeypatch.delenv("FLATPAK_ID", raising=False)
    monkeypatch.setenv("SEMANTIC_LOG_DIR", str(tmp_path / "log"))
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    for name in ("daemon_link", "semantic_protocol"):
        sys.modules.pop(name, None)
    module = importlib.import_module("daemon_link")
    yield module, folder, state
    try:
        pid = json.loads((state / "daemon.json").read_text())["pid"]
    except (OSError, ValueError, TypeError, KeyError):
        pid = None  # no daemon started, or a test wrote a malformed discovery file on purpose
    if isinstance(pid, int) and pid != os.getpid():
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    for name in ("daemon_link", "semantic_protocol"):
        sys.modules.pop(name, None)
