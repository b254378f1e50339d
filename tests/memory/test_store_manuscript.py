"""The writer's manuscript edits in the store (issue 14): insert by anchor, move, split, merge; each one undoable
revision restoring the exact state, version-checked, and what "changed since the memory" means."""

from __future__ import annotations

import pytest

from memory import revisions, store
from tests.memory.conftest import assert_undo_then_redo
from tests.memory.test_store_core import new_novel, snapshot, vec


def _novel_with_three(Session) -> tuple[int, dict[str, int]]:
    novel_id = new_novel(Session, memory="first summary")
    with Session() as s, s.begin():
        ids = {name: store.add_paragraph(s, novel_id, text, origin=origin, embedding=vec(seed)).id
               for seed, (name, text, origin) in enumerate([("p1", "first", "generated"),
                                                            ("p2", "second\n\nsecond, after a blank line", "written"),
                                                            ("p3", "third", "generated")])}
    return novel_id, ids


def _texts(Session, novel_id) -> list[tuple[int, str, str]]:
    with Session() as s:
        return [(p.position, p.text, p.origin) for p in store.paragraphs(s, novel_id)]


def _manuscript_edits():
    def insert_after(S, n, ids):
        with S() as s, s.begin():
            store.insert_paragraph(s, n, "mine, between", after_id=ids["p1"], embedding=vec(20))

    def insert_before(S, n, ids):
        with S() as s, s.begin():
            store.insert_paragraph(s, n, "mine, at the top", before_id=ids["p1"])

    def move_down(S, n, ids):
        with S() as s, s.begin():
            store.move_paragraph(s, ids["p1"], 1, +1)

    def move_up(S, n, ids):
        with S() as s, s.begin():
            store.move_paragraph(s, ids["p3"], 1, -1)

    def split(S, n, ids):
        with S() as s, s.begin():
            store.split_paragraph(s, ids["p2"], 1, embeddings=[vec(21), vec(22)])

    def merge(S, n, ids):
        with S() as s, s.begin():
            store.merge_paragraphs(s, ids["p1"], 1, 1, embedding=vec(23))

    def delete_last(S, n, ids):
        with S() as s, s.begin():
            store.delete_paragraph(s, ids["p3"], 1)

    return [insert_after, insert_before, move_down, move_up, split, merge, delete_last]


@pytest.mark.parametrize("action", _manuscript_edits(), ids=lambda f: f.__name__)
def test_each_manuscript_edit_is_one_exact_undoable_revision(Session, action):
    novel_id, ids = _novel_with_three(Session)
    before = snapshot(Session, novel_id)
    with Session() as s:
        count = len(revisions.revisions(s, novel_id))
    action(Session, novel_id, ids)
    after = snapshot(Session, novel_id)
    assert after != before
    with Session() as s:
        assert len(revisions.revisions(s, novel_id)) == count + 1
        positions = [p.position for p in store.paragraphs(s, novel_id)]
    assert positions == list(range(1, len(positions) + 1))
    assert_undo_then_redo(Session, novel_id, read=snapshot, before=before, after=after)


def test_insert_move_split_merge_put_text_where_the_writer_meant(Session):
    novel_id, ids = _novel_with_three(Session)
    with Session() as s, s.begin():
        store.insert_paragraph(s, novel_id, "mine", after_id=ids["p1"])
    assert [t for _, t, _ in _texts(Session, novel_id)][:2] == ["first", "mine"]
    assert _texts(Session, novel_id)[1][2] == "written"
    with Session() as s, s.begin():
        store.move_paragraph(s, ids["p3"], 1, -1)
    assert [t for _, t, _ in _texts(Session, novel_id)] == ["first", "mine", "third",
                                                           "second\n\nsecond, after a blank line"]
    with Session() as s, s.begin():
        made = store.split_paragraph(s, ids["p2"], 1)
    assert [p.text for p in made] == ["second", "second, after a blank line"]
    assert _texts(Session, novel_id)[3:] == [(4, "second", "written"), (5, "second, after a blank line", "written")]
    with Session() as s, s.begin():
        store.merge_paragraphs(s, ids["p1"], 1, 1)
    assert _texts(Session, novel_id)[0] == (1, "first mine", "edited")
    assert len(_texts(Session, novel_id)) == 4


def test_bad_and_stale_manuscript_edits_are_refused_and_change_nothing(Session):
    novel_id, ids = _novel_with_three(Session)
    before = snapshot(Session, novel_id)
    refused = [
        (lambda s: store.move_paragraph(s, ids["p1"], 1, -1), store.ValidationError, "first one"),
        (lambda s: store.move_paragraph(s, ids["p3"], 1, +1), store.ValidationError, "last one"),
        (lambda s: store.split_paragraph(s, ids["p1"], 1), store.ValidationError, "no blank line"),
        (lambda s: store.merge_paragraphs(s, ids["p3"], 1, 1), store.ValidationError, "nothing to merge"),
        (lambda s: store.move_paragraph(s, ids["p1"], 7, +1), store.ConflictError, "changed elsewhere"),
        (lambda s: store.merge_paragraphs(s, ids["p1"], 1, 4), store.ConflictError, "changed elsewhere"),
        (lambda s: store.split_paragraph(s, ids["p2"], 2), store.ConflictError, "changed elsewhere"),
    ]
    for action, error, message in refused:
        with pytest.raises(error, match=message):
            with Session() as s, s.begin():
                action(s)
    assert snapshot(Session, novel_id) == before


def test_deleting_the_only_paragraph_is_allowed_and_undoable(Session):
    novel_id = new_novel(Session)
    with Session() as s, s.begin():
        only = store.add_paragraph(s, novel_id, "the only one", embedding=vec(1))
    before = snapshot(Session, novel_id)
    with Session() as s, s.begin():
        store.delete_paragraph(s, only.id, 1)
    assert _texts(Session, novel_id) == []
    with Session() as s, s.begin():
        revisions.undo(s, novel_id)
    assert snapshot(Session, novel_id) == before


def test_changed_since_the_memory_counts_edits_and_insertions_not_moves(Session):
    novel_id, ids = _novel_with_three(Session)
    with Session() as s, s.begin():
        memory = store.set_memory(s, novel_id, "caught up", expected_version=1)
        since = memory.created_at
    with Session() as s, s.begin():
        store.move_paragraph(s, ids["p1"], 1, +1)
        store.edit_paragraph(s, ids["p3"], "third, rewritten by the writer", 1)
        store.insert_paragraph(s, novel_id, "mine", before_id=ids["p1"])
    with Session() as s:
        changed = store.paragraphs_changed_since(s, novel_id, since)
        assert [p.text for p in changed] == ["mine", "third, rewritten by the writer"]
        assert len(store.paragraphs_changed_since(s, novel_id, None)) == 4
    # Undoing the edit gives the paragraph its old edit time back: it no longer counts as changed.
    with Session() as s, s.begin():
        revisions.undo(s, novel_id)
        revisions.undo(s, novel_id)
    with Session() as s:
        assert store.paragraphs_changed_since(s, novel_id, since) == []


def test_a_pasted_megabyte_paragraph_is_kept_intact(Session):
    novel_id = new_novel(Session)
    text = ("The tide came in over the causeway. " * 30_000)[:1_000_000].strip()
    with Session() as s, s.begin():
        paragraph_id = store.add_paragraph(s, novel_id, text).id
    with Session() as s:
        assert store.get_paragraph(s, paragraph_id).text == text
