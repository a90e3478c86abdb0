"""Real daemon on a real port, real GIMP 3 headless: the pieces every end-to-end test uses."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "installer"))

import install  # noqa: E402

from core import __version__  # noqa: E402
from core.gimp_dirs import GimpConfigDir  # noqa: E402
from core.protocol import DaemonClient, Discovery  # noqa: E402


def gimp_console_command() -> list[str] | None:
    """GIMP_CONSOLE (may hold several words, e.g. '../shared/tools/gimp3 console'), else PATH."""
    configured = os.environ.get("GIMP_CONSOLE")
    if configured:
        words = shlex.split(configured)
        if words and not os.path.isabs(words[0]) and os.sep in words[0]:
            words[0] = str((REPO / words[0]).resolve())
        return words
    found = shutil.which("gimp-console-3.0")
    return [found] if found else None


SKIP_REASON = ("no GIMP 3 found: set GIMP_CONSOLE (e.g. '../shared/tools/gimp3 console') or put "
               "gimp-console-3.0 on PATH")


@dataclass
class RunningDaemon:
    process: subprocess.Popen
    state_dir: Path
    discovery: Discovery

    def client(self) -> DaemonClient:
        return DaemonClient(self.discovery.address, self.discovery.port, self.discovery.read_token(),
                            client_version=__version__)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_daemon(state_dir: Path, *extra: str, env: dict | None = None, timeout: float = 60.0) -> RunningDaemon:
    state_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ if env is None else env, SEMANTIC_STATE_DIR=str(state_dir),
               SEMANTIC_LOG_DIR=str(state_dir / "log"))
    process = subprocess.Popen([sys.executable, "-m", "core", "daemon", *extra], cwd=REPO, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    discovery_path = state_dir / "daemon.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"daemon exited: {process.stderr.read().decode(errors='replace')}")
        if discovery_path.exists():
            try:
                discovery = Discovery.from_json(discovery_path.read_text())
                if discovery.pid == process.pid:
                    daemon = RunningDaemon(process, state_dir, discovery)
                    daemon.client().health()
                    return daemon
            except (ValueError, KeyError, OSError):
                pass
        time.sleep(0.1)
    process.kill()
    raise RuntimeError("daemon did not start in time")


@dataclass
class GimpRun:
    returncode: int
    output: str
    result: dict
    result_path: Path

    def array(self, name: str, shape: tuple[int, ...], dtype=np.uint8) -> np.ndarray:
        """Pixels the script wrote with ``dump(name, data)``."""
        return np.fromfile(f"{self.result_path}.{name}", dtype=dtype).reshape(shape)


class Gimp:
    """A fresh GIMP3_DIRECTORY with the plug-in installed the way the installer does it."""

    def __init__(self, command: list[str], root: Path, state_dir: Path):
        self.command = command
        self.root = root
        self.config_dir = root / "gimp-config"
        self.state_dir = state_dir
        settings = install.plugin_settings([str(REPO / "missing-daemon-launcher")], state_dir)
        install.install_plugin(GimpConfigDir(self.config_dir, "test"), settings)

    def run(self, script: str, timeout: float = 240.0) -> GimpRun:
        """Run ``script`` inside GIMP; it may write a JSON dict to RESULT_PATH for the test to read."""
        result_path = self.root / f"result-{time.monotonic_ns()}.json"
        script_path = self.root / f"script-{time.monotonic_ns()}.py"
        preamble = textwrap.dedent(f"""
            import json, sys
            import gi
            gi.require_version('Gimp', '3.0'); gi.require_version('Gegl', '0.4')
            from gi.repository import Gimp, Gegl, Gio, GLib, GObject
            RESULT_PATH = {str(result_path)!r}
            def save_result(data):
                with open(RESULT_PATH, 'w') as f:
                    json.dump(data, f)
            def dump(name, data):
                with open(RESULT_PATH + '.' + name, 'wb') as f:
                    f.write(data)
            def run_procedure(name, image, drawables, **properties):
                proc = Gimp.get_pdb().lookup_procedure(name)
                cfg = proc.create_config()
                cfg.set_property('run-mode', Gimp.RunMode.NONINTERACTIVE)
                cfg.set_property('image', image)
                cfg.set_core_object_array('drawables', drawables)
                for key, value in properties.items():
                    cfg.set_property(key.replace('_', '-'), value)
                res = proc.run(cfg)
                error = res.index(1) if res.length() > 1 else None
                return res.index(0), None if error is None else str(getattr(error, 'message', error))
        """)
        script_path.write_text(preamble + textwrap.dedent(script))
        env = dict(os.environ, GIMP3_DIRECTORY=str(self.config_dir), SEMANTIC_STATE_DIR=str(self.state_dir))
        batch = f"exec(open({str(script_path)!r}).read())"
        completed = subprocess.run(
            [*self.command, "-idf", "--batch-interpreter=python-fu-eval", "-b", batch, "--quit"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
        result = json.loads(result_path.read_text()) if result_path.exists() else {}
        return GimpRun(completed.returncode, completed.stdout + completed.stderr, result, result_path)


def temp_root(prefix: str) -> Path:
    """A folder under /tmp, which the GIMP sandbox binds at the same path."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
