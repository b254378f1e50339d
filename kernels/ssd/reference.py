"""Plain fp32 torch spec of Mamba2's state-space duality (SSD) layer: one recurrence step, a scan made of steps,
and a chunked torch scan (same math, fast enough for the CPU path).

Per head h (group g = h // (H // G)), with dt processed as clamp(softplus(dt + dt_bias), *dt_limit):
    state_t = exp(dt_t * A_h) * state_{t-1} + dt_t * x_t ⊗ B_t          # [P, N]
    y_t     = (state_t @ C_t + D_h * x_t) * silu(z_t)                   # [P]
Semantics follow mamba_ssm's mamba_chunk_scan_combined / selective_state_update, with two deliberate differences:
dt is always clamped to dt_limit (mamba_ssm skips the clamp at the default (0, inf), which only matters for a
negative dt without softplus), and the step takes dt_limit too, so a scan equals its steps under any limit.
"""

import torch
import torch.nn.functional as F


def discretize_dt(
    dt: torch.Tensor,
    dt_bias: torch.Tensor | None,
    dt_softplus: bool,
    dt_limit: tuple[float, float],
) -> torch.Tensor:
    """dt [..., H] -> fp32 dt after bias, softplus (threshold 20, as mamba_ssm) and clamping to dt_limit."""
    dt = dt.float()
    if dt_bias is not None:
        dt = dt + dt_bias.float()
    if dt_softplus:
        dt = F.softplus(dt)
    # Always clamped (as transformers' torch path does): dt < 0 would make the recurrence grow without bound.
    return dt.clamp(min=dt_limit[0], max=dt_limit[1])


def _skip_and_gate(
    y: torch.Tensor, x: torch.Tensor, D: torch.Tensor | None, z: torch.Tensor | None
) -> torch.Tensor:
    """y, x [..., H, P] -> (y + D * x) * silu(z), in fp32."""
    if D is not None:
        y = y + x.float() * (D.float()[:, None] if D.dim() == 1 else D.float())
    if z is not None:
        y = y * F.silu(z.float())
    return y


def ssd_step_reference(
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
    dt_limit: tuple[float, float] = (0.0, float("inf")),
) -> torch.Tensor:
    """One token. state [Bt,H,P,N] (updated in place), x [Bt,H,P], dt [Bt,H], A [H], B/C [Bt,G,N] -> y [Bt,H,P] fp32."""
    heads_per_group = x.shape[1] // B.shape[1]
    dt = discretize_dt(dt, dt_bias, dt_softplus, dt_limit)  # [Bt, H]
    B = B.float().repeat_interleave(heads_per_group, dim=1)  # [Bt, H, N]
    C = C.float().repeat_interleave(heads_per_group, dim=1)  # [Bt, H, N]
    decay = torch.exp(dt * A.float())[:, :, None, None]  # [Bt, H, 1, 1]
    new_state = state.float() * decay + (dt[:, :, None] * x.float())[..., None] * B[:, :, None, :]  # [Bt, H, P, N]
    state.copy_(new_state)
    # y reads the fp32 state, not its copy rounded to state.dtype (as mamba_ssm's kernel does).
    y = (new_state * C[:, :, None, :]).sum(-1)  # [Bt, H, P]
    return _skip_and_gate(y, x, D, z)


def ssd_scan_reference(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = True,
    dt_limit: tuple[float, float] = (0.0, float("inf")),
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The scan as L single steps: x [Bt,L,H,P] ... -> (y [Bt,L,H,P] fp32, final_state [Bt,H,P,N] fp32)."""
    batch, length, heads, head_dim = x.shape
    if initial_state is None:
        state = x.new_zeros(batch, heads, head_dim, B.shape[-1], dtype=torch.float32)
    else:
        state = initial_state.float().clone()
    ys = [
        ssd_step_reference(
            state, x[:, t], dt[:, t], A, B[:, t], C[:, t], D, None if z is None else z[:, t], dt_bias, dt_softplus,
            dt_limit,
        )
        for t in range(length)
    ]
    y = torch.stack(ys, dim=1) if ys else x.new_zeros(x.shape, dtype=torch.float32)
    return y, state


def ssd_chunk_scan_torch(
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
    dt_limit: tuple[float, float] = (0.0, float("inf")),
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same result as ssd_scan_reference, computed chunk by chunk in fp32 (quadratic inside a chunk, linear across)."""
    batch, length, heads, head_dim = x.shape
    heads_per_group = heads // B.shape[2]
    # The result does not depend on the chunk size: a sequence shorter than a chunk is one chunk, unpadded.
    chunk_size = min(chunk_size, length)
    pad = (-length) % chunk_size
    dt = discretize_dt(dt, dt_bias, dt_softplus, dt_limit)  # [Bt, L, H]

    def chunked(t: torch.Tensor) -> torch.Tensor:
        # [Bt, L, ...] -> [Bt, c, l, ...]; padded steps have dt = 0: no decay, no input.
        t = F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad))
        return t.reshape(batch, -1, chunk_size, *t.shape[2:])

    x_dt = chunked(x.float() * dt[..., None])  # [Bt, c, l, H, P]
    B = chunked(B.float().repeat_interleave(heads_per_group, dim=2))  # [Bt, c, l, H, N]
    C = chunked(C.float().repeat_interleave(heads_per_group, dim=2))  # [Bt, c, l, H, N]
    cum = chunked(dt * A.float()).cumsum(dim=2)  # [Bt, c, l, H]: log of the decay from the chunk start

    # Inside a chunk: y_l = sum_{s <= l} (C_l . B_s) exp(cum_l - cum_s) dt_s x_s.
    causal = torch.tril(torch.ones(chunk_size, chunk_size, dtype=torch.bool, device=x.device))[..., None]
    decay = (cum[:, :, :, None, :] - cum[:, :, None, :, :]).masked_fill_(~causal, float("-inf")).exp_()  # [Bt,c,l,s,H]
    scores = torch.einsum("bclhn,bcshn->bclsh", C, B).mul_(decay)
    y = torch.einsum("bclsh,bcshp->bclhp", scores, x_dt)  # [Bt, c, l, H, P]

    # Each chunk's own contribution to the state at its end, then the states passed from chunk to chunk.
    decay_to_end = torch.exp(cum[:, :, -1:, :] - cum)  # [Bt, c, l, H]
    chunk_states = torch.einsum("bclhn,bclhp->bchpn", B * decay_to_end[..., None], x_dt)  # [Bt, c, H, P, N]
    if initial_state is None:
        state = x.new_zeros(batch, heads, head_dim, B.shape[-1], dtype=torch.float32)
    else:
        state = initial_state.float()
    start_states = []
    for c in range(chunk_states.shape[1]):
        start_states.append(state)
        state = state * torch.exp(cum[:, c, -1, :])[:, :, None, None] + chunk_states[:, c]
    start_states = torch.stack(start_states, dim=1)  # [Bt, c, H, P, N]
    y = y + torch.einsum("bclhn,bchpn->bclhp", C, start_states) * torch.exp(cum)[..., None]

    y = y.reshape(batch, -1, heads, head_dim)[:, :length]  # [Bt, L, H, P]
    return _skip_and_gate(y, x, D, z), state
