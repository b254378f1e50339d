"""Repetition penalties from per-sequence token counts kept on the device and updated incrementally per token.

`PenaltyState` holds counts [B, V] int32 (and, with a range, a ring of the last `range` tokens so that a token
leaving the window decrements its count); `apply_penalties` reads logits and counts once and writes the penalized
logits in one fused pass. Triton on CUDA (or force_triton=True), torch elsewhere; reference.py is the spec.
"""

from dataclasses import dataclass, field

import numpy as np
import torch
import triton
import triton.language as tl

BLOCK_V = 1024


@triton.jit
def _append_kernel(p_counts, p_ring, p_tokens, ring_pos, vocab_size, s_counts_b, s_ring_b, HAS_RANGE: tl.constexpr):
    i_b = tl.program_id(0).to(tl.int64)
    b_token = tl.load(p_tokens + i_b).to(tl.int64)
    # An id outside the vocabulary is ignored rather than written out of bounds (checking would need a host sync).
    m_token = (b_token >= 0) & (b_token < vocab_size)
    if HAS_RANGE:
        p_slot = p_ring + i_b * s_ring_b + ring_pos
        b_old = tl.load(p_slot).to(tl.int64)
        p_old = p_counts + i_b * s_counts_b + tl.where(b_old >= 0, b_old, 0)
        tl.store(p_old, tl.load(p_old) - 1, mask=m_token & (b_old >= 0))
        tl.store(p_slot, b_token.to(tl.int32), mask=m_token)
    p_new = p_counts + i_b * s_counts_b + tl.where(m_token, b_token, 0)
    tl.store(p_new, tl.load(p_new) + 1, mask=m_token)


@triton.jit
def _apply_penalties_kernel(
    p_logits, p_counts, p_out, vocab_size, repetition, presence, frequency,
    s_logits_b, s_counts_b, s_out_b,
    BLOCK: tl.constexpr,
):
    i_v, i_b = tl.program_id(0), tl.program_id(1).to(tl.int64)
    o_v = i_v * BLOCK + tl.arange(0, BLOCK)
    m_v = o_v < vocab_size
    b_logit = tl.load(p_logits + i_b * s_logits_b + o_v, mask=m_v, other=0.0).to(tl.float32)
    b_count = tl.load(p_counts + i_b * s_counts_b + o_v, mask=m_v, other=0)
    # div_rn: IEEE division, so the result is bit-identical to torch's `logits / repetition`.
    b_pen = tl.where(b_logit > 0, tl.math.div_rn(b_logit, repetition), b_logit * repetition)
    b_pen = b_pen - (b_count.to(tl.float32) * frequency + presence)
    b_logit = tl.where(b_count > 0, b_pen, b_logit)
    tl.store(p_out + i_b * s_out_b + o_v, b_logit.to(p_out.dtype.element_ty), mask=m_v)


