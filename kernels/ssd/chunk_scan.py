"""Mamba2 prefill: the chunked SSD scan over a whole sequence (Triton + dispatch).

Four kernels, after mamba_ssm's ssd_combined: (1) per chunk, dt after bias/softplus/clamp and the cumulative
log-decay (2) per chunk, its own contribution to the state at its end (3) the states passed from chunk to chunk,
sequentially, in fp32, from the initial state to the final one (4) per chunk, y from the chunk-start state plus the
causal intra-chunk part, with the D skip and the silu(z) gate fused. Unlike mamba_ssm, (4) computes C·B itself rather
than reading a [chunk, chunk] matrix per head that a fifth kernel wrote: with one group for 80 heads (Mamba2-2.7B)
re-reading it would cost more memory traffic than the tensor cores spend recomputing it.
"""

import contextlib
import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from kernels.ssd.checks import expect_common, expect_shapes, expect_triton_can_run
from kernels.ssd.reference import ssd_chunk_scan_torch
from kernels.ssd.state_step import softplus


@triton.jit
def _dot(a, b, acc, DOT_PRECISION: tl.constexpr, DOT_UPCAST: tl.constexpr):
    """acc + a @ b, fp32 accumulation. Operands arrive already rounded to the input dtype.

    DOT_UPCAST: Triton 3.9's interpreter multiplies bf16 operands as their raw uint16 bits (triton-lang/triton#11584,
    unsupported upstream); upcasting the already bf16-rounded operands to fp32 gives the exact products a GPU's bf16
    dot accumulates in fp32.
    """
    if DOT_UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    return tl.dot(a, b, acc, input_precision=DOT_PRECISION)


@triton.jit
def _ssd_chunk_dt_kernel(
    p_dt, p_A, p_dt_bias, p_dt_out, p_cum_out,
    seq_len, heads, n_chunks, dt_min, dt_max,
    s_dt_b, s_dt_l, s_dt_h,
    HAS_DT_BIAS: tl.constexpr, DT_SOFTPLUS: tl.constexpr,
    CHUNK: tl.constexpr, BLOCK_H: tl.constexpr,
):
    i_c, i_b, i_hb = tl.program_id(0).to(tl.int64), tl.program_id(1).to(tl.int64), tl.program_id(2)
    o_h = i_hb * BLOCK_H + tl.arange(0, BLOCK_H)
    o_q = tl.arange(0, CHUNK)
    o_t = i_c * CHUNK + o_q
    m_h = o_h < heads
    m_hq = m_h[:, None] & (o_t < seq_len)[None, :]
    b_dt = tl.load(p_dt + i_b * s_dt_b + o_t[None, :] * s_dt_l + o_h[:, None] * s_dt_h,
                   mask=m_hq, other=0.0).to(tl.float32)  # [BLOCK_H, CHUNK]
    if HAS_DT_BIAS:
        b_dt += tl.load(p_dt_bias + o_h, mask=m_h, other=0.0).to(tl.float32)[:, None]
    if DT_SOFTPLUS:
        b_dt = softplus(b_dt)
    b_dt = tl.minimum(tl.maximum(b_dt, dt_min), dt_max)
    # Steps past the end of the sequence: dt = 0, so no decay and no input; the last chunk's end state stays right.
    b_dt = tl.where(m_hq, b_dt, 0.0)
    b_A = tl.load(p_A + o_h, mask=m_h, other=0.0).to(tl.float32)
    b_cum = tl.cumsum(b_dt * b_A[:, None], axis=1)
    o_out = ((i_b * heads + o_h[:, None]) * n_chunks + i_c) * CHUNK + o_q[None, :]
    m_out = m_h[:, None] & (o_q < CHUNK)[None, :]
    tl.store(p_dt_out + o_out, b_dt, mask=m_out)
    tl.store(p_cum_out + o_out, b_cum, mask=m_out)


