"""DRY penalties over the whole history: per-position match lengths updated per token in one parallel pass,
scatter-max onto the candidate tokens, then one pass over the logits (Triton + the DryState that dispatches).

Triton layout: match[b, d] for d = 1..T-1 is m_T(T-1-d), the match length of the earlier text that ends d tokens
before the last one. Indexed by distance, appending a token updates every entry in place with no shift:
    match[d] = match[d] + 1  if h[T'-1-d] == x and x is not a breaker  else 0      (T' = T + 1, x = h[T'-1])
and entry d votes for candidate h[T'-d]. The CPU path (matching.SparseDryRow) keeps the same numbers sparsely.
"""

import functools

import torch
import triton
import triton.language as tl

from kernels.dry.matching import SparseDryRow, suffix_match_lengths
from kernels.dry.reference import check_dry_params, dry_penalty

BLOCK_T = 1024
BLOCK_V = 1024


@triton.jit
def _dry_update_kernel(p_history, p_match, p_is_breaker, new_length, s_history_b, s_match_b, BLOCK: tl.constexpr):
    i_t, i_b = tl.program_id(0), tl.program_id(1).to(tl.int64)
    o_d = i_t * BLOCK + 1 + tl.arange(0, BLOCK)  # distances 1..new_length-1
    m_d = o_d < new_length
    p_row = p_history + i_b * s_history_b
    b_token = tl.load(p_row + new_length - 1)
    b_is_breaker = tl.load(p_is_breaker + b_token)
    b_earlier = tl.load(p_row + (new_length - 1 - o_d), mask=m_d, other=-1)
    p_match_row = p_match + i_b * s_match_b + o_d
    b_match = tl.load(p_match_row, mask=m_d, other=0)
    b_match = tl.where((b_earlier == b_token) & (b_is_breaker == 0), b_match + 1, 0)
    tl.store(p_match_row, b_match, mask=m_d)


@triton.jit
def _dry_scatter_kernel(
    p_history, p_match, p_is_breaker, p_best, length, min_length, s_history_b, s_match_b, s_best_b,
    BLOCK: tl.constexpr,
):
    i_t, i_b = tl.program_id(0), tl.program_id(1).to(tl.int64)
    o_d = i_t * BLOCK + 1 + tl.arange(0, BLOCK)
    m_d = o_d < length
    b_match = tl.load(p_match + i_b * s_match_b + o_d, mask=m_d, other=0)
    # Only matches long enough are penalized: the candidate is read (and the atomic issued) for those alone.
    m_hit = m_d & (b_match >= min_length)
    b_candidate = tl.load(p_history + i_b * s_history_b + (length - o_d), mask=m_hit, other=0)
    b_is_breaker = tl.load(p_is_breaker + b_candidate, mask=m_hit, other=1)
    m_hit = m_hit & (b_is_breaker == 0)
    tl.atomic_max(p_best + i_b * s_best_b + b_candidate, b_match, mask=m_hit)


@triton.jit
def _dry_apply_kernel(
    p_logits, p_best, p_table, p_out, vocab_size, allowed_length, table_last, s_logits_b, s_best_b, s_out_b,
    BLOCK: tl.constexpr,
):
    i_v, i_b = tl.program_id(0), tl.program_id(1).to(tl.int64)
    o_v = i_v * BLOCK + tl.arange(0, BLOCK)
    m_v = o_v < vocab_size
    b_logit = tl.load(p_logits + i_b * s_logits_b + o_v, mask=m_v, other=0.0).to(tl.float32)
    p_best_row = p_best + i_b * s_best_b + o_v
    b_best = tl.load(p_best_row, mask=m_v, other=0)
    m_pen = m_v & (b_best >= allowed_length)
    b_index = tl.minimum(tl.maximum(b_best - allowed_length, 0), table_last)
    b_penalty = tl.load(p_table + b_index, mask=m_pen, other=0.0)
    b_logit = tl.where(m_pen, b_logit - b_penalty, b_logit)
    tl.store(p_out + i_b * s_out_b + o_v, b_logit.to(p_out.dtype.element_ty), mask=m_v)
    # Leave the scratch all-zero for the next token (the scatter wrote only entries >= allowed_length).
    tl.store(p_best_row, tl.zeros_like(b_best), mask=m_pen)