@dataclass
class PenaltyState:
    """Token counts of B sequences over a vocabulary of V, updated by `append`, never by rescanning the history.

    counts [B, V] int32 on the device; ring [B, range] int32 (the window's tokens, -1 where empty) or None;
    ring_pos: the slot the next token overwrites (its oldest token); length: tokens seen so far.
    On the CPU it also keeps, per row, the tokens ever counted (support [B, V] int64, the first support_sizes[b]
    valid), so that applying touches those tokens only, not the whole vocabulary.
    """

    counts: torch.Tensor
    ring: torch.Tensor | None
    range: int
    ring_pos: int
    length: int
    use_triton: bool
    support: np.ndarray | None = None
    support_sizes: list[int] = field(default_factory=list)
    in_support: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.use_triton or self.support is not None:
            return
        self.support = np.zeros(tuple(self.counts.shape), dtype=np.int64)
        self.in_support = (self.counts > 0).numpy()
        for row in self.counts:
            seen = row.nonzero().flatten().numpy()
            self.support[len(self.support_sizes), : seen.size] = seen
            self.support_sizes.append(seen.size)

    @classmethod
    def from_history(
        cls, history_ids: torch.Tensor, vocab_size: int, range: int = 0, *, force_triton: bool = False
    ) -> "PenaltyState":
        """history_ids [B, T] or [T] (T may be 0) -> state counting the whole history, or its last `range` tokens.

        The state lives on history_ids' device. Raises ValueError on a bad shape, range or token id.
        """
        if not isinstance(history_ids, torch.Tensor):
            history_ids = torch.as_tensor(history_ids, dtype=torch.long)
        if history_ids.dim() == 1:
            history_ids = history_ids[None]
        if history_ids.dim() != 2:
            raise ValueError(f"history_ids must be [B, T] or [T], got shape {tuple(history_ids.shape)}")
        if vocab_size < 1:
            raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
        if range < 0:
            raise ValueError(f"range must be >= 0 (0 = the whole history), got {range}")
        batch, length = history_ids.shape
        history_ids = history_ids.long()
        if length and (history_ids.min() < 0 or history_ids.max() >= vocab_size):
            raise ValueError(f"history token ids must lie in [0, {vocab_size}), got "
                             f"[{int(history_ids.min())}, {int(history_ids.max())}]")
        device = history_ids.device
        window = history_ids[:, -range:] if range > 0 else history_ids
        counts = torch.zeros(batch, vocab_size, dtype=torch.int32, device=device)
        counts.scatter_add_(1, window, torch.ones_like(window, dtype=torch.int32))
        ring = None
        ring_pos = 0
        if range > 0:
            ring = torch.full((batch, range), -1, dtype=torch.int32, device=device)
            ring[:, : window.shape[1]] = window
            ring_pos = window.shape[1] % range
        return cls(counts, ring, range, ring_pos, length, force_triton or device.type == "cuda")

    @property
    def batch_size(self) -> int:
        return self.counts.shape[0]

    @property
    def vocab_size(self) -> int:
        return self.counts.shape[1]

    def append(self, token_ids: torch.Tensor | int) -> None:
        """Count one new token per sequence (token_ids [B], or an int when B == 1); with a range, the token that
        leaves the window is uncounted. On CUDA it is one tiny kernel and no host sync."""
        tokens = torch.as_tensor(token_ids, device=self.counts.device).reshape(-1).contiguous()
        if tokens.numel() != self.batch_size:
            raise ValueError(f"append expects one token per sequence ({self.batch_size}), got {tokens.numel()}")
        if self.use_triton:
            ring = self.ring if self.ring is not None else self.counts
            _append_kernel[(self.batch_size,)](
                self.counts, ring, tokens, self.ring_pos, self.vocab_size,
                self.counts.stride(0), ring.stride(0), HAS_RANGE=self.ring is not None,
            )
        else:
            values = tokens.tolist()
            if min(values) < 0 or max(values) >= self.vocab_size:
                raise ValueError(f"token ids must lie in [0, {self.vocab_size}), got {values}")
            # numpy views of the CPU tensors: a scalar update costs ~0.1 us instead of a torch op's ~5 us.
            counts = self.counts.numpy()
            for row, token in enumerate(values):
                if self.ring is not None:
                    ring = self.ring.numpy()
                    leaving = ring[row, self.ring_pos]
                    if leaving >= 0:
                        counts[row, leaving] -= 1
                    ring[row, self.ring_pos] = token
                if not self.in_support[row, token]:
                    self.in_support[row, token] = True
                    self.support[row, self.support_sizes[row]] = token
                    self.support_sizes[row] += 1
                counts[row, token] += 1
        if self.ring is not None:
            self.ring_pos = (self.ring_pos + 1) % self.range
        self.length += 1

    def _support_of(self, row: int) -> np.ndarray:
        return self.support[row, : self.support_sizes[row]]

    def clone(self) -> "PenaltyState":
        ring = None if self.ring is None else self.ring.clone()
        support = None if self.support is None else self.support.copy()
        in_support = None if self.in_support is None else self.in_support.copy()
        return PenaltyState(self.counts.clone(), ring, self.range, self.ring_pos, self.length, self.use_triton,
                            support, list(self.support_sizes), in_support)


def _apply_penalties_triton(logits: torch.Tensor, counts: torch.Tensor, repetition: float, presence: float,
                            frequency: float, out: torch.Tensor | None = None) -> torch.Tensor:
    """logits [B, V] (any float dtype), counts [B, V] int32 -> new logits [B, V] (into `out` when given)."""
    batch, vocab_size = logits.shape
    if counts.shape != (batch, vocab_size) or counts.dtype != torch.int32:
        raise ValueError(f"counts must be [{batch}, {vocab_size}] int32, got {tuple(counts.shape)} {counts.dtype}")
    logits = logits if logits.stride(1) == 1 else logits.contiguous()
    if out is None:
        out = torch.empty_like(logits, memory_format=torch.contiguous_format)
    elif out.shape != logits.shape or out.stride(1) != 1:
        raise ValueError(f"out must be [{batch}, {vocab_size}] with a contiguous last dim, got {tuple(out.shape)}")
    grid = (triton.cdiv(vocab_size, BLOCK_V), batch)
    _apply_penalties_kernel[grid](
        logits, counts, out, vocab_size, float(repetition), float(presence), float(frequency),
        logits.stride(0), counts.stride(0), out.stride(0), BLOCK=BLOCK_V,
    )
    return out