@triton.jit
def _ssd_chunk_state_kernel(
    p_x, p_B, p_dt, p_cum, p_states,
    seq_len, heads, head_dim, state_size, heads_per_group, n_chunks,
    s_x_b, s_x_l, s_x_h, s_x_p,
    s_B_b, s_B_l, s_B_g, s_B_n,
    CHUNK: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    DOT_PRECISION: tl.constexpr, DOT_UPCAST: tl.constexpr,
):
    i_p, i_c, i_bh = tl.program_id(0), tl.program_id(1).to(tl.int64), tl.program_id(2).to(tl.int64)
    i_b, i_h = i_bh // heads, i_bh % heads
    i_g = i_h // heads_per_group
    o_p = i_p * BLOCK_P + tl.arange(0, BLOCK_P)
    o_n = tl.arange(0, BLOCK_N)
    m_p = o_p < head_dim
    m_n = o_n < state_size
    p_chunk = (i_bh * n_chunks + i_c) * CHUNK  # offset of this chunk in the dt / cum buffers
    b_cum_end = tl.load(p_cum + p_chunk + CHUNK - 1)

    b_acc = tl.zeros([BLOCK_P, BLOCK_N], dtype=tl.float32)
    for i_k in range(0, CHUNK, BLOCK_K):
        o_k = i_k + tl.arange(0, BLOCK_K)
        o_t = i_c * CHUNK + o_k
        m_k = o_t < seq_len
        b_x = tl.load(p_x + i_b * s_x_b + o_t[None, :] * s_x_l + i_h * s_x_h + o_p[:, None] * s_x_p,
                      mask=m_p[:, None] & m_k[None, :], other=0.0)  # [BLOCK_P, BLOCK_K]
        b_B = tl.load(p_B + i_b * s_B_b + o_t[:, None] * s_B_l + i_g * s_B_g + o_n[None, :] * s_B_n,
                      mask=m_k[:, None] & m_n[None, :], other=0.0)  # [BLOCK_K, BLOCK_N]
        b_dt = tl.load(p_dt + p_chunk + o_k)
        b_cum = tl.load(p_cum + p_chunk + o_k)
        b_scale = tl.exp(b_cum_end - b_cum) * b_dt  # [BLOCK_K]: decay to the chunk end times dt
        b_x = (b_x.to(tl.float32) * b_scale[None, :]).to(p_x.dtype.element_ty)
        b_acc = _dot(b_x, b_B.to(p_x.dtype.element_ty), b_acc, DOT_PRECISION, DOT_UPCAST)

    o_out = (i_bh * n_chunks + i_c) * head_dim * state_size + o_p[:, None] * state_size + o_n[None, :]
    tl.store(p_states + o_out, b_acc, mask=m_p[:, None] & m_n[None, :])


@triton.jit
def _ssd_state_passing_kernel(
    p_states, p_cum, p_initial, p_final,
    heads, head_dim, state_size, n_chunks,
    s_init_b, s_init_h, s_init_p, s_init_n,
    s_final_b, s_final_h, s_final_p, s_final_n,
    HAS_INITIAL: tl.constexpr, CHUNK: tl.constexpr, BLOCK: tl.constexpr,
):
    i_blk, i_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    i_b, i_h = i_bh // heads, i_bh % heads
    o_pn = i_blk * BLOCK + tl.arange(0, BLOCK)
    m_pn = o_pn < head_dim * state_size
    o_p, o_n = o_pn // state_size, o_pn % state_size
    if HAS_INITIAL:
        b_state = tl.load(p_initial + i_b * s_init_b + i_h * s_init_h + o_p * s_init_p + o_n * s_init_n,
                          mask=m_pn, other=0.0).to(tl.float32)
    else:
        b_state = tl.zeros([BLOCK], dtype=tl.float32)
    for i_c in range(n_chunks):
        p_chunk_state = p_states + (i_bh * n_chunks + i_c) * head_dim * state_size + o_pn
        b_own = tl.load(p_chunk_state, mask=m_pn, other=0.0)
        # The buffer now holds the state at the chunk's start, which the output kernel reads.
        tl.store(p_chunk_state, b_state, mask=m_pn)
        b_decay = tl.exp(tl.load(p_cum + (i_bh * n_chunks + i_c) * CHUNK + CHUNK - 1))
        b_state = b_state * b_decay + b_own
    tl.store(p_final + i_b * s_final_b + i_h * s_final_h + o_p * s_final_p + o_n * s_final_n,
             b_state.to(p_final.dtype.element_ty), mask=m_pn)


