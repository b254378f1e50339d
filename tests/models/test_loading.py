"""Each way a model can fail to load gives one ModelLoadError line that says what to do."""

from __future__ import annotations

import json
import struct

import pytest
import torch

from models.errors import ModelLoadError
from models.loading import load_folder_backend, resolve_device, resolve_dtype
from models.service import ModelSpec, load_generator


def _load(kind, location, tmp_path, **kwargs):
    return load_generator(ModelSpec(kind, str(location), "test"), cache_dir=tmp_path / "cache", **kwargs)


def _one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message and message
    return message


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown when CUDA is absent")
def test_cuda_asked_but_absent(tmp_path):
    with pytest.raises(ModelLoadError) as info:
        resolve_device("cuda")
    assert "--device cpu" in _one_line(info)


def test_device_and_dtype_names():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    for bad in (lambda: resolve_device("tpu"), lambda: resolve_dtype("int3", torch.device("cpu"))):
        with pytest.raises(ModelLoadError):
            bad()


def test_missing_paths(tmp_path):
    with pytest.raises(ModelLoadError) as info:
        _load("folder", tmp_path / "nowhere", tmp_path)
    assert "nowhere" in _one_line(info)
    with pytest.raises(ModelLoadError) as info:
        _load("gguf", tmp_path / "missing.gguf", tmp_path)
    assert "missing.gguf" in _one_line(info)


def _folder(tmp_path, config: dict, weights: dict[str, bytes] | None = None):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    for name, data in (weights or {}).items():
        (folder / name).write_bytes(data)
    return folder


def _safetensors_header(shape) -> bytes:
    # A header that declares one huge tensor: the size check reads headers only, before any weight is touched.
    header = json.dumps({"w": {"dtype": "F32", "shape": shape, "data_offsets": [0, 0]}}).encode()
    return struct.pack("<Q", len(header)) + header


def test_pickled_weights_are_refused(tmp_path):
    folder = _folder(tmp_path, {"model_type": "llama"}, {"pytorch_model.bin": b"\x80\x04not loaded"})
    with pytest.raises(ModelLoadError) as info:
        _load("folder", folder, tmp_path)
    assert "pickled weights are refused" in _one_line(info)


def test_unsupported_architecture(tmp_path):
    folder = _folder(tmp_path, {"model_type": "no_such_architecture"}, {"model.safetensors": _safetensors_header([1])})
    with pytest.raises(ModelLoadError) as info:
        _load("folder", folder, tmp_path)
    assert "no_such_architecture" in _one_line(info)


def test_vision_architecture_is_not_a_text_generator(tmp_path):
    folder = _folder(tmp_path, {"model_type": "vit"}, {"model.safetensors": _safetensors_header([1])})
    with pytest.raises(ModelLoadError) as info:
        _load("folder", folder, tmp_path)
    assert "causal LM" in _one_line(info)


def test_remote_code_needs_the_flag(tmp_path):
    folder = _folder(tmp_path, {"model_type": "custom", "auto_map": {"AutoModelForCausalLM": "modeling.Custom"}},
                     {"model.safetensors": _safetensors_header([1])})
    with pytest.raises(ModelLoadError) as info:
        _load("folder", folder, tmp_path)
    assert "--trust-remote-code" in _one_line(info)


def test_model_too_big_for_memory(tmp_path):
    folder = _folder(tmp_path, {"model_type": "llama"}, {"model.safetensors": _safetensors_header([10**7, 10**6])})
    with pytest.raises(ModelLoadError) as info:
        load_folder_backend(folder, name="huge", device=torch.device("cpu"), dtype=torch.float32)
    message = _one_line(info)
    assert "GiB" in message and "smaller" in message


def test_not_a_gguf_file(tmp_path):
    fake = tmp_path / "weights.gguf"
    fake.write_bytes(b"definitely not gguf")
    with pytest.raises(ModelLoadError) as info:
        _load("gguf", fake, tmp_path)
    assert "GGUF" in _one_line(info)


def test_unknown_kind(tmp_path):
    with pytest.raises(ModelLoadError):
        _load("onnx", tmp_path, tmp_path)


def test_broken_weights_give_one_line(tmp_path):
    folder = _folder(tmp_path, {"model_type": "llama", "vocab_size": 8, "hidden_size": 8, "intermediate_size": 8,
                                "num_hidden_layers": 1, "num_attention_heads": 1},
                     {"model.safetensors": _safetensors_header([2, 2])})
    with pytest.raises(ModelLoadError) as info:
        load_folder_backend(folder, name="broken", device=torch.device("cpu"), dtype=torch.float32)
    assert "Could not load" in _one_line(info)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_a_safetensors_folder_loads_and_generates_in_each_dtype(default_generator, tmp_path, dtype):
    """A tiny random Llama saved with the default model's tokenizer: load from the folder in each dtype."""
    import shutil
    from pathlib import Path

    from transformers import LlamaConfig, LlamaForCausalLM

    from models.generate import GenerationInfo
    from models.sampling import SamplingParams

    folder = tmp_path / "tiny-llama"
    tokenizer_folder = Path(default_generator.load_report.loaded_from)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=49152, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                         eos_token_id=2, bos_token_id=1, tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json"):
        if (tokenizer_folder / name).is_file():
            shutil.copy(tokenizer_folder / name, folder / name)

    generator = _load("folder", folder, tmp_path, device="cpu", dtype=dtype)
    backend = generator.backend
    assert backend.dtype == getattr(torch, dtype) and not backend.fixed_size_state
    assert backend.context_window == 256
    info = GenerationInfo()
    text = generator.complete([{"role": "user", "content": "Hello"}], sampling=SamplingParams(seed=1),
                              max_new_tokens=4, info=info)
    assert len(info.new_token_ids) in range(1, 5) and isinstance(text, str)
    other = _load("folder", folder, tmp_path, device="cpu", dtype="float32" if dtype != "float32" else "bfloat16")
    assert other.backend.fingerprint != backend.fingerprint  # snapshots never cross dtypes
