"""gimp-semantic weights {verify,install}"""

from __future__ import annotations

import sys
from pathlib import Path

from core.weights import Manifest, WeightStatus, bundled_weights_dir
from core.weights_install import install_weights


def register(subparsers) -> None:
    parser = subparsers.add_parser("weights", help="verify or install trained weights")
    sub = parser.add_subparsers(dest="weights_command", required=True)
    verify = sub.add_parser("verify", help="check every weight file against its sha256")
    verify.add_argument("--dir", type=Path, default=None, help="weights folder (default: the one in use)")
    verify.set_defaults(func=run_verify)
    install = sub.add_parser("install", help="copy or download weights into a folder, verified")
    install.add_argument("--from", dest="source", type=Path, required=True, help="folder with manifest.json")
    install.add_argument("--to", dest="target", type=Path, required=True)
    install.set_defaults(func=run_install)


def run_verify(args) -> int:
    manifest = Manifest.load(args.dir or bundled_weights_dir())
    bad = 0
    for weight_id in sorted(manifest.entries):
        status = manifest.status(weight_id)
        bad += status is not WeightStatus.ok
        print(f"{status.value:8} {manifest.path(weight_id)}")
    if not manifest.entries:
        print(f"no weights listed in {manifest.directory}", file=sys.stderr)
    return 1 if bad else 0


def run_install(args) -> int:
    statuses = install_weights(args.source, args.target)
    print(f"{len(statuses)} weight file(s) verified in {args.target}", file=sys.stderr)
    return 0
