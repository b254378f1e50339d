"""A backend's state as safetensors bytes (never pickle): the storage dtypes, and the header both backends write.

Each backend decides which tensors its state is made of; this module casts them for storage, writes them with
the format, fingerprint and length every snapshot carries, and refuses bytes of another format or model on reading.
"""

from __future__ import annotations

import json

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

STORAGE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def storage_dtype(name: str) -> torch.dtype:
    """The torch dtype a snapshot stores floating-point tensors in, by its setting name ("fp32", "bf16")."""
    if name not in STORAGE_DTYPES:
        raise ValueError(f"state dtype must be one of {sorted(STORAGE_DTYPES)}, got {name!r}")
    return STORAGE_DTYPES[name]


def pack(tensors: dict[str, torch.Tensor], *, format: str, fingerprint: str, length: int, dtype: str,
         extra: dict[str, str] | None = None) -> bytes:
    """`tensors` cast to `dtype` (floating-point ones only) on the CPU, with the header `unpack` checks."""
    store = storage_dtype(dtype)
    stored = {key: (t.to(store) if t.is_floating_point() else t).detach().to("cpu").contiguous()
              for key, t in tensors.items()}
    meta = {"format": format, "fingerprint": fingerprint, "length": str(length), **(extra or {})}
    return st_save(stored, metadata=meta)


def unpack(data: bytes, *, format: str, fingerprint: str, kind: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and header of bytes `pack` wrote; a ValueError naming `kind` (what the backend's state is) when
    they are of another format, or were saved by another model or dtype."""
    meta = metadata(data)
    if meta.get("format") != format:
        raise ValueError(f"not a {kind} state (format {meta.get('format')!r})")
    if meta.get("fingerprint") != fingerprint:
        raise ValueError("this state was saved by another model or dtype: it cannot be restored here")
    return st_load(data), meta


def metadata(data: bytes) -> dict[str, str]:
    """The header of safetensors bytes, without reading the tensors."""
    # safetensors layout: 8-byte little-endian header size, then a JSON header whose "__metadata__" is ours.
    if len(data) < 8:
        raise ValueError("state bytes are truncated")
    size = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + size]).get("__metadata__", {})
