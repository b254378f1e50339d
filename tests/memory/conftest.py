"""Fixtures for the store's tests: a fresh database per test on SQLite (always) and PostgreSQL (a real server this
session starts in a temporary directory); the real MiniLM embedder is tests/conftest.py's `embedder`."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import text as sql

from tests.conftest import require_or_skip


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _as_postgres(argv: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root: drop to the `postgres` system user the Debian package creates.
    if os.geteuid() != 0:
        return argv
    runuser = shutil.which("runuser")
    return [runuser, "-u", "postgres", "--", *argv] if runuser else ["su", "postgres", "-c", " ".join(argv)]


class PostgresServer:
    def __init__(self, bin_dir: Path):
        self.bin_dir = bin_dir
        # In memory when possible: the server is thrown away after the session, so disk durability buys nothing.
        shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
        self.root = Path(tempfile.mkdtemp(prefix="longhand-pg-", dir=shm))
        self.data = self.root / "data"
        self.port = _free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        run = dict(check=True, capture_output=True, text=True, timeout=120)
        subprocess.run(_as_postgres([str(self.bin_dir / "initdb"), "-D", str(self.data), "-U", "postgres",
                                     "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8"]), **run)
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c full_page_writes=off -c synchronous_commit=off")
        subprocess.run(_as_postgres([str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-o", options,
                                     "-l", str(self.root / "server.log"), "-w", "-t", "60", "start"]), **run)

    def stop(self) -> None:
        if self._admin is not None:
            self._admin.dispose()
        subprocess.run(_as_postgres([str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", "immediate",
                                     "stop"]), capture_output=True, timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)

    _admin = None
    _template = None

    def new_database(self, migrated: bool = True) -> str:
        """A new empty database; with `migrated`, a copy of one the migrations ran on once (fast)."""
        from sqlalchemy import create_engine

        if self._admin is None:
            self._admin = create_engine(self.url, isolation_level="AUTOCOMMIT")
        if migrated and self._template is None:
            self._template = self._create(None)
            from memory.db import init_db, make_engine

            engine = make_engine(self._url_of(self._template))
            init_db(engine)
            engine.dispose()
        return self._url_of(self._create(self._template if migrated else None))

    def _create(self, template: str | None) -> str:
        name = f"t_{uuid.uuid4().hex[:12]}"
        with self._admin.connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
        return name

    def _url_of(self, name: str) -> str:
        return self.url.rsplit("/", 1)[0] + "/" + name


def _find_pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


@pytest.fixture(scope="session")
def postgres_server():
    bin_dir = _find_pg_bin()
    if bin_dir is None:
        yield None
        return
    server = PostgresServer(bin_dir)
    try:
        server.start()
    except (subprocess.SubprocessError, OSError, LookupError) as exc:
        server.stop()
        detail = getattr(exc, "stderr", "") or str(exc)
        yield f"could not start PostgreSQL: {detail.strip().splitlines()[-1] if detail.strip() else exc}"
        return
    yield server
    server.stop()


def postgres_url(postgres_server, migrated: bool = True) -> str:
    if postgres_server is None:
        require_or_skip(False, "PostgreSQL is not installed (tests/system_deps.sh installs Debian's postgresql)")
    if isinstance(postgres_server, str):
        require_or_skip(False, postgres_server)
    return postgres_server.new_database(migrated)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request, tmp_path) -> str:
    """A fresh, empty database URL: an SQLite file, or a new database on the session's PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'longhand.db'}"
    return postgres_url(request.getfixturevalue("postgres_server"))


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'longhand.db'}"


@pytest.fixture
def database(db_url):
    """(engine, session_factory) with the schema migrated in."""
    from memory import retrieval
    from memory.db import open_database

    engine, session_factory = open_database(db_url)
    yield engine, session_factory
    retrieval.clear_cache()
    engine.dispose()


@pytest.fixture
def Session(database):
    return database[1]


# ---------------------------------------------------------------------------------------------------------------
# Migration tests: a database left at an older schema, filled through that schema's own SQL, then migrated as the
# app does at start-up.

OLD_STAMP = "2026-01-01 00:00:00"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def unmigrated_url(request, tmp_path) -> str:
    """A URL to a database with no schema at all: an SQLite file, or a new empty PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'old.db'}"
    return postgres_url(request.getfixturevalue("postgres_server"), migrated=False)


@contextmanager
def engine_at(url: str, revision: str):
    """An engine on `url` migrated only up to `revision`: the older schema a migration test starts from."""
    from memory import retrieval
    from memory.db import make_engine
    from memory.migrations import upgrade

    engine = make_engine(url)
    upgrade(engine, revision)
    try:
        yield engine
    finally:
        retrieval.clear_cache()
        engine.dispose()


def insert_old_novel(connection, *, title: str = "Old", premise: str = "") -> None:
    """Novel 1 as every schema since 0001 stores it."""
    connection.execute(sql("INSERT INTO novels (id, uid, title, premise, style_notes, settings, embedding_epoch, "
                           "created_at, updated_at) VALUES (1, 'u1', :title, :premise, '', '{}', 0, :t, :t)"),
                       {"title": title, "premise": premise, "t": OLD_STAMP})


def insert_old_paragraph(connection, *, paragraph_id: int, text: str, words: int, origin: str = "written",
                         version: int = 1) -> None:
    """Paragraph `paragraph_id` of novel 1, at position `paragraph_id`, as schemas before chapters store it."""
    connection.execute(sql("INSERT INTO paragraphs (id, novel_id, position, text, words, origin, version, "
                           "created_at, updated_at) VALUES (:id, 1, :id, :text, :words, :origin, :version, :t, :t)"),
                       {"id": paragraph_id, "text": text, "words": words, "origin": origin, "version": version,
                        "t": OLD_STAMP})


def migrate_to_head(engine, backups: Path):
    """Migrate as the app does at start-up (a backup first: SQLite's file copy, PostgreSQL's JSON export of the
    tables the old schema has), check it reached the head and made exactly one backup; the session factory on the
    migrated database."""
    from memory.db import init_db, make_sessionmaker
    from memory.migrations import current_revision, head_revision

    init_db(engine, backups)
    assert current_revision(engine) == head_revision()
    assert len([path for path in backups.iterdir() if path.is_file()]) == 1, sorted(backups.iterdir())
    return make_sessionmaker(engine)


def insert_old_vector(connection, *, paragraph_id: int, embedder: str, dim: int, values: bytes) -> None:
    """A paragraph vector of novel 1 without sentence vectors, as schemas before 0003 store it."""
    connection.execute(sql("INSERT INTO embeddings (novel_id, paragraph_id, embedder, dim, vector, created_at) "
                           "VALUES (1, :paragraph_id, :embedder, :dim, :vector, :t)"),
                       {"paragraph_id": paragraph_id, "embedder": embedder, "dim": dim, "vector": values,
                        "t": OLD_STAMP})


def assert_undo_then_redo(Session, novel_id: int, *, read, before, after) -> None:
    """The last revision undone gives back exactly `before`, redone exactly `after`, as `read(Session, novel_id)`
    sees the novel."""
    from memory import revisions

    with Session() as s, s.begin():
        assert revisions.undo(s, novel_id) is not None
    assert read(Session, novel_id) == before
    with Session() as s, s.begin():
        assert revisions.redo(s, novel_id) is not None
    assert read(Session, novel_id) == after
