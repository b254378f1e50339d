"""The generation loop: prefill the prompt, then sample one token at a time, streaming text pieces.

`generate` honours stop strings (never yielding any part of one), a token limit, end-of-sequence tokens and a
`threading.Event` that another thread sets to cancel (checked between tokens; raises `Cancelled`). With a seed the
run is deterministic: the sampler uses its own generator, so the same seed gives the same tokens.

A backend with a `sampler` method (the native Mamba2 runtime) draws its tokens itself: penalties and sampling run
on the device, fused with the decode step (one CUDA graph replay per token on GPU). Other backends go through the
python chain here: `backend.step`, then models.sampling's penalties → the kept tokens' probabilities → a draw.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch

from models.backend import Backend, State
from models.errors import Cancelled
from models.sampling import (
    PenaltyParams,
    PenaltyTracker,
    SamplingParams,
    apply_penalties_chain,
    breaker_token_ids,
    draw,
    make_generator,
)

REPLACEMENT_CHAR = "\ufffd"


@dataclass
class GenerationInfo:
    """Filled in by `generate` as it runs: what it did and why it stopped."""

    seed: int | None = None
    prompt_tokens: int = 0
    new_token_ids: list[int] = field(default_factory=list)
    # "eos", "stop", "length" (max_new_tokens) or "context" (the model's window is full)
    finish_reason: str | None = None


def _held_back(text: str, stops: Sequence[str]) -> int:
    """How many trailing chars of `text` could be the start of a stop string (and must not be yielded yet)."""
    longest = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:n]):
                longest = n
                break
    return longest


class StopFilter:
    """Turns the growing text of a generation into safe pieces: never yields any part of a stop string."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.sent = 0
        self.stopped = False

    def update(self, text: str) -> str:
        """The new safe piece of `text` (the whole text so far); sets `stopped` when a stop string appeared."""
        start = self.sent
        hits = [i for i in (text.find(s, max(0, start - len(s) + 1)) for s in self.stops) if i >= 0]
        if hits:
            self.stopped = True
            end = max(min(hits), start)
        else:
            end = max(len(text) - _held_back(text, self.stops), start)
        self.sent = end
        return text[start:end]

    def flush(self, text: str) -> str:
        """What is left to yield when the generation ended without a stop string."""
        if self.stopped:
            return ""
        piece = self.update(text)
        if self.stopped:
            return piece
        rest = text[self.sent:]
        self.sent = len(text)
        return piece + rest


def stream_until_stop(texts: Iterator[str], stop: Sequence[str], info: GenerationInfo) -> Iterator[str]:
    """The new pieces of `texts` (each the whole text so far), never any part of a stop string; ends at the first
    one (finish_reason "stop"). Stops pulling `texts` then, so a token loop behind it generates no more. A text
    ending in U+FFFD (a multi-byte character split across tokens) waits for the next one."""
    stops = StopFilter(stop)
    text = ""
    for text in texts:
        if text.endswith(REPLACEMENT_CHAR):
            continue
        piece = stops.update(text)
        if piece:
            yield piece
        if stops.stopped:
            info.finish_reason = "stop"
            return
    piece = stops.flush(text)
    if stops.stopped:
        info.finish_reason = "stop"
    if piece:
        yield piece


