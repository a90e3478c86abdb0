"""gimp-semantic doctor: what is installed, which device, which weights verify, where GIMP looks."""

from __future__ import annotations

import json
import platform
import sys

from core import __version__
from core.gimp_dirs import detect_config_dirs
from core.paths import discovery_file, log_dir, state_dir
from core.protocol import DaemonClient, Discovery, SemanticError
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
    gimp = [{"config_dir": str(d.path), "version": d.version, "flatpak": d.flatpak,
             "plugin_installed": (d.plugin_folder / "gimp-semantic.py").exists(),
             "plugin_folder": str(d.plugin_folder)} for d in detect_config_dirs()]
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
    }


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
        print(f"  logs     {report['log_dir']}")
    bad_weights = [w for w, s in report["weights"].items() if s != "ok"]
    return 1 if bad_weights else 0
