"""The two-stage vector search (paragraph vectors pick candidates, then exact sentence and window scores) against
the exact one: the same top-k, scores and matched sentences when every paragraph that belongs in the top-k is
among the candidates, exclusions never taking a candidate's place, and the one case it is built to give up (a
paragraph whose sentence matches but whose paragraph vector is far) so the test shows the two-stage path really
ran. Hand-made vectors on SQLite and the real PostgreSQL."""

from __future__ import annotations

import numpy as np

from memory import retrieval, store
from memory.embeddings import Vector

DIM = 16
TEXT = "The first sentence here. The second sentence here. The third sentence here."


def unit(values) -> np.ndarray:
    values = np.asarray(values, dtype=np.float32)
    return values / np.linalg.norm(values, axis=-1, keepdims=True)


def build(Session, query: np.ndarray, hidden_fact: bool) -> int:
    """40 paragraphs of 3 sentences: the first 8 close to the query by paragraph vector (with sentences closer or
    farther), the other 32 far from it in both. With `hidden_fact`, paragraph 40 has a far paragraph vector but
    one sentence that is the query itself."""
    rng = np.random.default_rng(11)
    far = unit(rng.normal(size=DIM) - 4 * query)
    with Session() as s, s.begin():
        novel_id = store.create_novel(s, "Two stages").id
        for i in range(40):
            if i < 8:
                paragraph = unit(query + 0.3 * rng.normal(size=DIM))
                sentences = unit(query + (0.2 + 0.15 * i) * rng.normal(size=(3, DIM)))
            else:
                paragraph = unit(far + 0.3 * rng.normal(size=DIM))
                sentences = unit(far + 0.3 * rng.normal(size=(3, DIM)))
            if hidden_fact and i == 39:
                sentences[1] = query
            store.add_paragraph(s, novel_id, TEXT, embedding=Vector("e", paragraph, sentences=sentences))
    return novel_id


def ranked(Session, novel_id: int, query: np.ndarray, **kwargs) -> list[tuple[int, float, str | None]]:
    with Session() as s:
        hits = retrieval.search(s, novel_id, Vector("e", query), 5, method="sentence", **kwargs)
        return [(hit.paragraph.position, hit.score, hit.sentence) for hit in hits]


def test_two_stage_returns_the_exact_top_k_when_the_candidates_hold_it(Session):
    query = unit(np.random.default_rng(5).normal(size=DIM))
    novel_id = build(Session, query, hidden_fact=False)
    exact = ranked(Session, novel_id, query, exact_up_to=10 ** 9)
    two_stage = ranked(Session, novel_id, query, exact_up_to=0, candidates=10)
    assert [p for p, _, _ in exact] == [p for p, _, _ in two_stage]
    assert all(p <= 8 for p, _, _ in exact)
    assert np.allclose([score for _, score, _ in exact], [score for _, score, _ in two_stage])
    assert [sentence for _, _, sentence in exact] == [sentence for _, _, sentence in two_stage]
    assert all(sentence is not None for _, _, sentence in two_stage)
    # Excluded paragraphs leave the candidates: excluding the exact top 3 still gives the exact next ones, even
    # with only 8 candidates (the 8 close paragraphs minus 3 excluded would leave 5 otherwise).
    top3 = [p for p, _, _ in exact[:3]]
    exact_rest = ranked(Session, novel_id, query, exclude_positions=top3, exact_up_to=10 ** 9)
    two_stage_rest = ranked(Session, novel_id, query, exclude_positions=top3, exact_up_to=0, candidates=8)
    assert [p for p, _, _ in exact_rest] == [p for p, _, _ in two_stage_rest]
    assert not set(top3) & {p for p, _, _ in two_stage_rest}


def test_two_stage_gives_up_a_sentence_hidden_in_a_far_paragraph(Session):
    query = unit(np.random.default_rng(5).normal(size=DIM))
    novel_id = build(Session, query, hidden_fact=True)
    # Ranked by sentences alone, so the hidden sentence decides whatever the default paragraph weight.
    by_sentence = dict(paragraph_weight=0.0)
    exact = [p for p, _, _ in ranked(Session, novel_id, query, exact_up_to=10 ** 9, **by_sentence)]
    two_stage = [p for p, _, _ in ranked(Session, novel_id, query, exact_up_to=0, candidates=10, **by_sentence)]
    assert exact[0] == 40
    assert 40 not in two_stage and all(p <= 8 for p in two_stage)
    # Enough candidates to reach it: exact again.
    assert [p for p, _, _ in ranked(Session, novel_id, query, exact_up_to=0, candidates=40, **by_sentence)] == exact
