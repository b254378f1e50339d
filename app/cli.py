"""`python -m app`: parse flags, go offline, then run a subcommand (`serve` when none is given).

Each subcommand is a module in `app/commands/` with `HELP`, `add_arguments(parser)` and `run(config, args) -> int`.
They import heavy libraries inside `run`, so `--help` answers at once. Errors the user can fix
(`ConfigError`, `MissingModelError`, `UserError`) print one line, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from app import commands
from app.config import ConfigError, add_config_arguments, load_config
from app.offline import MissingModelError, enforce_offline


class UserError(RuntimeError):
    """Something the user asked for that cannot be done; the message says why and what to do instead."""


def command_modules() -> dict:
    found = {}
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda i: i.name):
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        found[getattr(module, "NAME", info.name)] = module
    return found


def build_parser(modules: dict) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m app",
        description="Longhand: write long fiction with a local language model.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND",
                                       help="one of: " + ", ".join(modules) + " (default: serve)")
    for name, module in modules.items():
        sub = subparsers.add_parser(name, help=module.HELP, description=module.HELP)
        add_config_arguments(sub)
        module.add_arguments(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    modules = command_modules()
    parser = build_parser(modules)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help")):
        argv = ["serve", *argv]
    args = parser.parse_args(argv)
    if args.command is None:
        args = parser.parse_args(["serve"])
    try:
        config = load_config(args)
        enforce_offline(config.allow_download)
        return int(modules[args.command].run(config, args) or 0)
    except (ConfigError, MissingModelError, UserError) as exc:
        print(f"longhand: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("longhand: interrupted", file=sys.stderr)
        return 130
