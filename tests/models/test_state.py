"""Model state as a value: clone, safetensors bytes (fp32 and bf16, never pickle), size, refusal of foreign bytes.
Runs on a tiny random Mamba2 (fixed-size state) and a tiny random Bamba hybrid (state grows with its KV cache)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load as safetensors_load

from models.hf_backend import TransformersBackend

pytestmark = pytest.mark.usefixtures("no_deprecations")

TEXT = "A storm came in from the north and the harbour emptied before noon. " * 3


def _read(backend, text=TEXT):
    state = backend.new_state()
    backend.prefill(state, backend.encode(text))
    return state


def test_fixed_size_flag_and_size_in_bytes(tiny_mamba2, tiny_hybrid):
    assert tiny_mamba2.fixed_size_state and not tiny_hybrid.fixed_size_state
    short, long = _read(tiny_mamba2, TEXT[:40]), _read(tiny_mamba2)
    assert tiny_mamba2.state_nbytes(short) == tiny_mamba2.state_nbytes(long) > 0
    # Mamba2 layer: conv [1, conv_dim, kernel] + recurrent [1, heads, head_dim, state] fp32
    config = tiny_mamba2.config
    conv_dim = config.num_heads * config.head_dim + 2 * config.n_groups * config.state_size
    per_layer = conv_dim * config.conv_kernel + config.num_heads * config.head_dim * config.state_size
    assert tiny_mamba2.state_nbytes(long) == 4 * per_layer * config.num_hidden_layers
    assert tiny_hybrid.state_nbytes(_read(tiny_hybrid)) > tiny_hybrid.state_nbytes(_read(tiny_hybrid, TEXT[:40]))


def test_bytes_round_trip_continues_identically(tiny_backend):
    state = _read(tiny_backend)
    data = tiny_backend.state_to_bytes(state, dtype="fp32")
    restored = tiny_backend.state_from_bytes(data)
    assert restored.length == state.length
    for token in tiny_backend.encode(" and then"):
        assert torch.equal(tiny_backend.step(state, token), tiny_backend.step(restored, token))


def test_bytes_are_plain_safetensors_and_bf16_halves_them(tiny_backend):
    state = _read(tiny_backend)
    fp32 = tiny_backend.state_to_bytes(state, dtype="fp32")
    bf16 = tiny_backend.state_to_bytes(state, dtype="bf16")
    tensors = safetensors_load(bf16)
    assert tensors and all(t.dtype == torch.bfloat16 for t in tensors.values() if t.is_floating_point())
    assert sum(t.numel() * t.element_size() for t in tensors.values()) * 2 == tiny_backend.state_nbytes(state)
    assert len(bf16) < 0.6 * len(fp32)
    # A bf16 snapshot restores to the compute dtype and continues close to the original.
    restored = tiny_backend.state_from_bytes(bf16)
    token = tiny_backend.encode("x")[0]
    expected, got = tiny_backend.step(tiny_backend.clone_state(state), token), tiny_backend.step(restored, token)
    assert got.dtype == expected.dtype
    assert torch.allclose(got, expected, atol=0.05 * expected.abs().max().item())


def test_clone_is_independent(tiny_backend):
    state = _read(tiny_backend)
    copy = tiny_backend.clone_state(state)
    token_a, token_b = tiny_backend.encode("ab")
    tiny_backend.step(state, token_a)  # advancing the original must not touch the copy
    fresh = tiny_backend.clone_state(copy)
    assert torch.equal(tiny_backend.step(copy, token_b), tiny_backend.step(fresh, token_b))
    assert copy.length == state.length


def test_bytes_from_another_model_or_not_ours_are_refused(tiny_mamba2, tiny_hybrid):
    data = tiny_mamba2.state_to_bytes(_read(tiny_mamba2))
    with pytest.raises(ValueError, match="another model"):
        tiny_hybrid.state_from_bytes(data)
    other_dtype = TransformersBackend(tiny_mamba2.model, tiny_mamba2.tokenizer, name="x", identity="another build")
    with pytest.raises(ValueError):
        other_dtype.state_from_bytes(data)
    with pytest.raises(ValueError):
        tiny_mamba2.state_from_bytes(b"\x00\x01")
    with pytest.raises(ValueError, match="dtype"):
        tiny_mamba2.state_to_bytes(_read(tiny_mamba2), dtype="int8")
