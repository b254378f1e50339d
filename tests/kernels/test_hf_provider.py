"""kernels.hf_provider: transformers' Mamba2-family fast path on our kernels gives transformers' own torch results.

The model tests run our Triton kernels (install(force_triton=True): the interpreter on CPU, the real thing on a GPU)
inside tiny random models and compare with the same models on transformers' torch path: fp32 logits within 1e-4 on
CPU (the chunked scan sums in another order; 5e-3 on CUDA, where the scan's dots may run in TF32) and identical
greedy tokens (prefill, then decode through the conv update and the state step).
"""

import json
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch

from kernels import hf_provider

ROOT = Path(__file__).resolve().parents[2]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
LOGIT_TOLERANCE = 5e-3 if DEVICE == "cuda" else 1e-4


@pytest.fixture
def provider():
    """Start each test uninstalled and put back whatever state the process had before it."""
    was_installed, force_triton = hf_provider.is_installed(), hf_provider._force_triton
    hf_provider.uninstall()
    yield hf_provider
    if was_installed:
        hf_provider.install(force_triton=force_triton)
    else:
        hf_provider.uninstall()


def tiny_mamba2():
    from transformers import Mamba2Config, Mamba2ForCausalLM

    config = Mamba2Config(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_heads=4, head_dim=16, expand=2, n_groups=2,
        state_size=8, conv_kernel=4, chunk_size=8, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    return Mamba2ForCausalLM(config)


def tiny_bamba():
    from transformers import BambaConfig, BambaForCausalLM

    config = BambaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, attn_layer_indices=[1], mamba_n_heads=4, mamba_d_head=16, mamba_n_groups=2,
        mamba_d_state=8, mamba_d_conv=4, mamba_expand=2, mamba_chunk_size=8, pad_token_id=0, bos_token_id=1,
        eos_token_id=2,
    )
    return BambaForCausalLM(config)


