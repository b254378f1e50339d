"""The backend protocol: a model with explicit state that the generation loop drives one token at a time.

A backend owns weights and a tokenizer; a *state* is everything the model remembers about the text it has read
(a KV cache, or a fixed-size recurrent state for Mamba2-family models). States are plain values the caller owns:
`prefill` and `step` advance them in place, `clone_state` copies them, and `state_to_bytes`/`state_from_bytes`
turn them into safetensors bytes (never pickle) for the snapshot store.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch

# What a backend keeps between calls; each backend defines its own concrete type.
State = Any

STATE_DTYPES = ("fp32", "bf16")


@runtime_checkable
class Backend(Protocol):
    name: str
    # Identifies weights and compute dtype: a snapshot taken under one fingerprint is only valid under the same one.
    fingerprint: str
    # True when the state does not grow with the text (pure Mamba2-family models): snapshots are then cheap.
    fixed_size_state: bool
    # False for remote servers, which keep no state we can read or restore.
    supports_state: bool
    context_window: int
    eos_token_ids: list[int]

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...

    def new_state(self) -> State: ...

    def prefill(self, state: State, ids: list[int]) -> torch.Tensor:
        """Read `ids` into `state` (in place); return the fp32 logits [V] that predict the token after them."""
        ...

    def step(self, state: State, token_id: int) -> torch.Tensor:
        """Read one token into `state` (in place); return the fp32 logits [V] for the next token."""
        ...

    def clone_state(self, state: State) -> State: ...

    def state_to_bytes(self, state: State, dtype: str = "fp32") -> bytes:
        """Serialize `state` as safetensors, its floating tensors stored as `dtype` ("fp32" or "bf16")."""
        ...

    def state_from_bytes(self, data: bytes) -> State: ...

    def state_nbytes(self, state: State) -> int:
        """Bytes the state's tensors occupy in memory."""
        ...


def common_prefix(a: list[int], b: list[int]) -> int:
    """How many leading tokens two token lists share: what prefix reuse may keep of a state already read."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
