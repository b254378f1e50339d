"""Loading Hugging Face checkpoints (safetensors only) into the native Mamba2 / hybrid `Model`.

Formats: `Mamba2ForCausalLM` (state-spaces/mamba2-* converted, Mamba-Codestral) and `BambaForCausalLM`
(ibm-ai-platform/Bamba-9B). Every key name and shape is checked before anything is copied; a `CheckpointError` says
which key is wrong.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from models.mamba2.config import ConfigError, Mamba2Config
from models.mamba2.model import Model, build_model


class CheckpointError(ValueError):
    """A checkpoint that does not match its config; `str()` is one line naming the offending key."""


def _hf_names(config: Mamba2Config) -> dict[str, str]:
    """Hugging Face key -> our parameter name, for every parameter the config implies."""
    mamba2 = config.family == "mamba2"
    prefix = "backbone." if mamba2 else "model."
    names = {
        f"{prefix}{'embeddings' if mamba2 else 'embed_tokens'}.weight": "embedding.weight",
        f"{prefix}{'norm_f' if mamba2 else 'final_layernorm'}.weight": "norm_f.weight",
    }
    if not config.tie_embeddings:
        names["lm_head.weight"] = "lm_head.weight"
    for i, kind in enumerate(config.layer_types):
        hf_layer, ours = f"{prefix}layers.{i}.", f"layers.{i}."
        names[hf_layer + ("norm.weight" if mamba2 else "input_layernorm.weight")] = ours + "norm.weight"
        if kind == "mamba":
            hf_mixer = hf_layer + ("mixer." if mamba2 else "mamba.")
            mixer = ours + "mixer."
            names[hf_mixer + "in_proj.weight"] = mixer + "in_proj.weight"
            names[hf_mixer + "out_proj.weight"] = mixer + "out_proj.weight"
            if config.use_bias:
                names[hf_mixer + "in_proj.bias"] = mixer + "in_proj.bias"
                names[hf_mixer + "out_proj.bias"] = mixer + "out_proj.bias"
            names[hf_mixer + "conv1d.weight"] = mixer + "conv_weight"
            if config.use_conv_bias:
                names[hf_mixer + "conv1d.bias"] = mixer + "conv_bias"
            for leaf in ("dt_bias", "A_log", "D"):
                names[hf_mixer + leaf] = mixer + leaf
            names[hf_mixer + "norm.weight"] = mixer + "norm_weight"
        else:
            for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
                names[f"{hf_layer}self_attn.{proj}.weight"] = f"{ours}mixer.{proj}.weight"
                if config.attention_bias:
                    names[f"{hf_layer}self_attn.{proj}.bias"] = f"{ours}mixer.{proj}.bias"
        if config.mlp_intermediate_size:
            names[hf_layer + "pre_ff_layernorm.weight"] = ours + "mlp_norm.weight"
            for proj in ("gate_proj", "up_proj", "down_proj"):
                names[f"{hf_layer}feed_forward.{proj}.weight"] = f"{ours}mlp.{proj}.weight"
                if config.mlp_bias:
                    names[f"{hf_layer}feed_forward.{proj}.bias"] = f"{ours}mlp.{proj}.bias"
    return names


def _aliases(key: str) -> str:
    # Original mamba_ssm exports name the embedding `embedding`; transformers renames it on load, so do we.
    return key.replace("backbone.embedding.", "backbone.embeddings.")


def read_config(folder: str | Path) -> Mamba2Config:
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise ConfigError(f"{folder} has no config.json")
    try:
        hf = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    return Mamba2Config.from_hf_config(hf)


def _safetensors_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [folder / shard for shard in shards]
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{folder} has no .safetensors weights")
    return files


def load_state_dict_into(model: Model, files: list[Path]) -> None:
    """Check every key and shape of the checkpoint against `model`, then copy (casting to the model's dtypes)."""
    expected = _hf_names(model.config)
    params = dict(model.named_parameters())
    found: dict[str, tuple[Path, str]] = {}
    for file in files:
        with safe_open(str(file), framework="pt") as reader:
            for key in reader.keys():
                name = _aliases(key)
                if name not in expected:
                    if name == "lm_head.weight" and model.config.tie_embeddings:
                        continue  # a tied checkpoint may still store the head: it equals the embedding
                    raise CheckpointError(f"unexpected key {key!r} in {file.name}: the config does not imply it")
                shape = tuple(reader.get_slice(key).get_shape())
                want = tuple(params[expected[name]].shape)
                if shape != want:
                    raise CheckpointError(f"key {key!r} in {file.name} has shape {list(shape)}, "
                                          f"expected {list(want)} from config.json")
                found[name] = (file, key)
    missing = [key for key in expected if key not in found]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(f"missing key {missing[0]!r}{more} in the checkpoint")
    by_file: dict[Path, list[tuple[str, str]]] = {}
    for name, (file, key) in found.items():
        by_file.setdefault(file, []).append((name, key))
    with torch.no_grad():
        for file, pairs in by_file.items():
            with safe_open(str(file), framework="pt") as reader:
                for name, key in pairs:
                    param = params[expected[name]]
                    param.copy_(reader.get_tensor(key).to(param.device, param.dtype))


def load_model(folder: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> Model:
    """Build the native model for a Hugging Face checkpoint folder and load its weights."""
    folder = Path(folder)
    config = read_config(folder)
    files = _safetensors_files(folder)
    model = build_model(config, device, dtype)
    load_state_dict_into(model, files)
    return model.reset_buffers_().eval()
