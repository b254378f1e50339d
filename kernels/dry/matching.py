"""DRY match lengths in torch: the one-off computation over a whole history (from_history) and the incremental
per-token state the CPU path keeps (the Triton path keeps the same numbers densely, see dry.py).

Notation (reference.py is the spec): m_T(j) = length of the longest common suffix of h[..j] and h[..T-1] that spans
no breaker, for j <= T-2; the candidate it votes for is h[j+1]. Appending x at position T gives
    m_{T+1}(j) = m_T(j-1) + 1   if h[j] == x and x is not a breaker,   else 0        (j <= T-1, m_T(-1) = 0)
so m is non-zero only at earlier occurrences of the last token. The CPU path keeps exactly those: per step it
touches the occurrences of the new token, not the whole history.
"""

import numpy as np
import torch

# from_history extends all matches in lock-step, one token per round for the first rounds, then in doubling chunks;
# when that would cost more than this many comparisons per history token, it switches to the O(T) Z-algorithm.
_VECTOR_WORK_PER_TOKEN = 4
_SINGLE_STEP_ROUNDS = 16


def _z_function(values: list[int]) -> list[int]:
    """z[d] = length of the longest common prefix of values and values[d:] (Gusfield's Z-algorithm, O(n))."""
    n = len(values)
    z = [0] * n
    left = right = 0
    for i in range(1, n):
        k = min(right - i, z[i - left]) if i < right else 0
        while i + k < n and values[k] == values[i + k]:
            k += 1
        z[i] = k
        if i + k > right:
            left, right = i, i + k
    return z


def suffix_match_lengths(history: torch.Tensor, is_breaker: torch.Tensor) -> torch.Tensor:
    """history [T] int64, is_breaker [V] bool (same device) -> m [T] int32 with m[j] = m_T(j), m[T-1] = 0.

    Work is the sum of the match lengths (vectorized), bounded by O(T) comparisons before the Z-algorithm fallback.
    """
    length = history.numel()
    match = torch.zeros(length, dtype=torch.int32, device=history.device)
    if length < 2:
        return match
    breaker_positions = is_breaker[history].nonzero().flatten()
    last_breaker = int(breaker_positions[-1]) if breaker_positions.numel() else -1
    # A match may not span a breaker of the current suffix, so no match is longer than this.
    cap = length - 1 - last_breaker
    if cap == 0:
        return match
    remaining = (history[:-1] == history[-1]).nonzero().flatten()  # [R] earlier ends with a 1-token match
    matched, chunk, work = 1, 1, 0
    rounds = 0
    while remaining.numel() and matched < cap:
        chunk = min(chunk, cap - matched)
        if work + remaining.numel() * chunk > _VECTOR_WORK_PER_TOKEN * length + 4096:
            # Many long matches (e.g. a long run of one token): finish with the O(T) Z-algorithm instead.
            z = _z_function(history.flip(0).tolist())
            distances = (length - 1 - remaining).tolist()
            match[remaining] = torch.tensor([min(z[d], cap) for d in distances], dtype=torch.int32,
                                            device=history.device)
            return match
        steps = torch.arange(chunk, device=history.device)
        earlier = remaining[:, None] - matched - steps[None, :]  # [R, chunk] positions compared
        current = history[length - 1 - matched - steps]  # [chunk] the current suffix, never a breaker here
        equal = (earlier >= 0) & (history[earlier.clamp(min=0)] == current[None, :])
        run = equal.int().cumprod(dim=1).sum(dim=1)  # [R] tokens matched in this chunk
        stopped = run < chunk
        match[remaining[stopped]] = (matched + run[stopped]).int()
        work += remaining.numel() * chunk
        remaining = remaining[~stopped]
        matched += chunk
        rounds += 1
        if rounds >= _SINGLE_STEP_ROUNDS:
            chunk *= 2
    match[remaining] = matched
    return match


