"""Real daemon on a real port, real GIMP 3 headless: the pieces every end-to-end test uses."""

from __future__ import annotations

import json
import os
import re
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

# GIMP 3.0 installs gimp-console-3.0; GIMP 3.2 (Debian sid) gimp-console-3.2, gimp-console-3 and gimp-console.
VERSIONED_CONSOLES = ("gimp-console-3.0", "gimp-console-3.2", "gimp-console-3")


def gimp_console_command() -> list[str] | None:
    """GIMP_CONSOLE (may hold several words, e.g. '../shared/tools/gimp3 console'), else PATH."""
    configured = os.environ.get("GIMP_CONSOLE")
    if configured:
        words = shlex.split(configured)
        if words and not os.path.isabs(words[0]) and os.sep in words[0]:
            words[0] = str((REPO / words[0]).resolve())
        return words
    for name in VERSIONED_CONSOLES:
        if found := shutil.which(name):
            return [found]
    # A bare gimp-console may still be GIMP 2.10 (Debian 12), whose plug-in API is another one.
    bare = shutil.which("gimp-console")
    return [bare] if bare and is_gimp3(bare) else None


def is_gimp3(console: str) -> bool:
    try:
        version = subprocess.run([console, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return "version 3." in version


SKIP_REASON = ("no GIMP 3 found: set GIMP_CONSOLE (e.g. '../shared/tools/gimp3 console') or put "
               "gimp-console-3.0, gimp-console-3.2 or a GIMP 3 gimp-console on PATH")


@dataclass
class RunningDaemon:
    process: subprocess.Popen
    state_dir: Path
    discovery: Discovery

    def client(self) -> DaemonClient:
        return DaemonClient(self.discovery.address, self.discovery.port, self.discovery.read_token(),
                            client_version=__version__)

    def log(self) -> str:
        path = self.state_dir / "log" / "daemon.log"
        return path.read_text(encoding="utf-8") if path.exists() else ""

    def wait_for_log(self, pattern: str, timeout: float = 120.0, start: int = 0) -> re.Match:
        """The first match of ``pattern`` in the daemon's log from offset ``start`` (e.g. len(log()) before
        an action), waiting for the line to be written."""
        deadline = time.monotonic() + timeout
        while not (found := re.compile(pattern).search(self.log(), start)):
            if time.monotonic() > deadline:
                raise AssertionError(f"no /{pattern}/ in the daemon log after {timeout:.0f} s:\n{self.log()}")
            time.sleep(0.05)
        return found

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_daemon(state_dir: Path, *extra: str, env: dict | None = None, timeout: float = 60.0,
                 stderr_path: Path | None = None) -> RunningDaemon:
    """The daemon's stderr goes to ``stderr_path`` when given (to check what a user in a terminal sees)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ if env is None else env, SEMANTIC_STATE_DIR=str(state_dir),
               SEMANTIC_LOG_DIR=str(state_dir / "log"))
    sink = open(stderr_path, "wb") if stderr_path else None  # noqa: SIM115 - the child keeps its own copy
    try:
        process = subprocess.Popen([sys.executable, "-m", "core", "daemon", *extra], cwd=REPO, env=env,
                                   stdout=subprocess.DEVNULL, stderr=sink or subprocess.PIPE)
    finally:
        if sink:
            sink.close()
    discovery_path = state_dir / "daemon.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = stderr_path.read_bytes() if stderr_path else process.stderr.read()
            raise RuntimeError(f"daemon exited: {output.decode(errors='replace')}")
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
    """A fresh GIMP3_DIRECTORY with the plug-in installed the way the installer does it.

    ``remote`` adds the installer's remote-daemon settings (address, port, token_file) to its config.
    """

    def __init__(self, command: list[str], root: Path, state_dir: Path, remote: dict | None = None):
        self.command = command
        self.root = root
        self.config_dir = root / "gimp-config"
        self.state_dir = state_dir
        settings = install.plugin_settings([str(REPO / "missing-daemon-launcher")], state_dir)
        install.install_plugin(GimpConfigDir(self.config_dir, "test"), dict(settings, **(remote or {})))

    @property
    def plugin_file(self) -> Path:
        """The installed plug-in's main file; its process's command line names it."""
        return GimpConfigDir(self.config_dir, "test").plugin_folder / "gimp-semantic.py"

    def run(self, script: str, timeout: float = 240.0) -> GimpRun:
        """Run ``script`` inside GIMP; it may write a JSON dict to RESULT_PATH for the test to read."""
        return self.start(script).wait(timeout)

    def start(self, script: str) -> RunningGimp:
        """Like run(), but returns at once: the test acts while GIMP runs the script."""
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
        process = subprocess.Popen(
            [*self.command, "-idf", "--batch-interpreter=python-fu-eval", "-b", batch, "--quit"],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        return RunningGimp(process, result_path)


@dataclass
class RunningGimp:
    process: subprocess.Popen
    result_path: Path

    def wait(self, timeout: float = 240.0) -> GimpRun:
        try:
            stdout, stderr = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.communicate()
            raise
        result = json.loads(self.result_path.read_text()) if self.result_path.exists() else {}
        return GimpRun(self.process.returncode, stdout + stderr, result, self.result_path)


def temp_root(prefix: str) -> Path:
    """A folder under /tmp, which the GIMP sandbox binds at the same path."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
