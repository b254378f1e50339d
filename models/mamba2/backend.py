"""`NativeBackend`: the native Mamba2 / hybrid model behind the models.backend.Backend protocol.

Prefill reads long texts in chunks; decode runs `Model.decode_step`, captured once in a CUDA graph on GPU (static
token, position and state buffers, eager elsewhere). The state a graph replays on is the backend's static buffer:
`_bind` swaps a caller's state into it (copying the previous tenant out), so every `State` object stays a plain value
while the hot loop never re-captures. Snapshots are safetensors bytes (never pickle).
"""

from __future__ import annotations

import hashlib
import threading
import weakref
from typing import Callable
from pathlib import Path

import torch
from torch import Tensor

from models.mamba2.config import Mamba2Config
from models.mamba2.model import Model, State
from models.state_io import pack, unpack

STATE_FORMAT = "longhand-native-mamba2/1"
# Prefill reads this many tokens per forward: a multiple of the SSD chunk, and a bound on activation memory.
PREFILL_CHUNK = 2048
# The attention cache of a hybrid is allocated once at this length (the context window it serves).
DEFAULT_MAX_SEQ_LEN = 8192
# Pure Mamba2 models have no position limit; they report this as their context window (as the transformers backend).
UNBOUNDED_CONTEXT = 1 << 30


def checkpoint_identity(folder: Path) -> str:
    """Names, sizes and safetensors headers of the weights: changes whenever the weights do, costs no full read."""
    digest = hashlib.sha256()
    digest.update((folder / "config.json").read_bytes())
    for file in sorted(folder.glob("*.safetensors")):
        with open(file, "rb") as handle:
            size = int.from_bytes(handle.read(8), "little")
            digest.update(file.name.encode() + handle.read(size) + str(file.stat().st_size).encode())
    return digest.hexdigest()


