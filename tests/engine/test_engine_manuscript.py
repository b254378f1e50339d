"""The writer's own manuscript edits through the engine (issue 14), over a real SQLite store and the real MiniLM
embedder with the scripted LM: each edit kind undone and redone exactly, retrieval finding a paragraph the writer
inserted, snapshots dropped from the edited position on, the next step reading the writer's paragraph verbatim,
and the memory catching up with every paragraph changed since its last update (in a step, and on request)."""

from __future__ import annotations

import threading

import pytest

from app.engine import Cancelled, EngineError
from memory import retrieval, store
from tests.engine.engine_fakes import GOOD, db_state, run
from tests.engine.test_engine_scripted import started

WRITER = ("Orla Quennell rowed out to the skerry at dawn with a tin of biscuits and her father's brass "
          "telescope wrapped in oilcloth.")
WRITER_TWO = "The harbour master's dog followed her along the jetty and would not go home."


def _paragraphs(session_factory, novel_id) -> list[tuple[int, int, str, str, int]]:
    with session_factory() as session:
        return [(p.id, p.position, p.text, p.origin, p.version) for p in store.paragraphs(session, novel_id)]


class RecordingSnapshots:
    """A snapshot store that only notes which positions were dropped."""

    def __init__(self):
        self.dropped: list[tuple[int, int]] = []

    def delete_after(self, novel_id: int, position: int, fingerprint: str | None = None) -> None:
        self.dropped.append((novel_id, position))


def _edits():
    # Each: function(editor, novel id, paragraphs as _paragraphs gives them) doing one edit.
    def add_at_end(editor, n, ps):
        return editor.add(n, WRITER)

    def insert_before(editor, n, ps):
        return editor.add(n, WRITER, before_id=ps[1][0])

    def insert_after(editor, n, ps):
        return editor.add(n, WRITER, after_id=ps[0][0])

    def edit(editor, n, ps):
        return editor.edit(ps[0][0], WRITER, ps[0][4])

    def delete(editor, n, ps):
        return editor.delete(ps[1][0], ps[1][4])

    def move_up(editor, n, ps):
        return editor.move(ps[2][0], ps[2][4], -1)

    def move_down(editor, n, ps):
        return editor.move(ps[0][0], ps[0][4], +1)

    def split(editor, n, ps):
        return editor.split(ps[2][0], ps[2][4])

    def merge(editor, n, ps):
        return editor.merge(ps[0][0], ps[0][4])

    return [add_at_end, insert_before, insert_after, edit, delete, move_up, move_down, split, merge]


def _three_paragraphs(session_factory, embedder, novel_id):
    engine, generator = started(session_factory, embedder, novel_id)
    engine.snapshot_store = RecordingSnapshots()
    editor = engine.editor
    editor.add(novel_id, WRITER_TWO)
    editor.add(novel_id, "The lamp went dark at nine.\n\nAt ten it came back on by itself.")
    return engine, generator


@pytest.mark.parametrize("edit", _edits(), ids=lambda f: f.__name__)
def test_each_edit_is_one_undoable_revision_and_drops_snapshots_from_its_position(session_factory, embedder,
                                                                                  novel_id, edit):
    engine, _ = _three_paragraphs(session_factory, embedder, novel_id)
    before = db_state(session_factory, novel_id)
    outcome = edit(engine.editor, novel_id, _paragraphs(session_factory, novel_id))
    after = db_state(session_factory, novel_id)
    assert after["paragraphs"] != before["paragraphs"]
    assert len(after["revisions"]) == len(before["revisions"]) + 1
    # The snapshots that read the first changed position are dropped.
    assert engine.snapshot_store.dropped[-1][1] <= (outcome.position or 1) - 1
    assert engine.undo(novel_id)
    assert {k: v for k, v in db_state(session_factory, novel_id).items() if k != "revisions"} == \
        {k: v for k, v in before.items() if k != "revisions"}
    assert engine.redo(novel_id)
    assert db_state(session_factory, novel_id)["paragraphs"] == after["paragraphs"]


def test_an_inserted_paragraph_is_found_by_retrieval_and_marked_written(session_factory, embedder, novel_id):
    engine, _ = _three_paragraphs(session_factory, embedder, novel_id)
    first = _paragraphs(session_factory, novel_id)[0]
    inserted = engine.editor.add(novel_id, "Orla hid the green bottle under the third stair of the tower.",
                                 after_id=first[0])
    assert inserted.position == 2
    texts = _paragraphs(session_factory, novel_id)
    assert texts[1][2:4] == ("Orla hid the green bottle under the third stair of the tower.", "written")
    with session_factory() as session:
        hits = retrieval.search(session, novel_id, embedder.vector("Where did she hide the bottle?"), 1,
                                text="Where did she hide the bottle?")
        assert hits[0].paragraph.id == inserted.paragraph_id
        # The full-text index follows the insert too.
        lexical = retrieval.search(session, novel_id, None, 1, text="stair", method="lexical")
        assert lexical[0].paragraph.id == inserted.paragraph_id


