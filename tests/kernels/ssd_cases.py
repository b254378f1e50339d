"""Inputs, devices and the per-dtype tolerance table shared by the SSD scan and step tests."""

import math

import torch

# Triton runs for real on a GPU when there is one, in its interpreter on the CPU otherwise (tests/conftest.py).
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# Max |triton - reference| over max(1, max |reference|), per input dtype. The reference runs in fp32 on the same
# (already rounded) inputs, so what is left is the kernels' own rounding: fp32 differs only in summation order;
# bf16/fp16 round y to the dtype (2^-8 / 2^-11 relative) and, as mamba_ssm does, feed the dtype's tensor-core dots
# with products of fp32 decays and the chunk-start states rounded to the dtype.
TOLERANCE = {torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    assert not torch.isnan(actual).any(), f"{what}: NaN left in the output (an element was never written)"
    actual, expected = actual.float().cpu(), expected.float().cpu()
    error = (actual - expected).abs().max().item() / max(1.0, expected.abs().max().item())
    assert error <= TOLERANCE[dtype], f"{what}: relative max error {error:.2e} > {TOLERANCE[dtype]:.0e} for {dtype}"


def make_inputs(batch, length, heads, groups, head_dim, state_size, dtype, seed=0, *, with_D=None, with_z=False,
                with_dt_bias=False, with_initial=False):
    """Random Mamba2-like inputs: dt around softplus(-1) ~ 0.3, A in [-1, -0.01] so some heads remember for long.

    with_D: None, "head" ([H]) or "head_dim" ([H, P]). Returns a dict of keyword arguments for both the scan and
    (sliced per token) the step.
    """
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=gen) * scale + shift).to(DEVICE, dtype)

    inputs = {
        "x": randn(batch, length, heads, head_dim),
        "dt": randn(batch, length, heads, scale=0.5, shift=-1.0),
        "A": -torch.empty(heads).uniform_(0.01, 1.0, generator=gen).to(DEVICE),
        "B": randn(batch, length, groups, state_size, scale=1 / math.sqrt(state_size)),
        "C": randn(batch, length, groups, state_size),
    }
    if with_D == "head":
        inputs["D"] = randn(heads)
    elif with_D == "head_dim":
        inputs["D"] = randn(heads, head_dim)
    if with_z:
        inputs["z"] = randn(batch, length, heads, head_dim)
    if with_dt_bias:
        inputs["dt_bias"] = randn(heads, scale=0.5)
    if with_initial:
        inputs["initial_state"] = (torch.randn(batch, heads, head_dim, state_size, generator=gen)).to(DEVICE)
    return inputs
