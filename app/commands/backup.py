"""`python -m app backup`: copy the whole database into <data dir>/backups (integrity-checked), keeping the last N."""

from __future__ import annotations

import argparse

from app.config import Config

NAME = "backup"
HELP = "back up the database into <data dir>/backups (SQLite backup API + integrity check), keeping the last N"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--keep", type=int, default=10, help="how many backups to keep (default 10)")
    parser.add_argument("--list", action="store_true", help="list the backups and exit")


def run(config: Config, args: argparse.Namespace) -> int:
    from app.cli import UserError
    from memory import backup
    from memory.db import open_database

    if args.list:
        return print_backups(config)
    if args.keep < 1:
        raise UserError(f"--keep must be at least 1, got {args.keep}.")
    engine, _ = open_database(config.database_url, config.backups_dir)
    try:
        path = backup.backup(engine, config.backups_dir, reason="manual", keep=args.keep)
    except backup.BackupError as exc:
        raise UserError(str(exc)) from None
    print(path)
    return 0


def print_backups(config: Config) -> int:
    """`--list` for backup and restore: one line per backup in <data dir>/backups."""
    from memory import backup

    for info in backup.list_backups(config.backups_dir):
        print(f"{info.path.name}  {info.nbytes / 2**20:.2f} MiB  ({info.reason})")
    return 0
