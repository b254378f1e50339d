"""Causal depthwise conv1d with SiLU (Mamba2's short conv): prefill from an optional conv state, and decode update.

Conv-state layout: [B, D, S] with S >= W - 1, the last S inputs of each channel, oldest first; transformers'
Mamba2-family cache keeps exactly this with S = W (`conv_states [B, D, W]`), so its tensors can be passed as they are.
Triton runs on CUDA tensors (or with force_triton=True, which tests use under TRITON_INTERPRET=1); elsewhere the
fp32 reference runs.
"""

import torch

from .conv1d import (
    causal_conv1d_triton,
    causal_conv1d_update_triton,
    check_conv1d_args,
    check_conv1d_update_args,
)
from .reference import causal_conv1d_reference, causal_conv1d_update_reference

__all__ = ["causal_conv1d", "causal_conv1d_reference", "causal_conv1d_update", "causal_conv1d_update_reference"]


def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    activation: str | None = "silu",
    return_final_state: bool = False,
    state_len: int | None = None,
    out: torch.Tensor | None = None,
    final_state_out: torch.Tensor | None = None,
    force_triton: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """x [B, D, L], weight [D, W], bias [D], initial_state [B, D, S] -> y [B, D, L] | (y, final_state [B, D, S_out]).

    y = act(bias + causal depthwise conv of x, the state standing before x); act is SiLU ("silu"/"swish") or None.
    S_out = state_len, by default S, or W without an initial state (transformers' cache width); the final state is the
    last state_len inputs, oldest first. out / final_state_out, when given, receive the results and are returned;
    final_state_out may be initial_state itself (a cache slot advanced in place).
    """
    if x.is_cuda or force_triton:
        return causal_conv1d_triton(
            x, weight, bias, initial_state, activation, return_final_state, state_len, out, final_state_out
        )
    check_conv1d_args(x, weight, bias, initial_state, activation, return_final_state, state_len)
    result = causal_conv1d_reference(x, weight, bias, initial_state, activation, return_final_state, state_len)
    return _into(result, (out, final_state_out) if return_final_state else out)


def causal_conv1d_update(
    x: torch.Tensor,
    conv_state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = "silu",
    out: torch.Tensor | None = None,
    force_triton: bool = False,
) -> torch.Tensor:
    """x [B, D] or [B, D, L], conv_state [B, D, S >= W - 1] (rolled in place), weight [D, W] -> y shaped like x.

    Equal to causal_conv1d over x from conv_state, with conv_state replaced by the final state.
    """
    if x.is_cuda or force_triton:
        return causal_conv1d_update_triton(x, conv_state, weight, bias, activation, out)
    check_conv1d_update_args(x, conv_state, weight, bias, activation)
    return _into(causal_conv1d_update_reference(x, conv_state, weight, bias, activation), out)


def _into(result, out):
    """Copy the reference's result(s) into the caller's out tensor(s) where given."""
    if isinstance(result, tuple):
        return tuple(_into(value, target) for value, target in zip(result, out))
    if out is None:
        return result
    if out.shape != result.shape:
        raise ValueError(f"out must be {list(result.shape)}, got {list(out.shape)}")
    return out.copy_(result)
