"""DRY ("don't repeat yourself", p-e-w's sampler in text-generation-webui and koboldcpp), the spec: plain python,
O(T^2) in the worst case, written to be read rather than run.

History h[0..T-1]. For each earlier position i (1 <= i <= T-1) the candidate token is h[i], the token that followed
the earlier text ending at i-1; the last position T-1 is not a candidate source (it trivially matches itself).
The match length n(i) is the largest n such that, for r = 0..n-1, h[i-1-r] == h[T-1-r] and h[T-1-r] is not a
sequence breaker: the longest suffix of the text before i that equals a suffix of the whole history and spans no
breaker. A breaker candidate h[i] is never penalized (a repeat never spans a breaker); a breaker as the last token
gives every n(i) = 0.

    match(t)   = max n(i) over the positions i with h[i] == t          (0 when there is none)
    penalty(t) = multiplier * base ** min(match(t) - allowed_length, max_exponent)   when match(t) >= allowed_length
    logits[t] -= penalty(t)                                                            (in fp32)

text-generation-webui caps the match length at 50; here the exponent is clamped instead (`max_exponent`, default:
the largest integer exponent that keeps the penalty finite in fp32, at most MAX_EXPONENT_LIMIT).
"""

import math
from collections.abc import Collection, Sequence

import torch

FLOAT32_MAX = 3.4028234663852886e38
MAX_EXPONENT_LIMIT = 65536


def default_max_exponent(multiplier: float, base: float) -> float:
    """The largest integer exponent e with multiplier * base**e finite in fp32 (one step of margin), capped."""
    if base <= 1.0:
        return 0.0
    bound = math.floor(math.log(FLOAT32_MAX / max(multiplier, 1.0)) / math.log(base)) - 1
    return float(min(max(bound, 0), MAX_EXPONENT_LIMIT))


def check_dry_params(multiplier: float, base: float, allowed_length: int, max_exponent: float | None) -> float:
    """Validate DRY parameters; returns the effective max_exponent. Raises ValueError with what was wrong."""
    if multiplier < 0:
        raise ValueError(f"dry multiplier must be >= 0 (0 = off), got {multiplier}")
    if base < 1.0:
        raise ValueError(f"dry base must be >= 1, got {base}")
    if int(allowed_length) != allowed_length or allowed_length < 1:
        raise ValueError(f"dry allowed_length must be an integer >= 1, got {allowed_length}")
    if max_exponent is None:
        return default_max_exponent(multiplier, base)
    if not 0 <= max_exponent <= MAX_EXPONENT_LIMIT:
        raise ValueError(f"dry max_exponent must lie in [0, {MAX_EXPONENT_LIMIT}], got {max_exponent}")
    return float(max_exponent)


def dry_penalty(length: int, multiplier: float, base: float, allowed_length: int, max_exponent: float) -> float:
    """The penalty for a match of `length` >= allowed_length tokens (python float; cast to fp32 where applied)."""
    return multiplier * base ** min(length - allowed_length, max_exponent)


def dry_match_lengths_reference(history: Sequence[int], vocab_size: int, breakers: Collection[int]) -> torch.Tensor:
    """history (token ids) -> match [V] int64: for each candidate token, the longest repeat it would extend."""
    h = [int(token) for token in history]
    breakers = {int(token) for token in breakers}
    last = len(h) - 1
    match = [0] * vocab_size
    for i in range(1, len(h)):
        if h[i] in breakers:
            continue
        n = 0
        while n < i and h[i - 1 - n] == h[last - n] and h[last - n] not in breakers:
            n += 1
        match[h[i]] = max(match[h[i]], n)
    return torch.tensor(match, dtype=torch.int64)


def dry_penalties_reference(
    history: Sequence[int],
    vocab_size: int,
    breakers: Collection[int],
    multiplier: float,
    base: float,
    allowed_length: int,
    max_exponent: float | None = None,
) -> torch.Tensor:
    """history -> penalties [V] fp32 (0 where no repeat of at least allowed_length tokens would be extended)."""
    max_exponent = check_dry_params(multiplier, base, allowed_length, max_exponent)
    penalties = torch.zeros(vocab_size, dtype=torch.float32)
    for token, length in enumerate(dry_match_lengths_reference(history, vocab_size, breakers).tolist()):
        if length >= allowed_length:
            penalties[token] = dry_penalty(length, multiplier, base, allowed_length, max_exponent)
    return penalties


def apply_dry_reference(
    logits: torch.Tensor,
    histories: Sequence[Sequence[int]],
    breakers: Collection[int],
    multiplier: float,
    base: float,
    allowed_length: int,
    max_exponent: float | None = None,
) -> torch.Tensor:
    """logits [B, V], one history per row -> logits - penalties (a new tensor, same dtype; arithmetic in fp32)."""
    out = logits.float().clone()
    for row, history in enumerate(histories):
        penalties = dry_penalties_reference(history, out.shape[-1], breakers, multiplier, base, allowed_length,
                                            max_exponent)
        penalized = penalties.nonzero().flatten()
        out[row, penalized] = out[row, penalized] - penalties[penalized]
    return out.to(logits.dtype)
