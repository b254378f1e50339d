"""Triton causal depthwise conv1d (optional SiLU): prefill from an optional conv state, and the in-place state update.

One kernel serves both. It reads the virtual sequence h = concat(state [S], x [L]) of each channel, writes
y[t] = act(bias + sum_k w[k] * h[S + t - (W - 1) + k]) for a [BLOCK_D, BLOCK_L] tile, and, when asked, the
final state (the last S_OUT entries of h). Only the first L-block of each channel block touches the state: its
outputs are the only ones whose window reaches before t = 0 (BLOCK_L >= W - 1), and it alone loads and stores the
final state. So when the final state overwrites the state it was read from (the decode update, or a prefill with
final_state_out=initial_state) a barrier between that program's reads and its writes is all the ordering needed.
Conv-state layout: see reference.py ([B, D, S], oldest first, as transformers' Mamba2 cache keeps it with S = W).
"""

import torch
import triton
import triton.language as tl

from .reference import ACTIVATIONS


@triton.jit
def _load_history(p_s, p_x, o_d, o_h, m, S, stride_s_d, stride_s_l, stride_x_d, stride_x_l, HAS_STATE: tl.constexpr):
    """Load h[o_d, o_h] (fp32) where h = concat(state, x) along time; o_h < 0 (before the state) reads as zero."""
    o_t = o_h - S
    m_x = m & (o_t >= 0)
    b_h = tl.load(p_x + o_d[:, None] * stride_x_d + o_t.to(tl.int64) * stride_x_l, mask=m_x, other=0.0).to(tl.float32)
    if HAS_STATE:
        m_s = m & (o_t < 0) & (o_h >= 0)
        b_h += tl.load(p_s + o_d[:, None] * stride_s_d + o_h.to(tl.int64) * stride_s_l, mask=m_s, other=0.0).to(
            tl.float32
        )
    return b_h


