"""The LM rerank's scorer (memory/rerank.py, issue 19) over the loaded model: log P(question | passage) through
models/scoring.py, or None and the one-line reason when it is turned off or the model cannot score (remote)."""

from __future__ import annotations

from memory.rerank import Scorer
from models.scoring import log_likelihood, scoring_unavailable

# The UPR prompt (Sachan et al. 2022): the passage, then the question the model is asked to write after it.
RERANK_PROMPT = "Passage: {passage}\nPlease write a question based on this passage.\nQuestion:"
OFF_REASON = "off (--lm-rerank 1 or LONGHAND_LM_RERANK=1 turns it on: about 1,200 tokens a step)"


def lm_scorer(backend, *, enabled: bool) -> tuple[Scorer | None, str]:
    """(scorer, "") when `backend` (a models backend, or None) can score text and the rerank is on; else (None,
    why not)."""
    if not enabled:
        return None, OFF_REASON
    reason = scoring_unavailable(backend)
    if reason is not None:
        return None, reason

    def score(passage: str, question: str) -> float:
        return log_likelihood(backend, RERANK_PROMPT.format(passage=passage), " " + question.strip())

    return score, ""
