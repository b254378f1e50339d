"""Opening the database: the schema created or upgraded to the newest migration, backed up first when it exists.

`open_database(url, backups_dir)` is how every entry point opens the store (app.wiring for the UI, the CLI and the
benchmarks). Engines, sessions and the SQLite pragmas live in `memory.connection` and are re-exported here, so
callers import them from one place. The import order is one-way: connection <- backup <- db.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, inspect
from sqlalchemy.orm import Session, sessionmaker

from memory import migrations
from memory.backup import backup
from memory.connection import (
    BUSY_TIMEOUT_MS,
    is_lock_error,
    is_sqlite,
    make_engine,
    make_sessionmaker,
    migrate,
    run_in_transaction,
    sqlite_path,
)

__all__ = [
    "BUSY_TIMEOUT_MS", "init_db", "is_lock_error", "is_sqlite", "make_engine", "make_sessionmaker", "migrate",
    "open_database", "run_in_transaction", "sqlite_path",
]


def init_db(engine: Engine, backups_dir: Path | str | None = None, *, keep: int = 10) -> str:
    """Create or upgrade the schema to the newest migration; returns the revision now in the database.

    An existing database that needs upgrading is backed up into `backups_dir` first (when given).
    """
    current = migrations.current_revision(engine)
    head = migrations.head_revision()
    if current == head:
        return head
    has_tables = bool(inspect(engine).get_table_names())
    if has_tables and backups_dir is not None:
        backup(engine, Path(backups_dir), reason=f"before-migration-{current or 'unversioned'}-to-{head}",
               keep=keep)
    return migrate(engine)


def open_database(url: str, backups_dir: Path | str | None = None) -> tuple[Engine, sessionmaker[Session]]:
    """Engine + session factory for `url`, with the schema created or upgraded (backing up first)."""
    engine = make_engine(url)
    init_db(engine, backups_dir)
    return engine, make_sessionmaker(engine)