@triton.jit
def _ssd_chunk_output_kernel(
    p_x, p_B, p_C, p_D, p_z, p_dt, p_cum, p_states, p_y,
    seq_len, heads, head_dim, state_size, heads_per_group, n_chunks,
    s_x_b, s_x_l, s_x_h, s_x_p,
    s_B_b, s_B_l, s_B_g, s_B_n,
    s_C_b, s_C_l, s_C_g, s_C_n,
    s_D_h, s_D_p,
    s_z_b, s_z_l, s_z_h, s_z_p,
    s_y_b, s_y_l, s_y_h, s_y_p,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
    CHUNK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
    DOT_PRECISION: tl.constexpr, DOT_UPCAST: tl.constexpr,
):
    i_mp, i_c, i_bh = tl.program_id(0), tl.program_id(1).to(tl.int64), tl.program_id(2).to(tl.int64)
    n_p_blocks = tl.cdiv(head_dim, BLOCK_P)
    i_m, i_p = i_mp // n_p_blocks, i_mp % n_p_blocks
    i_b, i_h = i_bh // heads, i_bh % heads
    i_g = i_h // heads_per_group
    o_m = i_m * BLOCK_M + tl.arange(0, BLOCK_M)  # positions inside the chunk
    o_t = i_c * CHUNK + o_m
    o_p = i_p * BLOCK_P + tl.arange(0, BLOCK_P)
    o_n = tl.arange(0, BLOCK_N)
    m_m = o_t < seq_len
    m_p = o_p < head_dim
    m_n = o_n < state_size
    p_chunk = (i_bh * n_chunks + i_c) * CHUNK
    dot_dtype = p_x.dtype.element_ty

    b_cum_m = tl.load(p_cum + p_chunk + o_m)  # [BLOCK_M]
    b_C = tl.load(p_C + i_b * s_C_b + o_t[:, None] * s_C_l + i_g * s_C_g + o_n[None, :] * s_C_n,
                  mask=m_m[:, None] & m_n[None, :], other=0.0).to(dot_dtype)  # [BLOCK_M, BLOCK_N]

    # From the state at the chunk start (written by the state-passing kernel), decayed to each position.
    o_state = (i_bh * n_chunks + i_c) * head_dim * state_size + o_p[None, :] * state_size + o_n[:, None]
    b_start = tl.load(p_states + o_state, mask=m_n[:, None] & m_p[None, :], other=0.0)  # [BLOCK_N, BLOCK_P]
    b_acc = tl.zeros([BLOCK_M, BLOCK_P], dtype=tl.float32)
    b_acc = _dot(b_C, b_start.to(dot_dtype), b_acc, DOT_PRECISION, DOT_UPCAST) * tl.exp(b_cum_m)[:, None]

    # Inside the chunk, causally: y_m += sum_{k <= m} (C_m . B_k) exp(cum_m - cum_k) dt_k x_k.
    for i_k in range(0, (i_m + 1) * BLOCK_M, BLOCK_M):
        o_k = i_k + tl.arange(0, BLOCK_M)
        o_s = i_c * CHUNK + o_k
        m_k = o_s < seq_len
        b_B = tl.load(p_B + i_b * s_B_b + o_s[None, :] * s_B_l + i_g * s_B_g + o_n[:, None] * s_B_n,
                      mask=m_n[:, None] & m_k[None, :], other=0.0).to(dot_dtype)  # [BLOCK_N, BLOCK_M]
        b_scores = _dot(b_C, b_B, tl.zeros([BLOCK_M, BLOCK_M], dtype=tl.float32), DOT_PRECISION, DOT_UPCAST)
        b_cum_k = tl.load(p_cum + p_chunk + o_k)
        b_dt_k = tl.load(p_dt + p_chunk + o_k)
        m_causal = o_m[:, None] >= o_k[None, :]
        b_log_decay = tl.where(m_causal, b_cum_m[:, None] - b_cum_k[None, :], float("-inf"))
        b_weights = (b_scores * tl.exp(b_log_decay) * b_dt_k[None, :]).to(dot_dtype)
        b_x = tl.load(p_x + i_b * s_x_b + o_s[:, None] * s_x_l + i_h * s_x_h + o_p[None, :] * s_x_p,
                      mask=m_k[:, None] & m_p[None, :], other=0.0).to(dot_dtype)  # [BLOCK_M, BLOCK_P]
        b_acc = _dot(b_weights, b_x, b_acc, DOT_PRECISION, DOT_UPCAST)

    m_mp = m_m[:, None] & m_p[None, :]
    if HAS_D:
        b_x_m = tl.load(p_x + i_b * s_x_b + o_t[:, None] * s_x_l + i_h * s_x_h + o_p[None, :] * s_x_p,
                        mask=m_mp, other=0.0).to(tl.float32)
        b_D = tl.load(p_D + i_h * s_D_h + o_p * s_D_p, mask=m_p, other=0.0).to(tl.float32)
        b_acc += b_x_m * b_D[None, :]
    if HAS_Z:
        b_z = tl.load(p_z + i_b * s_z_b + o_t[:, None] * s_z_l + i_h * s_z_h + o_p[None, :] * s_z_p,
                      mask=m_mp, other=0.0).to(tl.float32)
        b_acc *= b_z * tl.sigmoid(b_z)
    tl.store(p_y + i_b * s_y_b + o_t[:, None] * s_y_l + i_h * s_y_h + o_p[None, :] * s_y_p,
             b_acc.to(p_y.dtype.element_ty), mask=m_mp)