def test_an_empty_paragraph_is_refused_and_a_stale_edit_never_overwrites(session_factory, embedder, novel_id):
    engine, _ = _three_paragraphs(session_factory, embedder, novel_id)
    before = db_state(session_factory, novel_id)
    first = _paragraphs(session_factory, novel_id)[0]
    with pytest.raises(EngineError, match="cannot be empty"):
        engine.editor.add(novel_id, "  \n ")
    with pytest.raises(EngineError, match="cannot be empty"):
        engine.editor.edit(first[0], "", first[4])
    engine.editor.edit(first[0], "Saved by the other tab.", first[4])
    with pytest.raises(store.ConflictError, match="changed elsewhere"):
        engine.editor.edit(first[0], "From the stale tab.", first[4])
    assert _paragraphs(session_factory, novel_id)[0][2] == "Saved by the other tab."
    assert len(db_state(session_factory, novel_id)["revisions"]) == len(before["revisions"]) + 1


def test_the_next_step_reads_the_writers_paragraph_and_the_memory_catches_up(session_factory, embedder, novel_id):
    engine, generator = started(session_factory, embedder, novel_id)
    engine.editor.add(novel_id, WRITER)
    events, outcome = run(engine.step(novel_id, "Orla reaches the skerry."))
    paragraph_prompt = generator.calls_for("paragraph")[-1].prompt
    assert WRITER in paragraph_prompt
    # The step's memory read the writer's paragraph and the new one, in one update.
    memory_prompt = generator.calls_for("memory")[-1].prompt
    assert WRITER in memory_prompt and GOOD["paragraph"] in memory_prompt
    assert memory_prompt.index(WRITER) < memory_prompt.index(GOOD["paragraph"])
    # Caught up: nothing is pending after the step.
    assert engine._read(novel_id).pending == []
    assert [p[3] for p in _paragraphs(session_factory, novel_id)] == ["generated", "written", "generated"]


def test_update_memory_now_streams_saves_one_undoable_version_and_then_has_nothing_to_do(session_factory,
                                                                                        embedder, novel_id):
    engine, generator = started(session_factory, embedder, novel_id)
    engine.editor.add(novel_id, WRITER)
    engine.editor.add(novel_id, WRITER_TWO)
    opening = _paragraphs(session_factory, novel_id)[0]
    engine.editor.edit(opening[0], opening[2] + " The fog lifted.", opening[4])
    before = db_state(session_factory, novel_id)
    generator.script["memory"] = ["Orla rowed to the skerry with a telescope; the harbour dog followed her."]
    events, memory = run(engine.update_memory(novel_id))
    assert "".join(e.text for e in events if e.kind == "token").strip() == memory
    prompt = generator.calls_for("memory")[-1].prompt
    assert all(text in prompt for text in (WRITER, WRITER_TWO, "The fog lifted."))
    state = db_state(session_factory, novel_id)
    assert state["memory"][-1][1] == memory
    assert state["revisions"][-1][1] == "memory.set"
    events, memory = run(engine.update_memory(novel_id))
    assert memory is None and "up to date" in events[-1].text
    assert engine.undo(novel_id)
    assert db_state(session_factory, novel_id)["memory"] == before["memory"]
    assert len(engine._read(novel_id).pending) == 3


def test_update_memory_cancelled_or_overtaken_saves_nothing(session_factory, embedder, novel_id):
    engine, generator = started(session_factory, embedder, novel_id)
    engine.editor.add(novel_id, WRITER)
    before = db_state(session_factory, novel_id)
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        run(engine.update_memory(novel_id, cancel=cancel))
    assert db_state(session_factory, novel_id) == before

    def edit_meanwhile(call):
        written = _paragraphs(session_factory, novel_id)[-1]
        engine.editor.edit(written[0], WRITER + " She sang.", written[4])
        return GOOD["memory"]

    generator.script["memory"] = [edit_meanwhile, GOOD["memory"]]
    with pytest.raises(store.ConflictError, match="manuscript changed while the memory was updated"):
        run(engine.update_memory(novel_id))
    assert db_state(session_factory, novel_id)["memory"] == before["memory"]
