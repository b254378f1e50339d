"""`python -m app export`: write a novel as Markdown, plain text, EPUB or full-fidelity JSON into the exports dir."""

from __future__ import annotations

import argparse

from app.config import Config

NAME = "export"
HELP = "export a novel (md, txt, epub, or json with its whole history) into <data dir>/exports"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("novel", nargs="?", help="the novel's id or exact title (omit with --list)")
    parser.add_argument("--format", "-f", default="md", choices=("md", "txt", "epub", "json"),
                        help="md (default), txt, epub, or json (everything, re-importable)")
    parser.add_argument("--out", help="folder to write into (default <data dir>/exports)")
    parser.add_argument("--list", action="store_true", help="list the novels and exit")


def find_novel(session, spec: str) -> int:
    """A novel id from an id or an exact (case-insensitive) title; UserError when none or several match."""
    from app.cli import UserError
    from memory import store

    novels = store.list_novels(session)
    if spec.isdigit() and any(n.id == int(spec) for n in novels):
        return int(spec)
    matches = [n for n in novels if n.title.casefold() == spec.casefold()]
    if len(matches) == 1:
        return matches[0].id
    if not matches:
        raise UserError(f"No novel {spec!r}: `python -m app export --list` shows ids and titles.")
    raise UserError(f"{len(matches)} novels are titled {spec!r}: pass the id instead "
                    f"({', '.join(str(n.id) for n in matches)}).")


def run(config: Config, args: argparse.Namespace) -> int:
    from pathlib import Path

    from app.cli import UserError
    from memory import exchange, store
    from memory.db import open_database

    _, session_factory = open_database(config.database_url, config.backups_dir)
    with session_factory() as session:
        if args.list or not args.novel:
            for novel in store.list_novels(session):
                print(f"{novel.id:>5}  {novel.title}  ({novel.paragraphs} paragraphs, {novel.words} words, "
                      f"edited {novel.last_edited:%Y-%m-%d %H:%M})")
            return 0
        novel_id = find_novel(session, args.novel)
        try:
            path = exchange.export_to_file(session, novel_id, Path(args.out) if args.out else config.exports_dir,
                                           args.format)
        except exchange.ExchangeError as exc:
            raise UserError(str(exc)) from None
    print(path)
    return 0
