"""Scoring text under the loaded language model: log P(continuation | prefix), summed over the continuation's tokens.

Retrieval's LM rerank (memory/rerank.py, issue 19) scores a passage by how likely the model finds the question after
it (UPR, Sachan et al. 2022). A backend that can score has `continuation_log_likelihood(prefix_ids,
continuation_ids)` and reads the text in a context of its own, so the generation state and its prefix reuse are
untouched; the remote backend has none, and `scoring_unavailable` says so in one line.
"""

from __future__ import annotations

# Tokens one scoring call reads at most: a longer prefix keeps its last tokens (the instruction after the passage).
SCORING_CONTEXT = 1024


def scoring_unavailable(backend) -> str | None:
    """None when `backend` can score text; else the one-line reason it cannot."""
    if backend is None:
        return "no language model is loaded"
    if not callable(getattr(backend, "continuation_log_likelihood", None)):
        return f"{getattr(backend, 'name', type(backend).__name__)} has no text scoring (a remote server has none)"
    return None


def log_likelihood(backend, prefix: str, continuation: str) -> float:
    """log P(continuation | prefix) under `backend`'s model, in nats, summed over the continuation's tokens."""
    reason = scoring_unavailable(backend)
    if reason is not None:
        raise ValueError(reason)
    continuation_ids = backend.encode(continuation)
    if not continuation_ids:
        raise ValueError("log_likelihood needs a continuation of at least one token")
    prefix_ids = backend.encode(prefix)
    room = max(SCORING_CONTEXT - len(continuation_ids), 1)
    prefix_ids = prefix_ids[-room:] if prefix_ids else []
    return float(backend.continuation_log_likelihood(prefix_ids, continuation_ids))
