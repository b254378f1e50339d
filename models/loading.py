"""Loading local weights into a `TransformersBackend`: device and dtype choice, safety checks, the GGUF cache.

Only safetensors folders and GGUF files load (pickled checkpoints run code when loaded). A GGUF is dequantized
once (slow: ~17 s for the default model) and saved as a safetensors folder under the cache dir; later loads read
that folder. Every failure is a `ModelLoadError` with one line saying what to do.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from models.errors import ModelLoadError
from models.hf_backend import TransformersBackend

DTYPE_NAMES = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16,
}
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
# Loading needs room beyond the weights themselves (activations, the tokenizer, the allocator's slack).
MEMORY_HEADROOM = 1.2
COMPLETE_MARKER = "longhand-converted.json"


@dataclass
class LoadReport:
    """How a load went: `bench/runtime.py` and the UI's status line read it."""

    source_path: str
    loaded_from: str
    converted: bool = False  # True when this load dequantized a GGUF and wrote the safetensors cache
    seconds: float = 0.0
    backend: str = "transformers"  # "transformers", "llama.cpp" or "native": what runs the model
    notice: str = ""  # one line the UI shows when the load fell back (llama.cpp missing: transformers instead)
    note: str = ""  # one line on what was loaded instead of the file itself (llama.cpp's Q8_0 copy of a Q4_1 GGUF)


def resolve_device(device: str) -> torch.device:
    device = (device or "auto").lower()
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ModelLoadError(
                "CUDA was asked for (--device cuda) but torch sees no GPU: pass --device cpu, or install a CUDA "
                "build of torch and check the driver (nvidia-smi)."
            )
        return torch.device(device)
    if device == "cpu":
        return torch.device("cpu")
    raise ModelLoadError(f"Unknown device {device!r}: use auto, cpu or cuda.")


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    dtype = (dtype or "auto").lower()
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        # CPUs without bf16 units run fp32 fastest, and fp32 keeps the dequantized GGUF weights exact.
        return torch.float32
    if dtype not in DTYPE_NAMES:
        raise ModelLoadError(f"Unknown dtype {dtype!r}: use auto, float32, bfloat16 or float16.")
    return DTYPE_NAMES[dtype]


def _available_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    import psutil

    return int(psutil.virtual_memory().available)


def _check_fits(param_count: int, element_size: int, device: torch.device, what: str) -> None:
    need = int(param_count * element_size * MEMORY_HEADROOM)
    have = _available_bytes(device)
    if need > have:
        where = "GPU" if device.type == "cuda" else "RAM"
        raise ModelLoadError(
            f"{what} needs about {need / 2**30:.1f} GiB of {where} but only {have / 2**30:.1f} GiB is free: "
            "pick a smaller model or a smaller dtype (--dtype bfloat16), or serve it remotely and pass its URL."
        )


def _safetensors_param_count(folder: Path) -> int:
    total = 0
    for file in folder.glob("*.safetensors"):
        with open(file, "rb") as handle:
            size = int.from_bytes(handle.read(8), "little")
            header = json.loads(handle.read(size))
        for key, entry in header.items():
            if key != "__metadata__":
                count = 1
                for dim in entry["shape"]:
                    count *= dim
                total += count
    return total


def _check_folder(folder: Path, trust_remote_code: bool) -> dict:
    if not folder.is_dir():
        raise ModelLoadError(f"No model folder at {folder}: pass a folder with config.json and .safetensors weights.")
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ModelLoadError(f"{folder} has no config.json: point --model at a Hugging Face model folder.")
    if not any(folder.glob("*.safetensors")):
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
        hint = f" (found {', '.join(pickles)}: pickled weights are refused, convert them to safetensors)" if pickles \
            else ""
        raise ModelLoadError(f"{folder} has no .safetensors weights{hint}.")
    config = json.loads(config_path.read_text())
    if config.get("auto_map") and not trust_remote_code:
        raise ModelLoadError(
            f"{folder} needs its own Python code (auto_map in config.json): pass --trust-remote-code only if you "
            "trust where it came from."
        )
    if not config.get("auto_map"):
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        model_type = config.get("model_type")
        if model_type not in CONFIG_MAPPING_NAMES:
            raise ModelLoadError(
                f"{folder}: architecture {model_type!r} is unknown to transformers "
                f"{_transformers_version()}: upgrade transformers or pick a supported model."
            )
        if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
            raise ModelLoadError(
                f"{folder}: {model_type!r} is not a text-generation (causal LM) architecture: pick a causal LM."
            )
    return config


def _transformers_version() -> str:
    import transformers

    return transformers.__version__


def _identity(path: Path) -> str:
    files = [path] if path.is_file() else sorted(path.glob("*.safetensors"))
    parts = [f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files]
    return f"{path.resolve()}|{'|'.join(parts)}"


