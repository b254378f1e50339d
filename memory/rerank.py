"""LM rerank (issue 19): retrieval's top paragraphs reordered by how likely the language model finds the question
after each one (UPR, Sachan et al. 2022), fused with their retrieval rank by reciprocal rank fusion.

The scorer is a callable the caller builds from its model (app/engine/rerank.py); this module imports no model.
Off by default (app/config.py lm_rerank). On bench/recall.py with SmolLM2-135M-Instruct through the Q8_0 copy the
app loads (the fused top 12, the whole paragraph scored; bench/results/recall.json): recall@3 on the 15 facts 0.87
-> 0.93 / 0.93 / 0.87 at 300 / 1,000 / 3,000 paragraphs, on the 6 held out 1.00 -> 0.83 / 0.83 / 1.00; recall@1
0.73 -> 0.80 each. Through the Q4_1 file an earlier run had 0.93 / 1.00 / 0.93 and held-out 1.00: the margins are
thin (llama.cpp's flash attention alone moved scores by up to 0.9 nats). The LM rank alone drops two held-out facts
out of the top 3, hence the fusion with the retrieval rank.
With 81 facts planted (bench/recall_facts.py: 51 the weights were chosen on, 30 written blind after), recall@3 fused
-> reranked at 300 / 1,000 / 3,000: the 51 0.75 / 0.71 / 0.71 -> 0.86 / 0.84 / 0.84, the blind 30 0.80 / 0.77 /
0.80 -> 0.87 / 0.80 / 0.83, at 3.6-4.8 s a query on two busy cores: the larger, steadier gain, still short of 0.9.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from sqlalchemy.orm import Session

from memory.embeddings import Vector
from memory.retrieval import RRF_K, Hit, search

# (passage, question) -> log P(question | passage) under the language model, higher is better.
Scorer = Callable[[str, str], float]
# How many of the fused ranking's paragraphs the LM reads per query: the misses it fixes sat at ranks 6 and 7.
RERANK_DEPTH = 12


@dataclass(frozen=True)
class Reranked:
    """A search's hits, best first, and a notice: "" when the LM reranked them, else why it did not."""

    hits: list[Hit]
    notice: str = ""


def rerank(hits: list[Hit], question: str, scorer: Scorer, *, k: int, rrf_k: int = RRF_K) -> list[Hit]:
    """The best `k` of `hits` (in retrieval order) by RRF of their retrieval rank and their rank by
    scorer(paragraph text, question); ties keep retrieval order. Each hit carries its LM rank and score."""
    scores = [float(scorer(hit.paragraph.text, question)) for hit in hits]
    by_lm = sorted(range(len(hits)), key=lambda i: (-scores[i], i))
    lm_rank = {i: rank for rank, i in enumerate(by_lm, 1)}
    fused = {i: 1.0 / (rrf_k + i + 1) + 1.0 / (rrf_k + lm_rank[i]) for i in range(len(hits))}
    order = sorted(range(len(hits)), key=lambda i: (-fused[i], i))[:k]
    return [replace(hits[i], score=fused[i], lm_rank=lm_rank[i], lm_score=scores[i]) for i in order]


def search_depth(k: int, text: str, scorer: Scorer | None, depth: int = RERANK_DEPTH) -> int:
    """How many hits to ask memory.retrieval.search for so that `finish` can rerank them down to k."""
    return max(k, depth) if scorer is not None and text.strip() else k


def finish(hits: list[Hit], text: str, scorer: Scorer | None, *, k: int, skipped: str = "") -> Reranked:
    """The search's `hits` (search_depth of them) reranked by `scorer` down to k; with no scorer (or no question
    text) its own top k and a notice saying the rerank was skipped and why (`skipped`). Reads no database, so a
    caller runs it after its transaction: the model reads every candidate (seconds on a CPU)."""
    if scorer is None or not text.strip():
        reason = skipped if scorer is None else "the query has no text to score"
        return Reranked(hits[:k], notice=f"LM rerank skipped: {reason or 'no scorer'}.")
    return Reranked(rerank(hits, text, scorer, k=k))


def search_reranked(session: Session, novel_id: int, query_vector: Vector | None, k: int, *, text: str,
                    scorer: Scorer | None, skipped: str = "", depth: int = RERANK_DEPTH,
                    **search_options) -> Reranked:
    """memory.retrieval.search's top `depth` (at least k) reranked by `scorer` down to k (`finish`)."""
    hits = search(session, novel_id, query_vector, search_depth(k, text, scorer, depth), text=text, **search_options)
    return finish(hits, text, scorer, k=k, skipped=skipped)
