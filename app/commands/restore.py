"""`python -m app restore`: replace the database with a backup (the current state is backed up first)."""

from __future__ import annotations

import argparse

from app.config import Config

NAME = "restore"
HELP = "restore the database from a backup (default: the newest); the current state is backed up first"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("backup", nargs="?", default="latest",
                        help="a backup file name in <data dir>/backups, a path, or 'latest' (default)")
    parser.add_argument("--list", action="store_true", help="list the backups and exit")


def run(config: Config, args: argparse.Namespace) -> int:
    from app.cli import UserError
    from app.commands.backup import print_backups
    from memory import backup
    from memory.db import make_engine

    if args.list:
        return print_backups(config)
    try:
        source = backup.resolve_backup(config.backups_dir, args.backup)
        safety = backup.restore(make_engine(config.database_url), source, config.backups_dir)
    except backup.BackupError as exc:
        raise UserError(str(exc)) from None
    print(f"restored {source.name}" + (f" (the previous state is in {safety})" if safety else ""))
    return 0
