"""Random-weight Hugging Face checkpoints of the architectures the native runtime serves (tests and benchmarks).

`save_random_checkpoint` builds a transformers `Mamba2ForCausalLM` or `BambaForCausalLM` with random weights and
writes it with `save_pretrained` (safetensors) plus a byte-level tokenizer, so the native loader, the transformers
backend and the tests all read the very same files. Nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# Tiny configs in transformers' own terms; any field can be overridden. Sizes are odd on purpose (3 layers, 2
# groups, a chunk smaller than the prompt) so that indexing and chunk-boundary mistakes show.
TINY_HF_CONFIGS: dict[str, dict[str, Any]] = {
    "mamba2": dict(vocab_size=320, hidden_size=64, num_hidden_layers=3, state_size=16, expand=2, head_dim=16,
                   num_heads=8, n_groups=2, conv_kernel=4, chunk_size=16, tie_word_embeddings=False,
                   bos_token_id=0, eos_token_id=0, pad_token_id=0),
    "bamba": dict(vocab_size=320, hidden_size=64, num_hidden_layers=4, attn_layer_indices=[1, 3],
                  num_attention_heads=4, num_key_value_heads=2, intermediate_size=96, mamba_n_heads=8,
                  mamba_d_head=16, mamba_n_groups=2, mamba_d_state=16, mamba_d_conv=4, mamba_chunk_size=16,
                  max_position_embeddings=4096, bos_token_id=0, eos_token_id=0, pad_token_id=0),
}


def byte_tokenizer():
    """A byte-level BPE tokenizer with no merges (ids 0..255 are bytes 0..255) as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    byte_to_unicode = sorted(alphabet, key=lambda ch: _unicode_to_byte(ch))
    vocab = {ch: i for i, ch in enumerate(byte_to_unicode)}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=byte_to_unicode[0])


def _unicode_to_byte(ch: str) -> int:
    # GPT-2's byte-to-unicode map: printable bytes map to themselves, the rest to 256 + n in order.
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    code = ord(ch)
    if code in printable:
        return code
    others = [b for b in range(256) if b not in printable]
    return others[code - 256]


def save_random_checkpoint(family: str, folder: str | Path, seed: int = 0, dtype=None, tokenizer: bool = True,
                           **overrides: Any) -> Path:
    """Write a random `family` ("mamba2" or "bamba") checkpoint to `folder`; returns the folder."""
    import torch
    from transformers import BambaConfig, BambaForCausalLM, Mamba2Config, Mamba2ForCausalLM

    if family not in TINY_HF_CONFIGS:
        raise ValueError(f"unknown family {family!r}: expected one of {sorted(TINY_HF_CONFIGS)}")
    config_cls, model_cls = {"mamba2": (Mamba2Config, Mamba2ForCausalLM),
                             "bamba": (BambaConfig, BambaForCausalLM)}[family]
    config = config_cls(**(TINY_HF_CONFIGS[family] | overrides))
    torch.manual_seed(seed)
    model = model_cls(config)
    if dtype is not None:
        model = model.to(dtype)
    folder = Path(folder)
    model.save_pretrained(str(folder))
    if tokenizer:
        byte_tokenizer().save_pretrained(str(folder))
    return folder


def hf_config(family: str, **overrides: Any):
    """The transformers config object of a tiny `family` model (for building models at other shapes)."""
    from transformers import BambaConfig, Mamba2Config

    return {"mamba2": Mamba2Config, "bamba": BambaConfig}[family](**(TINY_HF_CONFIGS[family] | overrides))
