"""gimp-semantic doctor: what is installed, which device, which weights verify, where GIMP looks,
and whether a remote daemon a plug-in is set up for answers through its SSH tunnel."""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path

from core import __version__
from core.gimp_dirs import detect_config_dirs
from core.paths import discovery_file, log_dir, state_dir
from core.protocol import DaemonClient, Discovery, RemoteDaemon, SemanticError
from core.weights import Manifest, bundled_weights_dir


def register(subparsers) -> None:
    parser = subparsers.add_parser("doctor", help="check the installation")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=run)


def collect() -> dict:
    import torch

    from core.device import select_device

    manifest = Manifest.load(bundled_weights_dir())
    weights = {wid: manifest.status(wid).value for wid in sorted(manifest.entries)}
    config_dirs = detect_config_dirs()
    gimp = [{"config_dir": str(d.path), "version": d.version, "flatpak": d.flatpak,
             "plugin_installed": (d.plugin_folder / "gimp-semantic.py").exists(),
             "plugin_folder": str(d.plugin_folder)} for d in config_dirs]
    return {
        "version": __version__,
        "python": f"{platform.python_version()} ({sys.executable})",
        "torch": torch.__version__,
        "device": str(select_device()),
        "cuda_available": torch.cuda.is_available(),
        "weights_dir": str(manifest.directory),
        "weights": weights,
        "gimp": gimp,
        "state_dir": str(state_dir()),
        "log_dir": str(log_dir()),
        "daemon": _daemon_status(),
        "remote": [_remote_status(d.plugin_folder / "config.json") for d in config_dirs
                   if _names_remote(d.plugin_folder / "config.json")],
    }


def _names_remote(config_file: Path) -> bool:
    try:
        return json.loads(config_file.read_text(encoding="utf-8")).get("port") is not None
    except (OSError, ValueError, AttributeError):
        return False


def _remote_status(config_file: Path) -> dict:
    """Health and token of the remote daemon a plug-in's config names, as that plug-in would connect."""
    status = {"config": str(config_file), "ok": False}
    try:
        remote = RemoteDaemon.from_config(json.loads(config_file.read_text(encoding="utf-8")), str(config_file))
        status.update(address=remote.address, port=remote.port, token_file=remote.token_path)
        _, health = remote.connect(__version__)
    except (OSError, ValueError, SemanticError) as exc:
        return dict(status, message=str(exc))
    if health.get("version") != __version__:
        return dict(status, message=f"the remote daemon is version {health.get('version')}, this one "
                                    f"{__version__}: install the same release on both machines")
    return dict(status, ok=True, message=f"daemon {health.get('version')} answers through "
                                         f"{remote.address}:{remote.port}, device {health.get('device')}")


def _daemon_status() -> str:
    path = discovery_file()
    if not path.exists():
        return "not running"
    try:
        discovery = Discovery.from_json(path.read_text())
        health = DaemonClient(discovery.address, discovery.port, discovery.read_token()).health(timeout=2.0)
        return f"running on {discovery.address}:{discovery.port}, pid {health['pid']}, device {health['device']}"
    except (OSError, ValueError, KeyError, SemanticError) as exc:
        return f"not reachable ({exc}); a stale {path} is left"


def run(args) -> int:
    report = collect()
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"gimp-semantic {report['version']}")
        print(f"  python   {report['python']}")
        print(f"  torch    {report['torch']}  device: {report['device']}")
        print(f"  weights  {report['weights_dir']}")
        for wid, status in report["weights"].items():
            print(f"    {status:8} {wid}")
        if not report["weights"]:
            print("    (none listed)")
        for g in report["gimp"]:
            state = "plug-in installed" if g["plugin_installed"] else "plug-in NOT installed"
            kind = "Flatpak " if g["flatpak"] else ""
            print(f"  GIMP {g['version']} {kind}plug-ins: {g['plugin_folder']} ({state})")
        print(f"  daemon   {report['daemon']}")
        for remote in report["remote"]:
            print(f"  remote   {'ok' if remote['ok'] else 'FAILED'}: {remote['message']} ({remote['config']})")
        print(f"  logs     {report['log_dir']}")
    bad_weights = [w for w, s in report["weights"].items() if s != "ok"]
    bad_remotes = [r for r in report["remote"] if not r["ok"]]
    return 1 if bad_weights or bad_remotes else 0
