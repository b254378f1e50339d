"""Sentence vectors: made with the paragraph vector in one batch, stored beside it as float16, dropped and redone on
edit, restored exactly by undo and redo; backfilled for rows saved without them; the migration from the schema
before them (0002) on a database with data; and search() scoring a paragraph by its best sentence. SQLite and the
real PostgreSQL, the real all-MiniLM-L6-v2."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import select

from memory import retrieval, revisions, store
from memory.errors import ValidationError
from memory.embeddings import Vector
from memory.schema import Embedding
from tests.memory.conftest import engine_at, insert_old_novel, insert_old_paragraph, insert_old_vector, migrate_to_head

pytestmark = pytest.mark.usefixtures("one_torch_thread")

HARBOUR = ("The harbour was quiet that morning. Gulls argued over the nets. Mara hid the brass key inside the "
           "blue teapot. A ferry sounded far out. Nobody came ashore.")
ORCHARD = ("The orchard smelled of cider and smoke. Bees worked the last apples. Tomas counted the crates twice. "
           "Rain came in from the west.")


def stored(Session, paragraph_id: int) -> list[tuple[bytes, bytes | None]]:
    with Session() as s:
        return [(e.vector, e.sentence_vectors) for e in
                s.scalars(select(Embedding).where(Embedding.paragraph_id == paragraph_id).order_by(Embedding.id))]


def sentence_matrix(blob: bytes, dim: int) -> np.ndarray:
    return np.frombuffer(blob, dtype="<f2").reshape(-1, dim).astype(np.float32)


def test_passage_embeds_paragraph_and_sentences_in_one_batch(embedder):
    vector = embedder.passage(HARBOUR)
    sentences = retrieval.sentence_texts(HARBOUR)
    assert len(sentences) == 5 and sentences[2] == "Mara hid the brass key inside the blue teapot."
    assert vector.sentences.shape == (5, embedder.dim)
    expected = embedder.embed([HARBOUR, *sentences])
    assert np.allclose(vector.values, expected[0], atol=1e-5)
    assert np.allclose(vector.sentences, expected[1:], atol=1e-5)
    single = embedder.passage("Just one line without an ending")
    assert single.sentences.shape == (1, embedder.dim) and np.allclose(single.sentences[0], single.values)


def test_sentence_vectors_follow_edit_undo_and_redo_exactly(Session, embedder):
    with Session() as s, s.begin():
        novel_id = store.create_novel(s, "Sentences").id
        paragraph = store.add_paragraph(s, novel_id, HARBOUR, embedding=embedder.passage(HARBOUR))
        store.add_paragraph(s, novel_id, ORCHARD, embedding=embedder.passage(ORCHARD))
    original = stored(Session, paragraph.id)
    assert len(original) == 1 and original[0][1] is not None
    expected = embedder.embed(retrieval.sentence_texts(HARBOUR))
    assert np.allclose(sentence_matrix(original[0][1], embedder.dim), expected, atol=2e-3)  # float16
    assert len(original[0][1]) == 5 * embedder.dim * 2

    question = embedder.vector("Where was the key put away?")
    with Session() as s:
        hit = retrieval.search(s, novel_id, question, 1, method="sentence")[0]
        assert hit.paragraph.id == paragraph.id and "teapot" in hit.sentence
        assert HARBOUR[hit.sentence_span[0]:hit.sentence_span[1]] == hit.sentence

    edited = "The harbour was quiet that morning. Gulls argued over the nets. A ferry sounded far out."
    with Session() as s, s.begin():
        store.edit_paragraph(s, paragraph.id, edited, expected_version=1, embedding=embedder.passage(edited))
    after_edit = stored(Session, paragraph.id)
    assert len(after_edit) == 1 and len(after_edit[0][1]) == 3 * embedder.dim * 2
    with Session() as s:
        hit = retrieval.search(s, novel_id, question, 2, method="sentence")
        # No sentence of the old text survives: the matched sentence is one of the new text's.
        assert all(h.sentence is None or h.sentence in (edited + ORCHARD) for h in hit)
        assert all("teapot" not in (h.sentence or "") for h in hit)

    with Session() as s, s.begin():
        revisions.undo(s, novel_id)
    assert stored(Session, paragraph.id) == original
    with Session() as s:
        assert "teapot" in retrieval.search(s, novel_id, question, 1, method="sentence")[0].sentence
    with Session() as s, s.begin():
        revisions.redo(s, novel_id)
    assert stored(Session, paragraph.id) == after_edit

    # An edit saved without a vector leaves neither vector nor sentences behind.
    with Session() as s, s.begin():
        store.edit_paragraph(s, paragraph.id, "Plain text now.", expected_version=2)
    assert stored(Session, paragraph.id) == []


def test_backfill_fills_old_rows_in_place_and_history_still_undoes(Session, embedder):
    with Session() as s, s.begin():
        novel_id = store.create_novel(s, "Old rows").id
        # As saved before sentence vectors existed: a paragraph vector only.
        paragraph = store.add_paragraph(s, novel_id, HARBOUR, embedding=embedder.vector(HARBOUR))
        store.add_paragraph(s, novel_id, ORCHARD, embedding=embedder.vector(ORCHARD))
    question = embedder.vector("Where was the key put away?")
    with Session() as s:
        before = retrieval.search(s, novel_id, question, 1, method="sentence")[0]
        assert before.sentence is None  # no sentence vectors yet: scored by the paragraph vector
    seen = []
    with Session() as s, s.begin():
        assert retrieval.backfill_sentences(s, novel_id, embedder, batch=1,
                                            progress=lambda done, total: seen.append((done, total))) == 2
    assert seen == [(1, 2), (2, 2)]
    with Session() as s, s.begin():
        assert retrieval.backfill_sentences(s, novel_id, embedder) == 0
    # The cached matrix picks the new sentences up (same embedding ids, filled in place).
    with Session() as s:
        hit = retrieval.search(s, novel_id, question, 1, method="sentence")[0]
        assert hit.paragraph.id == paragraph.id and "teapot" in hit.sentence
    # Undoing the add that made the row still works after the backfill changed it.
    with Session() as s, s.begin():
        assert revisions.undo(s, novel_id) is not None
        assert revisions.undo(s, novel_id) is not None
        assert store.paragraphs(s, novel_id) == []
    with Session() as s, s.begin():
        revisions.redo(s, novel_id)
    assert stored(Session, paragraph.id)[0][1] is None  # redo restores the row as recorded; backfill again


def test_bad_sentence_vectors_are_refused(Session):
    with Session() as s, s.begin():
        novel_id = store.create_novel(s, "Bad").id
        with pytest.raises(ValidationError, match=r"\[sentences, 4\]"):
            store.add_paragraph(s, novel_id, "x", embedding=Vector("e", np.ones(4), sentences=np.ones((2, 3))))
        with pytest.raises(ValidationError, match="finite"):
            store.add_paragraph(s, novel_id, "x", embedding=Vector("e", np.ones(4),
                                                                         sentences=np.zeros((1, 4))))


@pytest.fixture
def old_database(unmigrated_url):
    """An engine on a database at migration 0002 (the schema before sentence vectors and full text)."""
    with engine_at(unmigrated_url, "0002") as engine:
        yield engine


def test_migration_from_0002_keeps_data_indexes_it_and_backfills(old_database, tmp_path, embedder):
    engine = old_database
    vector = embedder.vector(HARBOUR)
    with engine.begin() as connection:
        insert_old_novel(connection)
        for position, body in ((1, HARBOUR), (2, ORCHARD)):
            insert_old_paragraph(connection, paragraph_id=position, text=body, words=10)
        insert_old_vector(connection, paragraph_id=1, embedder=embedder.name, dim=embedder.dim,
                          values=vector.values.tobytes())
    Session = migrate_to_head(engine, tmp_path / "backups")
    with Session() as s:
        # The full-text index holds the paragraphs that were there before it.
        assert [pid for pid, _ in retrieval.lexical_top_k(s, 1, "teapot", 5)] == [1]
        assert [pid for pid, _ in retrieval.lexical_top_k(s, 1, "cider apples", 5)] == [2]
        assert s.scalar(select(Embedding.sentence_vectors).where(Embedding.paragraph_id == 1)) is None
    with Session() as s, s.begin():
        # Paragraph 2 had no vector at all; paragraph 1 gets its sentences.
        assert retrieval.embed_missing(s, 1, embedder) == 1
        assert s.scalar(select(Embedding.sentence_vectors).where(Embedding.paragraph_id == 1)) is not None
    with Session() as s:
        hit = retrieval.search(s, 1, embedder.vector("Where was the key put away?"), 1, text="key")[0]
        assert hit.paragraph.id == 1 and "teapot" in hit.sentence


def test_export_keeps_sentence_vectors_and_an_older_file_without_them_imports(Session, embedder):
    from memory import exchange

    with Session() as s, s.begin():
        novel_id = store.create_novel(s, "Exported").id
        store.add_paragraph(s, novel_id, HARBOUR, embedding=embedder.passage(HARBOUR))
    with Session() as s:
        document = exchange.export_json(s, novel_id)
    assert document["embeddings"][0]["sentence_vectors"]
    for row in document["embeddings"]:
        del row["sentence_vectors"]  # as written before the field existed
    for revision in document["revisions"]:
        for change in revision["changes"]:
            for side in ("before", "after"):
                if change.get("entity") == "embeddings" and change.get(side):
                    del change[side]["sentence_vectors"]
    with Session() as s, s.begin():
        imported = exchange.import_json(s, document).id
    with Session() as s, s.begin():
        assert retrieval.backfill_sentences(s, imported, embedder) == 1
        hit = retrieval.search(s, imported, embedder.vector("Where was the key put away?"), 1)[0]
        assert "teapot" in hit.sentence
        # The history still undoes after the import and the backfill.
        assert revisions.undo(s, imported) is not None and store.paragraphs(s, imported) == []