@triton.jit
def _causal_conv1d_kernel(
    x_ptr,
    w_ptr,
    bias_ptr,
    s_ptr,
    y_ptr,
    f_ptr,
    D,
    L,
    S,
    S_OUT,
    stride_x_b,
    stride_x_d,
    stride_x_l,
    stride_w_d,
    stride_w_k,
    stride_s_b,
    stride_s_d,
    stride_s_l,
    stride_y_b,
    stride_y_d,
    stride_y_l,
    stride_f_b,
    stride_f_d,
    stride_f_l,
    W: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_STATE: tl.constexpr,
    SILU: tl.constexpr,
    WRITE_FINAL: tl.constexpr,
    IN_PLACE: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_L: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    i_d, i_l, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    o_d = i_d * BLOCK_D + tl.arange(0, BLOCK_D)
    m_d = o_d < D
    o_d64 = o_d.to(tl.int64)
    p_x = x_ptr + i_b.to(tl.int64) * stride_x_b
    p_s = s_ptr + i_b.to(tl.int64) * stride_s_b

    # The final state is read before anything is written: in place it is the state the outputs read too.
    if WRITE_FINAL:
        o_j = tl.arange(0, BLOCK_S)
        # Columns this program owns: all of them in the first L-block, none elsewhere.
        n_f = 0
        if i_l == 0:
            n_f = S_OUT
        m_f = m_d[:, None] & (o_j < n_f)[None, :]
        b_f = _load_history(
            p_s, p_x, o_d64, (S + L - S_OUT + o_j)[None, :], m_f, S,
            stride_s_d, stride_s_l, stride_x_d, stride_x_l, HAS_STATE,
        )

    o_l = i_l * BLOCK_L + tl.arange(0, BLOCK_L)
    m_y = m_d[:, None] & (o_l < L)[None, :]
    b_y = tl.zeros([BLOCK_D, BLOCK_L], dtype=tl.float32)
    for k in tl.static_range(W):
        b_w = tl.load(w_ptr + o_d64 * stride_w_d + k * stride_w_k, mask=m_d, other=0.0).to(tl.float32)
        b_h = _load_history(
            p_s, p_x, o_d64, (S + o_l - (W - 1) + k)[None, :], m_y, S,
            stride_s_d, stride_s_l, stride_x_d, stride_x_l, HAS_STATE,
        )
        b_y += b_w[:, None] * b_h
    if HAS_BIAS:
        b_y += tl.load(bias_ptr + o_d64, mask=m_d, other=0.0).to(tl.float32)[:, None]
    if SILU:
        b_y = b_y * tl.sigmoid(b_y)
    p_y = y_ptr + i_b.to(tl.int64) * stride_y_b + o_d64[:, None] * stride_y_d + o_l[None, :].to(tl.int64) * stride_y_l
    tl.store(p_y, b_y.to(y_ptr.dtype.element_ty), mask=m_y)

    if WRITE_FINAL:
        if IN_PLACE:
            # Other threads of this program still read columns this store overwrites.
            tl.debug_barrier()
        if i_l == 0:
            p_f = f_ptr + i_b.to(tl.int64) * stride_f_b + o_d64[:, None] * stride_f_d + o_j[None, :] * stride_f_l
            tl.store(p_f, b_f.to(f_ptr.dtype.element_ty), mask=m_f)


def _check_activation(activation: str | None) -> bool:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    return activation is not None


def _check_weights(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    dim = x.shape[1]
    if weight.dim() != 2 or weight.shape[0] != dim:
        raise ValueError(f"weight must be [D={dim}, W], got {list(weight.shape)}")
    if bias is not None and tuple(bias.shape) != (dim,):
        raise ValueError(f"bias must be [D={dim}], got {list(bias.shape)}")


def _check_state(x: torch.Tensor, weight: torch.Tensor, state: torch.Tensor, name: str) -> None:
    batch, dim, width = x.shape[0], x.shape[1], weight.shape[1]
    if state.dim() != 3 or state.shape[0] != batch or state.shape[1] != dim or state.shape[2] < width - 1:
        raise ValueError(f"{name} must be [B={batch}, D={dim}, S >= W - 1 = {width - 1}], got {list(state.shape)}")
    if state.device != x.device:
        raise ValueError(f"{name} must be on {x.device}, got {state.device}")


def _check_out(out: torch.Tensor, shape: tuple[int, ...], device: torch.device, name: str) -> None:
    if tuple(out.shape) != shape or out.device != device:
        raise ValueError(f"{name} must be {list(shape)} on {device}, got {list(out.shape)} on {out.device}")


def _launch(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    state: torch.Tensor | None,
    y: torch.Tensor,
    final: torch.Tensor | None,
    silu: bool,
) -> None:
    batch, dim, length = x.shape
    width = weight.shape[1]
    state_len = state.shape[2] if state is not None else width - 1
    final_len = final.shape[2] if final is not None else 0
    block_d = 32
    # At least W - 1 tokens a block, so that only the first block reads the state (see the module docstring).
    block_l = max(min(64, triton.next_power_of_2(length)), triton.next_power_of_2(max(width - 1, 1)))
    in_place = final is not None and state is not None and final.data_ptr() == state.data_ptr()
    grid = (triton.cdiv(dim, block_d), triton.cdiv(length, block_l), batch)
    dummy = y
    state_strides = state.stride() if state is not None else (0, 0, 0)
    final_strides = final.stride() if final is not None else (0, 0, 0)
    _causal_conv1d_kernel[grid](
        x, weight, bias if bias is not None else dummy, state if state is not None else dummy, y,
        final if final is not None else dummy,
        dim, length, state_len, final_len,
        *x.stride(), *weight.stride(), *state_strides, *y.stride(), *final_strides,
        W=width,
        HAS_BIAS=bias is not None,
        HAS_STATE=state is not None,
        SILU=silu,
        WRITE_FINAL=final is not None,
        IN_PLACE=in_place,
        BLOCK_D=block_d,
        BLOCK_L=block_l,
        BLOCK_S=triton.next_power_of_2(max(final_len, 1)),
    )


def check_conv1d_args(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    initial_state: torch.Tensor | None,
    activation: str | None,
    return_final_state: bool,
    state_len: int | None,
) -> bool:
    """Raise ValueError on inputs causal_conv1d cannot take; return whether SiLU is on."""
    if x.dim() != 3:
        raise ValueError(f"x must be [B, D, L], got {list(x.shape)}")
    _check_weights(x, weight, bias)
    silu = _check_activation(activation)
    if initial_state is not None:
        _check_state(x, weight, initial_state, "initial_state")
    if return_final_state and x.shape[2] == 0:
        raise ValueError("x must hold at least one token to return a final state")
    if state_len is not None and state_len < 1:
        raise ValueError(f"state_len must be >= 1, got {state_len}")
    return silu


def check_conv1d_update_args(
    x: torch.Tensor,
    conv_state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    activation: str | None,
) -> bool:
    """Raise ValueError on inputs causal_conv1d_update cannot take; return whether SiLU is on."""
    if x.dim() not in (2, 3):
        raise ValueError(f"x must be [B, D] or [B, D, L], got {list(x.shape)}")
    tokens = x[:, :, None] if x.dim() == 2 else x
    _check_weights(tokens, weight, bias)
    silu = _check_activation(activation)
    _check_state(tokens, weight, conv_state, "conv_state")
    return silu


def causal_conv1d_triton(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    activation: str | None = "silu",
    return_final_state: bool = False,
    state_len: int | None = None,
    out: torch.Tensor | None = None,
    final_state_out: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Causal depthwise conv1d over x [B, D, L] with weight [D, W], bias [D], initial_state [B, D, S >= W - 1].

    Returns y [B, D, L] (x's dtype) and, with return_final_state, the final state [B, D, state_len] (default S, or W
    without an initial state; in initial_state's dtype, else x's): the last state_len inputs, oldest first.
    out / final_state_out, when given, receive the results (any strides) and are returned; final_state_out may be
    initial_state itself.
    """
    silu = check_conv1d_args(x, weight, bias, initial_state, activation, return_final_state, state_len)
    if out is None:
        # Same layout as x: transformers hands over a channel-last view and reads y back channel-last.
        y = torch.empty_like(x)
    else:
        _check_out(out, tuple(x.shape), x.device, "out")
        y = out
    final = None
    if return_final_state:
        if state_len is None:
            state_len = initial_state.shape[2] if initial_state is not None else weight.shape[1]
        final_dtype = initial_state.dtype if initial_state is not None else x.dtype
        final_shape = (x.shape[0], x.shape[1], state_len)
        if final_state_out is None:
            final = torch.empty(final_shape, dtype=final_dtype, device=x.device)
        else:
            _check_out(final_state_out, final_shape, x.device, "final_state_out")
            final = final_state_out
    if x.shape[2] > 0:
        _launch(x, weight, bias, initial_state, y, final, silu)
    return (y, final) if return_final_state else y


def causal_conv1d_update_triton(
    x: torch.Tensor,
    conv_state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = "silu",
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Feed x [B, D] (one token) or [B, D, L] through the conv after conv_state [B, D, S >= W - 1], rolled in place.

    Returns y shaped like x (x's dtype), written into out when given.
    """
    silu = check_conv1d_update_args(x, conv_state, weight, bias, activation)
    if out is not None:
        _check_out(out, tuple(x.shape), x.device, "out")
    tokens = x[:, :, None] if x.dim() == 2 else x
    if out is None:
        y = torch.empty_like(tokens, memory_format=torch.contiguous_format)
    else:
        y = out[:, :, None] if x.dim() == 2 else out
    _launch(tokens, weight, bias, conv_state, y, conv_state, silu)
    return y[:, :, 0] if x.dim() == 2 else y
