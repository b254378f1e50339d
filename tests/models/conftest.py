"""Tiny random Mamba2 and hybrid (Bamba) models behind the real TransformersBackend, and a byte-level tokenizer.

Random weights built in the test (no downloads); fp32 on the CPU so restored and from-scratch runs can be compared
token for token.
"""

from __future__ import annotations

import logging
import warnings

import pytest
import torch
from safetensors.torch import save as safetensors_save

from models.hf_backend import STATE_FORMAT, TransformersBackend

BYTE_VOCAB = 256
EOS_ID = 256  # one special token after the bytes; never produced by text


class ByteTokenizer:
    """UTF-8 bytes as tokens: a complete, lossless tokenizer small enough for tiny models."""

    eos_token_id = EOS_ID
    chat_template = None

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return bytes(i for i in ids if i < BYTE_VOCAB).decode("utf-8", errors="replace")


def _tiny_mamba2():
    from transformers import Mamba2Config, Mamba2ForCausalLM

    config = Mamba2Config(
        vocab_size=BYTE_VOCAB + 1, hidden_size=64, state_size=16, num_heads=8, head_dim=16, expand=2, n_groups=1,
        num_hidden_layers=2, conv_kernel=4, chunk_size=16, eos_token_id=EOS_ID, pad_token_id=0, bos_token_id=0,
    )
    torch.manual_seed(0)
    return Mamba2ForCausalLM(config).float().eval()


def _tiny_bamba():
    from transformers import BambaConfig, BambaForCausalLM

    config = BambaConfig(
        vocab_size=BYTE_VOCAB + 1, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, attn_layer_indices=[1], mamba_n_heads=8, mamba_d_head=16,
        mamba_n_groups=1, mamba_d_state=16, mamba_d_conv=4, mamba_expand=2, mamba_chunk_size=16,
        max_position_embeddings=4096, eos_token_id=EOS_ID, pad_token_id=0, bos_token_id=0,
    )
    torch.manual_seed(0)
    return BambaForCausalLM(config).float().eval()


@pytest.fixture(scope="session")
def tiny_mamba2() -> TransformersBackend:
    return TransformersBackend(_tiny_mamba2(), ByteTokenizer(), name="tiny-mamba2", identity="tiny-mamba2-seed0")


@pytest.fixture(scope="session")
def tiny_hybrid() -> TransformersBackend:
    return TransformersBackend(_tiny_bamba(), ByteTokenizer(), name="tiny-bamba", identity="tiny-bamba-seed0")


@pytest.fixture(params=["mamba2", "hybrid"])
def tiny_backend(request) -> TransformersBackend:
    return request.getfixturevalue("tiny_mamba2" if request.param == "mamba2" else "tiny_hybrid")


def empty_snapshot(backend, length: int) -> bytes:
    """The bytes the backend wrote before this port when transformers 5.24 left its cache empty."""
    meta = {"format": STATE_FORMAT, "fingerprint": backend.fingerprint, "length": str(length), "dtypes": "{}",
            "has_previous": "{}", "cumulative": "{}"}
    return safetensors_save({}, metadata=meta)


class DictSnapshotStore:
    """An in-memory SnapshotStore (memory.snapshots.FileSnapshotStore is the real one; it has its own tests and
    one round trip here)."""

    def __init__(self) -> None:
        self.items: dict[tuple[int, int, str], tuple[bytes, str]] = {}
        self.puts: list[int] = []

    def latest_at_or_before(self, novel_id, position, fingerprint):
        found = [p for (n, p, f) in self.items if n == novel_id and f == fingerprint and p <= position]
        if not found:
            return None
        best = max(found)
        return best, self.items[(novel_id, best, fingerprint)][0]

    def put(self, novel_id, position, fingerprint, data, dtype):
        self.items[(novel_id, position, fingerprint)] = (data, dtype)
        self.puts.append(position)

    def delete_after(self, novel_id, position, fingerprint=None):
        for key in [k for k in self.items if k[0] == novel_id and k[1] > position
                    and (fingerprint is None or k[2] == fingerprint)]:
            del self.items[key]

    def delete(self, novel_id, positions):
        for key in [k for k in self.items if k[0] == novel_id and k[1] in set(positions)]:
            del self.items[key]

    def list(self, novel_id, fingerprint):
        return sorted((p, len(d)) for (n, p, f), (d, _) in self.items.items() if n == novel_id and f == fingerprint)


@pytest.fixture
def snapshot_store() -> DictSnapshotStore:
    return DictSnapshotStore()


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def no_deprecations():
    """Fail the test on any deprecation transformers reports, as a FutureWarning (its `deprecate_kwarg`) or as a
    log line (its `warning_once`, whose once-per-process memory is cleared so every test can see it again)."""
    # transformers adds `warning_once` to Logger when it is imported; before that there is nothing to clear.
    warning_once = getattr(logging.Logger, "warning_once", None)
    if warning_once is not None:
        warning_once.cache_clear()
    records = _Records()
    transformers_logger = logging.getLogger("transformers")
    transformers_logger.addHandler(records)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("error", category=FutureWarning)
            warnings.filterwarnings("error", message=".*deprecat", category=DeprecationWarning)
            yield records
    finally:
        transformers_logger.removeHandler(records)
    deprecations = [message for message in records.messages if "deprecat" in message.lower()]
    assert deprecations == [], f"transformers reported deprecations: {deprecations}"


@pytest.fixture(autouse=True)
def every_model_test_on_one_thread(one_torch_thread):
    """tests/conftest.py's `one_torch_thread` for every test here: tiny models gain nothing from a second thread."""