def load_folder_backend(
    folder: Path, *, name: str, device: torch.device, dtype: torch.dtype, trust_remote_code: bool = False,
    identity: str | None = None,
) -> TransformersBackend:
    _check_folder(folder, trust_remote_code)
    _check_fits(_safetensors_param_count(folder), torch.finfo(dtype).bits // 8, device, name)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # Before the model is built: transformers binds the Mamba2-family fast path when the modeling module loads.
    _install_kernels(device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            str(folder), dtype=dtype, trust_remote_code=trust_remote_code, use_safetensors=True,
        )
    except Exception as exc:  # transformers and safetensors raise many types; the user needs one line
        raise ModelLoadError(f"Could not load {folder} ({type(exc).__name__}: {_first_line(exc)}).") from None
    model.to(device)
    return TransformersBackend(model, tokenizer, name=name, identity=identity or _identity(folder))


def _install_kernels(device: torch.device) -> None:
    # On CUDA, Mamba2-family layers run our Triton scan/conv through transformers' kernel hook.
    if device.type != "cuda":
        return
    try:
        from kernels import hf_provider
    except ImportError:
        return
    hf_provider.install()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def _gguf_check(path: Path, device: torch.device) -> None:
    if not path.is_file():
        raise ModelLoadError(f"No GGUF file at {path}: pass an existing .gguf file or a model folder.")
    if path.suffix != ".gguf":
        raise ModelLoadError(f"{path} is not a .gguf file: pass a .gguf file or a folder with .safetensors weights.")
    from gguf import GGUFReader
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    try:
        reader = GGUFReader(str(path))
    except (ValueError, OSError) as exc:
        raise ModelLoadError(f"{path} is not a readable GGUF file ({_first_line(exc)}).") from None
    field = reader.fields.get("general.architecture")
    architecture = bytes(field.parts[field.data[0]]).decode() if field is not None else "unknown"
    if architecture not in GGUF_SUPPORTED_ARCHITECTURES:
        raise ModelLoadError(
            f"{path.name}: GGUF architecture {architecture!r} cannot be read by transformers "
            f"{_transformers_version()}: convert the model to a safetensors folder and pass that instead."
        )
    # Dequantizing keeps fp32 copies of every weight.
    _check_fits(sum(int(t.n_elements) for t in reader.tensors), 4, device, path.name)


def converted_dir(gguf_path: Path, cache_dir: Path) -> Path:
    key = hashlib.sha256(_identity(gguf_path).encode()).hexdigest()[:12]
    return cache_dir / f"{gguf_path.stem}-{key}"


@contextmanager
def _gguf_parsed_once() -> Iterator[None]:
    """While converting, parse the GGUF file once and build each tensor-name map once.

    transformers re-reads the file for the tokenizer, the config and the weights (the metadata holds ~50k vocabulary
    strings, parsed in Python) and rebuilds gguf's name map once per submodule: about half of the conversion's time.
    Both are read-only results, so sharing them is safe; the originals are put back afterwards.
    """
    import gguf

    real_reader, real_name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    readers: dict[tuple[str, str], object] = {}

    def shared_reader(path, mode="r"):
        key = (str(path), mode)
        if key not in readers:
            readers[key] = real_reader(path, mode)
        return readers[key]

    gguf.GGUFReader, gguf.get_tensor_name_map = shared_reader, functools.lru_cache(maxsize=None)(real_name_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = real_reader, real_name_map


def convert_gguf(gguf_path: Path, target: Path) -> None:
    """Dequantize `gguf_path` into a safetensors folder at `target` (written to a temp dir, then renamed)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        with _gguf_parsed_once():
            tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
            model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    except Exception as exc:  # the GGUF reader and transformers raise many types; the user needs one line
        raise ModelLoadError(f"Could not read {gguf_path.name} ({type(exc).__name__}: {_first_line(exc)}).") \
            from None
    # The weights are dequantized now: the saved folder must not claim GGUF quantization.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        model.save_pretrained(str(scratch), safe_serialization=True)
        tokenizer.save_pretrained(str(scratch))
        (scratch / COMPLETE_MARKER).write_text(json.dumps({"source": str(gguf_path), "identity": _identity(gguf_path)}))
        if target.exists():
            shutil.rmtree(target)
        os.replace(scratch, target)
    finally:
        if scratch.exists():
            shutil.rmtree(scratch, ignore_errors=True)


def load_gguf_backend(
    gguf_path: Path, *, name: str, device: torch.device, dtype: torch.dtype, cache_dir: Path,
    report: LoadReport | None = None,
) -> TransformersBackend:
    started = time.perf_counter()
    folder = converted_dir(gguf_path, cache_dir)
    converted = False
    if not (folder / COMPLETE_MARKER).is_file():
        _gguf_check(gguf_path, device)
        convert_gguf(gguf_path, folder)
        converted = True
    backend = load_folder_backend(folder, name=name, device=device, dtype=dtype, identity=_identity(gguf_path))
    if report is not None:
        report.source_path, report.loaded_from = str(gguf_path), str(folder)
        report.converted, report.seconds = converted, time.perf_counter() - started
    return backend