def _penalize_torch(logits: torch.Tensor, counts: torch.Tensor, repetition: float, presence: float,
                    frequency: float) -> torch.Tensor:
    """logits [n] fp32, counts [n] int32 -> penalized [n], the kernel's arithmetic without data-dependent branches
    (a select on random signs runs at branch-mispredict speed on the CPU): the sign rule as the sum of a divided
    positive part and a multiplied negative part (one of them is exactly 0), and the count > 0 select as a bit mask.
    """
    positive = logits.relu()
    penalized = positive / repetition + (logits - positive) * repetition
    penalized -= counts.float().mul_(frequency).add_(presence)
    seen = -counts.sign()  # int32: all bits set where counted (counts are never negative), 0 elsewhere
    return (penalized.view(torch.int32) & seen | logits.view(torch.int32) & ~seen).view(torch.float32)


def _penalize_numpy(logits: np.ndarray, counts: np.ndarray, repetition: float, presence: float,
                    frequency: float) -> np.ndarray:
    """_penalize_torch in numpy, for the few thousand seen tokens of a row (numpy's per-op cost is far lower)."""
    repetition, presence, frequency = np.float32(repetition), np.float32(presence), np.float32(frequency)
    positive = np.maximum(logits, np.float32(0))
    penalized = positive / repetition + (logits - positive) * repetition
    penalized -= counts.astype(np.float32) * frequency + presence
    seen = -np.sign(counts)
    return (penalized.view(np.int32) & seen | logits.view(np.int32) & ~seen).view(np.float32)


def _apply_penalties_torch(logits: torch.Tensor, state: PenaltyState, repetition: float, presence: float,
                           frequency: float) -> torch.Tensor:
    """The same math on the CPU, on the tokens each row ever counted (a few thousand, not the whole vocabulary)."""
    out = logits.float().clone() if logits.dtype == torch.float32 else logits.float()
    if state.support is None:  # a state built for Triton, applied on the CPU: every token of the vocabulary
        return _penalize_torch(out, state.counts, repetition, presence, frequency).to(logits.dtype)
    out_rows, count_rows = out.numpy(), state.counts.numpy()
    for row in range(out.shape[0]):
        tokens = state._support_of(row)
        out_rows[row, tokens] = _penalize_numpy(out_rows[row, tokens], count_rows[row, tokens], repetition,
                                                presence, frequency)
    return out.to(logits.dtype)


def apply_penalties(
    logits: torch.Tensor,
    state: PenaltyState,
    repetition: float = 1.0,
    presence: float = 0.0,
    frequency: float = 0.0,
    *,
    force_triton: bool = False,
) -> torch.Tensor:
    """Penalize logits [B, V] (or [V] when B == 1) by the state's counts; returns a new tensor of the same dtype.

    For each token seen c > 0 times: l = l / repetition if l > 0 else l * repetition; then l -= c * frequency
    + presence. repetition must be > 0 (1.0 = off). Raises ValueError on mismatched shapes or devices.
    """
    if repetition <= 0:
        raise ValueError(f"repetition penalty must be > 0 (1.0 = off), got {repetition}")
    squeeze = logits.dim() == 1
    logits_2d = logits[None] if squeeze else logits
    if logits_2d.dim() != 2:
        raise ValueError(f"logits must be [B, V] or [V], got shape {tuple(logits.shape)}")
    if tuple(logits_2d.shape) != tuple(state.counts.shape):
        raise ValueError(f"logits {tuple(logits.shape)} do not match the penalty state's "
                         f"[B={state.batch_size}, V={state.vocab_size}]")
    if logits.device != state.counts.device:
        raise ValueError(f"logits are on {logits.device} but the penalty state is on {state.counts.device}")
    if not logits.is_floating_point():
        raise ValueError(f"logits must be a float tensor, got {logits.dtype}")
    if logits.is_cuda or force_triton:
        out = _apply_penalties_triton(logits_2d, state.counts, repetition, presence, frequency)
    else:
        out = _apply_penalties_torch(logits_2d, state, repetition, presence, frequency)
    return out[0] if squeeze else out
