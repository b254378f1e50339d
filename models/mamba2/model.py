"""The native Mamba2 / hybrid network: `Mamba2Mixer`, `Attention`, `MLP`, `Block`, `Model`, and its `State`.

Prefill runs the chunked SSD scan and the causal conv (kernels.ssd.ssd_chunk_scan, kernels.conv1d.causal_conv1d);
one-token decode runs the state step, the conv update and the gated norm (kernels.ssd.ssd_state_step,
kernels.conv1d.causal_conv1d_update, kernels.gated_norm.gated_rms_norm). The decode path does no host sync and
allocates nothing that depends on data, so a caller can capture it in a CUDA graph. State is allocated by an
explicit `Model.allocate_state()`, never in `__init__`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kernels.conv1d import causal_conv1d, causal_conv1d_update
from kernels.gated_norm import gated_rms_norm
from kernels.ssd import ssd_chunk_scan, ssd_state_step
from models.mamba2.config import Mamba2Config


@dataclass
class State:
    """Everything the model remembers after reading `length` tokens.

    The SSM state is fp32 whatever the weights: it accumulates over the whole manuscript and bf16 would drift.
    """

    conv: Tensor  # [n_mamba, B, conv_dim, W-1]  last W-1 conv inputs, oldest first
    ssm: Tensor  # [n_mamba, B, H, P, N] fp32
    keys: Tensor | None  # [n_attention, B, kv_heads, max_seq_len, head_dim]; None without attention layers
    values: Tensor | None  # [n_attention, B, kv_heads, max_seq_len, head_dim]
    length: int = 0

    def tensors(self) -> dict[str, Tensor]:
        named = {"conv": self.conv, "ssm": self.ssm}
        if self.keys is not None:
            named["keys"] = self.keys
            named["values"] = self.values
        return named

    @property
    def max_seq_len(self) -> int | None:
        return None if self.keys is None else self.keys.shape[3]


class RMSNorm(nn.Module):
    """RMS norm in fp32, returned in the input's dtype: the gated norm kernel without a gate (one fused kernel per
    call on GPU, where decode is bound by the number of kernels as much as by bytes)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return gated_rms_norm(x, None, self.weight, eps=self.eps)


