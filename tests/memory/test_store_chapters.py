"""Chapters, chapter summaries and the synopsis on a real database (SQLite file, and PostgreSQL): every operation
is one revision that undo restores exactly and redo replays; paragraphs stay contiguous per chapter; a closed
chapter's summary goes stale when its text changes; stale summary edits are refused; the migration from 0003."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sqlalchemy import text as sql

from memory import chapters, retrieval, revisions, store
from memory.embeddings import Vector
from tests.memory.conftest import (
    assert_undo_then_redo,
    OLD_STAMP,
    engine_at,
    insert_old_novel,
    insert_old_paragraph,
    insert_old_vector,
    migrate_to_head,
)


def vec(seed: int, dim: int = 8) -> Vector:
    return Vector("test-embedder", np.random.default_rng(seed).normal(size=dim))


def book(Session, sizes=(2, 3)) -> tuple[int, list[int]]:
    """A novel whose chapters hold `sizes` paragraphs each, texts "c<chapter>p<n>"."""
    with Session() as s, s.begin():
        novel_id = store.create_novel(s, "Chaptered", premise="p").id
        ids = [store.last_chapter(s, novel_id).id]
        for index in range(1, len(sizes)):
            ids.append(chapters.add_chapter(s, novel_id, f"Chapter {index + 1}").id)
        for chapter_index, (chapter_id, size) in enumerate(zip(ids, sizes), start=1):
            for n in range(1, size + 1):
                store.add_paragraph(s, novel_id, f"c{chapter_index}p{n}", chapter_id=chapter_id,
                                    embedding=vec(10 * chapter_index + n))
    return novel_id, ids


def layout(Session, novel_id: int) -> dict:
    """Everything about chapters a user sees, for exact before/after comparisons."""
    with Session() as s:
        return {
            "chapters": [(c.id, c.position, c.title, c.closed, c.summary_stale, c.version)
                         for c in store.chapters(s, novel_id)],
            "paragraphs": [(p.id, p.position, p.chapter_id, p.text, p.version, p.updated_at)
                           for p in store.paragraphs(s, novel_id)],
            "summaries": {c.id: [(m.version, m.text) for m in chapters.summary_history(s, c.id)]
                          for c in store.chapters(s, novel_id)},
            "synopsis": [(m.version, m.text) for m in chapters.synopsis_history(s, novel_id)],
            "embedded": sorted(int(pid) for pid in s.execute(sql(
                "SELECT paragraph_id FROM embeddings WHERE novel_id = :n AND paragraph_id IS NOT NULL"),
                {"n": novel_id}).scalars()),
        }


def reading(Session, novel_id: int) -> list[tuple[str, str]]:
    """(chapter title, paragraph text) in manuscript order."""
    with Session() as s:
        titles = {c.id: c.title for c in store.chapters(s, novel_id)}
        return [(titles[p.chapter_id], p.text) for p in store.paragraphs(s, novel_id)]


def assert_contiguous(Session, novel_id: int) -> None:
    with Session() as s:
        order = [c.id for c in store.chapters(s, novel_id)]
        seen = [p.chapter_id for p in store.paragraphs(s, novel_id)]
        assert all(cid is not None for cid in seen)
        ranks = [order.index(cid) for cid in seen]
        assert ranks == sorted(ranks)
        assert [p.position for p in store.paragraphs(s, novel_id)] == list(range(1, len(seen) + 1))


def test_a_new_novel_has_one_chapter_and_steps_go_into_the_last(Session):
    with Session() as s, s.begin():
        novel_id = store.create_novel(s, "New", premise="p").id
        store.commit_step(s, novel_id, "first", "m", ["a", "b", "c"], None, None, None)
        chapters.add_chapter(s, novel_id, "Two")
        store.commit_step(s, novel_id, "second", "m", ["a", "b", "c"], None, None, None)
    assert reading(Session, novel_id) == [("Chapter 1", "first"), ("Two", "second")]
    with Session() as s:
        overview = chapters.chapter_overview(s, novel_id)
    assert [(c.title, c.paragraphs, c.words) for c in overview] == [("Chapter 1", 1, 1), ("Two", 1, 1)]


def test_adding_to_an_earlier_chapter_keeps_chapters_contiguous(Session):
    novel_id, ids = book(Session, (2, 2))
    with Session() as s, s.begin():
        store.add_paragraph(s, novel_id, "c1p3", chapter_id=ids[0])
    assert [t for _, t in reading(Session, novel_id)] == ["c1p1", "c1p2", "c1p3", "c2p1", "c2p2"]
    assert_contiguous(Session, novel_id)


def test_empty_title_is_refused(Session):
    novel_id, ids = book(Session, (1,))
    with Session() as s, s.begin():
        with pytest.raises(store.ValidationError, match="must not be empty"):
            chapters.add_chapter(s, novel_id, "   ")
        with pytest.raises(store.ValidationError, match="must not be empty"):
            chapters.rename_chapter(s, ids[0], "", expected_version=1)


def test_rename_from_a_stale_view_is_refused(Session):
    novel_id, ids = book(Session, (1,))
    with Session() as s, s.begin():
        chapters.rename_chapter(s, ids[0], "The Harbour", expected_version=1)
    with Session() as s, s.begin():
        with pytest.raises(store.ConflictError, match="changed elsewhere"):
            chapters.rename_chapter(s, ids[0], "Other", expected_version=1)
    assert reading(Session, novel_id)[0][0] == "The Harbour"


def test_the_only_chapter_cannot_be_deleted_nor_the_last_merged(Session):
    novel_id, ids = book(Session, (1,))
    with Session() as s, s.begin():
        with pytest.raises(store.ValidationError, match="at least one chapter"):
            chapters.delete_chapter(s, ids[0])
        with pytest.raises(store.ValidationError, match="no next chapter"):
            chapters.merge_with_next(s, ids[0])


def _rename(s, novel_id, ids):
    chapters.rename_chapter(s, ids[1], "Renamed", expected_version=1)


def _add(s, novel_id, ids):
    chapters.add_chapter(s, novel_id, "Inserted", after_chapter_id=ids[0])


def _move_chapter_first(s, novel_id, ids):
    chapters.move_chapter(s, ids[2], 1)


def _move_chapter_last(s, novel_id, ids):
    chapters.move_chapter(s, ids[0], 3)


def _move_paragraph_back(s, novel_id, ids):
    chapters.move_paragraph(s, store.paragraph_at(s, novel_id, 4).id, ids[0])


def _move_paragraph_forward(s, novel_id, ids):
    chapters.move_paragraph(s, store.paragraph_at(s, novel_id, 1).id, ids[2])


def _merge(s, novel_id, ids):
    chapters.merge_with_next(s, ids[0])


def _delete_middle(s, novel_id, ids):
    chapters.delete_chapter(s, ids[1])


def _close(s, novel_id, ids):
    chapters.close_chapter(s, ids[2])


def _summary(s, novel_id, ids):
    chapters.set_summary(s, ids[0], "What happened in one.", expected_version=0)


def _synopsis(s, novel_id, ids):
    chapters.set_synopsis(s, novel_id, "The book so far.", expected_version=0)


EDITS = {
    _rename: None,
    _add: None,
    _move_chapter_first: ["c3p1", "c3p2", "c1p1", "c1p2", "c2p1", "c2p2", "c2p3"],
    _move_chapter_last: ["c2p1", "c2p2", "c2p3", "c3p1", "c3p2", "c1p1", "c1p2"],
    # Paragraph 4 is c2p2: it goes to the end of chapter 1.
    _move_paragraph_back: ["c1p1", "c1p2", "c2p2", "c2p1", "c2p3", "c3p1", "c3p2"],
    _move_paragraph_forward: ["c1p2", "c2p1", "c2p2", "c2p3", "c3p1", "c3p2", "c1p1"],
    _merge: None,
    _delete_middle: ["c1p1", "c1p2", "c3p1", "c3p2"],
    _close: None,
    _summary: None,
    _synopsis: None,
}


@pytest.mark.parametrize("edit", list(EDITS), ids=lambda f: f.__name__.strip("_"))
def test_every_chapter_edit_is_one_revision_undone_and_redone_exactly(Session, edit):
    novel_id, ids = book(Session, (2, 3, 2))
    before = layout(Session, novel_id)
    with Session() as s:
        revisions_before = len(revisions.revisions(s, novel_id))
    with Session() as s, s.begin():
        edit(s, novel_id, ids)
    after = layout(Session, novel_id)
    assert after != before
    assert_contiguous(Session, novel_id)
    if EDITS[edit] is not None:
        assert [t for _, t in reading(Session, novel_id)] == EDITS[edit]
    with Session() as s:
        assert len(revisions.revisions(s, novel_id)) == revisions_before + 1
    assert_undo_then_redo(Session, novel_id, read=layout, before=before, after=after)
    assert_contiguous(Session, novel_id)


def test_delete_chapter_removes_its_paragraphs_vectors_and_summaries_and_undo_brings_them_back(Session):
    novel_id, ids = book(Session, (2, 2))
    with Session() as s, s.begin():
        chapters.set_summary(s, ids[0], "one", expected_version=0)
    before = layout(Session, novel_id)
    with Session() as s, s.begin():
        chapters.delete_chapter(s, ids[0])
    after = layout(Session, novel_id)
    assert [c[2] for c in after["chapters"]] == ["Chapter 2"] and len(after["embedded"]) == 2
    assert [p[1] for p in after["paragraphs"]] == [1, 2]
    with Session() as s, s.begin():
        revisions.undo(s, novel_id)
    assert layout(Session, novel_id) == before
    with Session() as s:
        # The restored paragraphs are found by retrieval again.
        retrieval.clear_cache()
        hits = retrieval.top_k(s, novel_id, vec(11), 1)
        assert hits[0][0].id == before["paragraphs"][0][0]


def test_closing_the_last_chapter_opens_the_next(Session):
    novel_id, ids = book(Session, (1,))
    with Session() as s, s.begin():
        now_open = chapters.close_chapter(s, ids[0])
        assert now_open.title == "Chapter 2" and not now_open.closed
        store.commit_step(s, novel_id, "next", "m", ["a", "b", "c"], None, None, None)
        with pytest.raises(store.ValidationError, match="already closed"):
            chapters.close_chapter(s, ids[0])
    assert reading(Session, novel_id)[-1] == ("Chapter 2", "next")


def test_editing_a_closed_chapter_marks_its_summary_stale_and_a_new_summary_clears_it(Session):
    novel_id, ids = book(Session, (2, 1))
    with Session() as s, s.begin():
        chapters.close_chapter(s, ids[0])
        chapters.set_summary(s, ids[0], "old summary", expected_version=0, origin="generated")
        chapters.set_summary(s, ids[1], "open chapter summary", expected_version=0)
    with Session() as s, s.begin():
        paragraph = store.paragraph_at(s, novel_id, 1)
        store.edit_paragraph(s, paragraph.id, "changed", expected_version=paragraph.version)
        # The open chapter's summary is "so far": editing it does not mark anything.
        paragraph = store.paragraph_at(s, novel_id, 3)
        store.edit_paragraph(s, paragraph.id, "also changed", expected_version=paragraph.version)
    with Session() as s:
        assert [c.summary_stale for c in store.chapters(s, novel_id)][:2] == [True, False]
    with Session() as s, s.begin():
        revisions.undo(s, novel_id)
        revisions.undo(s, novel_id)
    with Session() as s:
        assert not chapters.get_chapter(s, ids[0]).summary_stale
    with Session() as s, s.begin():
        revisions.redo(s, novel_id)
    with Session() as s, s.begin():
        assert chapters.get_chapter(s, ids[0]).summary_stale
        chapters.set_summary(s, ids[0], "new summary", expected_version=1, origin="generated")
        assert not chapters.get_chapter(s, ids[0]).summary_stale
        assert [m.text for m in chapters.summary_history(s, ids[0])] == ["old summary", "new summary"]


def test_a_summary_edited_elsewhere_is_never_overwritten(Session):
    novel_id, ids = book(Session, (1,))
    with Session() as s, s.begin():
        chapters.set_summary(s, ids[0], "tab one", expected_version=0)
    with Session() as s, s.begin():
        with pytest.raises(store.ConflictError, match="changed elsewhere"):
            chapters.set_summary(s, ids[0], "tab two, from version 0", expected_version=0)
        with pytest.raises(store.ConflictError, match="changed elsewhere"):
            chapters.set_synopsis(s, novel_id, "x", expected_version=3)
    with Session() as s:
        assert chapters.current_summary(s, ids[0]).text == "tab one"


@pytest.fixture
def main_database(unmigrated_url):
    """An engine on a database at migration 0003 (the schema of main before chapters), with a novel written
    through main's own SQL: two paragraphs, an edit in the history, and a vector."""
    with engine_at(unmigrated_url, "0003") as engine:
        fill_as_main_did(engine)
        yield engine


