"""Sampling: the per-novel settings and the chain logits → penalties → probabilities → token.

Each link is a small pure function over one logits row [V]. The penalties (repetition with a range, presence,
frequency, DRY) run through `kernels.penalties` and `kernels.dry`; their per-manuscript state is built once from the
history and updated with each new token (`PenaltyTracker`), never rebuilt per step.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable

import torch

DEFAULT_DRY_BREAKERS = ["\n", ":", '"', "*"]


def _from_dict(cls, data: dict[str, Any] | None):
    # Unknown keys are ignored so that settings saved by a newer version still load.
    known = {f.name for f in fields(cls)}
    return cls(**{key: value for key, value in (data or {}).items() if key in known})


@dataclass
class SamplingParams:
    temperature: float = 0.8  # 0 means greedy
    top_k: int = 0  # 0 means off
    top_p: float = 0.95  # 1 means off
    min_p: float = 0.05  # 0 means off
    seed: int | None = None  # None draws a fresh seed per generation

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 is off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.min_p < 1:
            raise ValueError(f"min_p must be in [0, 1), got {self.min_p}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "SamplingParams":
        return _from_dict(cls, data)


@dataclass
class PenaltyParams:
    repetition: float = 1.0  # 1 means off; > 1 discourages tokens already seen
    presence: float = 0.0
    frequency: float = 0.0
    range: int = 0  # how many recent tokens the three penalties above look at; 0 means the whole history
    dry_multiplier: float = 0.0  # 0 means DRY is off
    dry_base: float = 1.75
    dry_allowed_length: int = 2
    dry_sequence_breakers: list[str] = field(default_factory=lambda: list(DEFAULT_DRY_BREAKERS))

    def __post_init__(self) -> None:
        if self.repetition <= 0:
            raise ValueError(f"repetition penalty must be > 0 (1 is off), got {self.repetition}")
        if self.range < 0:
            raise ValueError(f"penalty range must be >= 0 (0 is the whole history), got {self.range}")
        if self.dry_multiplier < 0 or self.dry_base < 1 or self.dry_allowed_length < 1:
            raise ValueError("DRY needs multiplier >= 0, base >= 1 and allowed_length >= 1")

    @property
    def counts_active(self) -> bool:
        return self.repetition != 1.0 or self.presence != 0.0 or self.frequency != 0.0

    @property
    def dry_active(self) -> bool:
        return self.dry_multiplier > 0.0

    @property
    def active(self) -> bool:
        return self.counts_active or self.dry_active

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "PenaltyParams":
        return _from_dict(cls, data)


def breaker_token_ids(decode: Callable[[list[int]], str], vocab_size: int, breakers: list[str]) -> set[int]:
    """Token ids whose text contains a DRY sequence breaker: a repeat never extends across one of them."""
    if not breakers:
        return set()
    return {i for i in range(vocab_size) if any(b in decode([i]) for b in breakers)}


class PenaltyTracker:
    """The penalty state of one generation: built once from the history, then one `append` per new token."""

    def __init__(
        self,
        params: PenaltyParams,
        history_ids: list[int],
        vocab_size: int,
        device: torch.device | str,
        dry_breakers: set[int] | None = None,
    ) -> None:
        self.params = params
        self.count_state = None
        self.dry_state = None
        history = torch.tensor([history_ids], dtype=torch.long, device=device)  # [1, T]
        if params.counts_active:
            from kernels.penalties import PenaltyState

            self.count_state = PenaltyState.from_history(history, vocab_size, range=params.range)
        if params.dry_active:
            from kernels.dry import DryState

            self.dry_state = DryState.from_history(history, dry_breakers or set(), vocab_size)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """Penalized copy of `logits` [V]."""
        row = logits.unsqueeze(0)  # [1, V]
        if self.count_state is not None:
            from kernels.penalties import apply_penalties

            p = self.params
            row = apply_penalties(row, self.count_state, repetition=p.repetition, presence=p.presence,
                                  frequency=p.frequency)
        if self.dry_state is not None:
            from kernels.dry import apply_dry

            p = self.params
            row = apply_dry(row, self.dry_state, p.dry_multiplier, p.dry_base, p.dry_allowed_length)
        return row.squeeze(0)

    def append(self, token_id: int) -> None:
        if self.count_state is not None:
            self.count_state.append(token_id)
        if self.dry_state is not None:
            self.dry_state.append(token_id)


def apply_penalties_chain(logits: torch.Tensor, tracker: PenaltyTracker | None) -> torch.Tensor:
    """logits [V] → penalized logits [V]; no tracker means no penalties."""
    return logits if tracker is None else tracker.apply(logits)


def logits_to_probs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """logits [V] → probabilities [V] after temperature, top-k, min-p and top-p. Temperature 0 gives a one-hot."""
    logits = logits.float()
    if params.temperature == 0:
        probs = torch.zeros_like(logits)
        probs[torch.argmax(logits)] = 1.0
        return probs
    logits = logits / params.temperature
    if params.top_k > 0 and params.top_k < logits.numel():
        kth = torch.topk(logits, params.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, -math.inf)
    probs = torch.softmax(logits, dim=-1)
    if params.min_p > 0:
        probs = probs.masked_fill(probs < params.min_p * probs.max(), 0.0)
    if params.top_p < 1:
        sorted_probs, order = torch.sort(probs, descending=True)
        cumulative = torch.cumsum(sorted_probs, dim=-1)
        # Keep the smallest prefix whose mass reaches top_p (the token that crosses the line stays).
        drop_sorted = (cumulative - sorted_probs) >= params.top_p * cumulative[-1]
        probs = probs.scatter(0, order, sorted_probs.masked_fill(drop_sorted, 0.0))
    return probs / probs.sum()


def kept_probs(logits: torch.Tensor, params: SamplingParams) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [V] → (token ids [K], their probabilities [K]): the tokens `logits_to_probs` leaves above zero and
    the same probabilities, computed on those K alone. Min-p keeps a token whose logit is within T·log(min_p) of
    the largest (p_i / p_max = exp((l_i - l_max) / T)), so the tail is never softmaxed, sorted or sampled: K is a
    handful where V is 49,152, and 49,152-wide torch ops are what a decoding CPU core stalls on under load."""
    logits = logits.float()
    if params.temperature == 0:
        best = torch.argmax(logits).view(1)
        return best, torch.ones(1, dtype=logits.dtype, device=logits.device)
    scaled = logits / params.temperature
    keep = torch.ones_like(scaled, dtype=torch.bool)
    if params.top_k > 0 and params.top_k < scaled.numel():
        keep &= scaled >= torch.topk(scaled, params.top_k).values[-1]
    if params.min_p > 0:
        keep &= scaled >= scaled.max() + math.log(params.min_p)
    ids = keep.nonzero().squeeze(1)
    probs = torch.softmax(scaled[ids], dim=-1)
    if params.top_p < 1:
        sorted_probs, order = torch.sort(probs, descending=True, stable=True)
        cumulative = torch.cumsum(sorted_probs, dim=-1)
        # Keep the smallest prefix whose mass reaches top_p (the token that crosses the line stays).
        kept = order[(cumulative - sorted_probs) < params.top_p * cumulative[-1]]
        ids, probs = ids[kept], probs[kept]
    return ids, probs / probs.sum()


def draw(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> int:
    """One token id from logits [V] on the CPU under `params` (the distribution of `logits_to_probs`), drawn with
    `generator` from the kept tokens only (`kept_probs`). The CPU chain's draw; a device-side sampler that must
    keep fixed shapes (a captured CUDA graph) uses `logits_to_probs` instead."""
    ids, probs = kept_probs(logits, params)
    if ids.numel() == 1:
        return int(ids[0])
    return int(ids[torch.multinomial(probs, 1, generator=generator)].item())


def sample(probs: torch.Tensor, generator: torch.Generator) -> int:
    """Draw one token id from probabilities [V] with `generator` (same generator state, same token)."""
    return int(torch.multinomial(probs, 1, generator=generator).item())


def make_generator(seed: int | None) -> tuple[torch.Generator, int]:
    """A CPU generator for `seed`, or for a fresh random seed; returns the seed used so a run can be replayed."""
    if seed is None:
        seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
    generator = torch.Generator(device="cpu")
    generator.manual_seed(seed)
    return generator, seed
