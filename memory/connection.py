"""Engines and sessions: how Longhand connects to its database, and the plain schema upgrade.

Every SQLite connection runs with WAL, `synchronous=FULL`, `foreign_keys=ON` and a busy timeout, and every
transaction starts with `BEGIN IMMEDIATE` (SQLAlchemy's documented pysqlite recipe: the driver's own BEGIN is turned
off in the `connect` event and ours is emitted in the `begin` event), so two writers queue on the lock instead of
failing half-way with "database is locked". Other URLs (PostgreSQL) are used as given.
This module imports nothing of ours but `memory.private` and `memory.migrations`. `memory.backup` builds on it
alone and `memory.db` (opening with a backup before a migration) on both: connection <- backup <- db, one way.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from memory import migrations
from memory.private import private_dir, private_file

BUSY_TIMEOUT_MS = 60_000

T = TypeVar("T")


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def sqlite_path(engine: Engine) -> Path | None:
    """The database file of a file-backed SQLite engine, else None."""
    if not is_sqlite(engine):
        return None
    database = engine.url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def make_engine(url: str, *, echo: bool = False) -> Engine:
    """An engine for any SQLAlchemy URL; SQLite files get Longhand's pragmas and BEGIN IMMEDIATE."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, echo=echo, pool_pre_ping=True)

    database = parsed.database
    if database and database != ":memory:" and not database.startswith("file:"):
        private_dir(Path(database).expanduser().parent, tighten_existing=False)
    engine = create_engine(url, echo=echo, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, connection_record) -> None:
        # Turn off pysqlite's own BEGIN handling; `_on_begin` emits ours.
        dbapi_connection.isolation_level = None
        # SQLite gives the -wal and -shm files the database file's mode.
        if database and database != ":memory:" and not database.startswith("file:"):
            private_file(Path(database).expanduser())
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = FULL")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """Sessions for `with Session() as s, s.begin():`."""
    return sessionmaker(bind=engine, expire_on_commit=False)


def is_lock_error(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, OperationalError) and ("database is locked" in text or "database is busy" in text)


def run_in_transaction(session_factory: sessionmaker[Session], work: Callable[[Session], T],
                       *, attempts: int = 5) -> T:
    """Run `work(session)` in one transaction; if SQLite's busy timeout still ran out, retry the whole thing.

    The busy timeout already makes writers wait for each other; this is the second line, so "database is locked"
    never reaches the user from a long queue of writers.
    """
    for attempt in range(attempts):
        try:
            with session_factory() as session, session.begin():
                return work(session)
        except OperationalError as exc:
            if not is_lock_error(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.05 * (2 ** attempt))
    raise AssertionError("unreachable")


def migrate(engine: Engine) -> str:
    """Create or upgrade the schema to the newest migration, with no backup; returns the revision now in it."""
    head = migrations.head_revision()
    if migrations.current_revision(engine) != head:
        migrations.upgrade(engine)
    return head