class NativeBackend:
    """A native Mamba2-family model plus its tokenizer, on one device in one dtype."""

    supports_state = True

    def __init__(
        self,
        model: Model,
        tokenizer=None,
        *,
        name: str = "mamba2",
        identity: str = "",
        max_seq_len: int = DEFAULT_MAX_SEQ_LEN,
        cuda_graph: bool | None = None,
    ) -> None:
        # Inference only: no autograd bookkeeping, even where a caller forgets inference_mode (graph capture).
        self.model = model.eval().requires_grad_(False)
        self.config: Mamba2Config = model.config
        self.tokenizer = tokenizer
        self.name = name
        self.device = model.device
        self.dtype = model.dtype
        self.vocab_size = self.config.vocab_size
        # A hybrid attends no further than it was trained to; its cache never needs to be longer.
        self.max_seq_len = min(max_seq_len, self.config.max_position_embeddings)
        self.fingerprint = hashlib.sha256(f"native|{identity}|{self.dtype}".encode()).hexdigest()[:16]
        self.fixed_size_state = not self.config.has_attention
        self.context_window = self.max_seq_len if self.config.has_attention else UNBOUNDED_CONTEXT
        eos = set(self.config.eos_token_ids)
        if tokenizer is not None and isinstance(getattr(tokenizer, "eos_token_id", None), int):
            eos.add(tokenizer.eos_token_id)
        self.eos_token_ids = sorted(eos)
        self.use_cuda_graph = self.device.type == "cuda" if cuda_graph is None else cuda_graph
        # Decode inputs live in fixed buffers so a captured graph reads them in place.
        self._token = torch.zeros(1, dtype=torch.long, device=self.device)  # [1]
        self._position = torch.zeros(1, dtype=torch.long, device=self.device)  # [1]
        # Replays the captured decode step, returning its static logits [1, V]; None until the first step.
        self._replay_step: Callable[[], Tensor] | None = None
        self._static: State | None = None
        self._graph_pool = None
        # The state whose tensors are the static buffers now (weak: a dropped state needs no copy-out).
        self._bound: weakref.ref[State] | None = None
        # Device sampling (DeviceSampler): its noise, the penalty counts, and one graph per sampling setting.
        self._noise = torch.ones(self.vocab_size, device=self.device)  # [V]
        self._static_counts: torch.Tensor | None = None  # [1, V] int32
        self._counts_owner = None  # weakref to the PenaltyState whose counts are the static buffer
        self._current_sampler: DeviceSampler | None = None
        self._sampling_graphs: dict[tuple, Callable[[], Tensor]] = {}
        # The static buffers are one per backend: two threads generating at once take turns token by token.
        self._lock = threading.RLock()

    # Text ---------------------------------------------------------------------------------------------------

    def _need_tokenizer(self):
        if self.tokenizer is None:
            raise ValueError(f"{self.name} was loaded without a tokenizer: encode/decode need one")
        return self.tokenizer

    def encode(self, text: str) -> list[int]:
        return list(self._need_tokenizer().encode(text, add_special_tokens=False))

    def decode(self, ids: list[int]) -> str:
        return self._need_tokenizer().decode(list(ids), skip_special_tokens=True)

    @property
    def chat_template(self) -> str | None:
        return getattr(self.tokenizer, "chat_template", None)

    # Reading --------------------------------------------------------------------------------------------------

    def new_state(self) -> State:
        return self.model.allocate_state(1, self.max_seq_len)

    @torch.inference_mode()
    def prefill(self, state: State, ids: list[int]) -> torch.Tensor:
        """Read `ids` into `state`; fp32 logits [V] for the token after them."""
        if not ids:
            raise ValueError("prefill needs at least one token")
        if state.max_seq_len is not None and state.length + len(ids) > state.max_seq_len:
            raise ValueError(f"the text needs {state.length + len(ids)} tokens but this model's attention cache holds "
                             f"{state.max_seq_len}: shorten the context or load with a larger max_seq_len")
        logits = None
        with self._lock:
            for start in range(0, len(ids), PREFILL_CHUNK):
                chunk = torch.tensor([ids[start:start + PREFILL_CHUNK]], dtype=torch.long, device=self.device)
                logits = self.model(chunk, state, last_only=True)  # [1, V]
        return logits[0]

    @torch.inference_mode()
    def step(self, state: State, token_id: int) -> torch.Tensor:
        """Read one token into `state`; fp32 logits [V] for the next token."""
        if state.max_seq_len is not None and state.length >= state.max_seq_len:
            raise ValueError(f"the attention cache of {state.max_seq_len} tokens is full")
        with self._lock:
            self._token.fill_(int(token_id))
            self._position.fill_(state.length)
            if self.use_cuda_graph:
                self._bind(state)
                logits = self._replay_step()[0].clone()
            else:
                logits = self.model.decode_step(self._token, state, self._position)[0]
            state.length += 1
        return logits

    def _record(self, run: Callable[[], Tensor], warmup: Callable[[], object]) -> Callable[[], Tensor]:
        """Capture `run` in a CUDA graph (after `warmup` on a side stream compiles the Triton kernels and sets up
        cuBLAS); returns a function that replays it and hands back its static output."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            warmup()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # Graphs share one memory pool: they never run at the same time.
        with torch.cuda.graph(graph, pool=self._graph_pool):
            output = run()
        self._graph_pool = graph.pool()

        def replay() -> Tensor:
            graph.replay()
            return output

        return replay

    def _capture(self) -> None:
        """Capture `decode_step` once on static buffers (the warm-up steps scribble on them before any state is
        bound, which is harmless: binding copies the state in)."""
        self._static = self.new_state()

        def step() -> Tensor:
            return self.model.decode_step(self._token, self._static, self._position)  # [1, V]

        self._replay_step = self._record(step, warmup=lambda: [step() for _ in range(2)])

    def _bind(self, state: State) -> None:
        """Make `state`'s tensors the graph's static buffers (the previous tenant gets its own copy back)."""
        previous = self._bound() if self._bound is not None else None
        if previous is state:
            return
        if self._replay_step is None:
            self._capture()
        if previous is not None:
            for key, tensor in previous.tensors().items():
                setattr(previous, key, tensor.clone())
        for key, tensor in state.tensors().items():
            static = getattr(self._static, key)
            static.copy_(tensor)
            setattr(state, key, static)
        self._bound = weakref.ref(state)

    def sampler(self, state: State, sampling, penalties, history_ids: list[int], seed: int | None = None):
        """A `DeviceSampler` that decodes from `state` with these settings (penalties over `history_ids` + drawn)."""
        return DeviceSampler(self, state, sampling, penalties, history_ids, seed)

    def _sampling_graph(self, sampler: DeviceSampler) -> Callable[[], Tensor]:
        """The graph of step + penalties + sampling for `sampler`'s settings, its state and counts bound to the
        static buffers; captured on first use per setting (the settings are baked into the kernels' arguments)."""
        self._bind(sampler.state)  # captures the plain step graph first, which warms the model's kernels up
        s, p = sampler.sampling, sampler.penalties
        counts = sampler.tracker.count_state if sampler.tracker is not None else None
        if counts is not None:
            if self._static_counts is None:
                self._static_counts = torch.zeros_like(counts.counts)
            if counts.counts is not self._static_counts:
                # As with states: the previous owner of the static counts gets its own copy back.
                previous = self._counts_owner() if self._counts_owner is not None else None
                if previous is not None:
                    previous.counts = self._static_counts.clone()
                self._static_counts.copy_(counts.counts)
                counts.counts = self._static_counts
                self._counts_owner = weakref.ref(counts)
        key = (s.temperature, s.top_k, s.top_p, s.min_p, counts is not None, p.repetition, p.presence, p.frequency)
        self._current_sampler = sampler
        if key not in self._sampling_graphs:
            def warmup() -> None:
                # The penalty and sampling kernels only (the step's are warm), on scratch counts: a draw counts.
                if counts is None:
                    sampler._draw(torch.zeros(self.vocab_size, device=self.device))
                    return
                real, counts.counts = counts.counts, counts.counts.clone()
                sampler._draw(torch.zeros(self.vocab_size, device=self.device))
                counts.counts = real

            def step_and_draw() -> Tensor:
                logits = self.model.decode_step(self._token, self._static, self._position)[0]  # [V]
                # A captured graph bakes in the capturing sampler's buffers, which every sampler with this key
                # shares (static noise and counts); an eager replay must read the sampler of the moment.
                return self._current_sampler._draw(logits)  # [1]

            self._sampling_graphs[key] = self._record(step_and_draw, warmup)
        return self._sampling_graphs[key]

    # State --------------------------------------------------------------------------------------------------

    def clone_state(self, state: State) -> State:
        copies = {key: tensor.clone() for key, tensor in state.tensors().items()}
        return State(conv=copies["conv"], ssm=copies["ssm"], keys=copies.get("keys"), values=copies.get("values"),
                     length=state.length)

    def _live_tensors(self, state: State) -> dict[str, torch.Tensor]:
        # Only the filled part of an attention cache is state; the rest is preallocated room.
        tensors = state.tensors()
        if state.keys is not None:
            tensors["keys"] = state.keys[:, :, :, :state.length]
            tensors["values"] = state.values[:, :, :, :state.length]
        return tensors

    def state_nbytes(self, state: State) -> int:
        return sum(t.numel() * t.element_size() for t in self._live_tensors(state).values())

    def state_to_bytes(self, state: State, dtype: str = "fp32") -> bytes:
        return pack(self._live_tensors(state), format=STATE_FORMAT, fingerprint=self.fingerprint,
                    length=state.length, dtype=dtype)

    def state_from_bytes(self, data: bytes) -> State:
        tensors, meta = unpack(data, format=STATE_FORMAT, fingerprint=self.fingerprint, kind="native Mamba2")
        state = self.new_state()
        state.length = int(meta["length"])
        expected = self._live_tensors(state)
        if set(tensors) != set(expected):
            raise ValueError(f"state holds {sorted(tensors)}, this model expects {sorted(expected)}")
        for key, target in expected.items():
            if tuple(tensors[key].shape) != tuple(target.shape):
                raise ValueError(f"state tensor {key!r} has shape {list(tensors[key].shape)}, "
                                 f"expected {list(target.shape)}")
            target.copy_(tensors[key])
        return state


class DeviceSampler:
    """Sampling and penalties on the device, fused with the decode step: one graph replay per token on CUDA.

    Per token: read the previous token into the state, penalize the logits by the counts (repetition, presence,
    frequency; kernels.penalties), turn them into probabilities (models.sampling.logits_to_probs: temperature,
    top-k, min-p, top-p), draw with exponential-race noise (argmax of p / E, E ~ Exp(1): an exact draw from p), and
    count the drawn token. Only the drawn id crosses to the host. The noise comes from a seeded generator on the
    device, filled just before each replay, so a seed gives the same tokens with and without a graph.

    The graph covers the count penalties over the whole history (range 0) and no DRY; with a penalty range or DRY
    the step still replays its graph and the penalties run eagerly after it (their state advances on the host).
    """

    def __init__(self, backend: NativeBackend, state: State, sampling, penalties, history_ids: list[int],
                 seed: int | None = None) -> None:
        from models.sampling import PenaltyTracker, breaker_token_ids

        self.backend, self.state = backend, state
        self.sampling, self.penalties = sampling, penalties
        self.seed = int(torch.randint(0, 2**31 - 1, (1,)).item()) if seed is None else seed
        self._generator = torch.Generator(device=backend.device).manual_seed(self.seed)
        self._noise = backend._noise  # [V], static: a graph reads it in place
        breakers = set()
        if penalties.dry_active:
            breakers = breaker_token_ids(backend.decode, backend.vocab_size, penalties.dry_sequence_breakers)
        self.tracker = PenaltyTracker(penalties, history_ids, backend.vocab_size, backend.device, breakers) \
            if penalties.active else None
        self.fused = backend.use_cuda_graph and penalties.range == 0 and not penalties.dry_active

    def _draw(self, logits: Tensor) -> Tensor:
        """logits [V] -> drawn token id, a [1] device tensor. When fused, the counts see it here (in the graph)."""
        from kernels.penalties import apply_penalties
        from models.sampling import logits_to_probs

        counts = self.tracker.count_state if self.tracker is not None else None
        if self.fused and counts is not None:
            p = self.penalties
            logits = apply_penalties(logits, counts, repetition=p.repetition, presence=p.presence,
                                     frequency=p.frequency)
        elif self.tracker is not None:
            logits = self.tracker.apply(logits)
        probs = logits_to_probs(logits, self.sampling)  # [V]
        # Exp(1) noise is exactly 0 once in 2^24 draws: clamp it, or a zero-probability token would give 0/0.
        token = torch.argmax(probs / self._noise.clamp_min(1e-30)).view(1)  # [1]
        if self.fused and counts is not None:
            counts.append(token)
        return token

    def _refill_noise(self) -> None:
        self._noise.exponential_(1.0, generator=self._generator)

    @torch.inference_mode()
    def first(self, logits: Tensor) -> int:
        """Draw the first token from the prefill's logits [V] (eager)."""
        with self.backend._lock:
            self._refill_noise()
            token = int(self._draw(logits))
            self._count(token)
        return token

    @torch.inference_mode()
    def next(self, token_id: int) -> int:
        """Read `token_id` into the state and draw the token after it."""
        backend = self.backend
        if not self.fused:
            with backend._lock:
                self._refill_noise()
                token = int(self._draw(backend.step(self.state, token_id)))
                self._count(token)
            return token
        if self.state.max_seq_len is not None and self.state.length >= self.state.max_seq_len:
            raise ValueError(f"the attention cache of {self.state.max_seq_len} tokens is full")
        with backend._lock:
            backend._token.fill_(int(token_id))
            backend._position.fill_(self.state.length)
            self._refill_noise()
            drawn = int(backend._sampling_graph(self)()[0])
            self.state.length += 1
        return drawn

    def _count(self, token: int) -> None:
        # When fused, _draw counted the token on the device already.
        if self.tracker is not None and not self.fused:
            self.tracker.append(token)
