"""Mamba2 and hybrid (Mamba2 + attention) configs: one dataclass, derived sizes in `__post_init__`, named presets.

The hybrid layout is an explicit per-layer list (`layer_types`), never positional magic. `from_hf_config` reads the
`config.json` of a Hugging Face `Mamba2ForCausalLM` or `BambaForCausalLM` checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Literal

LayerType = Literal["mamba", "attention"]

# The Hugging Face architectures this runtime loads, and the family each one maps to.
SUPPORTED_ARCHITECTURES = {"Mamba2ForCausalLM": "mamba2", "BambaForCausalLM": "bamba"}


class ConfigError(ValueError):
    """A config.json this runtime cannot serve; `str()` is one line."""


@dataclass
class Mamba2Config:
    """Sizes of a Mamba2 model, or of a Bamba-style hybrid when `layer_types` holds "attention" entries.

    family "mamba2": each layer is norm -> Mamba2 mixer -> residual (state-spaces/mamba2-*, Mamba-Codestral).
    family "bamba": each layer is norm -> (Mamba2 mixer | attention) -> residual -> norm -> SwiGLU MLP -> residual.
    """

    family: Literal["mamba2", "bamba"] = "mamba2"
    vocab_size: int = 50288
    hidden_size: int = 768
    n_layers: int = 24
    # One entry per layer; None means all "mamba".
    layer_types: list[LayerType] | None = None
    # Mamba2 mixer
    state_size: int = 128
    expand: int = 2
    head_dim: int = 64
    n_groups: int = 1
    conv_kernel: int = 4
    chunk_size: int = 256
    use_bias: bool = False
    use_conv_bias: bool = True
    time_step_limit: tuple[float, float] = (0.0, math.inf)
    norm_eps: float = 1e-5
    # Mamba2 keeps the residual stream in fp32 even when the weights are bf16 (as the reference implementation).
    residual_in_fp32: bool = True
    tie_embeddings: bool = True
    # Attention layers (hybrid only): Llama-style GQA with rotary embedding on the first `partial_rotary_factor`
    # of each head.
    n_attention_heads: int = 0
    n_kv_heads: int = 0
    attention_head_dim: int = 0
    attention_bias: bool = False
    rope_theta: float = 10000.0
    partial_rotary_factor: float = 1.0
    max_position_embeddings: int = 4096
    # SwiGLU MLP after every mixer (hybrid only); 0 means no MLP.
    mlp_intermediate_size: int = 0
    mlp_bias: bool = False
    eos_token_ids: list[int] = field(default_factory=list)

    # Derived in __post_init__.
    d_inner: int = field(init=False)
    n_heads: int = field(init=False)
    conv_dim: int = field(init=False)
    in_proj_size: int = field(init=False)
    rotary_dim: int = field(init=False)

    def __post_init__(self) -> None:
        if self.layer_types is None:
            self.layer_types = ["mamba"] * self.n_layers
        self.layer_types = list(self.layer_types)
        if len(self.layer_types) != self.n_layers:
            raise ConfigError(f"layer_types has {len(self.layer_types)} entries for {self.n_layers} layers")
        unknown = sorted(set(self.layer_types) - {"mamba", "attention"})
        if unknown:
            raise ConfigError(f"unknown layer types {unknown}: expected 'mamba' or 'attention'")
        self.time_step_limit = (float(self.time_step_limit[0]), float(self.time_step_limit[1]))
        self.d_inner = self.expand * self.hidden_size
        if self.d_inner % self.head_dim:
            raise ConfigError(f"expand * hidden_size = {self.d_inner} is not a multiple of head_dim {self.head_dim}")
        self.n_heads = self.d_inner // self.head_dim
        if self.n_heads % self.n_groups:
            raise ConfigError(f"{self.n_heads} SSM heads do not split into {self.n_groups} groups")
        self.conv_dim = self.d_inner + 2 * self.n_groups * self.state_size
        # in_proj packs [z (d_inner), xBC (conv_dim), dt (n_heads)].
        self.in_proj_size = self.d_inner + self.conv_dim + self.n_heads
        if self.has_attention:
            if not self.n_attention_heads:
                raise ConfigError("a hybrid with attention layers needs n_attention_heads")
            self.n_kv_heads = self.n_kv_heads or self.n_attention_heads
            self.attention_head_dim = self.attention_head_dim or self.hidden_size // self.n_attention_heads
            if self.n_attention_heads % self.n_kv_heads:
                raise ConfigError(f"{self.n_attention_heads} attention heads are not a multiple of {self.n_kv_heads}")
        self.rotary_dim = int(self.attention_head_dim * self.partial_rotary_factor)

    @property
    def has_attention(self) -> bool:
        return "attention" in self.layer_types

    @property
    def mamba_layers(self) -> list[int]:
        return [i for i, kind in enumerate(self.layer_types) if kind == "mamba"]

    @property
    def attention_layers(self) -> list[int]:
        return [i for i, kind in enumerate(self.layer_types) if kind == "attention"]

    def n_params(self) -> int:
        """Parameter count (the embedding counted once when tied): for rooflines and the UI."""
        mixer = (self.hidden_size * self.in_proj_size + self.conv_dim * (self.conv_kernel + 1)
                 + 3 * self.n_heads + self.d_inner + self.d_inner * self.hidden_size)
        attention = self.hidden_size * (self.n_attention_heads + 2 * self.n_kv_heads) * self.attention_head_dim \
            + self.n_attention_heads * self.attention_head_dim * self.hidden_size
        mlp = 3 * self.hidden_size * self.mlp_intermediate_size
        norms = self.hidden_size * (2 if self.family == "bamba" else 1)
        layers = sum(mixer if kind == "mamba" else attention for kind in self.layer_types)
        layers += self.n_layers * (mlp + norms)
        embeddings = self.vocab_size * self.hidden_size * (1 if self.tie_embeddings else 2)
        return layers + embeddings + self.hidden_size

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> Mamba2Config:
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}: expected one of {sorted(PRESETS)}")
        return replace(PRESETS[name], **overrides)

    @classmethod
    def from_hf_config(cls, hf: dict[str, Any]) -> Mamba2Config:
        """Read a Hugging Face config.json (as a dict) of a supported architecture; `ConfigError` otherwise."""
        architectures = hf.get("architectures") or []
        model_type = hf.get("model_type")
        family = next((SUPPORTED_ARCHITECTURES[a] for a in architectures if a in SUPPORTED_ARCHITECTURES), None)
        family = family or {"mamba2": "mamba2", "bamba": "bamba"}.get(model_type)
        if family is None:
            raise ConfigError(
                f"architecture {architectures or model_type!r} is not served by the native runtime "
                f"(it serves {sorted(SUPPORTED_ARCHITECTURES)})"
            )
        eos = hf.get("eos_token_id")
        eos_ids = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
        limit = tuple(_json_float(v) for v in hf.get("time_step_limit") or (0.0, math.inf))
        if hf.get("hidden_act", "silu") != "silu":
            raise ConfigError(f"hidden_act {hf['hidden_act']!r} is not supported (only 'silu')")
        if family == "mamba2":
            hidden = hf["hidden_size"]
            expand = hf.get("expand", 2)
            head_dim = hf.get("head_dim", 64)
            if "num_heads" in hf and hf["num_heads"] * head_dim != expand * hidden:
                raise ConfigError(f"num_heads * head_dim != expand * hidden_size in {hf.get('_name_or_path', '')}")
            return cls(
                family="mamba2", vocab_size=hf["vocab_size"], hidden_size=hidden, n_layers=hf["num_hidden_layers"],
                state_size=hf.get("state_size", 128), expand=expand, head_dim=head_dim,
                n_groups=hf.get("n_groups", 8), conv_kernel=hf.get("conv_kernel", 4),
                chunk_size=hf.get("chunk_size", 256), use_bias=hf.get("use_bias", False),
                use_conv_bias=hf.get("use_conv_bias", True), time_step_limit=limit,
                norm_eps=hf.get("layer_norm_epsilon", 1e-5), residual_in_fp32=hf.get("residual_in_fp32", True),
                tie_embeddings=hf.get("tie_word_embeddings", False), eos_token_ids=eos_ids,
                max_position_embeddings=hf.get("max_position_embeddings", 1 << 20),
            )
        rope = hf.get("rope_parameters") or {}
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type != "default":
            raise ConfigError(f"rope_type {rope_type!r} is not supported by the native runtime (only 'default')")
        n_layers = hf["num_hidden_layers"]
        attention_at = set(hf.get("attn_layer_indices") or [])
        hidden = hf["hidden_size"]
        expand = hf.get("mamba_expand", 2)
        n_mamba_heads = hf.get("mamba_n_heads", 128)
        head_dim = hf.get("mamba_d_head", "auto")
        head_dim = expand * hidden // n_mamba_heads if head_dim == "auto" else head_dim
        n_attention_heads = hf["num_attention_heads"]
        return cls(
            family="bamba", vocab_size=hf["vocab_size"], hidden_size=hidden, n_layers=n_layers,
            layer_types=["attention" if i in attention_at else "mamba" for i in range(n_layers)],
            state_size=hf.get("mamba_d_state", 256), expand=expand, head_dim=head_dim,
            n_groups=hf.get("mamba_n_groups", 1), conv_kernel=hf.get("mamba_d_conv", 4),
            chunk_size=hf.get("mamba_chunk_size", 256), use_bias=hf.get("mamba_proj_bias", False),
            use_conv_bias=hf.get("mamba_conv_bias", True), time_step_limit=limit,
            norm_eps=hf.get("rms_norm_eps", 1e-5), residual_in_fp32=False,
            tie_embeddings=hf.get("tie_word_embeddings", False),
            n_attention_heads=n_attention_heads, n_kv_heads=hf.get("num_key_value_heads") or n_attention_heads,
            attention_head_dim=hf.get("head_dim") or hidden // n_attention_heads,
            attention_bias=hf.get("attention_bias", False),
            rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
            # Bamba always rotates half of each head (transformers hard-codes 0.5 for it).
            partial_rotary_factor=float(rope.get("partial_rotary_factor", 0.5)),
            max_position_embeddings=hf.get("max_position_embeddings", 262144),
            mlp_intermediate_size=hf["intermediate_size"], mlp_bias=hf.get("mlp_bias", False),
            eos_token_ids=eos_ids,
        )


def _json_float(value: Any) -> float:
    # transformers 5 writes non-finite floats in config.json as {"__float__": "Infinity"}.
    if isinstance(value, dict) and "__float__" in value:
        return float(value["__float__"])
    return float(value)


def _mamba2(hidden: int, layers: int, **kw: Any) -> Mamba2Config:
    return Mamba2Config(family="mamba2", vocab_size=50288, hidden_size=hidden, n_layers=layers, state_size=128,
                        head_dim=64, n_groups=1, tie_embeddings=True, eos_token_ids=[0], **kw)


def _bamba_9b() -> Mamba2Config:
    return Mamba2Config(
        family="bamba", vocab_size=128256, hidden_size=4096, n_layers=32,
        layer_types=["attention" if i in (9, 18, 27) else "mamba" for i in range(32)],
        state_size=128, expand=2, head_dim=64, n_groups=1, residual_in_fp32=False, tie_embeddings=False,
        n_attention_heads=32, n_kv_heads=8, partial_rotary_factor=0.5, max_position_embeddings=262144,
        mlp_intermediate_size=14336, eos_token_ids=[128001],
    )


# Real shapes of the public checkpoints (weights come from the checkpoint; these serve benchmarks and tests).
PRESETS: dict[str, Mamba2Config] = {
    "mamba2-130m": _mamba2(768, 24),
    "mamba2-370m": _mamba2(1024, 48),
    "mamba2-780m": _mamba2(1536, 48),
    "mamba2-1.3b": _mamba2(2048, 48),
    "mamba2-2.7b": _mamba2(2560, 64),
    "mamba-codestral-7b": Mamba2Config(family="mamba2", vocab_size=32768, hidden_size=4096, n_layers=64,
                                       state_size=128, head_dim=64, n_groups=8, tie_embeddings=False,
                                       eos_token_ids=[2]),
    "bamba-9b": _bamba_9b(),
}