class Mamba2Mixer(nn.Module):
    def __init__(self, config: Mamba2Config):
        super().__init__()
        self.config = config
        c = config
        self.in_proj = nn.Linear(c.hidden_size, c.in_proj_size, bias=c.use_bias)
        self.conv_weight = nn.Parameter(torch.empty(c.conv_dim, 1, c.conv_kernel))  # [D, 1, W] as in HF
        self.conv_bias = nn.Parameter(torch.empty(c.conv_dim)) if c.use_conv_bias else None
        # A_log, D and dt_bias stay fp32 in a bf16 model: they are tiny and enter exp/softplus.
        self.dt_bias = nn.Parameter(torch.empty(c.n_heads, dtype=torch.float32))
        self.A_log = nn.Parameter(torch.empty(c.n_heads, dtype=torch.float32))
        self.D = nn.Parameter(torch.empty(c.n_heads, dtype=torch.float32))
        self.norm_weight = nn.Parameter(torch.ones(c.d_inner))
        self.out_proj = nn.Linear(c.d_inner, c.hidden_size, bias=c.use_bias)
        # A = -exp(A_log), derived once per load by reset_buffers_ rather than by two kernels per layer per token.
        self.register_buffer("A", torch.empty(c.n_heads, dtype=torch.float32), persistent=False)
        self.reset_buffers_()

    def reset_buffers_(self) -> None:
        if self.A.device.type != "meta":
            self.A.copy_(-torch.exp(self.A_log.detach().float()))

    def _split(self, zxbcdt: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        c = self.config
        return zxbcdt.split([c.d_inner, c.conv_dim, c.n_heads], dim=-1)

    def _gate_and_project(self, y: Tensor, z: Tensor, dtype: torch.dtype) -> Tensor:
        c = self.config
        y = gated_rms_norm(y, z, self.norm_weight, eps=c.norm_eps, group_size=c.d_inner // c.n_groups,
                           norm_before_gate=False)
        return self.out_proj(y.to(dtype))

    def forward(self, x: Tensor, conv_state: Tensor, ssm_state: Tensor) -> Tensor:
        """Read a chunk of tokens; `conv_state` and `ssm_state` hold the state before it and are updated in place."""
        c = self.config
        batch, seq_len, _ = x.shape
        z, xbc, dt = self._split(self.in_proj(x))  # [B, L, d_inner], [B, L, conv_dim], [B, L, H]
        xbc, conv_final = causal_conv1d(
            xbc.transpose(1, 2).contiguous(), self.conv_weight[:, 0], self.conv_bias,  # [B, conv_dim, L]
            initial_state=conv_state, activation="silu", return_final_state=True,
        )
        conv_state.copy_(conv_final)
        xbc = xbc.transpose(1, 2)  # [B, L, conv_dim]
        xs, B, C = xbc.split([c.d_inner, c.n_groups * c.state_size, c.n_groups * c.state_size], dim=-1)
        y, ssm_final = ssd_chunk_scan(
            xs.reshape(batch, seq_len, c.n_heads, c.head_dim).contiguous(),  # [B, L, H, P]
            dt.contiguous(),  # [B, L, H]
            self.A,
            B.reshape(batch, seq_len, c.n_groups, c.state_size).contiguous(),  # [B, L, G, N]
            C.reshape(batch, seq_len, c.n_groups, c.state_size).contiguous(),  # [B, L, G, N]
            chunk_size=c.chunk_size, D=self.D, dt_bias=self.dt_bias, dt_softplus=True,
            dt_limit=c.time_step_limit, initial_state=ssm_state, return_final_state=True,
        )
        ssm_state.copy_(ssm_final)
        return self._gate_and_project(y.reshape(batch, seq_len, c.d_inner), z, x.dtype)

    def step(self, x: Tensor, conv_state: Tensor, ssm_state: Tensor) -> Tensor:
        """One token per sequence: x [B, hidden] -> [B, hidden]; states are updated in place."""
        c = self.config
        batch = x.shape[0]
        z, xbc, dt = self._split(self.in_proj(x))  # [B, d_inner], [B, conv_dim], [B, H]
        xbc = causal_conv1d_update(xbc, conv_state, self.conv_weight[:, 0], self.conv_bias, activation="silu")
        xs, B, C = xbc.split([c.d_inner, c.n_groups * c.state_size, c.n_groups * c.state_size], dim=-1)
        y = ssd_state_step(
            ssm_state,
            xs.reshape(batch, c.n_heads, c.head_dim),  # [B, H, P]
            dt,  # [B, H]
            self.A,
            B.reshape(batch, c.n_groups, c.state_size),  # [B, G, N]
            C.reshape(batch, c.n_groups, c.state_size),  # [B, G, N]
            D=self.D, dt_bias=self.dt_bias, dt_softplus=True, dt_limit=c.time_step_limit,
        )
        return self._gate_and_project(y.reshape(batch, c.d_inner), z, x.dtype)


def _rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Attention(nn.Module):
    """Grouped-query attention with rotary embedding on the first `rotary_dim` channels of each head (Bamba)."""

    def __init__(self, config: Mamba2Config):
        super().__init__()
        c = config
        self.config = c
        self.q_proj = nn.Linear(c.hidden_size, c.n_attention_heads * c.attention_head_dim, bias=c.attention_bias)
        self.k_proj = nn.Linear(c.hidden_size, c.n_kv_heads * c.attention_head_dim, bias=c.attention_bias)
        self.v_proj = nn.Linear(c.hidden_size, c.n_kv_heads * c.attention_head_dim, bias=c.attention_bias)
        self.o_proj = nn.Linear(c.n_attention_heads * c.attention_head_dim, c.hidden_size, bias=c.attention_bias)
        self.register_buffer("inv_freq", torch.empty(c.rotary_dim // 2, dtype=torch.float32), persistent=False)
        self.reset_buffers_()

    def reset_buffers_(self) -> None:
        c = self.config
        if self.inv_freq.device.type == "meta":
            return
        steps = torch.arange(0, c.rotary_dim, 2, dtype=torch.float32, device=self.inv_freq.device)
        self.inv_freq.copy_(1.0 / (c.rope_theta ** (steps / c.rotary_dim)))

    def _rope(self, q: Tensor, k: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
        # positions [L]; cos/sin in fp32 then cast, as transformers does.
        freqs = positions[:, None].float() * self.inv_freq[None, :]  # [L, rotary_dim/2]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos().to(q.dtype), emb.sin().to(q.dtype)  # [L, rotary_dim]
        rot = self.config.rotary_dim

        def apply(t: Tensor) -> Tensor:  # t [B, heads, L, head_dim]
            t_rot, t_pass = t[..., :rot], t[..., rot:]
            return torch.cat((t_rot * cos + _rotate_half(t_rot) * sin, t_pass), dim=-1)

        return apply(q), apply(k)

    def _project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        c = self.config
        batch, seq_len, _ = x.shape
        q = self.q_proj(x).view(batch, seq_len, c.n_attention_heads, c.attention_head_dim).transpose(1, 2)
        k = self.k_proj(x).view(batch, seq_len, c.n_kv_heads, c.attention_head_dim).transpose(1, 2)
        v = self.v_proj(x).view(batch, seq_len, c.n_kv_heads, c.attention_head_dim).transpose(1, 2)
        return q, k, v  # [B, heads, L, head_dim]

    def forward(self, x: Tensor, keys: Tensor, values: Tensor, start: int) -> Tensor:
        """Read tokens at positions start..start+L-1, writing their keys and values into the caches."""
        batch, seq_len, _ = x.shape
        q, k, v = self._project(x)
        positions = torch.arange(start, start + seq_len, device=x.device)
        q, k = self._rope(q, k, positions)
        keys[:, :, start:start + seq_len] = k
        values[:, :, start:start + seq_len] = v
        end = start + seq_len
        if start == 0:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        else:
            visible = torch.arange(end, device=x.device)[None, :] <= positions[:, None]  # [L, end]
            out = F.scaled_dot_product_attention(q, keys[:, :, :end], values[:, :, :end], attn_mask=visible,
                                                 enable_gqa=True)
        return self.o_proj(out.transpose(1, 2).reshape(batch, seq_len, -1))

    def step(self, x: Tensor, keys: Tensor, values: Tensor, position: Tensor) -> Tensor:
        """One token at `position` (a [1] device tensor, so a CUDA graph can replay it at any position)."""
        batch = x.shape[0]
        q, k, v = self._project(x[:, None])
        q, k = self._rope(q, k, position)
        keys.index_copy_(2, position, k)
        values.index_copy_(2, position, v)
        # Attend over the whole static cache with a mask: shapes stay fixed from step to step.
        visible = torch.arange(keys.shape[2], device=x.device)[None, :] <= position[:, None]  # [1, S]
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=visible, enable_gqa=True)
        return self.o_proj(out.reshape(batch, -1))


class MLP(nn.Module):
    def __init__(self, config: Mamba2Config):
        super().__init__()
        c = config
        self.gate_proj = nn.Linear(c.hidden_size, c.mlp_intermediate_size, bias=c.mlp_bias)
        self.up_proj = nn.Linear(c.hidden_size, c.mlp_intermediate_size, bias=c.mlp_bias)
        self.down_proj = nn.Linear(c.mlp_intermediate_size, c.hidden_size, bias=c.mlp_bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    """norm -> mixer (Mamba2 or attention) -> residual, then (hybrid) norm -> MLP -> residual."""

    def __init__(self, config: Mamba2Config, layer_type: str):
        super().__init__()
        self.config = config
        self.layer_type = layer_type
        self.norm = RMSNorm(config.hidden_size, config.norm_eps)
        self.mixer = Mamba2Mixer(config) if layer_type == "mamba" else Attention(config)
        self.mlp_norm = RMSNorm(config.hidden_size, config.norm_eps) if config.mlp_intermediate_size else None
        self.mlp = MLP(config) if config.mlp_intermediate_size else None

    def _residual(self, h: Tensor) -> Tensor:
        return h.float() if self.config.residual_in_fp32 else h

    def _mlp(self, h: Tensor) -> Tensor:
        if self.mlp is None:
            return h
        return h + self.mlp(self.mlp_norm(h))

    def forward(self, h: Tensor, state: State, slot: int) -> Tensor:
        x = self.norm(h.to(self.norm.weight.dtype))
        if self.layer_type == "mamba":
            out = self.mixer(x, state.conv[slot], state.ssm[slot])
        else:
            out = self.mixer(x, state.keys[slot], state.values[slot], state.length)
        return self._mlp(self._residual(h) + out)

    def step(self, h: Tensor, state: State, slot: int, position: Tensor) -> Tensor:
        x = self.norm(h.to(self.norm.weight.dtype))
        if self.layer_type == "mamba":
            out = self.mixer.step(x, state.conv[slot], state.ssm[slot])
        else:
            out = self.mixer.step(x, state.keys[slot], state.values[slot], position)
        return self._mlp(self._residual(h) + out)


class Model(nn.Module):
    def __init__(self, config: Mamba2Config):
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Block(config, kind) for kind in config.layer_types)
        self.norm_f = RMSNorm(config.hidden_size, config.norm_eps)
        self.lm_head = None if config.tie_embeddings else nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        # Each layer's slot in the stacked state tensors: Mamba layers index conv/ssm, attention layers keys/values.
        mamba_at, attention_at = config.mamba_layers, config.attention_layers
        self.slots = [mamba_at.index(i) if kind == "mamba" else attention_at.index(i)
                      for i, kind in enumerate(config.layer_types)]

    @property
    def dtype(self) -> torch.dtype:
        return self.embedding.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.embedding.weight.device

    def allocate_state(self, batch_size: int = 1, max_seq_len: int = 4096) -> State:
        """A zero state for `batch_size` sequences; `max_seq_len` bounds the attention caches (hybrids only)."""
        c = self.config
        n_mamba, n_attention = len(c.mamba_layers), len(c.attention_layers)
        kw = {"device": self.device}
        conv = torch.zeros(n_mamba, batch_size, c.conv_dim, c.conv_kernel - 1, dtype=self.dtype, **kw)
        ssm = torch.zeros(n_mamba, batch_size, c.n_heads, c.head_dim, c.state_size, dtype=torch.float32, **kw)
        keys = values = None
        if n_attention:
            shape = (n_attention, batch_size, c.n_kv_heads, max_seq_len, c.attention_head_dim)
            keys = torch.zeros(shape, dtype=self.dtype, **kw)
            values = torch.zeros(shape, dtype=self.dtype, **kw)
        return State(conv=conv, ssm=ssm, keys=keys, values=values)

    def _logits(self, h: Tensor) -> Tensor:
        h = self.norm_f(h)
        weight = self.embedding.weight if self.lm_head is None else self.lm_head.weight
        return F.linear(h.to(weight.dtype), weight).float()

    def forward(self, input_ids: Tensor, state: State | None = None, last_only: bool = False) -> Tensor:
        """Read input_ids [B, L] into `state` (a fresh one when None) -> logits [B, L, V] fp32 (or [B, V])."""
        batch, seq_len = input_ids.shape
        if state is None:
            state = self.allocate_state(batch, max_seq_len=seq_len)
        if state.max_seq_len is not None and state.length + seq_len > state.max_seq_len:
            raise ValueError(f"context of {state.length + seq_len} tokens exceeds this state's attention cache "
                             f"of {state.max_seq_len} tokens")
        h = self.embedding(input_ids)  # [B, L, hidden]
        for block, slot in zip(self.layers, self.slots):
            h = block(h, state, slot)
        state.length += seq_len
        if last_only:
            h = h[:, -1]
        return self._logits(h)

    def decode_step(self, token_ids: Tensor, state: State, position: Tensor) -> Tensor:
        """One token per sequence: token_ids [B] at `position` ([1] device tensor) -> logits [B, V] fp32.

        Updates the state tensors in place but not `state.length` (the caller owns that host-side counter), so
        this function can be captured in a CUDA graph.
        """
        h = self.embedding(token_ids)  # [B, hidden]
        for block, slot in zip(self.layers, self.slots):
            h = block.step(h, state, slot, position)
        return self._logits(h)

    def reset_buffers_(self) -> Model:
        """Recompute the derived buffers (rotary frequencies, A = -exp(A_log)): after `to_empty`, and again after
        the weights are loaded or changed."""
        for module in self.modules():
            if isinstance(module, (Attention, Mamba2Mixer)):
                module.reset_buffers_()
        return self

    @torch.no_grad()
    def init_random_(self, seed: int = 0) -> Model:
        """Random weights at a sane scale (benchmarks and tests), drawn on the model's device: SSM parameters as
        mamba_ssm initialises them, matrices with std 1/sqrt(fan_in), norms at one."""
        randomize_(self, seed)
        return self.reset_buffers_()


# Parameters kept in fp32 whatever the model dtype (see Mamba2Mixer).
FP32_PARAMS = ("A_log", ".D", "dt_bias")


def build_model(config: Mamba2Config, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> Model:
    """An uninitialised model on `device` in `dtype`: built on the meta device and materialised once, so a
    multi-billion-parameter model never gets a throwaway init. Load weights or call `init_random_` next."""
    with torch.device("meta"):
        model = Model(config)
    model = model.to_empty(device=device)
    for name, param in model.named_parameters():
        if not name.endswith(FP32_PARAMS):
            param.data = param.data.to(dtype)
    return model.reset_buffers_()


@torch.no_grad()
def randomize_(module: nn.Module, seed: int = 0) -> None:
    """Fill every parameter of `module` (ours or a transformers Mamba2-family model) with random weights in place,
    on its own device: benchmarks at real shapes need no checkpoint and no host-side init of billions of floats."""
    for index, (name, param) in enumerate(module.named_parameters()):
        generator = torch.Generator(device=param.device).manual_seed(seed * 100003 + index)
        if name.endswith("A_log"):
            param.copy_(torch.log(torch.arange(1, param.numel() + 1, dtype=torch.float32)).view(param.shape))
        elif name.endswith(".D") or "norm" in name:
            param.fill_(1.0)
        elif name.endswith("dt_bias"):
            dt = torch.rand(param.shape, generator=generator, device=param.device)
            dt = torch.exp(dt * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
            param.copy_(dt + torch.log(-torch.expm1(-dt)))
        elif param.dim() == 1:
            param.zero_()
        else:
            fan_in = param[0].numel()
            param.normal_(0.0, 1.0 / math.sqrt(fan_in), generator=generator)
