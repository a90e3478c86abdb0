"""gimp-semantic daemon [--port P] [--idle-exit S] [--token-file FILE]"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

from core.daemon.server import SOCKET_TIMEOUT_S, Daemon, DaemonConfig, configure_logging
from core.paths import discovery_file, log_dir, state_dir
from core.protocol import DaemonClient, Discovery, ErrorCode, SemanticError


def register(subparsers) -> None:
    parser = subparsers.add_parser("daemon", help="run the inference daemon on 127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="TCP port (default: chosen by the OS)")
    parser.add_argument("--idle-exit", type=float, default=1800.0, metavar="S",
                        help="exit after S seconds without requests (0 = never; default 1800)")
    parser.add_argument("--model-idle", type=float, default=600.0, metavar="S",
                        help="unload models unused for S seconds (default 600)")
    parser.add_argument("--max-payload-mb", type=float, default=2048.0,
                        help="largest request accepted, in MB (default 2048)")
    parser.add_argument("--device", default=None, help="auto (cuda > mps > cpu), cpu, cuda or mps")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads for computation (default: PyTorch's choice, one per core)")
    parser.add_argument("--token-file", type=Path, default=None, metavar="FILE",
                        help="keep the access token in FILE (created 0600 if missing) across restarts, for "
                             "a plug-in on another machine reaching this daemon through an SSH tunnel "
                             "(default: a new token per start in the state folder)")
    parser.add_argument("--socket-timeout", type=float, default=SOCKET_TIMEOUT_S, metavar="S",
                        help="close a connection that sends or reads nothing for S seconds "
                             f"(default {SOCKET_TIMEOUT_S:.0f})")
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    parser.set_defaults(func=run)


def run(args) -> int:
    running = _running_daemon()
    if running is not None:
        unmet = _unmet_settings(args, running)
        if unmet:
            # One daemon per user (one discovery file): exiting 0 here would leave a remote client's tunnel
            # and token file pointing at nothing.
            raise SemanticError(
                ErrorCode.bad_request,
                f"A gimp-semantic daemon already runs (pid {running.pid}) on "
                f"{running.address}:{running.port} with token file {running.token_file}, not "
                f"{' and '.join(unmet)} as asked. Stop it with 'kill {running.pid}' and run this command "
                "again.")
        print(f"gimp-semantic daemon already running on {running.address}:{running.port} "
              f"(pid {running.pid})", file=sys.stderr)
        return 0
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    log_file = log_dir() / "daemon.log"
    configure_logging(log_file, args.verbose)
    config = DaemonConfig(port=args.port, idle_exit_s=args.idle_exit, model_idle_s=args.model_idle,
                          max_payload_mb=args.max_payload_mb, device=args.device,
                          state_dir=state_dir(), log_file=log_file, socket_timeout_s=args.socket_timeout,
                          token_file=args.token_file.expanduser().absolute() if args.token_file else None)
    daemon = Daemon(config)
    signal.signal(signal.SIGTERM, lambda *_: daemon.stop())
    signal.signal(signal.SIGINT, lambda *_: daemon.stop())
    print(f"gimp-semantic daemon on 127.0.0.1:{daemon.port}, device {daemon.device}, log {log_file}",
          file=sys.stderr, flush=True)
    daemon.serve()
    return 0


def _unmet_settings(args, running: Discovery) -> list[str]:
    """What this command asked for (--port, --token-file) that the running daemon does not have."""
    unmet = []
    if args.port and args.port != running.port:
        unmet.append(f"on port {args.port}")
    if args.token_file and args.token_file.expanduser().resolve() != Path(running.token_file).resolve():
        unmet.append(f"with token file {args.token_file.expanduser().absolute()}")
    return unmet


def _running_daemon() -> Discovery | None:
    try:
        discovery = Discovery.from_json(discovery_file().read_text())
        if not discovery.process_exists():
            return None  # a stale file: its port may be another program's by now, not one to send the token
        DaemonClient(discovery.address, discovery.port, discovery.read_token()).health(timeout=2.0)
        return discovery
    except SemanticError as exc:
        return discovery if exc.code is ErrorCode.busy else None
    except (OSError, ValueError, KeyError):
        return None
