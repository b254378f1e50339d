"""Gated RMSNorm: Triton (interpreter on CPU, real on GPU) against the fp32 reference, and the reference against
transformers' MambaRMSNormGated.

Tolerances per dtype (atol = rtol): both sides compute in fp32 and round once to the output dtype; a different
reduction order can move the result across one rounding boundary: fp32 1e-5, fp16 2e-3, bf16 1.6e-2.
"""

import inspect

import pytest
import torch

from kernels.gated_norm import gated_rms_norm, gated_rms_norm_reference

TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def make_inputs(shape, dtype, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=generator).to(DEVICE, dtype)
    z = torch.randn(shape, generator=generator).to(DEVICE, dtype)
    weight = (1 + 0.5 * torch.randn(shape[-1], generator=generator)).to(DEVICE, dtype)
    return x, z, weight


# (shape, group_size): rows of 1, 63 and 257 tokens; odd group sizes; one group and several.
SHAPES = [((1, 1, 40), None), ((2, 63, 3 * 21), 21), ((257, 24), 8), ((2, 5, 4, 96), 48)]


# Every shape and gating mode in fp32; the half-precision dtypes (where only the rounding changes) on two shapes.
GATING = [(True, False), (True, True), (False, False)]
CASES = [(torch.float32, *shape, *gating) for shape in SHAPES for gating in GATING] + [
    (dtype, *shape, *gating) for dtype in (torch.float16, torch.bfloat16) for shape in SHAPES[1:3] for gating in GATING
]


@pytest.mark.parametrize(("dtype", "shape", "group_size", "has_z", "norm_before_gate"), CASES)
def test_matches_reference(dtype, shape, group_size, has_z, norm_before_gate):
    x, z, weight = make_inputs(shape, dtype)
    z = z if has_z else None
    out = torch.full(shape, float("nan"), dtype=dtype, device=DEVICE)
    y = gated_rms_norm(x, z, weight, 1e-5, group_size, norm_before_gate, out=out, force_triton=True)
    expected = gated_rms_norm_reference(x, z, weight, 1e-5, group_size, norm_before_gate)
    assert y.data_ptr() == out.data_ptr() and y.dtype == dtype
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(y.float(), expected.float(), atol=tol, rtol=tol)


def test_strided_inputs():
    """Transformers slices the gate out of a wider projection: rows with a stride larger than D must work."""
    projection = torch.randn(2, 7, 3 * 48, device=DEVICE)
    z, x = projection[..., :48], projection[..., 96:]
    weight = torch.randn(48, device=DEVICE)
    y = gated_rms_norm(x, z, weight, group_size=16, force_triton=True)
    torch.testing.assert_close(y, gated_rms_norm_reference(x, z, weight, group_size=16), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("group_size", [None, 16])
def test_reference_matches_transformers_mamba_rms_norm_gated(group_size):
    from transformers.models.mamba2.modeling_mamba2 import MambaRMSNormGated

    x, z, weight = make_inputs((2, 9, 48), torch.float32, seed=1)
    # Older transformers (5.17, on the lent GPU machine) normalizes over the whole width, with no groups.
    if "group_size" in inspect.signature(MambaRMSNormGated.__init__).parameters:
        module = MambaRMSNormGated(48, group_size=group_size or 48, eps=1e-6)
    elif group_size is None:
        module = MambaRMSNormGated(48, eps=1e-6)
    else:
        pytest.skip("this transformers' MambaRMSNormGated has no group_size: only the whole-width norm compares")
    with torch.no_grad():
        module.weight.copy_(weight)
    expected = module(x.cpu(), z.cpu())
    torch.testing.assert_close(gated_rms_norm(x.cpu(), z.cpu(), weight.cpu(), 1e-6, group_size), expected)


@pytest.mark.parametrize("force_triton", [False, True])
def test_bad_shapes_say_what_was_expected(force_triton):
    x, z, weight = make_inputs((2, 3, 48), torch.float32)
    with pytest.raises(ValueError, match=r"z must have x's shape \[2, 3, 48\], got \[2, 3, 47\]"):
        gated_rms_norm(x, z[..., :47], weight, force_triton=force_triton)
    with pytest.raises(ValueError, match=r"weight must be \[D=48\], got \[47\]"):
        gated_rms_norm(x, z, weight[:47], force_triton=force_triton)
    with pytest.raises(ValueError, match="group_size must divide D=48, got 7"):
        gated_rms_norm(x, z, weight, group_size=7, force_triton=force_triton)
