"""The two-stage search's projected first stage and the hubness correction in memory.retrieval.search.

- The first stage through the projection on the novel's top principal directions picks the same candidates, so
  the same top-k, scores and sentences, as exact paragraph cosines when the novel's vectors lie near those
  directions; it follows an edit, its undo and its redo (the projection is remade with the matrix).
- Hubness: a sentence told in many paragraphs, a little close to every question, outranks the one sentence that
  holds the fact on cosine alone; less its hubness it does not. The stored hubness is the mean centred cosine to the
  sentence's nearest neighbours among the novel's sentences, itself left out.
Hand-made vectors on SQLite and the real PostgreSQL.
"""

from __future__ import annotations

import numpy as np

from memory import retrieval, revisions, store
from memory.embeddings import Vector
from memory.schema import Novel

DIM = 16
RANK = 4
TEXT = "The first sentence here. The second sentence here. The third sentence here."


def unit(values) -> np.ndarray:
    values = np.asarray(values, dtype=np.float32)
    return values / np.linalg.norm(values, axis=-1, keepdims=True)


def low_rank_novel(Session, rng: np.random.Generator, count: int = 120) -> tuple[int, np.ndarray]:
    """`count` paragraphs whose vectors lie (up to small noise) in a RANK-dim subspace of DIM; the basis."""
    basis = np.linalg.qr(rng.normal(size=(DIM, RANK)))[0].astype(np.float32)  # [DIM, RANK]
    with Session() as s, s.begin():
        novel_id = store.create_novel(s, "Projection").id
        for _ in range(count):
            centre = basis @ rng.normal(size=RANK)
            paragraph = unit(centre + 0.02 * rng.normal(size=DIM))
            sentences = unit(centre + 0.3 * rng.normal(size=(3, DIM)))
            store.add_paragraph(s, novel_id, TEXT, embedding=Vector("e", paragraph, sentences=sentences))
    return novel_id, basis


def ranked(Session, novel_id: int, query: np.ndarray, **kwargs) -> list[tuple[int, float, str | None]]:
    with Session() as s:
        hits = retrieval.search(s, novel_id, Vector("e", query), 5, method="sentence", center_from=0, **kwargs)
        return [(hit.paragraph.position, hit.score, hit.sentence) for hit in hits]


def test_projected_first_stage_returns_the_exact_first_stages_top_k(Session, monkeypatch):
    monkeypatch.setattr(retrieval, "PROJECTION_DIM", RANK)
    rng = np.random.default_rng(3)
    novel_id, basis = low_rank_novel(Session, rng)
    for _ in range(5):
        query = unit(basis @ rng.normal(size=RANK))
        # 10 candidates, a shortlist of 4 x 10 = 40 of 120 rows ranked by the projection.
        projected = ranked(Session, novel_id, query, exact_up_to=0, candidates=10, shortlist=4)
        exact = ranked(Session, novel_id, query, exact_up_to=0, candidates=10, shortlist=0)
        assert [p for p, _, _ in projected] == [p for p, _, _ in exact]
        assert np.allclose([x for _, x, _ in projected], [x for _, x, _ in exact], atol=1e-5)
        assert [t for _, _, t in projected] == [t for _, _, t in exact]
    with Session() as s:
        matrix = retrieval._load_matrix(s, s.get(Novel, novel_id), "e", DIM)
        assert matrix.projection is not None and matrix.projection.projected.shape == (120, RANK)
        # The basis spans the novel's subspace: projecting it on the basis found loses nothing.
        found = matrix.projection.basis
        assert np.allclose(found @ (found.T @ basis), basis, atol=0.05)


