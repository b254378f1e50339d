"""`python -m app import`: add a novel from a Longhand JSON export, or from a Markdown / plain-text manuscript.

The file is read and validated completely before anything is written (its settings through
app.engine.settings.NovelSettings, the same checks as the Settings tab); nothing is half-imported.
"""

from __future__ import annotations

import argparse

from app.config import Config

NAME = "import"
HELP = "import a novel from a Longhand .json export, or a .md/.txt manuscript (blank lines separate paragraphs)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="a .json export, or a .md / .txt manuscript")
    parser.add_argument("--title", help="title for the imported novel (default: the one in the file)")
    parser.add_argument("--replace", metavar="NOVEL",
                        help="replace this novel (id or exact title) with the import; a backup is taken first and "
                             "the replaced novel goes to the trash")


def run(config: Config, args: argparse.Namespace) -> int:
    from pathlib import Path

    from app.cli import UserError
    from app.commands.export import find_novel
    from app.engine.settings import check_stored
    from memory import backup, exchange, trash
    from memory.errors import StoreError
    from memory.db import open_database

    path = Path(args.file)
    if args.title is not None and not args.title.strip():
        raise UserError("--title must not be empty (leave it out to keep the file's title).")
    suffix = path.suffix.lower()
    if suffix not in (".json", ".md", ".markdown", ".txt"):
        raise UserError(f"Cannot import {path.name}: expected a .json export or a .md / .txt manuscript.")
    try:
        if suffix == ".json":
            document = exchange.read_import_file(path, check_settings=check_stored)
            content = None
        else:
            document = None
            content = exchange.read_manuscript_file(path)
    except exchange.ExchangeError as exc:
        raise UserError(str(exc)) from None

    engine, session_factory = open_database(config.database_url, config.backups_dir)
    replace_id = None
    if args.replace:
        with session_factory() as session:
            replace_id = find_novel(session, args.replace)
        saved = backup.backup(engine, config.backups_dir, reason=f"before-import-over-novel-{replace_id}")
        print(f"backed up the database to {saved}")
    imported: list[tuple[int, str]] = []

    def add(session) -> None:
        if document is not None:
            novel = exchange.import_json(session, document, title=args.title)
        else:
            novel = exchange.import_manuscript(session, content, args.title or "")
        imported.append((novel.id, novel.title))

    try:
        if replace_id is not None:
            # The replaced novel goes to the trash (which backups rotating out never empty), in the import's
            # transaction: a failed import replaces nothing.
            trashed = trash.move_to_trash(session_factory, config.trash_dir, replace_id, then=add)
            print(f"moved novel {replace_id} to the trash as {trashed.name}")
        else:
            with session_factory() as session, session.begin():
                add(session)
    except StoreError as exc:
        raise UserError(str(exc)) from None
    [(novel_id, title)] = imported
    print(f"imported {title!r} as novel {novel_id}")
    return 0
