"""Causal conv1d: Triton (interpreter on CPU, real on GPU) against the fp32 reference, for outputs and conv states.

Tolerances per dtype (atol = rtol): the kernel and the reference both accumulate W products in fp32 and round once
to the output dtype, so they differ by at most one rounding step of that dtype after a different summation order:
fp32 1e-5, fp16 2e-3 (2^-11 relative, doubled), bf16 1.6e-2 (2^-8 relative near the bottom of a binade, doubled).
Conv states are copies of inputs, so they must match exactly.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kernels.conv1d import (
    causal_conv1d,
    causal_conv1d_reference,
    causal_conv1d_update,
    causal_conv1d_update_reference,
)

TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DIM = 37
WIDTH = 4


def make_inputs(batch, dim, length, width, dtype, seed=0):
    generator = torch.Generator().manual_seed(seed)
    # Transformers hands the conv a transposed [B, L, D] projection: test that layout, not a contiguous one.
    x = torch.randn(batch, length, dim, generator=generator).to(DEVICE, dtype).transpose(1, 2)
    weight = (torch.randn(dim, width, generator=generator) / width**0.5).to(DEVICE, dtype)
    bias = torch.randn(dim, generator=generator).to(DEVICE, dtype)
    state = torch.randn(batch, dim, width, generator=generator).to(DEVICE, dtype)
    return x, weight, bias, state


def nan_like(shape, dtype):
    return torch.full(shape, float("nan"), dtype=dtype, device=DEVICE)


def assert_close(actual, expected, dtype):
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(actual.float(), expected.float(), atol=tol, rtol=tol)


# Every optional input on and off in fp32; in half precision (where only the rounding changes) all on and all off.
OPTIONS = [(True, True, "silu"), (False, False, None), (True, False, "silu"), (False, True, None)]
PREFILL_CASES = [(torch.float32, *options) for options in OPTIONS] + [
    (dtype, *options) for dtype in (torch.float16, torch.bfloat16) for options in OPTIONS[:2]
]


@pytest.mark.parametrize("length", [1, 63, 257])
@pytest.mark.parametrize(("dtype", "has_bias", "has_state", "activation"), PREFILL_CASES)
def test_prefill_matches_reference(dtype, length, has_bias, has_state, activation):
    x, weight, bias, state = make_inputs(2, DIM, length, WIDTH, dtype)
    bias = bias if has_bias else None
    state = state if has_state else None
    out = nan_like(x.shape, dtype)
    final_out = nan_like((2, DIM, WIDTH), dtype)
    y, final = causal_conv1d(
        x, weight, bias, state, activation, return_final_state=True, out=out, final_state_out=final_out,
        force_triton=True,
    )
    expected_y, expected_final = causal_conv1d_reference(x, weight, bias, state, activation, return_final_state=True)
    assert y.data_ptr() == out.data_ptr() and final.data_ptr() == final_out.data_ptr()
    assert_close(y, expected_y, dtype)
    torch.testing.assert_close(final, expected_final, atol=0, rtol=0)


@pytest.mark.parametrize("state_len", [WIDTH - 1, WIDTH, 9])
def test_final_state_width(state_len):
    """causal-conv1d's API keeps W - 1 columns, transformers' cache W; a wider state keeps older inputs too."""
    x, weight, bias, state = make_inputs(2, DIM, 5, WIDTH, torch.float32, seed=1)
    state = torch.randn(2, DIM, state_len, device=DEVICE)
    y, final = causal_conv1d(x, weight, bias, state, return_final_state=True, force_triton=True)
    expected_y, expected_final = causal_conv1d_reference(x, weight, bias, state, return_final_state=True)
    assert final.shape == (2, DIM, state_len)
    assert_close(y, expected_y, torch.float32)
    torch.testing.assert_close(final, expected_final, atol=0, rtol=0)
    # The spec itself: the final state is the last state_len inputs, the old state first.
    torch.testing.assert_close(expected_final, torch.cat([state, x], dim=-1)[:, :, -state_len:])


@pytest.mark.parametrize(("length", "state_len"), [(1, WIDTH), (257, WIDTH), (70, 100)])
def test_prefill_in_place(length, state_len):
    """final_state_out=initial_state advances a cache slot in place; (70, 100) spans two blocks and reads the state
    for the final state too."""
    x, weight, bias, _ = make_inputs(2, DIM, length, WIDTH, torch.float32, seed=6)
    state = torch.randn(2, DIM, state_len, device=DEVICE)
    expected_y, expected_final = causal_conv1d_reference(x, weight, bias, state, return_final_state=True)
    y, final = causal_conv1d(x, weight, bias, state, return_final_state=True, final_state_out=state, force_triton=True)
    assert final.data_ptr() == state.data_ptr()
    assert_close(y, expected_y, torch.float32)
    torch.testing.assert_close(state, expected_final, atol=0, rtol=0)


def test_final_state_without_initial_state_pads_with_zeros():
    x, weight, _, _ = make_inputs(1, DIM, 2, WIDTH, torch.float32, seed=2)
    _, final = causal_conv1d(x, weight, return_final_state=True, state_len=6, force_triton=True)
    assert torch.equal(final[:, :, :4], torch.zeros(1, DIM, 4, device=DEVICE))
    assert torch.equal(final[:, :, 4:], x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("single_token", [True, False])
def test_update_matches_reference(dtype, single_token):
    x, weight, bias, state = make_inputs(3, DIM, 1 if single_token else 3, WIDTH, dtype, seed=3)
    tokens = x[:, :, 0] if single_token else x
    expected_state = state.clone()
    out = nan_like(tokens.shape, dtype)
    y = causal_conv1d_update(tokens, state, weight, bias, "silu", out=out, force_triton=True)
    expected_y = causal_conv1d_update_reference(tokens, expected_state, weight, bias, "silu")
    assert y.shape == tokens.shape and y.data_ptr() == out.data_ptr()
    assert_close(y, expected_y, dtype)
    torch.testing.assert_close(state, expected_state, atol=0, rtol=0)


@pytest.mark.parametrize("state_len", [WIDTH - 1, WIDTH])
def test_steps_equal_prefill(state_len):
    """L single-token updates from a state give the outputs and state of one prefill from that state."""
    x, weight, bias, _ = make_inputs(2, DIM, 6, WIDTH, torch.float32, seed=4)
    state = torch.randn(2, DIM, state_len, device=DEVICE)
    expected_y, expected_final = causal_conv1d(x, weight, bias, state, return_final_state=True, force_triton=True)
    rolling = state.clone()
    steps = [causal_conv1d_update(x[:, :, t], rolling, weight, bias, force_triton=True) for t in range(x.shape[2])]
    assert_close(torch.stack(steps, dim=-1), expected_y, torch.float32)
    torch.testing.assert_close(rolling, expected_final, atol=0, rtol=0)


def test_reference_dispatch_on_cpu_matches_transformers_torch_conv():
    """Without force_triton a CPU tensor runs the reference, which is the conv transformers' Mamba2 computes."""
    x, weight, bias, _ = make_inputs(2, DIM, 9, WIDTH, torch.float32, seed=5)
    y = causal_conv1d(x.cpu(), weight.cpu(), bias.cpu(), activation="silu")
    expected = torch.nn.functional.silu(
        torch.nn.functional.conv1d(x.cpu(), weight.cpu()[:, None], bias.cpu(), padding=WIDTH - 1, groups=DIM)[:, :, :9]
    )
    torch.testing.assert_close(y, expected)


