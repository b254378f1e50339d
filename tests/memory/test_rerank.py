"""The LM rerank step (memory/rerank.py): its ordering with a hand-made scorer, and search_reranked's depth and
its skipped notice on a real SQLite novel with the real embedder."""

from __future__ import annotations

from memory import rerank, retrieval, store
from memory.db import open_database
from memory.embeddings import Vector
from memory.retrieval import Hit
from memory.schema import Paragraph


def _hits(texts: list[str]) -> list[Hit]:
    return [Hit(paragraph=Paragraph(position=i, text=text), score=1.0 / i) for i, text in enumerate(texts, 1)]


def test_rerank_fuses_the_retrieval_rank_with_the_scorer_rank():
    hits = _hits(["first", "second", "third answer"])
    scores = {"first": -20.0, "second": -30.0, "third answer": -5.0}
    reranked = rerank.rerank(hits, "question?", lambda passage, question: scores[passage], k=3)
    # RRF (k=60): first 1/61 + 1/62, third 1/63 + 1/61, second 1/62 + 1/63.
    assert [h.paragraph.position for h in reranked] == [1, 3, 2]
    assert [h.lm_rank for h in reranked] == [2, 1, 3]
    assert reranked[1].lm_score == -5.0 and reranked[0].score > reranked[1].score > reranked[2].score
    assert "LM rerank rank 1" in reranked[1].why()


def test_rerank_with_a_small_rrf_k_lets_the_scorer_lead_and_ties_keep_retrieval_order():
    hits = _hits(["a", "b", "c", "d"])
    led = rerank.rerank(hits, "q", lambda passage, question: {"d": 0.0}.get(passage, -1.0), k=2, rrf_k=0)
    assert [h.paragraph.position for h in led] == [1, 4]
    flat = rerank.rerank(hits, "q", lambda passage, question: 0.0, k=4)
    assert [h.paragraph.position for h in flat] == [1, 2, 3, 4]


def test_search_reranked_scores_the_top_depth_and_says_when_it_was_skipped(tmp_path, embedder):
    _, Session = open_database(f"sqlite:///{tmp_path / 'rerank.db'}")
    texts = ["The lamp needed oil before the storm.", "Mara hid the brass key inside the blue teapot.",
             "Gulls circled the boathouse at dawn.", "The ferryman brought letters and tobacco."]
    with Session() as s, s.begin():
        novel_id = store.create_novel(s, "rerank").id
        for text in texts:
            store.add_paragraph(s, novel_id, text, embedding=embedder.passage(text))
    question = "Where is the key to the lamp room?"
    vector: Vector = embedder.vector(question)
    seen: list[str] = []

    def scorer(passage: str, asked: str) -> float:
        assert asked == question
        seen.append(passage)
        return 0.0 if "ferryman" in passage else -10.0

    with Session() as s:
        plain = retrieval.search(s, novel_id, vector, 2, text=question)
        skipped = rerank.search_reranked(s, novel_id, vector, 2, text=question, scorer=None,
                                         skipped="turned off")
        assert skipped.notice == "LM rerank skipped: turned off."
        assert [h.paragraph.id for h in skipped.hits] == [h.paragraph.id for h in plain]
        assert all(h.lm_rank is None for h in skipped.hits)
        found = rerank.search_reranked(s, novel_id, vector, 2, text=question, scorer=scorer, depth=4)
    assert found.notice == "" and sorted(seen) == sorted(texts)
    assert len(found.hits) == 2 and all(h.lm_rank is not None for h in found.hits)
    ferry = [h for h in found.hits if "ferryman" in h.paragraph.text]
    assert ferry and ferry[0].lm_rank == 1
