"""`NativeBackend`: the native Mamba2 / hybrid model behind the models.backend.Backend protocol.

Prefill reads long texts in chunks; decode runs `Model.decode_step`, captured once in a CUDA graph on GPU (static
token, position and state buffers, eager elsewhere). The state a graph replays on is the backend's static buffer:
`_bind` swaps a caller's state into it (copying the previous tenant out), so every `State` object stays a plain value
while the hot loop never re-captures. Snapshots are safetensors bytes (never pickle).
"""

from __future__ import annotations

import hashlib
import json
import weakref
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from models.mamba2.config import Mamba2Config
from models.mamba2.model import Model, State

STATE_FORMAT = "longhand-native-mamba2/1"
STORAGE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
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
        self.model = model.eval()
        self.config: Mamba2Config = model.config
        self.tokenizer = tokenizer
        self.name = name
        self.device = model.device
        self.dtype = model.dtype
        self.vocab_size = self.config.vocab_size
        self.max_seq_len = max_seq_len
        self.fingerprint = hashlib.sha256(f"native|{identity}|{self.dtype}".encode()).hexdigest()[:16]
        self.fixed_size_state = not self.config.has_attention
        self.context_window = max_seq_len if self.config.has_attention else UNBOUNDED_CONTEXT
        eos = set(self.config.eos_token_ids)
        if tokenizer is not None and isinstance(getattr(tokenizer, "eos_token_id", None), int):
            eos.add(tokenizer.eos_token_id)
        self.eos_token_ids = sorted(eos)
        self.use_cuda_graph = self.device.type == "cuda" if cuda_graph is None else cuda_graph
        # Decode inputs live in fixed buffers so a captured graph reads them in place.
        self._token = torch.zeros(1, dtype=torch.long, device=self.device)  # [1]
        self._position = torch.zeros(1, dtype=torch.long, device=self.device)  # [1]
        self._graph: torch.cuda.CUDAGraph | None = None
        self._static: State | None = None
        self._static_logits: torch.Tensor | None = None  # [1, V]
        # The state whose tensors are the static buffers now (weak: a dropped state needs no copy-out).
        self._bound: weakref.ref[State] | None = None

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
        for start in range(0, len(ids), PREFILL_CHUNK):
            chunk = torch.tensor([ids[start:start + PREFILL_CHUNK]], dtype=torch.long, device=self.device)  # [1, L]
            logits = self.model(chunk, state, last_only=True)  # [1, V]
        return logits[0]

    @torch.inference_mode()
    def step(self, state: State, token_id: int) -> torch.Tensor:
        """Read one token into `state`; fp32 logits [V] for the next token."""
        if state.max_seq_len is not None and state.length >= state.max_seq_len:
            raise ValueError(f"the attention cache of {state.max_seq_len} tokens is full")
        self._token.fill_(int(token_id))
        self._position.fill_(state.length)
        if self.use_cuda_graph:
            self._bind(state)
            self._graph.replay()
            logits = self._static_logits[0].clone()
        else:
            logits = self.model.decode_step(self._token, state, self._position)[0]
        state.length += 1
        return logits

    def _capture(self) -> None:
        """Capture `decode_step` on static buffers once; warm-up runs first compile the Triton kernels."""
        self._static = self.new_state()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self.model.decode_step(self._token, self._static, self._position)
        torch.cuda.current_stream().wait_stream(side)
        self._graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self._graph):
            self._static_logits = self.model.decode_step(self._token, self._static, self._position)

    def _bind(self, state: State) -> None:
        """Make `state`'s tensors the graph's static buffers (the previous tenant gets its own copy back)."""
        previous = self._bound() if self._bound is not None else None
        if previous is state:
            return
        if self._graph is None:
            self._capture()
        if previous is not None:
            for key, tensor in previous.tensors().items():
                setattr(previous, key, tensor.clone())
        for key, tensor in state.tensors().items():
            static = getattr(self._static, key)
            static.copy_(tensor)
            setattr(state, key, static)
        self._bound = weakref.ref(state)

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
        if dtype not in STORAGE_DTYPES:
            raise ValueError(f"state dtype must be one of {sorted(STORAGE_DTYPES)}, got {dtype!r}")
        store = STORAGE_DTYPES[dtype]
        tensors = {key: t.to(store).contiguous().cpu() for key, t in self._live_tensors(state).items()}
        meta = {"format": STATE_FORMAT, "fingerprint": self.fingerprint, "length": str(state.length)}
        return st_save(tensors, metadata=meta)

    def state_from_bytes(self, data: bytes) -> State:
        meta = _metadata(data)
        if meta.get("format") != STATE_FORMAT:
            raise ValueError(f"not a native Mamba2 state (format {meta.get('format')!r})")
        if meta.get("fingerprint") != self.fingerprint:
            raise ValueError("this state was saved by another model or dtype: it cannot be restored here")
        tensors = st_load(data)
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


def _metadata(data: bytes) -> dict[str, str]:
    # safetensors layout: 8-byte little-endian header size, then a JSON header whose "__metadata__" is ours.
    if len(data) < 8:
        raise ValueError("state bytes are truncated")
    size = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + size]).get("__metadata__", {})
