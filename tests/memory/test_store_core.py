"""The store on a real database (SQLite file, and PostgreSQL when available): CRUD, optimistic versions, one-step
atomicity, undo/redo of every kind of edit, hostile text, the migration and the SQLite pragmas."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import select

from memory import revisions, store
from memory.errors import ConflictError, NotFoundError, ValidationError
from memory.embeddings import Vector
from memory.schema import Embedding, PlanSet, Revision
from tests.memory.conftest import assert_undo_then_redo


def vec(seed: int, dim: int = 8) -> Vector:
    return Vector("test-embedder", np.random.default_rng(seed).normal(size=dim))


def new_novel(Session, title="A Novel", memory="") -> int:
    with Session() as s, s.begin():
        return store.create_novel(s, title, premise="p", memory_text=memory).id


def snapshot(Session, novel_id: int) -> dict:
    """Everything user-visible about a novel, for exact before/after comparisons."""
    with Session() as s:
        novel = store.get_novel(s, novel_id)
        return {
            "novel": (novel.title, novel.premise, novel.style_notes, novel.settings),
            "paragraphs": [(p.id, p.position, p.text, p.origin, p.version, p.words, p.updated_at)
                           for p in store.paragraphs(s, novel_id)],
            "memory": [(m.version, m.text) for m in store.memory_history(s, novel_id)],
            "plans": [(p.id, p.plans, p.chosen_index, p.used_text, p.paragraph_id)
                      for p in store.plan_sets(s, novel_id)],
            "lore": [(e.id, e.name, e.keys, e.body, e.always_on, e.enabled, e.version)
                     for e in store.lore_entries(s, novel_id)],
            "embeddings": sorted(((e.paragraph_id or 0, e.lore_entry_id or 0, e.embedder, e.vector)
                                  for e in s.scalars(select(Embedding).where(Embedding.novel_id == novel_id)))),
        }


def test_create_list_rename_delete(Session):
    a = new_novel(Session, "First")
    b = new_novel(Session, "Second")
    with Session() as s, s.begin():
        store.add_paragraph(s, a, "one two three")
        store.add_paragraph(s, a, "four five")
    with Session() as s, s.begin():
        store.rename_novel(s, b, "  Renamed  ")
    with Session() as s:
        summaries = {n.id: n for n in store.list_novels(s)}
        assert summaries[a].words == 5 and summaries[a].paragraphs == 2
        assert summaries[b].title == "Renamed" and summaries[b].paragraphs == 0
        assert store.list_novels(s)[0].id == b  # most recently edited first
    with Session() as s, s.begin():
        store.delete_novel(s, a)
    with Session() as s:
        assert [n.id for n in store.list_novels(s)] == [b]
        with pytest.raises(NotFoundError, match="No novel"):
            store.get_novel(s, a)
        assert s.scalars(select(Revision).where(Revision.novel_id == a)).all() == []


def test_bad_input_is_refused_with_a_message(Session):
    novel_id = new_novel(Session)
    with Session() as s, s.begin():
        with pytest.raises(ValidationError, match="title must not be empty"):
            store.create_novel(s, "   ")
        with pytest.raises(ValidationError, match="must be text"):
            store.add_paragraph(s, novel_id, 42)
        with pytest.raises(ValidationError, match="origin"):
            store.add_paragraph(s, novel_id, "x", origin="dreamed")


def test_story_edit_is_compare_and_set_and_undoable(Session):
    novel_id = new_novel(Session)
    with Session() as s, s.begin():
        store.update_novel_settings(s, novel_id, {"outline": "1. Mara finds the bottle.", "max_new_tokens": 99})
    with Session() as s:
        read = store.story(store.get_novel(s, novel_id))
    assert read == {"premise": "p", "style_notes": "", "outline": "1. Mara finds the bottle."}
    before = snapshot(Session, novel_id)
    with Session() as s, s.begin():
        store.edit_story(s, novel_id, "A keeper and a bottle.", "Spare, present tense.", "1. The bottle. 2. The boat.",
                         read)
    with Session() as s:
        novel = store.get_novel(s, novel_id)
        assert store.story(novel) == {"premise": "A keeper and a bottle.", "style_notes": "Spare, present tense.",
                                      "outline": "1. The bottle. 2. The boat."}
        assert novel.settings["max_new_tokens"] == 99  # the other settings are untouched
    after = snapshot(Session, novel_id)
    # A second tab that read the old story is refused, naming what changed, and saves nothing.
    with Session() as s, s.begin():
        with pytest.raises(ConflictError, match="premise and the style notes and the outline were changed"):
            store.edit_story(s, novel_id, "Tab two's premise.", "", "", read)
    assert snapshot(Session, novel_id) == after
    with Session() as s, s.begin():
        with pytest.raises(ValidationError, match="premise cannot be empty"):
            store.edit_story(s, novel_id, "  ", "", "", store.story(store.get_novel(s, novel_id)))
    assert_undo_then_redo(Session, novel_id, read=snapshot, before=before, after=after)


def test_stale_edit_is_refused_and_newer_text_kept(Session):
    novel_id = new_novel(Session)
    with Session() as s, s.begin():
        paragraph = store.add_paragraph(s, novel_id, "original", origin="generated")
    # Two tabs load version 1; the first saves, the second is stale.
    with Session() as s, s.begin():
        store.edit_paragraph(s, paragraph.id, "from tab one", expected_version=1)
    with Session() as s, s.begin():
        with pytest.raises(ConflictError, match="changed elsewhere") as info:
            store.edit_paragraph(s, paragraph.id, "from tab two", expected_version=1)
        assert info.value.current_version == 2
    with Session() as s:
        saved = store.get_paragraph(s, paragraph.id)
        assert (saved.text, saved.version, saved.origin) == ("from tab one", 2, "edited")

    with Session() as s, s.begin():
        store.set_memory(s, novel_id, "memory A", expected_version=1)
    with Session() as s, s.begin():
        with pytest.raises(ConflictError, match="short-term memory was changed"):
            store.set_memory(s, novel_id, "memory B", expected_version=1)
    with Session() as s:
        assert store.current_memory(s, novel_id).text == "memory A"


def test_commit_step_is_one_transaction(Session):
    novel_id = new_novel(Session, memory="m0")
    with Session() as s, s.begin():
        store.set_plans(s, novel_id, ["go north", "go south", "wait"])
    with Session() as s, s.begin():
        result = store.commit_step(s, novel_id, "They went south.", "m1", ["a", "b", "c"], 1, "go south!",
                                   vec(1), expected_memory_version=1, expected_paragraph_count=0)
    with Session() as s:
        first = store.plan_sets(s, novel_id)[0]
        assert (first.chosen_index, first.used_text, first.paragraph_id) == (1, "go south!", result.paragraph.id)
        assert store.current_plans(s, novel_id).plans == ["a", "b", "c"]
        assert store.current_memory(s, novel_id).version == 2
    before = snapshot(Session, novel_id)
    # A failure after part of the step was written rolls the whole step back.
    with pytest.raises(ValidationError, match="Plan 7 does not exist"):
        with Session() as s, s.begin():
            store.commit_step(s, novel_id, "Half a step.", "m2", ["x"], 7, "?", vec(2))
    # A step generated from a stale view is refused whole.
    with pytest.raises(ConflictError, match="changed while this step was generated"):
        with Session() as s, s.begin():
            store.commit_step(s, novel_id, "Stale.", "m2", ["x"], 0, "a", vec(3), expected_paragraph_count=0)
    assert snapshot(Session, novel_id) == before


def _edit_kinds():
    # Each: (name, function(Session, novel_id, ids) performing one user action).
    def add(S, n, ids):
        with S() as s, s.begin():
            store.add_paragraph(s, n, "added at the end", embedding=vec(10))

    def insert(S, n, ids):
        with S() as s, s.begin():
            store.add_paragraph(s, n, "inserted first", position=1)

    def edit(S, n, ids):
        with S() as s, s.begin():
            store.edit_paragraph(s, ids["p2"], "second, rewritten", expected_version=1, embedding=vec(11))

    def edit_without_vector(S, n, ids):
        with S() as s, s.begin():
            store.edit_paragraph(s, ids["p1"], "first, rewritten", expected_version=1)

    def delete(S, n, ids):
        with S() as s, s.begin():
            store.delete_paragraph(s, ids["p1"], expected_version=1)

    def memory(S, n, ids):
        with S() as s, s.begin():
            store.set_memory(s, n, "a new summary", expected_version=store.current_memory(s, n).version)

    def plans(S, n, ids):
        with S() as s, s.begin():
            store.set_plans(s, n, ["a proposed plan"])

    def step(S, n, ids):
        with S() as s, s.begin():
            store.commit_step(s, n, "a generated paragraph", "summary after", ["x", "y", "z"], 2, "plan c", vec(12))

    def lore_add(S, n, ids):
        with S() as s, s.begin():
            store.add_lore(s, n, "Harbor", ["harbor", "docks"], "The harbor freezes in winter.", embedding=vec(13))

    def lore_edit(S, n, ids):
        with S() as s, s.begin():
            store.edit_lore(s, ids["lore"], 1, body="Mara is left-handed.", keys=["Mara", "captain"],
                            enabled=False)

    def lore_delete(S, n, ids):
        with S() as s, s.begin():
            store.delete_lore(s, ids["lore"])

    def rename(S, n, ids):
        with S() as s, s.begin():
            store.rename_novel(s, n, "A New Title")

    def settings(S, n, ids):
        with S() as s, s.begin():
            store.update_novel_settings(s, n, {"sampling": {"temperature": 0.3}})

    def premise(S, n, ids):
        with S() as s, s.begin():
            novel = store.get_novel(s, n)
            store.edit_story(s, n, "A different premise", "terse", store.story(novel)["outline"], store.story(novel))

    return [add, insert, edit, edit_without_vector, delete, memory, plans, step, lore_add, lore_edit, lore_delete,
            rename, settings, premise]


@pytest.mark.parametrize("action", _edit_kinds(), ids=lambda f: f.__name__)
def test_undo_redo_restores_exact_state(Session, action):
    novel_id = new_novel(Session, memory="first summary")
    with Session() as s, s.begin():
        p1 = store.add_paragraph(s, novel_id, "first", embedding=vec(1))
        p2 = store.add_paragraph(s, novel_id, "second", embedding=vec(2))
        store.add_paragraph(s, novel_id, "third", embedding=vec(3))
        store.set_plans(s, novel_id, ["a", "b", "c"])
        lore = store.add_lore(s, novel_id, "Mara", ["Mara"], "Mara is the captain.", embedding=vec(4))
    ids = {"p1": p1.id, "p2": p2.id, "lore": lore.id}
    before = snapshot(Session, novel_id)
    action(Session, novel_id, ids)
    after = snapshot(Session, novel_id)
    assert after != before
    with Session() as s, s.begin():
        assert revisions.undo(s, novel_id) is not None
    assert snapshot(Session, novel_id) == before
    with Session() as s, s.begin():
        assert revisions.redo(s, novel_id) is not None
        assert revisions.redo(s, novel_id) is None
    assert snapshot(Session, novel_id) == after
    # Undo again, then a new action: the undone one can no longer be redone.
    with Session() as s, s.begin():
        revisions.undo(s, novel_id)
        store.add_paragraph(s, novel_id, "a new branch")
        assert not revisions.can_redo(s, novel_id)
        assert any(r.state == "dropped" for r in revisions.revisions(s, novel_id, include_dropped=True))


def test_undo_everything_then_redo_everything(Session):
    novel_id = new_novel(Session, memory="m")
    states = [snapshot(Session, novel_id)]
    for action in _edit_kinds():
        if action.__name__ in ("edit", "edit_without_vector", "delete", "lore_edit", "lore_delete", "plans"):
            continue
        action(Session, novel_id, {})
        states.append(snapshot(Session, novel_id))
    for expected in reversed(states[:-1]):
        with Session() as s, s.begin():
            revisions.undo(s, novel_id)
        assert snapshot(Session, novel_id) == expected
    with Session() as s, s.begin():
        assert revisions.undo(s, novel_id) is None  # creating the novel is not undoable
    for expected in states[1:]:
        with Session() as s, s.begin():
            revisions.redo(s, novel_id)
        assert snapshot(Session, novel_id) == expected


HOSTILE = {
    "rtl": "\u05e9\u05dc\u05d5\u05dd \u0645\u0631\u062d\u0628\u0627 \u202eevil\u202c mixed",
    "zwj_emoji": ("family: \U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466 "
                  "and flag \U0001f3f3\ufe0f\u200d\U0001f308"),
    "combining": "Z\u0351\u036b\u0343\u036a\u0302\u036b\u033d\u034f\u0334\u0319a\u0300\u0301\u0302 e\u0301 vs \u00e9",
    "nul": "before\x00after\x00\x00end\x10escape-char",
    "crlf": "line one\r\nline two\rline three\n\r\n",
    "megabyte": ("\u00e9\U0001f600 ab\r\n\x00" * 100_000)[:1_048_576],
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_text_round_trips_unchanged(Session, name):
    text = HOSTILE[name]
    novel_id = new_novel(Session, title=name)
    with Session() as s, s.begin():
        paragraph = store.add_paragraph(s, novel_id, text)
        store.set_memory(s, novel_id, text, expected_version=1)
        store.add_lore(s, novel_id, text[:50], [text[:20]], text)
        store.set_plans(s, novel_id, [text, text[:10]])
    with Session() as s:
        assert store.get_paragraph(s, paragraph.id).text == text
        assert store.current_memory(s, novel_id).text == text
        assert store.lore_entries(s, novel_id)[0].body == text
        assert store.current_plans(s, novel_id).plans == [text, text[:10]]
    with Session() as s, s.begin():
        store.edit_paragraph(s, paragraph.id, "plain", expected_version=1)
        revisions.undo(s, novel_id)
    with Session() as s:
        assert store.get_paragraph(s, paragraph.id).text == text


def test_lone_surrogates_are_refused(Session):
    novel_id = new_novel(Session)
    with Session() as s, s.begin():
        with pytest.raises(ValidationError, match="invalid Unicode"):
            store.add_paragraph(s, novel_id, "broken \ud800 text")


def test_migration_matches_the_schema(database):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from memory.migrations import current_revision, head_revision
    from memory.schema import Base, is_schema_object

    engine, _ = database
    assert current_revision(engine) == head_revision()
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"include_name": is_schema_object})
        diff = compare_metadata(context, Base.metadata)
    assert diff == []


def test_sqlite_connections_use_wal_full_sync_foreign_keys_and_immediate(sqlite_url):
    from memory.db import make_engine

    engine = make_engine(sqlite_url)
    statements = []
    from sqlalchemy import event

    event.listen(engine, "before_cursor_execute", lambda c, cur, stmt, *a: statements.append(stmt))
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 5000
    with engine.begin() as connection:
        connection.exec_driver_sql("SELECT 1")
    assert "BEGIN IMMEDIATE" in statements
    engine.dispose()


def test_plan_set_survives_its_paragraph_being_deleted(Session):
    novel_id = new_novel(Session)
    with Session() as s, s.begin():
        store.set_plans(s, novel_id, ["a"])
        step = store.commit_step(s, novel_id, "text", "m", ["b"], 0, "a", None)
    with Session() as s, s.begin():
        store.delete_paragraph(s, step.paragraph.id, expected_version=1)
    with Session() as s:
        assert s.get(PlanSet, store.plan_sets(s, novel_id)[0].id).paragraph_id is None


def test_undo_and_redo_name_the_positions_they_touched(Session):
    novel_id = new_novel(Session)
    with Session() as s, s.begin():
        for text in ("one", "two", "three"):
            store.add_paragraph(s, novel_id, text)
    with Session() as s, s.begin():
        store.edit_paragraph(s, store.paragraph_at(s, novel_id, 3).id, "three, rewritten", expected_version=1)
    with Session() as s, s.begin():
        store.add_paragraph(s, novel_id, "inserted", position=2)
    with Session() as s, s.begin():
        store.set_memory(s, novel_id, "a summary", expected_version=store.current_memory(s, novel_id).version)
    with Session() as s, s.begin():
        memory_only = revisions.undo(s, novel_id)
        assert memory_only.revision.kind == "memory.set"
        assert memory_only.positions == () and memory_only.first_position is None
        inserted = revisions.undo(s, novel_id)
        # The new paragraph at 2, and the shift that moved 2 and 3 down.
        assert inserted.revision.kind == "paragraph.add" and inserted.positions == (2,)
        edited = revisions.undo(s, novel_id)
        assert edited.revision.kind == "paragraph.edit" and edited.first_position == 3
    with Session() as s, s.begin():
        redone = revisions.redo(s, novel_id)
        assert redone.revision.kind == "paragraph.edit" and redone.positions == (3,)
        assert revisions.redo(s, novel_id).positions == (2,)
    with Session() as s, s.begin():
        store.delete_paragraph(s, store.paragraph_at(s, novel_id, 1).id, expected_version=1)
    with Session() as s, s.begin():
        # The deleted paragraph at 1 and the shift of everything from 2 on.
        assert revisions.undo(s, novel_id).positions == (1, 2)