def _check(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled("generation cancelled")


def _dry_breakers(backend: Backend, vocab_size: int, breakers: list[str]) -> set[int]:
    # Scanning the vocabulary takes a moment: keep the answer on the backend per breaker list.
    cache = backend.__dict__.setdefault("_dry_breaker_cache", {})
    key = (vocab_size, tuple(breakers))
    if key not in cache:
        cache[key] = breaker_token_ids(backend.decode, vocab_size, breakers)
    return cache[key]


class ChainSampler:
    """The python sampling chain behind the same `first`/`next` interface as a backend's own sampler: each next
    token is `backend.step`, then penalties → probabilities → a draw from the CPU `generator`."""

    def __init__(self, backend: Backend, state: State, sampling: SamplingParams, generator: torch.Generator,
                 tracker: PenaltyTracker | None) -> None:
        self.backend, self.state, self.sampling = backend, state, sampling
        self.generator, self.tracker = generator, tracker

    def first(self, logits: torch.Tensor) -> int:
        """Draw a token from logits [V]."""
        return draw(apply_penalties_chain(logits, self.tracker).cpu(), self.sampling, self.generator)

    def next(self, token_id: int) -> int:
        """Read `token_id` into the state and draw the token after it."""
        return self.first(self.backend.step(self.state, token_id))


def generate(
    backend: Backend,
    prompt_ids: list[int],
    *,
    sampling: SamplingParams | None = None,
    penalties: PenaltyParams | None = None,
    max_new_tokens: int = 256,
    stop: Sequence[str] = (),
    cancel: threading.Event | None = None,
    state: State | None = None,
    penalty_history_ids: list[int] | None = None,
    info: GenerationInfo | None = None,
) -> Iterator[str]:
    """Stream the text that follows `prompt_ids`.

    `state` (advanced in place; pass `backend.clone_state(s)` to keep `s`) is what the model has read before the
    prompt; None starts fresh. The penalties look at `penalty_history_ids` (default: the prompt) plus every token
    generated here.
    """
    sampling = sampling or SamplingParams()
    penalties = penalties or PenaltyParams()
    info = info if info is not None else GenerationInfo()
    generator, info.seed = make_generator(sampling.seed)
    info.prompt_tokens = len(prompt_ids)
    if max_new_tokens <= 0:
        info.finish_reason = "length"
        return
    if not prompt_ids:
        # The logits for the first new token come from reading the prompt's last token.
        raise ValueError("generate needs a non-empty prompt")

    _check(cancel)
    if state is None:
        state = backend.new_state()
    already_read = getattr(state, "length", 0)
    if not backend.fixed_size_state and already_read + len(prompt_ids) >= backend.context_window:
        raise ValueError(
            f"the prompt ({len(prompt_ids)} tokens after {already_read} already read) does not fit "
            f"{backend.name}'s context window of {backend.context_window} tokens: shorten it"
        )
    logits = backend.prefill(state, list(prompt_ids))  # [V]
    vocab_size = logits.shape[-1]

    history = list(prompt_ids) if penalty_history_ids is None else list(penalty_history_ids)
    # The python chain counts each kept token here; a backend's own sampler counts its draws itself.
    tracker = None
    if getattr(backend, "sampler", None) is not None:
        sampler = backend.sampler(state, sampling, penalties, history, seed=info.seed)
    else:
        if penalties.active:
            breakers = _dry_breakers(backend, vocab_size, penalties.dry_sequence_breakers) \
                if penalties.dry_active else set()
            tracker = PenaltyTracker(penalties, history, vocab_size, logits.device, breakers)
        sampler = ChainSampler(backend, state, sampling, generator, tracker)

    room = None
    if not backend.fixed_size_state and backend.context_window > 0:
        room = backend.context_window - getattr(state, "length", len(prompt_ids))
    texts = _decoded_texts(backend, sampler, logits, tracker, room=room, max_new_tokens=max_new_tokens,
                           cancel=cancel, info=info)
    yield from stream_until_stop(texts, stop, info)


def _decoded_texts(backend: Backend, sampler, logits: torch.Tensor, tracker: PenaltyTracker | None, *,
                   room: int | None, max_new_tokens: int, cancel: threading.Event | None,
                   info: GenerationInfo) -> Iterator[str]:
    """The token loop: the whole text generated so far after each token, until an end-of-sequence token, the
    token limit or a full context window (each sets `info.finish_reason`)."""
    eos = set(backend.eos_token_ids)
    new_ids = info.new_token_ids
    token = None
    while True:
        _check(cancel)
        # The first token comes from the prompt's logits; each later one from reading the token before it.
        token = sampler.first(logits) if token is None else sampler.next(token)
        # A cancel that arrived during a (long) step: the token it gave is not shown.
        _check(cancel)
        if token in eos:
            info.finish_reason = "eos"
            return
        new_ids.append(token)
        if tracker is not None:
            tracker.append(token)
        yield backend.decode(new_ids)
        if len(new_ids) >= max_new_tokens:
            info.finish_reason = "length"
            return
        if room is not None and len(new_ids) >= room:
            info.finish_reason = "context"
            return
