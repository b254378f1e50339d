"""Plain fp32 torch spec of Mamba2's gated RMSNorm: rmsnorm(x * silu(z)) per group of channels, times weight."""

import torch
import torch.nn.functional as F


def gated_rms_norm_reference(
    x: torch.Tensor,
    z: torch.Tensor | None,
    weight: torch.Tensor,
    eps: float = 1e-6,
    group_size: int | None = None,
    norm_before_gate: bool = False,
) -> torch.Tensor:
    """x, z [..., D], weight [D] -> [..., D] in x's dtype, all math in fp32 and rounded once at the end.

    norm_before_gate=False (Mamba2): h = x * silu(z), then h / sqrt(mean(h^2 over its group) + eps) * weight.
    norm_before_gate=True: x normalized per group, times weight, then times silu(z). Without z there is no gate.
    """
    dim = x.shape[-1]
    group_size = dim if group_size is None else group_size
    hidden = x.float()
    if z is not None and not norm_before_gate:
        hidden = hidden * F.silu(z.float())
    groups = hidden.reshape(*x.shape[:-1], dim // group_size, group_size)
    groups = groups * torch.rsqrt(groups.pow(2).mean(-1, keepdim=True) + eps)
    out = groups.reshape(x.shape) * weight.float()
    if z is not None and norm_before_gate:
        out = out * F.silu(z.float())
    return out.to(x.dtype)
