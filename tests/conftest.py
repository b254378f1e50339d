"""Shared test set-up: offline Hugging Face, Triton's interpreter when there is no GPU, a data dir per test, the real
MiniLM embedder (loaded once per session), the real default LM, and one torch thread for the modules that ask."""

import os

# Before anything imports huggingface_hub or triton: they read these at import time.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
if "TRITON_INTERPRET" not in os.environ:
    import torch

    if not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"

from pathlib import Path

import pytest


def require_or_skip(available: bool, reason: str) -> None:
    """Skip a test whose real dependency is absent, except in CI, where it must run: there it fails instead."""
    if available:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI must run this test; tests/system_deps.sh should have installed it)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module (`pytestmark = pytest.mark.usefixtures("one_torch_thread")`): batch-1 decode of
    tiny models is latency-bound, and extra OpenMP threads only spin against other processes."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def embedder():
    """The real MiniLM embedder (the app's default), loaded once per test session."""
    from app.offline import default_embedder_path
    from memory.retrieval import Embedder

    return Embedder(default_embedder_path())


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "longhand-data"
    path.mkdir()
    return path


@pytest.fixture(scope="session")
def default_generator(tmp_path_factory):
    """The real default LM (SmolLM2-135M-Instruct from the GGUF), loaded once per test session on the CPU.

    The GGUF is dequantized into a safetensors cache in a session temp dir (owner: runtime, models/).
    """
    from app.offline import DEFAULT_LM_NAME, default_lm_path
    from models.service import ModelSpec, load_generator

    source = ModelSpec("gguf", str(default_lm_path()), DEFAULT_LM_NAME)
    # The transformers path, as the tests written for it expect (its folder is what `transformers serve` serves);
    # tests/models/test_llamacpp_backend.py runs the same GGUF through llama.cpp, the app's default on a CPU.
    return load_generator(source, device="cpu", dtype="float32", cache_dir=tmp_path_factory.mktemp("lm-cache"),
                          gguf_backend="transformers")
