"""Mamba2's gated RMSNorm (MambaRMSNormGated): rmsnorm(x * silu(z)) per group of channels, times weight, fused.

Triton runs on CUDA tensors (or with force_triton=True, which tests use under TRITON_INTERPRET=1); elsewhere the
fp32 reference runs. The result is rounded once, to x's dtype (as mamba_ssm's rmsnorm_fn does; transformers'
torch module rounds the normalized value to x's dtype before the weight multiply, a difference of one rounding).
"""

import torch

from .gated_norm import check_gated_rms_norm_args, gated_rms_norm_triton
from .reference import gated_rms_norm_reference

__all__ = ["gated_rms_norm", "gated_rms_norm_reference"]


def gated_rms_norm(
    x: torch.Tensor,
    z: torch.Tensor | None,
    weight: torch.Tensor,
    eps: float = 1e-6,
    group_size: int | None = None,
    norm_before_gate: bool = False,
    out: torch.Tensor | None = None,
    force_triton: bool = False,
) -> torch.Tensor:
    """x [..., D], z [..., D] | None, weight [D] -> [..., D]; group_size (default D) must divide D.

    out (contiguous, x's shape), when given, receives the result and is returned.
    """
    if x.is_cuda or force_triton:
        return gated_rms_norm_triton(x, z, weight, eps, group_size, norm_before_gate, out)
    group_size = check_gated_rms_norm_args(x, z, weight, group_size)
    y = gated_rms_norm_reference(x, z, weight, eps, group_size, norm_before_gate)
    if out is None:
        return y
    if out.shape != x.shape:
        raise ValueError(f"out must be {list(x.shape)}, got {list(out.shape)}")
    return out.copy_(y)
