"""Backups and restores of the whole database, kept in `<data dir>/backups/`, newest N kept.

SQLite: a consistent copy through SQLite's online backup API (safe while the app is writing), checked with
`PRAGMA integrity_check` before it is kept. Other databases (PostgreSQL): a JSON file holding every novel in the
exchange format (memory.exchange), restorable with `restore`. A backup is taken automatically before destructive
actions: deleting a novel, importing over one, a schema migration, and a restore. Only the newest N are kept, so a
deleted novel also goes to the trash (memory.trash), which this rotation never touches.
"""

from __future__ import annotations

import json
import re
import sqlite3
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import Engine, select

from memory.connection import is_sqlite, make_sessionmaker, migrate, sqlite_path
from memory.private import private_dir, private_file
from memory.trash import TrashItem, move_to_trash

DEFAULT_KEEP = 10
_NAME = re.compile(r"^longhand-(\d{8}T\d{6}\d{6})-([a-z0-9-]+)\.(db|json)$")
BUNDLE_FORMAT = "longhand-backup"


class BackupError(RuntimeError):
    """A backup or restore that cannot be done; one line saying why."""


@dataclass(frozen=True)
class BackupInfo:
    path: Path
    created: datetime
    reason: str
    nbytes: int


def _slug(reason: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", reason.lower()).strip("-")
    return slug[:60] or "manual"


def integrity_check(path: Path | str) -> str:
    """'ok', or SQLite's first complaint about the file."""
    try:
        connection = sqlite3.connect(f"file:{Path(path)}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        return f"cannot open: {exc}"
    try:
        rows = connection.execute("PRAGMA integrity_check").fetchall()
    except sqlite3.DatabaseError as exc:
        return str(exc)
    finally:
        connection.close()
    return "ok" if rows == [("ok",)] else "; ".join(str(r[0]) for r in rows[:5])


def backup(engine: Engine, backups_dir: Path | str, *, reason: str = "manual", keep: int = DEFAULT_KEEP) -> Path:
    """Copy the whole database into `backups_dir` and drop all but the newest `keep` backups; returns the file."""
    backups_dir = Path(backups_dir)
    private_dir(backups_dir)
    stamp = datetime.now().strftime("%Y%m%dT%H%M%S%f")
    extension = "db" if is_sqlite(engine) else "json"
    target = backups_dir / f"longhand-{stamp}-{_slug(reason)}.{extension}"
    partial = target.with_name(target.name + ".part")
    try:
        if is_sqlite(engine):
            _backup_sqlite(engine, partial)
            verdict = integrity_check(partial)
            if verdict != "ok":
                raise BackupError(f"The backup copy failed its integrity check ({verdict}); the database itself "
                                  "may be damaged: run `python -m app backup` again and keep the older backups.")
        else:
            partial.write_text(json.dumps(_bundle(engine), ensure_ascii=False), encoding="utf-8")
        private_file(partial).replace(target)
    finally:
        partial.unlink(missing_ok=True)
    prune(backups_dir, keep)
    return target


def _backup_sqlite(engine: Engine, target: Path) -> None:
    source_path = sqlite_path(engine)
    if source_path is None:
        raise BackupError("An in-memory SQLite database cannot be backed up to a file.")
    source = sqlite3.connect(str(source_path), timeout=60)
    destination = sqlite3.connect(str(target))
    try:
        source.backup(destination, pages=4096)
        destination.execute("PRAGMA journal_mode = DELETE")
    finally:
        destination.close()
        source.close()


def _bundle(engine: Engine) -> dict:
    from memory import exchange
    from memory.migrations import current_revision
    from memory.schema import Novel

    session_factory = make_sessionmaker(engine)
    with session_factory() as session, session.begin():
        ids = list(session.scalars(select(Novel.id).order_by(Novel.id)))
        novels = [exchange.export_json(session, novel_id) for novel_id in ids]
    return {"format": BUNDLE_FORMAT, "version": 1, "schema": current_revision(engine), "novels": novels}


def list_backups(backups_dir: Path | str) -> list[BackupInfo]:
    """Backups in `backups_dir`, newest first."""
    backups_dir = Path(backups_dir)
    if not backups_dir.is_dir():
        return []
    found = []
    for path in backups_dir.iterdir():
        match = _NAME.match(path.name)
        if match and path.is_file():
            created = datetime.strptime(match.group(1), "%Y%m%dT%H%M%S%f")
            found.append(BackupInfo(path=path, created=created, reason=match.group(2), nbytes=path.stat().st_size))
    return sorted(found, key=lambda b: b.created, reverse=True)


def prune(backups_dir: Path | str, keep: int = DEFAULT_KEEP) -> list[Path]:
    removed = []
    for info in list_backups(backups_dir)[max(keep, 1):]:
        info.path.unlink(missing_ok=True)
        removed.append(info.path)
    return removed


def resolve_backup(backups_dir: Path | str, name: str | None) -> Path:
    """A backup by path or file name, or the newest one when `name` is None/"latest"."""
    if name in (None, "", "latest"):
        backups = list_backups(backups_dir)
        if not backups:
            raise BackupError(f"No backups in {backups_dir}: make one with `python -m app backup`.")
        return backups[0].path
    path = Path(name)
    if not path.is_file():
        path = Path(backups_dir) / name
    if not path.is_file():
        raise BackupError(f"No backup file {name!r} (looked in {backups_dir}); `python -m app restore --list` "
                          "lists them.")
    return path


def restore(engine: Engine, backup_file: Path | str, backups_dir: Path | str, *, keep: int = DEFAULT_KEEP) -> Path:
    """Replace the database's contents with a backup, after checking the backup and backing up the current state.

    Returns the safety backup taken first. Migrations are run afterwards if the backup is from an older schema.
    """
    backup_file = Path(backup_file)
    safety = None
    if is_sqlite(engine):
        if backup_file.suffix != ".db":
            raise BackupError(f"{backup_file.name} is not an SQLite backup (.db); this database is SQLite.")
        verdict = integrity_check(backup_file)
        if verdict != "ok":
            raise BackupError(f"{backup_file.name} is damaged ({verdict}); nothing was restored: pick an older "
                              "backup.")
        target = sqlite_path(engine)
        if target is None:
            raise BackupError("Cannot restore into an in-memory SQLite database.")
        if target.exists():
            safety = backup(engine, backups_dir, reason="before-restore", keep=keep + 1)
        engine.dispose()
        source = sqlite3.connect(f"file:{backup_file}?mode=ro", uri=True)
        destination = sqlite3.connect(str(target), timeout=60)
        try:
            source.backup(destination)
            destination.execute("PRAGMA journal_mode = WAL")
        finally:
            destination.close()
            source.close()
        engine.dispose()
        verdict = integrity_check(target)
        if verdict != "ok":
            raise BackupError(f"The restored database failed its integrity check ({verdict}); the state before "
                              f"the restore is in {safety}.")
    else:
        safety = _restore_bundle(engine, backup_file, backups_dir, keep)
    migrate(engine)
    return safety


def _restore_bundle(engine: Engine, backup_file: Path, backups_dir: Path | str, keep: int) -> Path:
    from memory import exchange
    from memory.schema import Novel

    if backup_file.suffix != ".json":
        raise BackupError(f"{backup_file.name} is not a JSON backup; this database is not SQLite.")
    try:
        bundle = json.loads(backup_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BackupError(f"{backup_file.name} is damaged ({type(exc).__name__}); nothing was restored.") from None
    if not isinstance(bundle, dict) or bundle.get("format") != BUNDLE_FORMAT or not isinstance(
            bundle.get("novels"), list):
        raise BackupError(f"{backup_file.name} is not a Longhand backup; nothing was restored.")
    for index, document in enumerate(bundle["novels"]):
        exchange.validate(document, f"{backup_file.name} (novel {index + 1})", require_title=False)
    migrate(engine)
    safety = backup(engine, backups_dir, reason="before-restore", keep=keep + 1)
    session_factory = make_sessionmaker(engine)
    with session_factory() as session, session.begin():
        for novel in list(session.scalars(select(Novel))):
            session.delete(novel)
        session.flush()
        for document in bundle["novels"]:
            exchange.import_json(session, document)
    return safety


def delete_novel_with_backup(engine: Engine, session_factory, backups_dir: Path | str, novel_id: int, *,
                             trash_dir: Path | str, keep: int = DEFAULT_KEEP) -> tuple[Path, TrashItem]:
    """Back the database up, then move one novel into the trash (the only way the app deletes a novel).

    Returns (the backup, the trash item). The backup rotates out after `keep` more backups; the trash item stays
    until the trash is emptied on purpose (memory.trash).
    """
    from memory import store

    with session_factory() as session:
        store.get_novel(session, novel_id)
    path = backup(engine, backups_dir, reason=f"before-delete-novel-{novel_id}", keep=keep)
    return path, move_to_trash(session_factory, trash_dir, novel_id)
