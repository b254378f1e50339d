"""Alternatives (memory/alternatives.py): kept versions of a paragraph, picked and swapped back as undoable edits,
the memory and plans following the text in the manuscript by one rule, pending versions applied or dropped, kept
through a paragraph's delete and its undo, round-tripped through the JSON export, and the migration from 0003."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import select

from memory import alternatives, chapters, exchange, retrieval, revisions, store
from memory.alternatives import Version
from memory.embeddings import Vector
from memory.schema import Alternative
from tests.memory.conftest import (
    assert_undo_then_redo,
    engine_at,
    insert_old_novel,
    insert_old_paragraph,
    migrate_to_head,
)

OPENING = "Mara kept the lighthouse on Skerry alone and counted the gulls each morning."
FIRST = "Mara climbed the spiral stair with the note in her fist."
SECOND = "Mara went down to the boathouse instead and lit a candle for the dead."


def vector(n: float) -> Vector:
    return Vector("e", np.arange(1, 5, dtype=np.float32) + n)


def state(Session, novel_id: int) -> dict:
    """What a pick can touch, as plain values."""
    with Session() as s:
        return {
            "paragraphs": [(p.position, p.text, p.origin, p.version) for p in store.paragraphs(s, novel_id)],
            "memory": [(m.version, m.text, m.origin) for m in store.memory_history(s, novel_id)],
            "plans": [(p.position, list(p.plans), p.paragraph_id) for p in store.plan_sets(s, novel_id)],
            "alternatives": sorted((a.id, a.paragraph_id, a.position, a.text, a.kind, a.memory, a.plans)
                                   for a in s.scalars(select(Alternative).where(Alternative.novel_id == novel_id))),
        }


def two_steps_with_a_candidate(Session) -> tuple[int, int, int]:
    """A novel with an opening and a step whose second candidate (its own memory and plans) is kept beside it:
    (novel id, the step's paragraph id, the candidate's id)."""
    with Session() as s, s.begin():
        novel_id = store.create_novel(s, "Skerry").id
        store.commit_step(s, novel_id, OPENING, "Mara keeps the light.", ["a", "b", "c"], None, "(the opening)",
                          vector(0))
        result = store.commit_step(s, novel_id, FIRST, "Mara read the note.", ["climb", "wait", "burn"], 0, "a",
                                   vector(1))
        (candidate,) = alternatives.attach_to_revision(
            s, result.revision, result.paragraph,
            [Version(SECOND, "candidate", instruction="a", memory="Mara lit a candle.",
                     plans=["row", "pray", "sleep"])])
        return novel_id, result.paragraph.id, candidate.id


def test_pick_swaps_text_memory_and_plans_and_undo_redo_restore_exactly(Session):
    novel_id, paragraph_id, candidate_id = two_steps_with_a_candidate(Session)
    before = state(Session, novel_id)
    with Session() as s, s.begin():
        picked = alternatives.pick(s, candidate_id, expected_version=1, embedding=vector(2))
        assert picked.memory_followed
    after = state(Session, novel_id)
    assert after["paragraphs"][-1][1:] == (SECOND, "generated", 2)
    assert after["memory"][-1][1:] == ("Mara lit a candle.", "generated")
    assert after["plans"][-1][1] == ["row", "pray", "sleep"]
    # The text it replaced is kept in its place, with the memory and plans that went with it.
    ((_, owner, _, kept_text, kind, kept_memory, kept_plans),) = after["alternatives"]
    assert (owner, kept_text, kind, kept_memory, kept_plans) == (paragraph_id, FIRST, "swapped", "Mara read the note.",
                                                                 ["climb", "wait", "burn"])
    with Session() as s:
        # Retrieval reads the picked text's vector.
        hit = retrieval.search(s, novel_id, vector(2), 1)[0]
        assert hit.paragraph.id == paragraph_id and hit.paragraph.text == SECOND
    assert_undo_then_redo(Session, novel_id, read=state, before=before, after=after)
    # Picking the swapped-out version swaps back: both texts are always one pick away.
    with Session() as s, s.begin():
        (kept,) = alternatives.of_paragraph(s, paragraph_id)
        assert alternatives.pick(s, kept.id, expected_version=2).memory_followed
    back = state(Session, novel_id)
    assert back["paragraphs"] == [(1, OPENING, "generated", 1), (2, FIRST, "generated", 3)]
    assert back["memory"][-1][1] == "Mara read the note." and back["plans"][-1][1] == ["climb", "wait", "burn"]


def test_memory_stays_when_edited_by_hand_or_the_paragraph_is_not_the_last(Session):
    novel_id, paragraph_id, candidate_id = two_steps_with_a_candidate(Session)
    with Session() as s, s.begin():
        store.set_memory(s, novel_id, "The writer's own summary.", expected_version=3)
    with Session() as s, s.begin():
        assert not alternatives.pick(s, candidate_id, expected_version=1).memory_followed
    after = state(Session, novel_id)
    assert after["paragraphs"][-1][1] == SECOND and after["memory"][-1][1] == "The writer's own summary."
    assert after["plans"][-1][1] == ["climb", "wait", "burn"]
    with Session() as s, s.begin():
        opening = store.paragraph_at(s, novel_id, 1)
        kept = alternatives.keep(s, opening.id, Version("The island was only a rock.", "version",
                                                        memory="m", plans=["x", "y", "z"]))
    with Session() as s, s.begin():
        assert not alternatives.pick(s, kept.id, expected_version=1).memory_followed
    assert state(Session, novel_id)["memory"][-1][1] == "The writer's own summary."


def test_picking_a_version_in_a_closed_chapter_marks_its_summary_stale(Session):
    novel_id, paragraph_id, candidate_id = two_steps_with_a_candidate(Session)
    with Session() as s, s.begin():
        (chapter,) = store.chapters(s, novel_id)
        chapters.close_chapter(s, chapter.id)
        chapters.set_summary(s, chapter.id, "Mara reads the note.", expected_version=0, origin="generated")
        assert not chapters.get_chapter(s, chapter.id).summary_stale
    with Session() as s, s.begin():
        alternatives.pick(s, candidate_id, expected_version=1)
    with Session() as s:
        assert chapters.get_chapter(s, chapter.id).summary_stale
    with Session() as s, s.begin():
        revisions.undo(s, novel_id)
    with Session() as s:
        assert not chapters.get_chapter(s, chapter.id).summary_stale


def test_a_stale_pick_is_refused_and_changes_nothing(Session):
    novel_id, paragraph_id, candidate_id = two_steps_with_a_candidate(Session)
    with Session() as s, s.begin():
        store.edit_paragraph(s, paragraph_id, "Edited in another tab.", expected_version=1)
    before = state(Session, novel_id)
    with Session() as s, s.begin():
        with pytest.raises(store.ConflictError, match="changed elsewhere"):
            alternatives.pick(s, candidate_id, expected_version=1)
    assert state(Session, novel_id) == before


def test_pending_versions_are_applied_or_dropped_undoably(Session):
    novel_id, _, _ = two_steps_with_a_candidate(Session)
    with Session() as s, s.begin():
        first, second = alternatives.keep_pending(s, novel_id, 3, [Version("A step the store refused.", "candidate"),
                                                                   Version("Its second candidate.", "candidate")])
    before = state(Session, novel_id)
    with Session() as s, s.begin():
        paragraph = alternatives.apply_pending(s, first.id, embedding=vector(5))
        assert paragraph.position == 3
        alternatives.drop(s, second.id)
    with Session() as s:
        assert [p.text for p in store.paragraphs(s, novel_id)][-1] == "A step the store refused."
        assert alternatives.pending(s, novel_id) == []
    with Session() as s, s.begin():
        revisions.undo(s, novel_id)
        revisions.undo(s, novel_id)
    assert state(Session, novel_id) == before
    with Session() as s, s.begin():
        with pytest.raises(store.ValidationError, match="pending"):
            alternatives.pick(s, first.id, expected_version=1)


def test_a_deleted_paragraphs_versions_become_pending_and_undo_puts_them_back(Session):
    novel_id, paragraph_id, candidate_id = two_steps_with_a_candidate(Session)
    before = state(Session, novel_id)
    with Session() as s, s.begin():
        store.delete_paragraph(s, paragraph_id, expected_version=1)
    with Session() as s:
        (waiting,) = alternatives.pending(s, novel_id)
        assert (waiting.id, waiting.text, waiting.position) == (candidate_id, SECOND, 2)
    with Session() as s, s.begin():
        revisions.undo(s, novel_id)
    assert state(Session, novel_id) == before


def test_undoing_the_step_takes_its_candidates_with_it(Session):
    novel_id, paragraph_id, _ = two_steps_with_a_candidate(Session)
    with Session() as s, s.begin():
        revisions.undo(s, novel_id)
    with Session() as s:
        assert state(Session, novel_id)["alternatives"] == []
        assert alternatives.counts(s, novel_id) == {}
    with Session() as s, s.begin():
        revisions.redo(s, novel_id)
    with Session() as s:
        assert alternatives.counts(s, novel_id) == {paragraph_id: 1}


def test_empty_or_unknown_versions_are_refused(Session):
    novel_id, paragraph_id, _ = two_steps_with_a_candidate(Session)
    with Session() as s, s.begin():
        with pytest.raises(store.ValidationError, match="empty"):
            alternatives.keep(s, paragraph_id, Version("  ", "rewrite"))
        with pytest.raises(store.ValidationError, match="kind"):
            alternatives.keep(s, paragraph_id, Version("x", "guess"))


def test_alternatives_round_trip_through_the_json_export(Session):
    novel_id, paragraph_id, candidate_id = two_steps_with_a_candidate(Session)
    with Session() as s, s.begin():
        alternatives.pick(s, candidate_id, expected_version=1)
        alternatives.keep_pending(s, novel_id, 3, [Version("Pending.", "candidate", memory="m", plans=["p"])])
    with Session() as s:
        document = exchange.export_json(s, novel_id)
    assert len(document["alternatives"]) == 2
    with Session() as s, s.begin():
        copy_id = exchange.import_json(s, exchange.parse_import(exchange.dumps(document).encode("utf-8"))).id
    with Session() as s:
        assert exchange.export_json(s, copy_id) == document
        copy = store.paragraphs(s, copy_id)[-1]
        (kept,) = alternatives.of_paragraph(s, copy.id)
        assert (copy.text, kept.text, kept.memory) == (SECOND, FIRST, "Mara read the note.")
        assert [a.text for a in alternatives.pending(s, copy_id)] == ["Pending."]
    # The copy's history works: undo the pick there.
    with Session() as s, s.begin():
        revisions.undo(s, copy_id)
        revisions.undo(s, copy_id)
    with Session() as s:
        assert store.paragraphs(s, copy_id)[-1].text == FIRST
    # A file written before alternatives existed still imports.
    del document["alternatives"]
    for revision in document["revisions"]:
        revision["changes"] = [c for c in revision["changes"] if c["entity"] != "alternatives"]
    with Session() as s, s.begin():
        exchange.import_json(s, document)


@pytest.fixture
def database_at_0003(unmigrated_url):
    """An engine on a database at migration 0003, the schema main had before alternatives."""
    with engine_at(unmigrated_url, "0003") as engine:
        yield engine


def test_migration_from_0003_keeps_everything_and_adds_alternatives(database_at_0003, tmp_path):
    engine = database_at_0003
    with engine.begin() as connection:
        insert_old_novel(connection)
        insert_old_paragraph(connection, paragraph_id=1, text=OPENING, words=12, origin="generated")
    Session = migrate_to_head(engine, tmp_path / "backups")
    with Session() as s:
        assert [p.text for p in store.paragraphs(s, 1)] == [OPENING]
        # The full-text index from 0003 still follows the paragraphs.
        assert [pid for pid, _ in retrieval.lexical_top_k(s, 1, "gulls", 5)] == [1]
    with Session() as s, s.begin():
        kept = alternatives.keep(s, 1, Version(FIRST, "version"))
        alternatives.pick(s, kept.id, expected_version=1)
    with Session() as s:
        assert store.paragraphs(s, 1)[0].text == FIRST
        assert [a.text for a in alternatives.of_paragraph(s, 1)] == [OPENING]
        assert [pid for pid, _ in retrieval.lexical_top_k(s, 1, "spiral stair", 5)] == [1]
