"""Find the gimp-semantic daemon, starting it if needed (standard library only).

With a remote daemon in config.json (address, port, token_file: an SSH tunnel's local end), connect
there and never start one here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from semantic_protocol import PROTOCOL_VERSION, DaemonClient, Discovery, ErrorCode, RemoteDaemon, SemanticError

HERE = Path(__file__).resolve().parent
CONFIG_FILE = HERE / "config.json"
START_TIMEOUT_S = 90.0


def load_config() -> dict:
    try:
        return json.loads(CONFIG_FILE.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SemanticError(ErrorCode.daemon_unavailable,
                            f"{CONFIG_FILE} is missing: the plug-in was not installed by the gimp-semantic "
                            "installer. Run 'python3 installer/install.py' from the project folder.") from None
    except (OSError, ValueError) as exc:
        raise SemanticError(ErrorCode.daemon_unavailable, f"Cannot read {CONFIG_FILE}: {exc}") from None


def discovery_path(config: dict) -> Path:
    state = os.environ.get("SEMANTIC_STATE_DIR") or config.get("state_dir", "")
    return Path(state) / "daemon.json"


def in_flatpak() -> bool:
    return bool(os.environ.get("FLATPAK_ID")) or Path("/.flatpak-info").exists()


def try_connect(config: dict) -> DaemonClient | None:
    path = discovery_path(config)
    try:
        discovery = Discovery.from_json(path.read_text(encoding="utf-8"))
        # A dead daemon's port may be another program's by now: it must not get the token. Flatpak GIMP
        # sees its own process table, where the daemon outside never shows, so it relies on the health check.
        if not in_flatpak() and not discovery.process_exists():
            return None
        client = DaemonClient(discovery.address, discovery.port, discovery.read_token(),
                              client_version=config.get("version", ""))
        health = client.health(timeout=3.0)
    except (OSError, ValueError, KeyError):
        return None
    except SemanticError as exc:
        if exc.code is ErrorCode.daemon_unavailable:
            return None
        raise
    check_versions(config, health)
    return client


def check_versions(config: dict, health: dict) -> None:
    ours, theirs = config.get("version", "?"), health.get("version", "?")
    if health.get("protocol") != PROTOCOL_VERSION or ours != theirs:
        raise SemanticError(
            ErrorCode.version_mismatch,
            f"The plug-in (version {ours}, protocol {PROTOCOL_VERSION}) and the running daemon "
            f"(version {theirs}, protocol {health.get('protocol')}) come from different releases. "
            "Stop the daemon and re-run the installer.")


def connect(on_status=None) -> DaemonClient:
    """A client for a healthy daemon of our version; starts one if none runs."""
    config = load_config()
    remote = RemoteDaemon.from_config(config, str(CONFIG_FILE))
    if remote is not None:
        if on_status:
            on_status(f"Connecting to the remote daemon through {remote.address}:{remote.port}")
        client, health = remote.connect(config.get("version", ""))
        check_versions(config, health)
        return client
    client = try_connect(config)
    if client is not None:
        return client
    if in_flatpak():
        raise SemanticError(
            ErrorCode.daemon_unavailable,
            "The gimp-semantic daemon is not running, and Flatpak GIMP cannot start programs on your "
            "system. Start it in a terminal with 'gimp-semantic daemon' (or enable the autostart the "
            "installer offers), then run this filter again.")
    command = config.get("daemon_command")
    if not command:
        raise SemanticError(ErrorCode.daemon_unavailable,
                            "The daemon is not running and the installer's config names no command to "
                            "start it. Run 'gimp-semantic daemon' in a terminal.")
    if on_status:
        on_status("Starting the gimp-semantic daemon")
    _spawn(command, discovery_path(config).parent)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        client = try_connect(config)
        if client is not None:
            return client
        time.sleep(0.25)
    raise SemanticError(ErrorCode.daemon_unavailable,
                        f"Started the daemon ({' '.join(command)}) but it did not answer within "
                        f"{START_TIMEOUT_S:.0f} s. Run that command in a terminal to see why.")


def _spawn(command: list[str], state_dir: Path) -> None:
    # The daemon must write its discovery file where we are about to look for it.
    env = dict(os.environ, SEMANTIC_STATE_DIR=str(state_dir))
    kwargs: dict = {"stdin": subprocess.DEVNULL, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL,
                    "env": env}
    if sys.platform.startswith("win"):
        kwargs["creationflags"] = subprocess.CREATE_NO_WINDOW | subprocess.DETACHED_PROCESS
    else:
        kwargs["start_new_session"] = True
    try:
        subprocess.Popen(command, **kwargs)
    except OSError as exc:
        raise SemanticError(ErrorCode.daemon_unavailable,
                            f"Cannot start the daemon with {command[0]}: {exc}. Re-run the installer.") from None
