#!/usr/bin/env python3
"""Install gimp-semantic: daemon environment, GIMP 3 plug-in, verified weights, self-check.

    python3 installer/install.py [--demo] [--gimp-dir DIR ...] [--venv DIR] [--uninstall]
    python3 installer/install.py --remote-port PORT --remote-token-file FILE   (daemon on another machine)

Standard library only (it runs before the virtual environment exists). Safe to re-run: every step
checks what is already there. Linux, macOS and Windows paths are handled; Flatpak GIMP gets the
plug-in too, with the daemon started outside it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import stat
import subprocess
import sys
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from core import __version__  # noqa: E402  (stdlib-only module)
from core.gimp_dirs import PLUGIN_NAME, GimpConfigDir, detect_config_dirs  # noqa: E402

PLUGIN_SOURCE = REPO / "plug-ins" / PLUGIN_NAME
PROTOCOL_SOURCE = REPO / "core" / "protocol.py"
TORCH_REQUIREMENT = "torch==2.13.0"  # the CPU build this project is tested with


def default_data_dir() -> Path:
    if sys.platform.startswith("win"):
        return Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local")) / PLUGIN_NAME
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / PLUGIN_NAME
    return Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share")) / PLUGIN_NAME


def default_state_dir() -> Path:
    """Must match platformdirs.user_state_dir('gimp-semantic') used by the daemon."""
    if sys.platform.startswith("win") or sys.platform == "darwin":
        return default_data_dir()
    return Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state")) / PLUGIN_NAME


def venv_python(venv_dir: Path) -> Path:
    return venv_dir / ("Scripts/python.exe" if sys.platform.startswith("win") else "bin/python")


def say(text: str) -> None:
    print(f"[gimp-semantic] {text}", flush=True)


# --- steps ------------------------------------------------------------------------------------


def create_venv(venv_dir: Path) -> Path:
    python = venv_python(venv_dir)
    if python.exists():
        say(f"virtual environment: {venv_dir} (exists)")
    else:
        say(f"virtual environment: creating {venv_dir}")
        try:
            venv.EnvBuilder(with_pip=True, clear=False).create(venv_dir)
        except (subprocess.CalledProcessError, OSError) as exc:
            raise SystemExit(
                f"Could not create a virtual environment ({exc}).\n"
                "On Debian/Ubuntu install the venv module first:  sudo apt install python3-venv") from None
    return python


def install_package(python: Path, editable: bool = False) -> None:
    say("installing the daemon and its dependencies (torch CPU build; this can take a few minutes)")
    pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    _check(pip + [TORCH_REQUIREMENT])
    _check(pip + (["-e", str(REPO)] if editable else [str(REPO)]))


def install_weights(python: Path, weights_dir: Path) -> None:
    say(f"weights: installing into {weights_dir} (sha256 verified)")
    _check([str(python), "-m", "core", "weights", "install", "--from", str(REPO / "weights"),
            "--to", str(weights_dir)])


def install_plugin(config_dir: GimpConfigDir, settings: dict) -> Path:
    """Copy the plug-in folder, the protocol module and the config into one GIMP config dir."""
    target = config_dir.plugin_folder
    target.mkdir(parents=True, exist_ok=True)
    for source in PLUGIN_SOURCE.glob("*.py"):
        shutil.copyfile(source, target / source.name)
    shutil.copyfile(PROTOCOL_SOURCE, target / "semantic_protocol.py")
    settings = dict(settings, flatpak=config_dir.flatpak)
    (target / "config.json").write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
    main = target / f"{PLUGIN_NAME}.py"
    main.chmod(main.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    os.utime(main)  # GIMP caches registrations by the main file's mtime
    return target


def plugin_settings(daemon_command: list[str], state_dir: Path, remote: dict | None = None) -> dict:
    """The plug-in's config.json; ``remote`` (remote_settings()) points it at a daemon behind an SSH tunnel."""
    return {"version": __version__, "state_dir": str(state_dir), "daemon_command": daemon_command,
            **(remote or {})}


def remote_settings(port: int, token_file: Path, address: str = "127.0.0.1") -> dict:
    if not 0 < port < 65536:
        raise SystemExit(f"--remote-port must be a TCP port (1-65535), not {port}.")
    return {"address": address, "port": port, "token_file": str(token_file.expanduser().absolute())}


def write_daemon_launcher(data_dir: Path, python: Path, weights_dir: Path, state_dir: Path) -> Path:
    """A small script users (and Flatpak GIMP users) can run to start the daemon by hand."""
    data_dir.mkdir(parents=True, exist_ok=True)
    if sys.platform.startswith("win"):
        path = data_dir / "gimp-semantic-daemon.cmd"
        path.write_text(f"@set SEMANTIC_WEIGHTS_DIR={weights_dir}\r\n@set SEMANTIC_STATE_DIR={state_dir}\r\n"
                        f'@"{python}" -m core daemon %*\r\n')
    else:
        path = data_dir / "gimp-semantic-daemon"
        path.write_text(f'#!/bin/sh\nexport SEMANTIC_WEIGHTS_DIR="{weights_dir}"\n'
                        f'export SEMANTIC_STATE_DIR="${{SEMANTIC_STATE_DIR:-{state_dir}}}"\n'
                        f'exec "{python}" -m core daemon "$@"\n')
        path.chmod(0o755)
    return path


