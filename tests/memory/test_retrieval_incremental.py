"""The cached retrieval matrix follows a novel's changes incrementally and ends exactly where a full rebuild does.

After an edit, its undo and redo, a step's new paragraph and a deletion, the matrix memory.retrieval kept and
updated (the edited paragraph's rows dropped, its new ones added, nothing else re-read) holds the same rows, the
same values to the bit (vectors, sentences, means, centred norms, hubness) and gives the same scores as a matrix
built from scratch from the database. Hand-made vectors, on SQLite and the real PostgreSQL.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from memory import retrieval, revisions, store
from memory.embeddings import Vector
from memory.schema import Novel

DIM = 16
SENTENCES = ["One sentence here.", "Two sentences here.", "Three sentences here.", "Four sentences here."]


def unit(values) -> np.ndarray:
    values = np.asarray(values, dtype=np.float32)
    return values / np.linalg.norm(values, axis=-1, keepdims=True)


def passage(rng: np.random.Generator, count: int) -> tuple[str, Vector]:
    """A paragraph of `count` sentences and its vectors (none for its sentences when count is 0)."""
    text = " ".join(SENTENCES[:max(count, 1)])
    sentences = unit(rng.normal(size=(count, DIM))) if count else None
    return text, Vector("e", unit(rng.normal(size=DIM)), sentences=sentences)


def make_novel(Session, rng: np.random.Generator) -> int:
    """60 paragraphs of 1 to 4 sentences; every 13th saved without sentence vectors."""
    with Session() as s, s.begin():
        novel_id = store.create_novel(s, "Incremental").id
        for i in range(60):
            text, vector = passage(rng, 0 if i % 13 == 5 else 1 + i % 4)
            store.add_paragraph(s, novel_id, text, embedding=vector)
    return novel_id


def matrix_fields(matrix) -> dict:
    """Every array the matrix holds, its centring included, by name."""
    fields = {f.name: getattr(matrix, f.name) for f in dataclasses.fields(matrix)
              if isinstance(getattr(matrix, f.name), np.ndarray)}
    fields.update({f"centering.{f.name}": getattr(matrix.centering, f.name)
                   for f in dataclasses.fields(matrix.centering)})
    return fields


def scores(Session, novel_id: int, queries: np.ndarray) -> list:
    with Session() as s:
        return [[(hit.paragraph.position, hit.score, hit.sentence) for hit in retrieval.search(
            s, novel_id, Vector("e", query), 8, method="sentence", center_from=0)] for query in queries]


def assert_incremental_equals_rebuild(Session, novel_id: int, queries: np.ndarray) -> None:
    """The cached (incrementally updated) matrix and its scores against a full rebuild's, bit for bit; the
    incremental matrix is put back in the cache afterwards, so the next change updates it again."""
    with Session() as s:
        incremental = retrieval._load_matrix(s, s.get(Novel, novel_id), "e", DIM)
    incremental_scores = scores(Session, novel_id, queries)
    with retrieval._CACHE_LOCK:
        kept = dict(retrieval._CACHE)
    retrieval.clear_cache()
    with Session() as s:
        rebuilt = retrieval._load_matrix(s, s.get(Novel, novel_id), "e", DIM)
    rebuilt_scores = scores(Session, novel_id, queries)
    with retrieval._CACHE_LOCK:
        retrieval._CACHE.clear()
        retrieval._CACHE.update(kept)
    assert rebuilt is not incremental
    mine, theirs = matrix_fields(incremental), matrix_fields(rebuilt)
    assert mine.keys() == theirs.keys()
    for name, values in mine.items():
        if values is None:
            assert theirs[name] is None, name
            continue
        assert values.dtype == theirs[name].dtype and values.shape == theirs[name].shape, name
        assert np.array_equal(values, theirs[name]), name
    assert incremental_scores == rebuilt_scores
    # And the exact means are the means.
    assert np.allclose(incremental.centering.sentence_mean, incremental.sentences.mean(axis=0), atol=1e-6)
    assert np.allclose(incremental.centering.sentence_norms,
                       np.linalg.norm(incremental.sentences - incremental.sentences.mean(axis=0), axis=1), atol=1e-5)
    assert np.allclose(incremental.centering.paragraph_mean, incremental.vectors.mean(axis=0), atol=1e-6)


def count_new_rows(monkeypatch) -> list[int]:
    """How many rows each matrix update computed afresh (read from the database), in order."""
    counts: list[int] = []
    original = retrieval._matrix_from

    def spy(cached, epoch, embedding_ids, paragraph_ids, positions, kept, new):
        counts.append(len(new.sentences))
        return original(cached, epoch, embedding_ids, paragraph_ids, positions, kept, new)

    monkeypatch.setattr(retrieval, "_matrix_from", spy)
    return counts


def test_edit_undo_redo_step_and_delete_update_the_matrix_to_what_a_rebuild_gives(Session, monkeypatch):
    rng = np.random.default_rng(19)
    novel_id = make_novel(Session, rng)
    queries = unit(rng.normal(size=(4, DIM)))
    retrieval.clear_cache()
    scores(Session, novel_id, queries)
    new_rows = count_new_rows(monkeypatch)
    with Session() as s:
        target = next(p for p in store.paragraphs(s, novel_id) if p.position == 20)
        original_text = target.text
    before = scores(Session, novel_id, queries)

    text, vector = passage(rng, 4)
    with Session() as s, s.begin():
        store.edit_paragraph(s, target.id, text, expected_version=target.version, embedding=vector)
    new_rows.clear()
    assert_incremental_equals_rebuild(Session, novel_id, queries)
    assert new_rows[0] == 1  # the incremental update read the edited paragraph's row only
    with Session() as s:
        matrix = retrieval._load_matrix(s, s.get(Novel, novel_id), "e", DIM)
        row = int(np.flatnonzero(matrix.paragraph_ids == target.id)[0])
        assert matrix.sentence_counts[row] == 4
        start = matrix.sentence_starts[row]
        assert np.allclose(matrix.sentences[start:start + 4], vector.sentences, atol=1e-3)  # float16

    for change in (revisions.undo, revisions.redo, revisions.undo):
        with Session() as s, s.begin():
            change(s, novel_id)
        new_rows.clear()
        assert_incremental_equals_rebuild(Session, novel_id, queries)
        assert new_rows[0] == 1
    # Undone: the paragraph's old text, old rows and old scores are back.
    with Session() as s:
        assert s.get(type(target), target.id).text == original_text
    assert scores(Session, novel_id, queries) == before

    with Session() as s, s.begin():
        text, vector = passage(rng, 3)
        store.add_paragraph(s, novel_id, text, embedding=vector)
    new_rows.clear()
    assert_incremental_equals_rebuild(Session, novel_id, queries)
    assert new_rows[0] == 1

    with Session() as s, s.begin():
        victim = next(p for p in store.paragraphs(s, novel_id) if p.position == 7)
        store.delete_paragraph(s, victim.id, expected_version=victim.version)
    new_rows.clear()
    assert_incremental_equals_rebuild(Session, novel_id, queries)
    assert new_rows[0] == 0  # a deletion reads no vector at all
