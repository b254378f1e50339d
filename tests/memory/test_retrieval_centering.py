"""Centred cosines in memory.retrieval.search: every paragraph of a novel shares a common direction (its people,
places and tone), raw cosine ranks the paragraphs by how much of it they carry, and subtracting the novel's mean
vector lets the paragraph whose sentence carries the query's own direction win. Hand-made vectors on SQLite and
the real PostgreSQL; below CENTER_MIN_SENTENCES the scores are the raw ones."""

from __future__ import annotations

import numpy as np

from memory import retrieval, store
from memory.embeddings import Vector

DIM = 16
TEXT = "The first sentence here. The second sentence here. The third sentence here."
FACT_POSITION = 7


def unit(values) -> np.ndarray:
    values = np.asarray(values, dtype=np.float32)
    return values / np.linalg.norm(values, axis=-1, keepdims=True)


def build(Session) -> tuple[int, np.ndarray]:
    """30 paragraphs of 3 sentences, all mostly the common direction; the fact paragraph's second sentence has less
    of it and more of the query's own direction. Returns the novel and the query."""
    rng = np.random.default_rng(2)
    common, own = np.eye(DIM, dtype=np.float32)[0], np.eye(DIM, dtype=np.float32)[1]
    query = unit(common + 0.3 * own)
    sentences = unit(common + 0.2 * rng.normal(size=(30, 3, DIM)))
    sentences[FACT_POSITION - 1, 1] = unit(0.6 * common + own)
    with Session() as s, s.begin():
        novel_id = store.create_novel(s, "Centring").id
        for rows in sentences:
            store.add_paragraph(s, novel_id, TEXT, embedding=Vector("e", unit(rows.mean(axis=0)), sentences=rows))
    return novel_id, query


def ranked(Session, novel_id: int, query: np.ndarray, **kwargs) -> list:
    with Session() as s:
        return retrieval.search(s, novel_id, Vector("e", query), 5, method="sentence", **kwargs)


def test_centring_finds_the_sentence_that_raw_cosine_buries_under_the_common_direction(Session):
    novel_id, query = build(Session)
    raw = ranked(Session, novel_id, query, center_from=10 ** 9)
    centred = ranked(Session, novel_id, query, center_from=0)
    assert FACT_POSITION not in [hit.paragraph.position for hit in raw[:3]]
    assert centred[0].paragraph.position == FACT_POSITION
    # The sentence shown as the reason is the centred best one, the fact's second sentence.
    assert centred[0].sentence == "The second sentence here."
    # Scores are cosines of centred vectors: within [-1, 1] per term, the sum of three terms at most 2.5.
    assert all(-2.5 <= hit.score <= 2.5 for hit in centred)


def test_centred_paragraph_scores_are_cosines_after_subtracting_the_mean(Session):
    novel_id, query = build(Session)
    with Session() as s:
        hits = retrieval.search(s, novel_id, Vector("e", query), 30, method="paragraph", center_from=0)
        vectors = {p.position: np.frombuffer(e.vector, dtype="<f4") for p in store.paragraphs(s, novel_id)
                   for e in p.embeddings}
    matrix = np.stack([vectors[p] for p in sorted(vectors)])
    mean = matrix.mean(axis=0)
    expected = unit(matrix - mean) @ unit(query - mean)
    for hit in hits:
        assert np.isclose(hit.score, expected[hit.paragraph.position - 1], atol=1e-5)


def test_a_novel_below_the_threshold_keeps_raw_cosines(Session):
    novel_id, query = build(Session)
    assert 30 * 3 < retrieval.CENTER_MIN_SENTENCES
    default = ranked(Session, novel_id, query)
    raw = ranked(Session, novel_id, query, center_from=10 ** 9)
    assert [(h.paragraph.position, h.score) for h in default] == [(h.paragraph.position, h.score) for h in raw]