@dataclass(frozen=True)
class ScanTiles:
    """Compile-time sizes of one scan launch (a small table, no autotuning: one shape compiles once)."""

    chunk: int  # tokens per chunk, a power of two >= 16 (tl.dot's smallest tile)
    block_m: int  # chunk positions per output tile, and per inner step of the causal loop
    block_p: int  # head channels per tile
    block_n: int  # the whole state size, padded to a power of two >= 16
    num_stages: int
    dot_precision: str | None  # "ieee" keeps fp32 products exact (no TF32); None: the dtype's tensor-core dot


def scan_tiles(dtype: torch.dtype, head_dim: int, state_size: int, chunk_size: int) -> ScanTiles:
    # The result does not depend on the chunk size, only the cost, so round it to what tl.dot accepts.
    chunk = max(16, triton.next_power_of_2(chunk_size))
    block_n = max(16, triton.next_power_of_2(state_size))
    if dtype == torch.float32:
        # fp32 tiles are twice as wide in shared memory and run on FMA units: smaller tiles, fewer stages, so that
        # they fit in the ~100 KB of shared memory of consumer GPUs too.
        block_p = min(32, max(16, triton.next_power_of_2(head_dim)))
        return ScanTiles(chunk, min(32, chunk), block_p, block_n, num_stages=2, dot_precision="ieee")
    block_m = min(64 if block_n <= 128 else 32, chunk)
    block_p = min(64, max(16, triton.next_power_of_2(head_dim)))
    return ScanTiles(chunk, block_m, block_p, block_n, num_stages=3, dot_precision=None)