def fill_as_main_did(engine) -> None:
    # As memory.revisions.row_to_dict writes a row.
    row = {"novel_id": 1, "origin": "written", "words": 2, "created_at": "2026-01-01T00:00:00",
           "updated_at": "2026-01-01T00:00:00"}
    with engine.begin() as connection:
        insert_old_novel(connection, premise="p")
        for pid, body, version in ((1, "old first", 2), (2, "old second", 1)):
            insert_old_paragraph(connection, paragraph_id=pid, text=body, words=2, version=version)
        edit_before = {"id": 1, "position": 1, "text": "draft first", "version": 1, **row}
        edit_after = {"id": 1, "position": 1, "text": "old first", "version": 2, **row}
        connection.execute(sql("INSERT INTO revisions (novel_id, seq, kind, cause, changes, state, created_at) "
                               "VALUES (1, 1, 'paragraph.edit', 'edited paragraph 1', :c, 'done', :t)"),
                           {"c": json.dumps([{"entity": "paragraphs", "id": 1, "before": edit_before,
                                              "after": edit_after}]), "t": OLD_STAMP})
        insert_old_vector(connection, paragraph_id=2, embedder="e", dim=2,
                          values=np.array([0.6, 0.8], dtype="<f4").tobytes())
        if engine.dialect.name == "postgresql":
            # Rows given explicit ids do not move PostgreSQL's sequences; the app's inserts would reuse them.
            for table in ("novels", "paragraphs"):
                connection.execute(sql(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), 10)"))


