"""gimp-semantic doctor: what is installed, which device, which weights verify, where GIMP looks,
and whether a remote daemon a plug-in is set up for answers through its SSH tunnel."""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path

from core import __version__
from core.gimp_dirs import GimpConfigDir, detect_config_dirs
from core.paths import discovery_file, log_dir, state_dir
from core.protocol import DaemonClient, Discovery, RemoteDaemon, SemanticError
from core.weights import Manifest, bundled_weights_dir


def register(subparsers) -> None:
    parser = subparsers.add_parser("doctor", help="check the installation")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--gimp-dir", action="append", type=Path, default=None, metavar="DIR",
                        help="GIMP config folder whose plug-in to check, which must be there (repeatable; "
                             "default: the folders GIMP uses, reported without failing)")
    parser.set_defaults(func=run)


def collect(gimp_dirs: list[Path] | None = None) -> dict:
    """The report; ``gimp_dirs`` are the GIMP config folders asked about instead of the detected ones."""
    import torch

    from core.device import select_device

    weights_dir = bundled_weights_dir()
    try:
        manifest = Manifest.load(weights_dir)
        weights, weights_error = {wid: manifest.status(wid).value for wid in sorted(manifest.entries)}, ""
    except SemanticError as exc:
        weights, weights_error = {}, exc.message
    config_dirs = [GimpConfigDir(Path(d), "(--gimp-dir)") for d in gimp_dirs] if gimp_dirs \
        else detect_config_dirs()
    gimp = [{"config_dir": str(d.path), "version": d.version, "flatpak": d.flatpak,
             "plugin_installed": (d.plugin_folder / "gimp-semantic.py").exists(),
             "plugin_folder": str(d.plugin_folder)} for d in config_dirs]
    return {
        "version": __version__,
        "python": f"{platform.python_version()} ({sys.executable})",
        "torch": torch.__version__,
        "device": str(select_device()),
        "cuda_available": torch.cuda.is_available(),
        "weights_dir": str(weights_dir),
        "weights": weights,
        "weights_error": weights_error,
        "gimp": gimp,
        "gimp_dirs_asked": bool(gimp_dirs),
        "state_dir": str(state_dir()),
        "log_dir": str(log_dir()),
        "daemon": _daemon_status(),
        "remote": [_remote_status(d.plugin_folder / "config.json") for d in config_dirs
                   if _names_remote(d.plugin_folder / "config.json")],
    }


def _names_remote(config_file: Path) -> bool:
    """Whether the plug-in with this config uses a remote daemon, decided as the plug-in decides it
    (RemoteDaemon.from_config: an empty 'port' means a local daemon). A remote setting it cannot use
    counts, so that _remote_status reports what is wrong with it."""
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
        return isinstance(config, dict) and RemoteDaemon.from_config(config, str(config_file)) is not None
    except SemanticError:
        return True
    except (OSError, ValueError):
        return False


def _remote_status(config_file: Path) -> dict:
    """Health and token of the remote daemon a plug-in's config names, as that plug-in would connect."""
    status = {"config": str(config_file), "ok": False}
    try:
        remote = RemoteDaemon.from_config(json.loads(config_file.read_text(encoding="utf-8")), str(config_file))
        if remote is None:  # the file changed since _names_remote read it
            return dict(status, message="the config names no remote daemon ('port' is empty or missing)")
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
        if not discovery.process_exists():  # its port may be another program's by now: no token sent there
            return f"not running (a stale {path} names pid {discovery.pid}, which has exited)"
        health = DaemonClient(discovery.address, discovery.port, discovery.read_token()).health(timeout=2.0)
        return f"running on {discovery.address}:{discovery.port}, pid {health['pid']}, device {health['device']}"
    except (OSError, ValueError, KeyError, SemanticError) as exc:
        return f"not reachable ({exc}); a stale {path} is left"


def problems(report: dict) -> list[str]:
    """What makes the installation unusable: doctor exits non-zero when there is any."""
    found = [report["weights_error"]] if report["weights_error"] else []
    if not report["weights"] and not report["weights_error"]:
        found.append(f"no weights are listed in {Path(report['weights_dir']) / 'manifest.json'}: re-run the "
                     "installer")
    found += [f"weights '{wid}' are {status}: re-run the installer" for wid, status in report["weights"].items()
              if status != "ok"]
    if report["gimp_dirs_asked"]:
        found += [f"the plug-in is not installed in {g['plugin_folder']}: re-run the installer with "
                  f"--gimp-dir {g['config_dir']}" for g in report["gimp"] if not g["plugin_installed"]]
    found += [f"remote daemon: {r['message']} ({r['config']})" for r in report["remote"] if not r["ok"]]
    return found


def run(args) -> int:
    report = collect(args.gimp_dir)
    report["problems"] = problems(report)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"gimp-semantic {report['version']}")
        print(f"  python   {report['python']}")
        print(f"  torch    {report['torch']}  device: {report['device']}")
        print(f"  weights  {report['weights_dir']}")
        for wid, status in report["weights"].items():
            print(f"    {status:8} {wid}")
        if report["weights_error"]:
            print(f"    {report['weights_error']}")
        elif not report["weights"]:
            print(f"    (none listed in {Path(report['weights_dir']) / 'manifest.json'})")
        for g in report["gimp"]:
            state = "plug-in installed" if g["plugin_installed"] else "plug-in NOT installed"
            kind = "Flatpak " if g["flatpak"] else ""
            print(f"  GIMP {g['version']} {kind}plug-ins: {g['plugin_folder']} ({state})")
        print(f"  daemon   {report['daemon']}")
        for remote in report["remote"]:
            print(f"  remote   {'ok' if remote['ok'] else 'FAILED'}: {remote['message']} ({remote['config']})")
        print(f"  logs     {report['log_dir']}")
        for problem in report["problems"]:
            print(f"  PROBLEM  {problem}")
    return 1 if report["problems"] else 0
