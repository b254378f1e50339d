"""Repetition penalties, the spec: presence, frequency and multiplicative repetition penalty from the token counts
of a history, recounted from scratch (plain python, slow, obvious).

For every token t that occurs c > 0 times in the history (only its last `range` tokens when range > 0):
    l = l / repetition  if l > 0  else  l * repetition      # HF / llama.cpp sign rule
    l = l - (c * frequency + presence)                       # OpenAI-style, as llama.cpp's penalties sampler
in fp32, then cast back to the logits dtype. Tokens that never occur are left unchanged.
"""

from collections import Counter
from collections.abc import Sequence

import torch


def token_counts_reference(history: Sequence[int], vocab_size: int, range: int = 0) -> torch.Tensor:
    """history (token ids) -> counts [V] int64 of the whole history, or of its last `range` tokens when range > 0."""
    window = list(history)[-range:] if range > 0 else list(history)
    counts = torch.zeros(vocab_size, dtype=torch.int64)
    for token, count in Counter(window).items():
        counts[token] = count
    return counts


def apply_penalties_reference(
    logits: torch.Tensor,
    histories: Sequence[Sequence[int]],
    repetition: float = 1.0,
    presence: float = 0.0,
    frequency: float = 0.0,
    range: int = 0,
) -> torch.Tensor:
    """logits [B, V], one history per row -> penalized logits [B, V] (a new tensor, same dtype)."""
    out = logits.float().clone()
    for row, history in enumerate(histories):
        counts = token_counts_reference(history, out.shape[-1], range)
        for token in counts.nonzero().flatten().tolist():
            logit = out[row, token]
            logit = logit / repetition if logit > 0 else logit * repetition
            penalty = torch.tensor(float(counts[token]), dtype=torch.float32) * frequency + presence
            out[row, token] = logit - penalty
    return out.to(logits.dtype)
