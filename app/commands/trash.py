"""`python -m app trash`: list the deleted novels, restore one, or empty the trash (only when asked, with --yes)."""

from __future__ import annotations

import argparse

from app.config import Config

NAME = "trash"
HELP = "list deleted novels (kept in <data dir>/trash until emptied), restore one, or empty the trash"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", nargs="?", default="list", choices=("list", "restore", "empty"),
                        help="list (default), restore ITEM, or empty [ITEM] --yes")
    parser.add_argument("item", nargs="?",
                        help="a trash file name as `trash list` shows it, or 'latest' (restore: the default)")
    parser.add_argument("--yes", action="store_true", help="confirm `empty`: the novels are then gone for good")


def run(config: Config, args: argparse.Namespace) -> int:
    from app.cli import UserError
    from memory import trash
    from memory.db import open_database

    try:
        if args.action == "list":
            items = trash.list_trash(config.trash_dir)
            for item in items:
                print(f"{item.name}  {item.title} (novel {item.novel_id}, deleted {item.deleted:%Y-%m-%d %H:%M}, "
                      f"{item.nbytes / 2**20:.2f} MiB)")
            if not items:
                print(f"the trash is empty ({config.trash_dir})")
            return 0
        if args.action == "restore":
            _, session_factory = open_database(config.database_url, config.backups_dir)
            novel_id, title = trash.restore_from_trash(session_factory, config.trash_dir, args.item or "latest")
            print(f"restored {title!r} as novel {novel_id}")
            return 0
        if not args.yes:
            raise UserError("`trash empty` deletes the novels in the trash for good: add --yes to confirm.")
        removed = trash.empty_trash(config.trash_dir, args.item)
        print(f"deleted {len(removed)} novel(s) from the trash for good")
        return 0
    except trash.TrashError as exc:
        raise UserError(str(exc)) from None