def test_migration_puts_each_old_novel_into_one_chapter_backs_up_first_and_keeps_history(main_database, tmp_path):
    engine = main_database
    Session = migrate_to_head(engine, tmp_path / "backups")
    with Session() as s:
        [chapter] = store.chapters(s, 1)
        assert chapter.title == "Chapter 1" and not chapter.closed
        assert [(p.text, p.chapter_id) for p in store.paragraphs(s, 1)] == [("old first", chapter.id),
                                                                           ("old second", chapter.id)]
        assert retrieval.lexical_top_k(s, 1, "second", 5)[0][0] == 2
    # The edit made before the migration is still undoable and redoable.
    with Session() as s, s.begin():
        revisions.undo(s, 1)
    with Session() as s:
        assert store.paragraph_at(s, 1, 1).text == "draft first"
    with Session() as s, s.begin():
        revisions.redo(s, 1)
        store.commit_step(s, 1, "new", "m", ["a", "b", "c"], None, None, None)
    assert [t for _, t in reading(Session, 1)] == ["old first", "old second", "new"]


def _ids_by_text(Session, novel_id: int) -> dict[str, object]:
    with Session() as s:
        return {p.text: p for p in store.paragraphs(s, novel_id)}


def test_the_writers_manuscript_edits_keep_chapters_together_and_undo_exactly(Session):
    """Insert after a chapter's last paragraph, split one, move one across the boundary: each stays contiguous,
    lands in the chapter the writer meant, and undo gives back the exact layout."""
    novel_id, (first, second) = book(Session, sizes=(2, 2))
    before = layout(Session, novel_id)
    last_of_first = _ids_by_text(Session, novel_id)["c1p2"]
    with Session() as s, s.begin():
        store.insert_paragraph(s, novel_id, "mine", after_id=last_of_first.id)
    assert reading(Session, novel_id)[:3] == [("Chapter 1", "c1p1"), ("Chapter 1", "c1p2"), ("Chapter 1", "mine")]
    assert_contiguous(Session, novel_id)

    with Session() as s, s.begin():
        store.edit_paragraph(s, _ids_by_text(Session, novel_id)["mine"].id, "one\n\ntwo", expected_version=1)
    mine = _ids_by_text(Session, novel_id)["one\n\ntwo"]
    with Session() as s, s.begin():
        store.split_paragraph(s, mine.id, expected_version=mine.version)
    assert [t for c, t in reading(Session, novel_id) if c == "Chapter 1"] == ["c1p1", "c1p2", "one", "two"]
    assert_contiguous(Session, novel_id)

    moving = _ids_by_text(Session, novel_id)["two"]
    with Session() as s, s.begin():
        store.move_paragraph(s, moving.id, expected_version=moving.version, offset=+1)
    assert reading(Session, novel_id)[3:5] == [("Chapter 2", "two"), ("Chapter 2", "c2p1")]
    assert_contiguous(Session, novel_id)

    with Session() as s, s.begin():
        for _ in range(4):
            revisions.undo(s, novel_id)
    assert layout(Session, novel_id) == before