@pytest.mark.parametrize("force_triton", [False, True])
def test_bad_shapes_say_what_was_expected(force_triton):
    x, weight, bias, state = make_inputs(2, DIM, 4, WIDTH, torch.float32)
    with pytest.raises(ValueError, match=r"weight must be \[D=37, W\], got \[36, 4\]"):
        causal_conv1d(x, weight[:36], force_triton=force_triton)
    with pytest.raises(ValueError, match=r"initial_state must be \[B=2, D=37, S >= W - 1 = 3\], got \[2, 37, 2\]"):
        causal_conv1d(x, weight, bias, state[:, :, :2], force_triton=force_triton)
    with pytest.raises(ValueError, match="activation must be one of"):
        causal_conv1d(x, weight, activation="relu", force_triton=force_triton)
    with pytest.raises(ValueError, match=r"x must be \[B, D\] or \[B, D, L\]"):
        causal_conv1d_update(x[0, 0], state, weight, force_triton=force_triton)
    with pytest.raises(ValueError, match=r"conv_state must be \[B=2, D=37"):
        causal_conv1d_update(x[:, :, 0], state[:1], weight, force_triton=force_triton)


def test_kernels_compile_for_cuda_without_a_gpu():
    """The conv (prefill and in-place update) and gated-norm kernels compile to cubins through ptxas, and the update's
    read-then-overwrite of the state is separated by a barrier. The interpreter checks neither."""
    root = Path(__file__).resolve().parents[2]
    env = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    env |= {"PYTHONPATH": str(root), "TRITON_DEFAULT_FP_FUSION": "1"}
    script = Path(__file__).with_name("conv_norm_cuda_compile.py")
    done = subprocess.run([sys.executable, str(script), "90:bfloat16", "86:float32"], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    compiled = dict(re.findall(r"^(\w+: sm_\d+ \w+) .*barriers=(\d+)$", done.stdout, flags=re.M))
    assert len(compiled) == 6, done.stdout
    assert int(compiled["conv_update: sm_90 bfloat16"]) >= 1 and int(compiled["conv_update: sm_86 float32"]) >= 1
