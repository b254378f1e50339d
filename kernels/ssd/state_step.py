"""Mamba2 decode: one token through the SSD recurrence, updating the recurrent state in place (Triton + dispatch)."""

import contextlib
import math

import torch
import triton
import triton.language as tl

from kernels.ssd.checks import expect_common, expect_shapes, expect_triton_can_run
from kernels.ssd.reference import ssd_step_reference


@triton.jit
def softplus(x):
    # Same threshold as torch.nn.functional.softplus and mamba_ssm: above 20, softplus(x) == x in fp32.
    return tl.where(x <= 20.0, tl.log(1.0 + tl.exp(tl.minimum(x, 20.0))), x)


@triton.jit
def _ssd_state_step_kernel(
    p_state, p_x, p_dt, p_A, p_B, p_C, p_D, p_z, p_dt_bias, p_y,
    head_dim, state_size, heads_per_group, dt_min, dt_max,
    s_state_b, s_state_h, s_state_p, s_state_n,
    s_x_b, s_x_h, s_x_p,
    s_dt_b, s_dt_h,
    s_B_b, s_B_g, s_B_n,
    s_C_b, s_C_g, s_C_n,
    s_D_h, s_D_p,
    s_z_b, s_z_h, s_z_p,
    s_y_b, s_y_h, s_y_p,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DT_BIAS: tl.constexpr, DT_SOFTPLUS: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
):
    i_p, i_b, i_h = tl.program_id(0), tl.program_id(1).to(tl.int64), tl.program_id(2).to(tl.int64)
    i_g = i_h // heads_per_group
    o_p = i_p * BLOCK_P + tl.arange(0, BLOCK_P)
    o_n = tl.arange(0, BLOCK_N)
    m_p = o_p < head_dim
    m_n = o_n < state_size
    m_pn = m_p[:, None] & m_n[None, :]

    p_state_block = (p_state + i_b * s_state_b + i_h * s_state_h
                     + o_p[:, None] * s_state_p + o_n[None, :] * s_state_n)
    b_state = tl.load(p_state_block, mask=m_pn, other=0.0).to(tl.float32)  # [BLOCK_P, BLOCK_N]
    b_x = tl.load(p_x + i_b * s_x_b + i_h * s_x_h + o_p * s_x_p, mask=m_p, other=0.0).to(tl.float32)
    b_dt = tl.load(p_dt + i_b * s_dt_b + i_h * s_dt_h).to(tl.float32)
    if HAS_DT_BIAS:
        b_dt += tl.load(p_dt_bias + i_h).to(tl.float32)
    if DT_SOFTPLUS:
        b_dt = softplus(b_dt)
    b_dt = tl.minimum(tl.maximum(b_dt, dt_min), dt_max)
    b_A = tl.load(p_A + i_h).to(tl.float32)
    b_B = tl.load(p_B + i_b * s_B_b + i_g * s_B_g + o_n * s_B_n, mask=m_n, other=0.0).to(tl.float32)
    b_C = tl.load(p_C + i_b * s_C_b + i_g * s_C_g + o_n * s_C_n, mask=m_n, other=0.0).to(tl.float32)

    b_state = b_state * tl.exp(b_A * b_dt) + (b_x * b_dt)[:, None] * b_B[None, :]
    tl.store(p_state_block, b_state.to(p_state.dtype.element_ty), mask=m_pn)

    b_y = tl.sum(b_state * b_C[None, :], axis=1)  # [BLOCK_P]
    if HAS_D:
        b_y += b_x * tl.load(p_D + i_h * s_D_h + o_p * s_D_p, mask=m_p, other=0.0).to(tl.float32)
    if HAS_Z:
        b_z = tl.load(p_z + i_b * s_z_b + i_h * s_z_h + o_p * s_z_p, mask=m_p, other=0.0).to(tl.float32)
        b_y *= b_z * tl.sigmoid(b_z)
    tl.store(p_y + i_b * s_y_b + i_h * s_y_h + o_p * s_y_p, b_y.to(p_y.dtype.element_ty), mask=m_p)


def _block_p_for(state_size: int) -> int:
    """Rows of the state per program: keep BLOCK_P * BLOCK_N near 512 fp32 registers (mamba_ssm's table).

    A fixed table rather than autotuning: tuning runs would update the state several times.
    """
    for max_state_size, block_p in ((16, 32), (32, 16), (64, 8), (128, 4)):
        if state_size <= max_state_size:
            return block_p
    return 4