def _check_dense(history: torch.Tensor, match: torch.Tensor, is_breaker: torch.Tensor) -> None:
    if history.dtype != torch.int32 or match.dtype != torch.int32 or history.shape != match.shape:
        raise ValueError(f"history and match must be int32 of one shape, got {history.dtype} "
                         f"{tuple(history.shape)} and {match.dtype} {tuple(match.shape)}")
    if is_breaker.dtype != torch.int8 or is_breaker.dim() != 1:
        raise ValueError(f"is_breaker must be [V] int8, got {is_breaker.dtype} {tuple(is_breaker.shape)}")


def _dry_update_triton(history: torch.Tensor, match: torch.Tensor, is_breaker: torch.Tensor, new_length: int) -> None:
    """history, match [B, capacity] int32 (match updated in place) after h[:, new_length-1] was written."""
    _check_dense(history, match, is_breaker)
    if not 1 <= new_length <= history.shape[1]:
        raise ValueError(f"new_length must lie in [1, {history.shape[1]}], got {new_length}")
    if new_length < 2:
        return
    grid = (triton.cdiv(new_length - 1, BLOCK_T), history.shape[0])
    _dry_update_kernel[grid](history, match, is_breaker, new_length, history.stride(0), match.stride(0),
                             BLOCK=BLOCK_T)


def _dry_scatter_triton(history: torch.Tensor, match: torch.Tensor, is_breaker: torch.Tensor, length: int,
                        min_length: int, best: torch.Tensor) -> None:
    """best [B, V] int32 (zeros) <- scatter-max of match lengths >= min_length onto their candidate tokens."""
    _check_dense(history, match, is_breaker)
    if best.dtype != torch.int32 or best.shape != (history.shape[0], is_breaker.shape[0]):
        raise ValueError(f"best must be [{history.shape[0]}, {is_breaker.shape[0]}] int32, got "
                         f"{best.dtype} {tuple(best.shape)}")
    if length < 2:
        return
    grid = (triton.cdiv(length - 1, BLOCK_T), history.shape[0])
    _dry_scatter_kernel[grid](history, match, is_breaker, best, length, min_length,
                              history.stride(0), match.stride(0), best.stride(0), BLOCK=BLOCK_T)


def _dry_apply_triton(logits: torch.Tensor, best: torch.Tensor, table: torch.Tensor, allowed_length: int,
                      out: torch.Tensor | None = None) -> torch.Tensor:
    """logits [B, V], best [B, V] int32 (reset to zero here), table [S] fp32 -> new logits [B, V] (into `out`)."""
    batch, vocab_size = logits.shape
    if best.shape != (batch, vocab_size) or best.dtype != torch.int32:
        raise ValueError(f"best must be [{batch}, {vocab_size}] int32, got {best.dtype} {tuple(best.shape)}")
    if table.dtype != torch.float32 or table.dim() != 1 or table.numel() < 1:
        raise ValueError(f"table must be a non-empty [S] fp32 tensor, got {table.dtype} {tuple(table.shape)}")
    logits = logits if logits.stride(1) == 1 else logits.contiguous()
    if out is None:
        out = torch.empty_like(logits, memory_format=torch.contiguous_format)
    elif out.shape != logits.shape or out.stride(1) != 1:
        raise ValueError(f"out must be [{batch}, {vocab_size}] with a contiguous last dim, got {tuple(out.shape)}")
    grid = (triton.cdiv(vocab_size, BLOCK_V), batch)
    _dry_apply_kernel[grid](logits, best, table, out, vocab_size, allowed_length, table.numel() - 1,
                            logits.stride(0), best.stride(0), out.stride(0), BLOCK=BLOCK_V)
    return out


