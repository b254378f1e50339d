"""Engine test set-up: a real SQLite store in a temp dir and a novel (the real MiniLM embedder is tests/conftest.py's
`embedder`)."""

from __future__ import annotations

import pytest

from tests.engine.engine_fakes import PREMISE


@pytest.fixture
def session_factory(tmp_path):
    from memory.db import init_db, make_engine, make_sessionmaker

    engine = make_engine(f"sqlite:///{tmp_path / 'longhand.db'}")
    init_db(engine)
    yield make_sessionmaker(engine)
    engine.dispose()


@pytest.fixture
def novel_id(session_factory) -> int:
    from memory import store

    with session_factory() as session, session.begin():
        novel = store.create_novel(session, PREMISE[:60], premise=PREMISE, style_notes="Quiet and precise.")
        return novel.id