def tiny_granitemoehybrid():
    from transformers import GraniteMoeHybridConfig, GraniteMoeHybridForCausalLM

    config = GraniteMoeHybridConfig(
        vocab_size=64, hidden_size=32, intermediate_size=32, shared_intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, layer_types=["mamba", "attention"], num_local_experts=4,
        num_experts_per_tok=2, mamba_n_heads=4, mamba_d_head=16, mamba_n_groups=2, mamba_d_state=8, mamba_d_conv=4,
        mamba_expand=2, mamba_chunk_size=8, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    return GraniteMoeHybridForCausalLM(config)


def logits_and_greedy_tokens(model, input_ids):
    with torch.no_grad():
        logits = model(input_ids, use_cache=False).logits
        tokens = model.generate(
            input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=5, min_new_tokens=5,
            do_sample=False,
        )
    return logits, tokens


@pytest.mark.parametrize(
    "build", [tiny_mamba2, tiny_bamba, tiny_granitemoehybrid], ids=["mamba2", "bamba", "granitemoehybrid"]
)
def test_tiny_model_matches_transformers_torch_path(provider, build):
    torch.manual_seed(0)
    model = build().eval().to(DEVICE)
    # 19 tokens: two full chunks of 8 and a partial one, so the scan carries state across chunk boundaries.
    input_ids = torch.randint(3, 64, (2, 19), generator=torch.Generator().manual_seed(1)).to(DEVICE)
    expected_logits, expected_tokens = logits_and_greedy_tokens(model, input_ids)

    provider.install(force_triton=True)
    spies = {
        name: mock.patch.object(hf_provider, name, wraps=getattr(hf_provider, name))
        for name in ("causal_conv1d", "conv1d_update", "ssd_chunk_scan", "ssd_state_step")
    }
    with spies["causal_conv1d"] as conv, spies["conv1d_update"] as conv_step, spies["ssd_chunk_scan"] as scan, \
            spies["ssd_state_step"] as step:
        logits, tokens = logits_and_greedy_tokens(model, input_ids)

    for spy in (conv, conv_step, scan, step):
        assert spy.call_count > 0 and all(call.kwargs["force_triton"] for call in spy.call_args_list)
    torch.testing.assert_close(logits, expected_logits, atol=LOGIT_TOLERANCE, rtol=LOGIT_TOLERANCE)
    assert torch.equal(tokens, expected_tokens)


def test_uninstall_restores_the_torch_path(provider):
    from transformers.models.mamba2 import modeling_mamba2

    provider.install()
    assert provider.is_installed()
    with mock.patch.object(hf_provider, "ssd_chunk_scan", wraps=hf_provider.ssd_chunk_scan) as scan:
        x = torch.randn(1, 5, 2, 4)
        modeling_mamba2.mamba2_chunk_scan(x, torch.rand(1, 5, 2), -torch.rand(2), torch.randn(1, 5, 1, 3),
                                          torch.randn(1, 5, 1, 3), chunk_size=4)
        assert scan.call_count == 1
        provider.uninstall()
        assert not provider.is_installed() and "mamba_ssm" not in sys.modules
        modeling_mamba2.mamba2_chunk_scan(x, torch.rand(1, 5, 2), -torch.rand(2), torch.randn(1, 5, 1, 3),
                                          torch.randn(1, 5, 1, 3), chunk_size=4)
        assert scan.call_count == 1


def test_install_before_import_reaches_every_family_module():
    """The usual order (install, then load a model): each of the six families resolves our functions on import."""
    script = """
import importlib, json, torch
from unittest import mock
from kernels import hf_provider
hf_provider.install()
calls = {}
for name in hf_provider.FAMILY_MODULES:
    module = importlib.import_module(name)
    with mock.patch.object(hf_provider, "causal_conv1d", wraps=hf_provider.causal_conv1d) as conv, \\
            mock.patch.object(hf_provider, "ssd_chunk_scan", wraps=hf_provider.ssd_chunk_scan) as scan:
        module.causal_conv1d_fn(torch.randn(1, 6, 5), torch.randn(6, 4), None, activation="silu")
        module.mamba2_chunk_scan(torch.randn(1, 5, 2, 4), torch.rand(1, 5, 2), -torch.rand(2),
                                 torch.randn(1, 5, 1, 3), torch.randn(1, 5, 1, 3), chunk_size=4)
    calls[name.rsplit(".", 1)[1]] = [conv.call_count, scan.call_count]
print(json.dumps(calls))
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    calls = json.loads(result.stdout.strip().splitlines()[-1])
    assert calls == {
        name: [1, 1]
        for name in ("modeling_mamba2", "modeling_bamba", "modeling_granitemoehybrid", "modeling_zamba2",
                     "modeling_falcon_h1", "modeling_nemotron_h")
    }


def test_conv_follows_causal_conv1d_api(provider):
    """causal-conv1d keeps W - 1 columns of state; chunked prefill through initial/final states equals one pass."""
    x = torch.randn(2, 6, 9)
    weight, bias = torch.randn(6, 4), torch.randn(6)
    whole = hf_provider.causal_conv1d_fn(x, weight, bias, activation="silu")
    first, states = hf_provider.causal_conv1d_fn(x[:, :, :5], weight, bias, return_final_states=True, activation=True)
    assert states.shape == (2, 6, 3)
    second = hf_provider.causal_conv1d_fn(x[:, :, 5:], weight, bias, initial_states=states, activation="silu")
    torch.testing.assert_close(torch.cat([first, second], dim=-1), whole)
    with pytest.raises(ValueError, match="packed sequences"):
        hf_provider.causal_conv1d_fn(x, weight, seq_idx=torch.zeros(2, 9, dtype=torch.int32))


def test_mamba1_layout_step_matches_transformers_mamba(provider):
    """Mamba1 models also look up selective_state_update; their per-channel A takes the torch recurrence."""
    from transformers.models.mamba.modeling_mamba import mamba_selective_state_update

    generator = torch.Generator().manual_seed(2)
    batch, dim, state_size = 2, 6, 5
    state = torch.randn(batch, dim, state_size, generator=generator)
    positional = (
        torch.randn(batch, dim, generator=generator),  # x
        torch.randn(batch, dim, generator=generator),  # dt
        -torch.rand(dim, state_size, generator=generator),  # A
        torch.randn(batch, state_size, generator=generator),  # B
        torch.randn(batch, state_size, generator=generator),  # C
        torch.randn(dim, generator=generator),  # D
    )
    keywords = dict(
        z=torch.randn(batch, dim, generator=generator), dt_bias=torch.randn(dim, generator=generator), dt_softplus=True
    )
    expected_state = state.clone()
    expected = mamba_selective_state_update.__wrapped__(expected_state, *positional, **keywords)
    actual = hf_provider.selective_state_update(state, *positional, **keywords)
    torch.testing.assert_close(actual, expected)
    torch.testing.assert_close(state, expected_state)
