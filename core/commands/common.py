"""What action subcommands share: runtime options and running an action in-process or via the daemon."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from core import __version__
from core.actions.base import JobContext, ModelCache
from core.actions.inputs import to_numpy, to_wire
from core.actions.registry import find_action
from core.device import select_device
from core.imaging.io import save_image
from core.protocol import DaemonClient, Discovery, ErrorCode, SemanticError


def add_runtime_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("runtime")
    group.add_argument("--device", default=None, help="auto (default: cuda > mps > cpu), cpu, cuda or mps")
    group.add_argument("--via-daemon", action="store_true",
                       help="send the job to the running daemon instead of computing in this process")
    group.add_argument("--quiet", action="store_true", help="no progress on stderr")


def execute(action_name: str, arrays: dict[str, np.ndarray], params: dict,
            args: argparse.Namespace) -> dict[str, np.ndarray]:
    progress = _silent if args.quiet else _print_progress
    try:
        if args.via_daemon:
            return _execute_remote(action_name, arrays, params, progress)
        ctx = JobContext(select_device(args.device), ModelCache(), progress)
        return find_action(action_name).run(arrays, params, ctx)
    finally:
        if not args.quiet:
            print(file=sys.stderr)


def _execute_remote(action_name: str, arrays: dict[str, np.ndarray], params: dict,
                    progress) -> dict[str, np.ndarray]:
    client = connect()
    frame = client.run(action_name, params, [to_wire(k, v) for k, v in arrays.items()], progress)
    return {name: to_numpy(array) for name, array in frame.arrays.items()}


def connect(timeout: float = 3600.0) -> DaemonClient:
    from core.paths import discovery_file

    path = discovery_file()
    try:
        discovery = Discovery.from_json(path.read_text())
        token = discovery.read_token()
    except FileNotFoundError:
        raise SemanticError(ErrorCode.daemon_unavailable,
                            f"No daemon is running (no {path}). Start one with 'gimp-semantic daemon'.") from None
    except (OSError, ValueError, KeyError) as exc:
        raise SemanticError(ErrorCode.daemon_unavailable, f"Cannot read {path}: {exc}") from None
    if not discovery.process_exists():  # its port may be another program's by now: keep the token here
        raise SemanticError(ErrorCode.daemon_unavailable,
                            f"No daemon is running: the one {path} names (pid {discovery.pid}) has exited. "
                            "Start one with 'gimp-semantic daemon'.")
    return DaemonClient(discovery.address, discovery.port, token, timeout, client_version=__version__)


def write_output(path: str | Path, image: np.ndarray) -> None:
    save_image(path, image)
    print(f"wrote {path}", file=sys.stderr)


def _print_progress(fraction: float, text: str) -> None:
    print(f"\r{fraction * 100:5.1f}%  {text:<40}", end="", file=sys.stderr, flush=True)


def _silent(fraction: float, text: str) -> None:
    pass
