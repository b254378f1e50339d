"""app.wiring: the parts the UI, the CLI and the benchmarks share, over a real SQLite file and the real embedder;
the engine tests' scripted LM stands in for every model `load_generator` is asked for."""

from __future__ import annotations

from pathlib import Path

import pytest
from engine_fakes import GOOD, PREMISE, ScriptedGenerator, run

import models.service
from app.config import Config, ConfigError
from app.wiring import open_parts
from memory import migrations, store
from memory.backup import list_backups
from memory.db import make_engine

LOOPBACK_SERVER = "http://127.0.0.1:9/v1#served"


def _config(data_dir: Path) -> Config:
    return Config(data_dir=data_dir, database_url=f"sqlite:///{data_dir / 'longhand.db'}")


@pytest.fixture
def loads(monkeypatch) -> list[tuple[str, str, ScriptedGenerator]]:
    """Every model load as (kind, location, the generator served for it)."""
    loaded: list[tuple[str, str, ScriptedGenerator]] = []

    def load_generator(source, **kwargs):
        generator = ScriptedGenerator()
        loaded.append((source.kind, source.location, generator))
        return generator

    monkeypatch.setattr(models.service, "load_generator", load_generator)
    return loaded


def _novel(parts, model: str) -> int:
    with parts.session_factory() as session, session.begin():
        return store.create_novel(session, "Skerry", premise=PREMISE, settings={"model": model}).id


def _count(parts, novel_id: int) -> int:
    with parts.session_factory() as session:
        return store.paragraph_count(session, novel_id)


def test_open_parts_loads_no_model_and_backs_up_before_migrating(data_dir, loads):
    old = make_engine(_config(data_dir).database_url)
    migrations.upgrade(old, "0001")  # a database written by an older version
    old.dispose()
    parts = open_parts(_config(data_dir))
    assert migrations.current_revision(parts.database) == migrations.head_revision()
    assert [b.reason for b in list_backups(parts.config.backups_dir)] == [f"before-migration-0001-to-{migrations.head_revision()}"]
    assert parts.models.loaded_generator() is None and loads == []
    assert parts.snapshot_store.root == data_dir / "snapshots"


def test_the_engine_resolves_each_novels_model_from_its_settings(data_dir, embedder, loads):
    parts = open_parts(_config(data_dir))
    parts.models.use_embedder(embedder)
    engine = parts.engine()
    local, served = _novel(parts, "default"), _novel(parts, LOOPBACK_SERVER)

    _, outcome = run(engine.step(local, None))  # no paragraphs yet: the step writes the opening
    assert outcome.paragraph == GOOD["opening"]
    assert [(kind, location) for kind, location, _ in loads] == [("gguf", parts.models.source.location)]
    _, outcome = run(engine.step(served, None))
    assert [kind for kind, _, _ in loads] == ["gguf", "remote"] and loads[1][1] == LOOPBACK_SERVER
    assert loads[1][2].calls_for("opening") and len(loads[0][2].calls_for("opening")) == 1
    # Back to the first novel: its model is loaded again (one model in memory at a time).
    run(engine.step(local, "Mara lights the lamp anyway and waits."))
    assert [kind for kind, _, _ in loads] == ["gguf", "remote", "gguf"]
    assert (_count(parts, local), _count(parts, served)) == (2, 1)


def test_a_stored_server_not_allowed_is_refused_before_any_load(data_dir, embedder, loads):
    parts = open_parts(_config(data_dir))
    parts.models.use_embedder(embedder)
    novel_id = _novel(parts, "http://evil.example:8000/v1")
    with pytest.raises(ConfigError, match="Refused the model server evil.example"):
        run(parts.engine().step(novel_id, None))
    assert loads == [] and _count(parts, novel_id) == 0


def test_an_engine_over_one_generator_writes_every_novel_with_it(data_dir, embedder, loads):
    """The CLI and the benchmarks load `--model` up front and write with it whatever a novel's settings say."""
    parts = open_parts(_config(data_dir))
    parts.models.use_embedder(embedder)
    generator = ScriptedGenerator()
    _, outcome = run(parts.engine(generator).step(_novel(parts, LOOPBACK_SERVER), None))
    assert outcome.paragraph == GOOD["opening"] and generator.calls_for("opening") and loads == []