def _ssd_chunk_scan_triton(
    x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, dt_limit, initial_state, y, final_state
) -> None:
    """Launch the four kernels; writes y [B,L,H,P] and final_state [B,H,P,N] (both allocated by the caller)."""
    batch, seq_len, heads, head_dim = x.shape
    groups, state_size = B.shape[2], B.shape[3]
    tiles = scan_tiles(x.dtype, head_dim, state_size, chunk_size)
    chunk, block_m, block_p, block_n = tiles.chunk, tiles.block_m, tiles.block_p, tiles.block_n
    n_chunks = triton.cdiv(seq_len, chunk)
    # Under TRITON_INTERPRET=1 @triton.jit makes interpreted functions, not JITFunctions (see _dot).
    dot_upcast = x.dtype == torch.bfloat16 and not isinstance(_ssd_chunk_output_kernel, triton.runtime.JITFunction)
    # The kernels index A and dt_bias as contiguous [H].
    A = A.contiguous()
    dt_bias = None if dt_bias is None else dt_bias.contiguous()
    f32 = dict(device=x.device, dtype=torch.float32)
    dt_chunked = torch.empty(batch, heads, n_chunks, chunk, **f32)
    cum_chunked = torch.empty(batch, heads, n_chunks, chunk, **f32)
    states = torch.empty(batch, heads, n_chunks, head_dim, state_size, **f32)
    D_strides = (0, 0) if D is None else ((D.stride(0), 0) if D.dim() == 1 else D.stride())
    z_strides = (0, 0, 0, 0) if z is None else z.stride()
    init_strides = (0, 0, 0, 0) if initial_state is None else initial_state.stride()
    block_h = min(8, triton.next_power_of_2(heads))

    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
        _ssd_chunk_dt_kernel[(n_chunks, batch, triton.cdiv(heads, block_h))](
            dt, A, dt_bias, dt_chunked, cum_chunked,
            seq_len, heads, n_chunks, float(dt_limit[0]), float(dt_limit[1]),
            *dt.stride(),
            HAS_DT_BIAS=dt_bias is not None, DT_SOFTPLUS=dt_softplus, CHUNK=chunk, BLOCK_H=block_h,
        )
        _ssd_chunk_state_kernel[(triton.cdiv(head_dim, block_p), n_chunks, batch * heads)](
            x, B, dt_chunked, cum_chunked, states,
            seq_len, heads, head_dim, state_size, heads // groups, n_chunks,
            *x.stride(), *B.stride(),
            CHUNK=chunk, BLOCK_P=block_p, BLOCK_N=block_n, BLOCK_K=block_m,
            DOT_PRECISION=tiles.dot_precision, DOT_UPCAST=dot_upcast, num_stages=tiles.num_stages,
        )
        block_pn = min(1024, triton.next_power_of_2(head_dim * state_size))
        _ssd_state_passing_kernel[(triton.cdiv(head_dim * state_size, block_pn), batch * heads)](
            states, cum_chunked, initial_state, final_state,
            heads, head_dim, state_size, n_chunks,
            *init_strides, *final_state.stride(),
            HAS_INITIAL=initial_state is not None, CHUNK=chunk, BLOCK=block_pn,
        )
        grid = (triton.cdiv(chunk, block_m) * triton.cdiv(head_dim, block_p), n_chunks, batch * heads)
        _ssd_chunk_output_kernel[grid](
            x, B, C, D, z, dt_chunked, cum_chunked, states, y,
            seq_len, heads, head_dim, state_size, heads // groups, n_chunks,
            *x.stride(), *B.stride(), *C.stride(), *D_strides, *z_strides, *y.stride(),
            HAS_D=D is not None, HAS_Z=z is not None,
            CHUNK=chunk, BLOCK_M=block_m, BLOCK_P=block_p, BLOCK_N=block_n,
            DOT_PRECISION=tiles.dot_precision, DOT_UPCAST=dot_upcast, num_stages=tiles.num_stages,
        )