@functools.lru_cache(maxsize=16)
def _penalty_table(multiplier: float, base: float, allowed_length: int, max_exponent: float,
                   device: torch.device) -> torch.Tensor:
    """table [S] fp32 with table[k] = penalty of a match allowed_length + k long; the last entry is the clamp."""
    size = int(-(-max_exponent // 1)) + 1  # ceil(max_exponent) + 1
    values = [dry_penalty(allowed_length + k, multiplier, base, allowed_length, max_exponent) for k in range(size)]
    return torch.tensor(values, dtype=torch.float32, device=device)


def _as_history(history_ids: torch.Tensor) -> torch.Tensor:
    if not isinstance(history_ids, torch.Tensor):
        history_ids = torch.as_tensor(history_ids, dtype=torch.long)
    if history_ids.dim() == 1:
        history_ids = history_ids[None]
    if history_ids.dim() != 2:
        raise ValueError(f"history_ids must be [B, T] or [T], got shape {tuple(history_ids.shape)}")
    return history_ids.long()


class DryState:
    """DRY match lengths of B sequences of equal length, updated per appended token in O(history) simple work.

    On CUDA (or force_triton=True): history and match [B, capacity] int32 on the device, updated by one kernel
    per token, no host sync. On the CPU: one matching.SparseDryRow per sequence, touching per token only the
    earlier occurrences of that token.
    """

    def __init__(self, vocab_size: int, breakers: frozenset[int], is_breaker: torch.Tensor, length: int,
                 use_triton: bool, rows: list[SparseDryRow], history: torch.Tensor | None,
                 match: torch.Tensor | None):
        self.vocab_size = vocab_size
        self.breakers = breakers
        self.is_breaker = is_breaker  # [V] bool (CPU rows) or int8 (Triton)
        self.length = length
        self.use_triton = use_triton
        self.rows = rows
        self.history = history
        self.match = match
        self._best = None if history is None else torch.zeros(history.shape[0], vocab_size, dtype=torch.int32,
                                                              device=history.device)

    @classmethod
    def from_history(
        cls,
        history_ids: torch.Tensor,
        breakers: "set[int] | frozenset[int] | list[int] | torch.Tensor",
        vocab_size: int,
        *,
        force_triton: bool = False,
        capacity: int | None = None,
    ) -> "DryState":
        """history_ids [B, T] or [T] (T may be 0), breakers (token ids that end any repeat) -> state.

        capacity: initial buffer length in tokens (default max(1024, 2 T)); buffers double when full.
        The state lives on history_ids' device. Costs O(T) work once (vectorized; a Z-algorithm pass for very long
        exact repeats). Raises ValueError on a bad shape or a token id outside [0, vocab_size).
        """
        history_ids = _as_history(history_ids)
        if vocab_size < 1:
            raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
        breaker_ids = frozenset(int(token) for token in (breakers.flatten().tolist()
                                                         if isinstance(breakers, torch.Tensor) else breakers))
        for ids, what in ((history_ids.flatten(), "history token ids"),
                          (torch.tensor(sorted(breaker_ids), dtype=torch.long), "breaker ids")):
            if ids.numel() and (ids.min() < 0 or ids.max() >= vocab_size):
                raise ValueError(f"{what} must lie in [0, {vocab_size}), got [{int(ids.min())}, {int(ids.max())}]")
        device = history_ids.device
        is_breaker = torch.zeros(vocab_size, dtype=torch.bool, device=device)
        if breaker_ids:
            is_breaker[torch.tensor(sorted(breaker_ids), device=device)] = True
        batch, length = history_ids.shape
        if not (force_triton or device.type == "cuda"):
            rows = [SparseDryRow(row, breaker_ids, is_breaker, capacity) for row in history_ids]
            return cls(vocab_size, breaker_ids, is_breaker, length, False, rows, None, None)
        capacity = max(length + 1, capacity or max(BLOCK_T, 2 * length))
        history = torch.zeros(batch, capacity, dtype=torch.int32, device=device)
        match = torch.zeros(batch, capacity, dtype=torch.int32, device=device)
        history[:, :length] = history_ids
        for b in range(batch):
            by_position = suffix_match_lengths(history_ids[b], is_breaker)  # [T]; by_position[T-1] = 0
            match[b, 1:length] = by_position[: length - 1].flip(0)
        return cls(vocab_size, breaker_ids, is_breaker.to(torch.int8), length, True, [], history, match)

    @property
    def batch_size(self) -> int:
        return len(self.rows) if not self.use_triton else self.history.shape[0]

    @property
    def device(self) -> torch.device:
        return self.is_breaker.device

    def append(self, token_ids: torch.Tensor | int) -> None:
        """Extend every sequence by one token (token_ids [B], or an int when B == 1) and update its match lengths."""
        tokens = torch.as_tensor(token_ids, device=self.device).reshape(-1)
        if tokens.numel() != self.batch_size:
            raise ValueError(f"append expects one token per sequence ({self.batch_size}), got {tokens.numel()}")
        if not self.use_triton:
            values = tokens.tolist()
            if min(values) < 0 or max(values) >= self.vocab_size:
                raise ValueError(f"token ids must lie in [0, {self.vocab_size}), got {values}")
            for row, token in zip(self.rows, values):
                row.append(int(token))
            self.length += 1
            return
        if self.length + 1 > self.history.shape[1]:
            self.history = torch.cat([self.history, torch.zeros_like(self.history)], dim=1)
            self.match = torch.cat([self.match, torch.zeros_like(self.match)], dim=1)
        # Out-of-vocabulary ids would index is_breaker out of bounds: clamp (checking would need a host sync).
        self.history[:, self.length] = tokens.clamp(0, self.vocab_size - 1).to(torch.int32)
        self.length += 1
        _dry_update_triton(self.history, self.match, self.is_breaker, self.length)

    def match_lengths(self) -> torch.Tensor:
        """-> [B, V] int64: for each candidate token, the longest repeat it would extend (reference's `match`)."""
        if not self.use_triton:
            out = torch.zeros(self.batch_size, self.vocab_size, dtype=torch.int64)
            for b, row in enumerate(self.rows):
                tokens, lengths = row.candidates(1)
                out[b, tokens] = lengths
            return out
        best = torch.zeros(self.batch_size, self.vocab_size, dtype=torch.int32, device=self.device)
        _dry_scatter_triton(self.history, self.match, self.is_breaker, self.length, 1, best)
        return best.long()


def apply_dry(
    logits: torch.Tensor,
    state: DryState,
    multiplier: float,
    base: float = 1.75,
    allowed_length: int = 2,
    max_exponent: float | None = None,
) -> torch.Tensor:
    """Subtract DRY penalties from logits [B, V] (or [V] when B == 1); returns a new tensor of the same dtype.

    Token t, which would extend an earlier repeat of match(t) >= allowed_length tokens, loses
    multiplier * base ** min(match(t) - allowed_length, max_exponent) (see reference.py; multiplier 0 = off).
    Runs Triton when the state does (CUDA or force_triton), torch otherwise. Raises ValueError on bad parameters,
    shapes or devices.
    """
    max_exponent = check_dry_params(multiplier, base, allowed_length, max_exponent)
    allowed_length = int(allowed_length)
    squeeze = logits.dim() == 1
    logits_2d = logits[None] if squeeze else logits
    if logits_2d.dim() != 2:
        raise ValueError(f"logits must be [B, V] or [V], got shape {tuple(logits.shape)}")
    if tuple(logits_2d.shape) != (state.batch_size, state.vocab_size):
        raise ValueError(f"logits {tuple(logits.shape)} do not match the DRY state's "
                         f"[B={state.batch_size}, V={state.vocab_size}]")
    if logits.device != state.device:
        raise ValueError(f"logits are on {logits.device} but the DRY state is on {state.device}")
    if not logits.is_floating_point():
        raise ValueError(f"logits must be a float tensor, got {logits.dtype}")
    table = _penalty_table(float(multiplier), float(base), allowed_length, max_exponent, logits.device)
    if state.use_triton:
        _dry_scatter_triton(state.history, state.match, state.is_breaker, state.length, allowed_length,
                            state._best)
        out = _dry_apply_triton(logits_2d, state._best, table, allowed_length)
    else:
        out = logits_2d.float().clone()
        for b, row in enumerate(state.rows):
            tokens, lengths = row.candidates(allowed_length)
            if tokens.numel():
                index = (lengths - allowed_length).clamp(max=table.numel() - 1)
                out[b, tokens] = out[b, tokens] - table[index]
        out = out.to(logits.dtype)
    return out[0] if squeeze else out