class _Occurrences:
    """Positions of each token in a history, sorted, in per-token numpy buffers that grow by doubling."""

    def __init__(self, history: np.ndarray):
        order = np.argsort(history, kind="stable")  # [T] positions sorted by (token, position)
        tokens, starts, counts = np.unique(history[order], return_index=True, return_counts=True)
        # Slices of `order`: each is exactly full, so its first append copies it into its own buffer.
        self.buffers = {token: order[start:start + count]
                        for token, start, count in zip(tokens.tolist(), starts.tolist(), counts.tolist())}
        self.sizes = dict(zip(tokens.tolist(), counts.tolist()))

    def positions(self, token: int) -> np.ndarray:
        size = self.sizes.get(token, 0)
        return self.buffers[token][:size] if size else _NO_POSITIONS

    def add(self, token: int, position: int) -> None:
        size = self.sizes.get(token, 0)
        buffer = self.buffers.get(token)
        if buffer is None or size == buffer.size:
            grown = np.empty(max(8, 2 * size), dtype=np.int64)
            if size:
                grown[:size] = buffer[:size]
            self.buffers[token] = buffer = grown
        buffer[size] = position
        self.sizes[token] = size + 1


_NO_POSITIONS = np.empty(0, dtype=np.int64)


class SparseDryRow:
    """One sequence's DRY state on the CPU: history, token occurrences, and m_T(j) at the positions where it is > 0.

    numpy inside (a small numpy op costs ~1 us, a torch op several): match is position-indexed [capacity] int32
    and zero outside `active`; active [A] int64 positions (<= T-2, ascending), active_lengths [A] = match[active].
    """

    def __init__(self, history: torch.Tensor, breakers: frozenset[int], is_breaker: torch.Tensor,
                 capacity: int | None = None):
        length = history.numel()
        capacity = max(length + 1, capacity or max(1024, 2 * length))
        self.breakers = breakers
        self.is_breaker = is_breaker.cpu().numpy()
        self.length = length
        self.history = np.zeros(capacity, dtype=np.int64)
        self.history[:length] = history.cpu().numpy()
        self.match = np.zeros(capacity, dtype=np.int32)
        self.match[:length] = suffix_match_lengths(history, is_breaker).cpu().numpy()
        self.active = np.flatnonzero(self.match[:length])
        self.active_lengths = self.match[self.active]
        self.occurrences = _Occurrences(self.history[:length])

    def append(self, token: int) -> None:
        position = self.length
        if position + 1 > self.history.size:
            self.history = np.concatenate([self.history, np.zeros_like(self.history)])
            self.match = np.concatenate([self.match, np.zeros_like(self.match)])
        ends = _NO_POSITIONS if token in self.breakers else self.occurrences.positions(token)  # all < position
        lengths = self.match[np.maximum(ends - 1, 0)] + 1  # [A'] m_T(j-1) + 1
        if ends.size and ends[0] == 0:
            lengths[0] = 1  # m_T(-1) = 0
        self.match[self.active] = 0
        self.match[ends] = lengths
        self.active, self.active_lengths = ends, lengths
        self.history[position] = token
        self.occurrences.add(token, position)
        self.length = position + 1

    def candidates(self, min_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (tokens [K] int64 unique, lengths [K] int64): max match length per candidate, only >= min_length."""
        keep = self.active_lengths >= min_length
        if not keep.any():
            return torch.empty(0, dtype=torch.int64), torch.empty(0, dtype=torch.int64)
        tokens = self.history[self.active[keep] + 1]
        lengths = self.active_lengths[keep].astype(np.int64)
        not_breaker = ~self.is_breaker[tokens]
        unique, inverse = np.unique(tokens[not_breaker], return_inverse=True)
        best = np.zeros(unique.size, dtype=np.int64)
        np.maximum.at(best, inverse, lengths[not_breaker])
        return torch.from_numpy(unique), torch.from_numpy(best)