def launcher_command(launcher: Path) -> list[str]:
    return ["cmd", "/c", str(launcher)] if sys.platform.startswith("win") else [str(launcher)]


def uninstall(config_dirs: list[GimpConfigDir], data_dir: Path) -> None:
    for config_dir in config_dirs:
        if config_dir.plugin_folder.exists():
            shutil.rmtree(config_dir.plugin_folder)
            say(f"removed {config_dir.plugin_folder}")
    if data_dir.exists():
        shutil.rmtree(data_dir)
        say(f"removed {data_dir}")
    say("uninstalled (logs and daemon state, if any, are left in the user state folder)")


def _check(command: list[str], env: dict | None = None) -> None:
    result = subprocess.run(command, env=env)
    if result.returncode != 0:
        raise SystemExit(f"[gimp-semantic] step failed ({result.returncode}): {' '.join(command)}")


# --- main --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Install gimp-semantic (daemon, GIMP 3 plug-in, weights).")
    parser.add_argument("--gimp-dir", action="append", type=Path, default=None,
                        help="GIMP config dir to install the plug-in into (repeatable; default: detected)")
    parser.add_argument("--data-dir", type=Path, default=None, help="where the venv and weights go")
    parser.add_argument("--venv", type=Path, default=None, help="virtual environment (default: DATA/venv)")
    parser.add_argument("--state-dir", type=Path, default=None, help="daemon discovery/token folder")
    parser.add_argument("--editable", action="store_true", help="install the project in editable mode")
    parser.add_argument("--no-plugin", action="store_true", help="skip the GIMP plug-in")
    parser.add_argument("--demo", action="store_true", help="afterwards, run the demo on sample images")
    parser.add_argument("--demo-output", type=Path, default=Path("demo-output"))
    parser.add_argument("--uninstall", action="store_true", help="remove what the installer put in place")
    remote = parser.add_argument_group("remote daemon", "the daemon runs on another machine (a GPU box), "
                                       "reached through 'ssh -N -L PORT:127.0.0.1:PORT HOST'")
    remote.add_argument("--remote-port", type=int, default=None, metavar="PORT",
                        help="the SSH tunnel's local port; the plug-in then never starts a local daemon")
    remote.add_argument("--remote-token-file", type=Path, default=None, metavar="FILE",
                        help="a copy of the token file the remote daemon keeps (its --token-file)")
    remote.add_argument("--remote-address", default="127.0.0.1", metavar="ADDR",
                        help="the tunnel's local address (default 127.0.0.1)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if sys.version_info < (3, 10):
        raise SystemExit("gimp-semantic needs Python 3.10 or newer.")
    data_dir = args.data_dir or default_data_dir()
    config_dirs = [GimpConfigDir(Path(d), "custom") for d in args.gimp_dir] if args.gimp_dir \
        else detect_config_dirs()
    if args.uninstall:
        uninstall(config_dirs, data_dir)
        return 0
    if (args.remote_port is None) != (args.remote_token_file is None):
        raise SystemExit("--remote-port and --remote-token-file go together (see the README's Remote GPU section).")
    remote = remote_settings(args.remote_port, args.remote_token_file, args.remote_address) \
        if args.remote_port is not None else None
    venv_dir = args.venv or data_dir / "venv"
    weights_dir = data_dir / "weights"
    state_dir = args.state_dir or default_state_dir()
    python = create_venv(venv_dir)
    install_package(python, args.editable)
    install_weights(python, weights_dir)
    env = dict(os.environ, SEMANTIC_WEIGHTS_DIR=str(weights_dir))
    launcher = write_daemon_launcher(data_dir, python, weights_dir, state_dir)
    if not args.no_plugin:
        settings = plugin_settings(launcher_command(launcher), state_dir, remote)
        if remote:
            say(f"plug-in: remote daemon through {remote['address']}:{remote['port']}, "
                f"token {remote['token_file']}")
        for config_dir in config_dirs:
            target = install_plugin(config_dir, settings)
            note = " (Flatpak: start the daemon yourself with " + str(launcher) + ")" if config_dir.flatpak else ""
            say(f"plug-in: {target}{note}")
    say("self-check:")
    # The folders the plug-in went into, when the user chose them: doctor checks those, not GIMP's defaults.
    asked = [] if args.no_plugin or not args.gimp_dir else [f"--gimp-dir={d.path}" for d in config_dirs]
    subprocess.run([str(python), "-m", "core", "doctor", *asked], env=env)
    if args.demo:
        say(f"demo: writing results into {args.demo_output.resolve()}")
        _check([str(python), "-m", "core", "demo", "-o", str(args.demo_output)], env=env)
    say(f"done. Start GIMP 3 and look under Filters > Semantic. Daemon launcher: {launcher}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
