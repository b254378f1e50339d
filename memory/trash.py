"""The trash: every deleted novel, kept as a full-history JSON export (memory.exchange) in `<data dir>/trash/`.

Deleting a novel writes it here first (fsynced, in the delete's own transaction) and only then deletes it, so a
failed trash write deletes nothing. Nothing but an explicit `empty_trash` removes a file: the backup rotation
(memory.backup keeps the newest 10 backups) never looks in this folder, however many novels are created and
deleted after. The folder is private to the user (0700) and each file too (0600). A trash file is an ordinary
export: `restore_from_trash` imports it as a new novel (text, memory, plans, lore and the whole undo history) and
removes it; `python -m app import FILE` reads it too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable

from sqlalchemy.orm import Session, sessionmaker

from memory import exchange, store
from memory.errors import StoreError
from memory.private import private_dir, write_private_atomic
from memory.revisions import lock_novel
from memory.schema import Novel

_NAME = re.compile(r"^(\d{8}T\d{12})-novel-(\d+)-([\w\-. ]+)\.json$")
MAX_TRASH_FILE_BYTES = 4 * exchange.MAX_IMPORT_BYTES


class TrashError(StoreError):
    """A trash operation that cannot be done; one line saying why (and that nothing was deleted or restored)."""


@dataclass(frozen=True)
class TrashItem:
    path: Path
    deleted: datetime
    novel_id: int  # the id the novel had before it was deleted
    title: str  # the title as a file name holds it (letters, digits, '-', '_', '.')
    nbytes: int

    @property
    def name(self) -> str:
        return self.path.name


def move_to_trash(session_factory: sessionmaker[Session], trash_dir: Path | str, novel_id: int, *,
                  then: Callable[[Session], None] | None = None) -> TrashItem:
    """Write the novel into the trash, then delete it, in one transaction; returns the trash file.

    The novel's row is locked first (PostgreSQL; SQLite's write transaction locks everything), so no step lands
    between the export and the delete. If the trash file cannot be written, nothing is deleted (`TrashError`).
    `then(session)` runs in the same transaction after the delete (an import replacing the novel): if it fails,
    the delete is rolled back with it.
    """
    trash_dir = Path(trash_dir)
    path = None
    try:
        with session_factory() as session, session.begin():
            novel = lock_novel(session, novel_id)
            stamp = datetime.now().strftime("%Y%m%dT%H%M%S%f")
            path = trash_dir / f"{stamp}-novel-{novel_id}-{exchange.safe_file_stem(novel.title, 60)}.json"
            data = exchange.dumps(exchange.export_json(session, novel_id)).encode("utf-8")
            try:
                write_private_atomic(private_dir(trash_dir) / path.name, data)
            except OSError as exc:
                path = None
                raise TrashError(f"Could not write the novel into the trash at {trash_dir} ({exc.strerror or exc}); "
                                 "nothing was deleted.") from None
            store.delete_novel(session, novel_id)
            if then is not None:
                then(session)
    except BaseException:
        # The delete did not happen: the trash copy would be a stray duplicate. Keep it if the novel is gone anyway.
        if path is not None and _still_there(session_factory, novel_id):
            path.unlink(missing_ok=True)
        raise
    return _item(path)


def _still_there(session_factory: sessionmaker[Session], novel_id: int) -> bool:
    try:
        with session_factory() as session:
            return session.get(Novel, novel_id) is not None
    except Exception:  # the database itself failed: keep the copy, it may be the only one
        return False


def _item(path: Path) -> TrashItem:
    match = _NAME.match(path.name)
    if match is None:
        raise TrashError(f"{path.name} is not a trash file.")
    return TrashItem(path=path, deleted=datetime.strptime(match.group(1), "%Y%m%dT%H%M%S%f"),
                     novel_id=int(match.group(2)), title=match.group(3), nbytes=path.stat().st_size)


def list_trash(trash_dir: Path | str) -> list[TrashItem]:
    """The deleted novels in the trash, most recently deleted first."""
    trash_dir = Path(trash_dir)
    if not trash_dir.is_dir():
        return []
    items = [_item(path) for path in trash_dir.iterdir() if _NAME.match(path.name) and path.is_file()]
    return sorted(items, key=lambda item: item.deleted, reverse=True)


def find_in_trash(trash_dir: Path | str, name: str) -> TrashItem:
    """A trash item by file name, or the most recently deleted one for "latest"."""
    items = list_trash(trash_dir)
    if name in ("", "latest"):
        if not items:
            raise TrashError("The trash is empty.")
        return items[0]
    for item in items:
        if item.name == name:
            return item
    raise TrashError(f"No {name!r} in the trash; `python -m app trash list` lists what is there.")


def restore_from_trash(session_factory: sessionmaker[Session], trash_dir: Path | str, name: str) -> tuple[int, str]:
    """Import a trashed novel as a new novel with its whole history, then remove it from the trash.

    Returns (new novel id, title). The settings are restored as they were (the app reads bad ones with defaults).
    """
    item = find_in_trash(trash_dir, name)
    document = exchange.read_import_file(item.path, MAX_TRASH_FILE_BYTES, require_title=False)
    title = None if document["novel"]["title"].strip() else "Untitled"
    with session_factory() as session, session.begin():
        novel = exchange.import_json(session, document, title=title)
        novel_id, title = novel.id, novel.title
    item.path.unlink(missing_ok=True)
    return novel_id, title


def empty_trash(trash_dir: Path | str, name: str | None = None) -> list[Path]:
    """Delete for good every novel in the trash (or only the one named); returns the files removed."""
    items = [find_in_trash(trash_dir, name)] if name else list_trash(trash_dir)
    for item in items:
        item.path.unlink(missing_ok=True)
    return [item.path for item in items]
