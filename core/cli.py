"""The ``gimp-semantic`` command: subcommands come from the modules in core/commands."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

import core.commands
from core import __version__
from core.protocol import SemanticError

EXIT_USER_ERROR = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gimp-semantic",
        description="Semantic image editing: harmonization, colorization, photo adjustment, edit propagation.",
    )
    parser.add_argument("--version", action="version", version=f"gimp-semantic {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(core.commands.__path__), key=lambda i: i.name):
        if info.name.startswith("_") or info.name == "common":
            continue
        module = importlib.import_module(f"core.commands.{info.name}")
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USER_ERROR
    try:
        return int(args.func(args) or 0)
    except SemanticError as exc:
        print(f"gimp-semantic: error: {exc.message}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("gimp-semantic: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
