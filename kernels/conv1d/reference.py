"""Plain fp32 torch spec of the causal depthwise conv1d (with optional SiLU) and its rolling-state update.

Conv-state layout (the one transformers' Mamba2-family cache keeps, `conv_states [B, D, W]`): a tensor
`[B, D, S]` holding the last S inputs of each channel, oldest first (time runs along the last axis), S >= W - 1.
Only its last W - 1 columns feed the next output; the extra columns (transformers keeps S = W) just roll along.
"""

import torch
import torch.nn.functional as F

ACTIVATIONS = (None, "silu", "swish")


def causal_conv1d_reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    activation: str | None = "silu",
    return_final_state: bool = False,
    state_len: int | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """y[b, d, t] = act(bias[d] + sum_k weight[d, k] * h[b, d, t - (W - 1) + k]), h = the state, then x from t = 0.

    x [B, D, L], weight [D, W], bias [D], initial_state [B, D, S] (zeros when None). Returns y [B, D, L] in x's dtype
    and, on request, the final state [B, D, state_len] (default: S, or W without an initial state): the last
    state_len entries of concat(initial_state, x), in the dtype of initial_state (x's without one).
    """
    batch, dim, length = x.shape
    width = weight.shape[1]
    history_len = initial_state.shape[-1] if initial_state is not None else width - 1
    if initial_state is not None:
        history = initial_state.float()
    else:
        history = torch.zeros(batch, dim, history_len, dtype=torch.float32, device=x.device)
    # [B, D, S + L]: every input the outputs can see, the state first.
    sequence = torch.cat([history, x.float()], dim=-1)
    start = history_len - (width - 1)
    y = torch.zeros(batch, dim, length, dtype=torch.float32, device=x.device)
    for k in range(width):
        y += weight[:, k, None].float() * sequence[:, :, start + k : start + k + length]
    if bias is not None:
        y += bias[:, None].float()
    if activation is not None:
        y = F.silu(y)
    y = y.to(x.dtype)
    if not return_final_state:
        return y
    if state_len is None:
        state_len = initial_state.shape[-1] if initial_state is not None else width
    # Pad on the left so that short sequences without a state give zeros in the oldest columns.
    padded = F.pad(sequence, (max(0, state_len - sequence.shape[-1]), 0))
    final_dtype = initial_state.dtype if initial_state is not None else x.dtype
    return y, padded[:, :, padded.shape[-1] - state_len :].to(final_dtype)


def causal_conv1d_update_reference(
    x: torch.Tensor,
    conv_state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = "silu",
) -> torch.Tensor:
    """Feed x [B, D] (one token) or [B, D, L] through the conv after conv_state [B, D, S]; conv_state rolls in place.

    Defined as the prefill over x from conv_state, so L update tokens equal one prefill of the same L tokens.
    """
    single_token = x.dim() == 2
    tokens = x[:, :, None] if single_token else x
    y, final_state = causal_conv1d_reference(
        tokens, weight, bias, initial_state=conv_state, activation=activation, return_final_state=True
    )
    conv_state.copy_(final_state)
    return y[:, :, 0] if single_token else y