def test_projected_first_stage_follows_edit_undo_and_redo(Session, monkeypatch):
    monkeypatch.setattr(retrieval, "PROJECTION_DIM", RANK)
    rng = np.random.default_rng(4)
    novel_id, basis = low_rank_novel(Session, rng)
    query = unit(basis @ rng.normal(size=RANK))
    with Session() as s:
        target = next(p for p in store.paragraphs(s, novel_id) if p.position == 50)
    before = [p for p, _, _ in ranked(Session, novel_id, query, exact_up_to=0, candidates=10, shortlist=4)]
    assert 50 not in before[:1]
    # Paragraph 50 becomes the query itself, paragraph vector and sentences.
    with Session() as s, s.begin():
        store.edit_paragraph(s, target.id, TEXT.replace("first", "edited"), expected_version=1,
                             embedding=Vector("e", query, sentences=np.stack([query] * 3)))
    search = dict(exact_up_to=0, candidates=10, shortlist=4)
    assert ranked(Session, novel_id, query, **search)[0][0] == 50
    with Session() as s, s.begin():
        revisions.undo(s, novel_id)
    assert [p for p, _, _ in ranked(Session, novel_id, query, **search)] == before
    with Session() as s, s.begin():
        revisions.redo(s, novel_id)
    assert ranked(Session, novel_id, query, **search)[0][0] == 50
    assert ranked(Session, novel_id, query, **search) == ranked(Session, novel_id, query, exact_up_to=0,
                                                                candidates=10, shortlist=0)


def hub_novel(Session) -> tuple[int, np.ndarray, int]:
    """40 paragraphs of 3 sentences, the others orthogonal to the query; the second sentence of 20 of them is one
    and the same 'hub' sentence, rather close to the query (cosine 0.8); the fact paragraph's second sentence is a
    little less close (0.7) and like no other."""
    rng = np.random.default_rng(8)
    axes = np.eye(DIM, dtype=np.float32)
    query = axes[0]
    hub, fact = unit(0.8 * axes[0] + 0.6 * axes[1]), unit(0.7 * axes[0] + 0.714 * axes[2])
    fact_position = 33
    with Session() as s, s.begin():
        novel_id = store.create_novel(s, "Hubness").id
        for position in range(1, 41):
            sentences = rng.normal(size=(3, DIM))
            sentences[:, :3] = 0
            sentences = unit(sentences)
            if position <= 20:
                sentences[1] = hub
            if position == fact_position:
                sentences[1] = fact
            store.add_paragraph(s, novel_id, TEXT, embedding=Vector("e", unit(sentences.mean(axis=0)),
                                                                     sentences=sentences))
    return novel_id, query, fact_position


def test_hubness_lets_the_unique_sentence_outrank_one_told_in_many_paragraphs(Session):
    novel_id, query, fact_position = hub_novel(Session)
    kwargs = dict(window_weight=0.0, paragraph_weight=0.0)
    plain = ranked(Session, novel_id, query, hub_weight=0.0, **kwargs)
    assert plain[0][0] <= 20 and fact_position not in [p for p, _, _ in plain[:3]]
    corrected = ranked(Session, novel_id, query, **kwargs)
    assert corrected[0][0] == fact_position
    assert corrected[0][2] == "The second sentence here."


def test_stored_hubness_is_the_mean_cosine_to_the_nearest_other_sentences(Session):
    novel_id, _, _ = hub_novel(Session)
    with Session() as s:
        matrix = retrieval._load_matrix(s, s.get(Novel, novel_id), "e", DIM)
    assert matrix.sentences.shape[0] <= retrieval.HUB_REFERENCE  # every sentence is in the reference
    centred = matrix.sentences - matrix.sentences.mean(axis=0)
    centred /= np.linalg.norm(centred, axis=1, keepdims=True)
    cosines = centred @ centred.T
    np.fill_diagonal(cosines, -np.inf)
    expected = np.sort(cosines, axis=1)[:, -retrieval.HUB_NEIGHBOURS:].mean(axis=1)
    assert np.allclose(matrix.centering.sentence_hubness, expected, atol=1e-5)
    # The hub sentence (20 copies: its 10 nearest are copies of itself) is the most alike of all.
    assert np.allclose(matrix.centering.sentence_hubness[1], 1.0, atol=1e-5)
