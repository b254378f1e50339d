"""Triton gated RMSNorm, fused: one pass loads x and z, gates, reduces each group in fp32, scales and stores.

A program owns BLOCK_M rows of one group; the whole group sits in registers (BLOCK_N = next power of two of the
group size), so each element is read once and written once.
"""

import torch
import triton
import triton.language as tl


@triton.jit
def _gated_rms_norm_kernel(
    x_ptr,
    z_ptr,
    w_ptr,
    y_ptr,
    M,
    GROUP,
    stride_x_m,
    stride_z_m,
    stride_y_m,
    eps,
    HAS_Z: tl.constexpr,
    NORM_BEFORE_GATE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    i_m, i_g = tl.program_id(0), tl.program_id(1)
    o_m = (i_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    o_n = tl.arange(0, BLOCK_N)
    o_c = i_g * GROUP + o_n
    m_n = o_n < GROUP
    m = (o_m < M)[:, None] & m_n[None, :]
    b_x = tl.load(x_ptr + o_m[:, None] * stride_x_m + o_c[None, :], mask=m, other=0.0).to(tl.float32)
    if HAS_Z:
        b_z = tl.load(z_ptr + o_m[:, None] * stride_z_m + o_c[None, :], mask=m, other=0.0).to(tl.float32)
        if not NORM_BEFORE_GATE:
            b_x = b_x * b_z * tl.sigmoid(b_z)
    b_rstd = 1.0 / tl.sqrt(tl.sum(b_x * b_x, axis=1) / GROUP + eps)
    b_w = tl.load(w_ptr + o_c, mask=m_n, other=0.0).to(tl.float32)
    b_y = b_x * b_rstd[:, None] * b_w[None, :]
    if HAS_Z:
        if NORM_BEFORE_GATE:
            b_y = b_y * b_z * tl.sigmoid(b_z)
    tl.store(y_ptr + o_m[:, None] * stride_y_m + o_c[None, :], b_y.to(y_ptr.dtype.element_ty), mask=m)


def check_gated_rms_norm_args(
    x: torch.Tensor, z: torch.Tensor | None, weight: torch.Tensor, group_size: int | None
) -> int:
    """Raise ValueError on inputs gated_rms_norm cannot take; return the group size."""
    if x.dim() < 1:
        raise ValueError("x must be [..., D], got a scalar")
    dim = x.shape[-1]
    if z is not None and z.shape != x.shape:
        raise ValueError(f"z must have x's shape {list(x.shape)}, got {list(z.shape)}")
    if tuple(weight.shape) != (dim,):
        raise ValueError(f"weight must be [D={dim}], got {list(weight.shape)}")
    group_size = dim if group_size is None else group_size
    if group_size < 1 or dim % group_size != 0:
        raise ValueError(f"group_size must divide D={dim}, got {group_size}")
    return group_size


def _rows(t: torch.Tensor) -> torch.Tensor:
    """View t [..., D] as [M, D] with unit stride along D (copies only when it must)."""
    rows = t.reshape(-1, t.shape[-1])
    return rows if rows.stride(-1) == 1 else rows.contiguous()


def gated_rms_norm_triton(
    x: torch.Tensor,
    z: torch.Tensor | None,
    weight: torch.Tensor,
    eps: float = 1e-6,
    group_size: int | None = None,
    norm_before_gate: bool = False,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """x, z [..., D], weight [D] -> [..., D] in x's dtype: rmsnorm(x * silu(z)) per group of group_size, times weight.

    out (contiguous, x's shape), when given, receives the result and is returned.
    """
    group_size = check_gated_rms_norm_args(x, z, weight, group_size)
    dim = x.shape[-1]
    x_rows = _rows(x)
    z_rows = _rows(z) if z is not None else x_rows
    if out is None:
        y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    elif out.shape != x.shape or not out.is_contiguous() or out.device != x.device:
        raise ValueError(f"out must be contiguous {list(x.shape)} on {x.device}, got {list(out.shape)} on {out.device}")
    else:
        y = out
    y_rows = y.view(-1, dim)
    rows = x_rows.shape[0]
    if rows == 0:
        return y
    block_n = triton.next_power_of_2(group_size)
    # About 4K elements a program: one row of a wide group, many rows of a narrow one (never more rows than exist).
    block_m = max(1, min(4096 // block_n, triton.next_power_of_2(rows)))
    grid = (triton.cdiv(rows, block_m), dim // group_size)
    _gated_rms_norm_kernel[grid](
        x_rows, z_rows, weight, y_rows,
        rows, group_size,
        x_rows.stride(0), z_rows.stride(0), y_rows.stride(0),
        eps,
        HAS_Z=z is not None,
        NORM_BEFORE_GATE=norm_before_gate,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        # One warp per 256 elements of the tile (up to 8), so wide groups do not spill registers.
        num_warps=min(max(block_m * block_n // 256, 1), 8),
    )
    return y