def check_scan_inputs(x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_limit, initial_state, out, final_state_out):
    """Raise ValueError naming the argument, the expected shape and the shape that arrived."""
    op = "ssd_chunk_scan"
    if x.dim() != 4:
        raise ValueError(f"{op}: x must be [B, L, H, P], got shape {list(x.shape)}")
    batch, seq_len, heads, head_dim = x.shape
    if seq_len < 1:
        raise ValueError(f"{op}: the sequence must have at least one token, got L={seq_len}")
    if B.dim() != 4 or B.shape[:2] != x.shape[:2]:
        raise ValueError(f"{op}: B must be [{batch}, {seq_len}, G, N], got {list(B.shape)}")
    groups, state_size = B.shape[2], B.shape[3]
    if groups == 0 or heads % groups != 0:
        raise ValueError(f"{op}: the number of groups G={groups} (B.shape[2]) must divide the number of heads "
                         f"H={heads}")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"{op}: chunk_size must be a positive int, got {chunk_size!r}")
    expect_shapes(op, {
        "dt": (dt, (batch, seq_len, heads)),
        "A": (A, (heads,)),
        "C": (C, (batch, seq_len, groups, state_size)),
        "z": (z, (batch, seq_len, heads, head_dim)),
        "dt_bias": (dt_bias, (heads,)),
        "initial_state": (initial_state, (batch, heads, head_dim, state_size)),
        "out": (out, (batch, seq_len, heads, head_dim)),
        "final_state_out": (final_state_out, (batch, heads, head_dim, state_size)),
    })
    if D is not None and D.shape != (heads,) and D.shape != (heads, head_dim):
        raise ValueError(f"{op}: D must have shape [{heads}] or [{heads}, {head_dim}], got {list(D.shape)}")
    expect_common(op, [x, dt, A, B, C, D, z, dt_bias, initial_state, out, final_state_out], dt_limit)


def ssd_chunk_scan(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int = 256,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = True,
    dt_limit: tuple[float, float] = (0.0, math.inf),
    initial_state: torch.Tensor | None = None,
    return_final_state: bool = False,
    force_triton: bool = False,
    out: torch.Tensor | None = None,
    final_state_out: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The Mamba2 SSD scan over a sequence (prefill), in chunks of `chunk_size` tokens; any L >= 1.

    x [B, L, H, P], dt [B, L, H], A [H], B/C [B, L, G, N] with G dividing H, D [H] or [H, P], z [B, L, H, P],
    dt_bias [H], initial_state [B, H, P, N] (any float dtype).
    Per token, exactly as L calls of ssd_state_step from initial_state (zeros when None):
    dt := clamp(softplus(dt + dt_bias), *dt_limit); state := exp(dt A) state + dt x ⊗ B;
    y := (state @ C + D x) * silu(z).
    Returns y [B, L, H, P] in x.dtype (written into `out` when given), and with return_final_state=True also the final
    state [B, H, P, N] in fp32 (written into `final_state_out`, e.g. a cache slot of any float dtype, when given;
    it may be the initial_state tensor itself, for an in-place prefill). Inputs may be strided views.
    The result does not depend on chunk_size, only the cost; Triton rounds it up to a power of two >= 16.
    Runs Triton on CUDA tensors (or with force_triton=True, e.g. under TRITON_INTERPRET=1), the chunked torch reference
    otherwise.
    """
    check_scan_inputs(x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_limit, initial_state, out, final_state_out)
    if x.is_cuda or force_triton:
        expect_triton_can_run("ssd_chunk_scan", x, _ssd_chunk_output_kernel)
        batch, _, heads, head_dim = x.shape
        y = torch.empty_like(x) if out is None else out
        final_state = final_state_out
        if final_state is None:
            final_state = x.new_empty(batch, heads, head_dim, B.shape[-1], dtype=torch.float32)
        _ssd_chunk_scan_triton(
            x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, dt_limit, initial_state, y, final_state
        )
    else:
        y_ref, final_ref = ssd_chunk_scan_torch(
            x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, dt_limit, initial_state
        )
        y = y_ref.to(x.dtype) if out is None else out.copy_(y_ref)
        final_state = final_ref if final_state_out is None else final_state_out.copy_(final_ref)
    if return_final_state:
        return y, final_state
    return y
