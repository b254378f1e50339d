"""The native runtime for Mamba2 and Bamba-style hybrids: config, model, checkpoint loader and backend.

Serves Hugging Face `Mamba2ForCausalLM` and `BambaForCausalLM` safetensors folders through our own kernels
(kernels.ssd, kernels.conv1d, kernels.gated_norm), with the decode step captured in a CUDA graph on GPU.
Imports `kernels/`; of models/, only `models.errors` and (for sampling on the device) `models.sampling`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from models.errors import ModelLoadError
from models.mamba2.backend import DEFAULT_MAX_SEQ_LEN, NativeBackend, checkpoint_identity
from models.mamba2.config import PRESETS, SUPPORTED_ARCHITECTURES, ConfigError, Mamba2Config
from models.mamba2.loader import CheckpointError, load_model, read_config
from models.mamba2.model import Model, State, build_model

__all__ = [
    "PRESETS", "SUPPORTED_ARCHITECTURES", "CheckpointError", "ConfigError", "Mamba2Config", "Model",
    "NativeBackend", "State", "build_model", "load_model", "load_native_backend", "read_config", "supports",
]


def supports(folder: str | Path) -> bool:
    """True when `folder` holds a checkpoint of an architecture the native runtime serves."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        return False
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    architectures = config.get("architectures") or []
    return any(a in SUPPORTED_ARCHITECTURES for a in architectures) and not config.get("auto_map")


# Loading needs room beyond the weights (activations, the state, the allocator's slack).
MEMORY_HEADROOM = 1.2


def _check_fits(config: Mamba2Config, device: torch.device, dtype: torch.dtype, folder: Path) -> None:
    need = config.n_params() * torch.finfo(dtype).bits // 8 * MEMORY_HEADROOM
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
    else:
        import psutil

        free = psutil.virtual_memory().available
    if need > free:
        where = "GPU" if device.type == "cuda" else "RAM"
        raise ModelLoadError(f"{folder.name} needs about {need / 2**30:.1f} GiB of {where} but only "
                             f"{free / 2**30:.1f} GiB is free: pick a smaller model or dtype (--dtype bfloat16), "
                             "or serve it remotely and pass its URL")


def load_native_backend(
    folder: str | Path,
    *,
    name: str | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    max_seq_len: int = DEFAULT_MAX_SEQ_LEN,
    cuda_graph: bool | None = None,
    identity: str | None = None,
) -> NativeBackend:
    """Load a Mamba2 / Bamba safetensors folder (weights and tokenizer); one-line `ModelLoadError` on failure."""
    folder = Path(folder)
    try:
        _check_fits(read_config(folder), torch.device(device), dtype, folder)
        model = load_model(folder, device=device, dtype=dtype)
    except (ConfigError, CheckpointError) as exc:
        raise ModelLoadError(f"Could not load {folder} natively: {exc}") from None
    except torch.OutOfMemoryError:
        raise ModelLoadError(f"{folder} does not fit in {device} memory: pick a smaller model or dtype "
                             "(--dtype bfloat16), or serve it remotely and pass its URL") from None
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelLoadError(f"{folder} has no usable tokenizer ({first}): copy the tokenizer files into it") from None
    return NativeBackend(model, tokenizer, name=name or folder.name, identity=identity or checkpoint_identity(folder),
                         max_seq_len=max_seq_len, cuda_graph=cuda_graph)