def _ssd_state_step_triton(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, dt_limit, out) -> torch.Tensor:
    batch, heads, head_dim = x.shape
    state_size = B.shape[-1]
    y = torch.empty_like(x) if out is None else out
    # The kernel indexes A and dt_bias as contiguous [H].
    A = A.contiguous()
    dt_bias = None if dt_bias is None else dt_bias.contiguous()
    block_n = max(16, triton.next_power_of_2(state_size))
    block_p = min(_block_p_for(state_size), max(16, triton.next_power_of_2(head_dim)))
    # D as [H, P] strides; a [H] D reads the same value for every p (stride 0).
    D_strides = (0, 0) if D is None else ((D.stride(0), 0) if D.dim() == 1 else D.stride())
    z_strides = (0, 0, 0) if z is None else z.stride()
    grid = (triton.cdiv(head_dim, block_p), batch, heads)
    # Triton launches on the current CUDA device: make it the tensors' device.
    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
        _ssd_state_step_kernel[grid](
            state, x, dt, A, B, C, D, z, dt_bias, y,
            head_dim, state_size, heads // B.shape[1], float(dt_limit[0]), float(dt_limit[1]),
            *state.stride(), *x.stride(), *dt.stride(), *B.stride(), *C.stride(), *D_strides, *z_strides, *y.stride(),
            HAS_D=D is not None, HAS_Z=z is not None, HAS_DT_BIAS=dt_bias is not None, DT_SOFTPLUS=dt_softplus,
            BLOCK_P=block_p, BLOCK_N=block_n, num_warps=4,
        )
    return y


def check_step_inputs(state, x, dt, A, B, C, D, z, dt_bias, dt_limit, out) -> None:
    """Raise ValueError naming the argument, the expected shape and the shape that arrived."""
    op = "ssd_state_step"
    if x.dim() != 3:
        raise ValueError(f"{op}: x must be [B, H, P], got shape {list(x.shape)}")
    batch, heads, head_dim = x.shape
    if B.dim() != 3 or B.shape[0] != batch:
        raise ValueError(f"{op}: B must be [{batch}, G, N], got {list(B.shape)}")
    groups, state_size = B.shape[1], B.shape[2]
    if groups == 0 or heads % groups != 0:
        raise ValueError(f"{op}: the number of groups G={groups} (B.shape[1]) must divide the number of heads "
                         f"H={heads}")
    expect_shapes(op, {
        "state": (state, (batch, heads, head_dim, state_size)),
        "dt": (dt, (batch, heads)),
        "A": (A, (heads,)),
        "C": (C, (batch, groups, state_size)),
        "z": (z, (batch, heads, head_dim)),
        "dt_bias": (dt_bias, (heads,)),
        "out": (out, (batch, heads, head_dim)),
    })
    if D is not None and D.shape != (heads,) and D.shape != (heads, head_dim):
        raise ValueError(f"{op}: D must have shape [{heads}] or [{heads}, {head_dim}], got {list(D.shape)}")
    expect_common(op, [state, x, dt, A, B, C, D, z, dt_bias, out], dt_limit)


def ssd_state_step(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = True,
    dt_limit: tuple[float, float] = (0.0, math.inf),
    force_triton: bool = False,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """One Mamba2 decode step; updates `state` in place and returns y.

    state [B, H, P, N] (any float dtype; the update runs in fp32 and is stored back in state.dtype),
    x [B, H, P], dt [B, H], A [H], B/C [B, G, N] with G dividing H, D [H] or [H, P], z [B, H, P], dt_bias [H].
    dt := clamp(softplus(dt + dt_bias), *dt_limit); state := exp(dt A) state + dt x ⊗ B;
    y := (state @ C + D x) * silu(z)  -> [B, H, P] in x.dtype, written into `out` when given.
    Runs Triton on CUDA tensors (or with force_triton=True, e.g. under TRITON_INTERPRET=1), the reference otherwise.
    """
    check_step_inputs(state, x, dt, A, B, C, D, z, dt_bias, dt_limit, out)
    if x.is_cuda or force_triton:
        expect_triton_can_run("ssd_state_step", x, _ssd_state_step_kernel)
        return _ssd_state_step_triton(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, dt_limit, out)
    y = ssd_step_reference(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, dt_limit)
    if out is None:
        return y.to(x.dtype)
    return out.copy_(y)
