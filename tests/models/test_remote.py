"""The remote backend against a real OpenAI-compatible server: `transformers serve` on 127.0.0.1, serving the
converted default model from its safetensors folder, offline."""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from models.errors import Cancelled, GenerationError, ModelLoadError
from models.generate import GenerationInfo
from models.sampling import SamplingParams
from models.service import ModelSpec, load_generator
from tests.conftest import require_or_skip

pytestmark = pytest.mark.slow
STARTUP_TIMEOUT_S = 120


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]



@contextmanager
def _serving(command: list[str], *, port: int, log, name: str, **popen_kwargs):
    """Run a model server until the block ends: started, waited for on 127.0.0.1:`port` (the test fails, naming
    the log, if it exits or does not answer within STARTUP_TIMEOUT_S), then stopped and its log closed."""
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, **popen_kwargs)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    try:
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"{name} did not start (exit {server.poll()}); see {log.name}")
                time.sleep(0.5)
        yield
    finally:
        server.terminate()
        server.wait(30)
        log.close()

@pytest.fixture(scope="module")
def served_model(default_generator, tmp_path_factory):
    require_or_skip(importlib.util.find_spec("openai") is not None,
                    "`transformers serve` needs the openai package (requirements-dev.txt)")
    folder = default_generator.load_report.loaded_from
    port = _free_port()
    cli = shutil.which("transformers", path=str(Path(sys.executable).parent))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    log = (tmp_path_factory.mktemp("serve") / "serve.log").open("w")
    with _serving([cli, "serve", folder, "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"],
                  port=port, log=log, name="transformers serve", env=env):
        yield f"http://127.0.0.1:{port}#{folder}"


def test_streams_completions_and_chat_from_a_real_server(served_model, tmp_path):
    remote = load_generator(ModelSpec("remote", served_model, "served"), cache_dir=tmp_path)
    assert not remote.supports_state
    info = GenerationInfo()
    pieces = list(remote.stream("Once upon a time", sampling=SamplingParams(temperature=0.7, seed=3),
                                max_new_tokens=5, info=info))
    assert len(pieces) >= 2 and "".join(pieces).strip()
    assert info.finish_reason == "length"
    again = "".join(remote.stream("Once upon a time", sampling=SamplingParams(temperature=0.7, seed=3),
                                  max_new_tokens=5))
    assert again == "".join(pieces)  # the seed reaches the server
    chat = "".join(remote.stream([{"role": "user", "content": "Say hello."}], sampling=SamplingParams(seed=1),
                                 max_new_tokens=4))
    assert chat.strip()


def test_stop_strings_and_cancel_with_a_real_server(served_model, tmp_path):
    remote = load_generator(ModelSpec("remote", served_model, "served"), cache_dir=tmp_path)
    sampling = SamplingParams(temperature=0, seed=1)
    full = "".join(remote.stream("The capital of France is", sampling=sampling, max_new_tokens=6))
    stop = full.split()[1]
    cut = "".join(remote.stream("The capital of France is", sampling=sampling, max_new_tokens=6, stop=[stop]))
    assert cut == full[: full.index(stop)]
    cancel = threading.Event()
    stream = remote.stream("The capital of France is", sampling=sampling, max_new_tokens=50, cancel=cancel)
    next(stream)
    cancel.set()
    with pytest.raises(Cancelled):
        list(stream)


def test_no_server_gives_one_line(tmp_path):
    url = f"http://127.0.0.1:{_free_port()}"
    with pytest.raises(ModelLoadError, match="No server answers"):
        load_generator(ModelSpec("remote", url, "gone"), cache_dir=tmp_path)
    remote = load_generator(ModelSpec("remote", url + "#named-model", "gone"), cache_dir=tmp_path)
    with pytest.raises(GenerationError, match="No server answers"):
        list(remote.stream("hi", max_new_tokens=2))


# ------------------------------------------------------------------ llama.cpp's own server, serving the default GGUF

PREMISE = "A lighthouse keeper on a remote island finds a message in a bottle."
ON_PREMISE = ("lighthouse", "keeper", "island", "bottle", "message", "sea", "ocean", "wave")
# This project's VMs report AMX that faults (models/llamacpp_backend.py `_reports_amx`): the server is started with
# llama.cpp's extra buffer types off, as the local backend loads; elsewhere this is plain `python -m llama_cpp.server`.
SERVER_MAIN = ("import runpy; from models.llamacpp_backend import _model_params, _reports_amx; "
               "import contextlib; guard = _model_params(use_extra_bufts=False) if _reports_amx() "
               "else contextlib.nullcontext()\nwith guard: runpy.run_module('llama_cpp.server', run_name='__main__')")


@pytest.fixture(scope="module")
def llamacpp_served(tmp_path_factory):
    require_or_skip(importlib.util.find_spec("llama_cpp") is not None, "llama-cpp-python is not installed")
    require_or_skip(importlib.util.find_spec("sse_starlette") is not None,
                    "llama_cpp.server needs llama-cpp-python[server] (requirements-dev.txt)")
    from app.offline import default_lm_path

    gguf = str(default_lm_path())
    port = _free_port()
    log = (tmp_path_factory.mktemp("llamacpp-serve") / "serve.log").open("w")
    with _serving([sys.executable, "-c", SERVER_MAIN, "--model", gguf, "--host", "127.0.0.1", "--port", str(port),
                   "--n_threads", "1", "--n_ctx", "4096"],
                  port=port, log=log, name="llama_cpp.server", cwd=str(Path(__file__).resolve().parents[2])):
        yield f"http://127.0.0.1:{port}"


def test_llamacpp_server_writes_about_the_premise(llamacpp_served, tmp_path):
    remote = load_generator(ModelSpec("remote", llamacpp_served, "served"), cache_dir=tmp_path)
    messages = [{"role": "system", "content": "You are a novelist."},
                {"role": "user", "content": f"Premise: {PREMISE}\n\nWrite the opening paragraph of this story."}]
    prompt = remote.render_chat(messages)
    # The server names the GGUF it serves: its own chat template renders the prompt, not a plain transcript.
    assert prompt.startswith("<|im_start|>system\nYou are a novelist.<|im_end|>") and "Assistant:" not in prompt
    sampling = SamplingParams(temperature=0.7, seed=4)
    paragraph = remote.complete(prompt, sampling=sampling, max_new_tokens=80).lower()
    assert sum(word in paragraph for word in ON_PREMISE) >= 2, paragraph
    # The plans' answer prefix continues after the template's assistant header.
    plans = "1." + remote.complete(prompt + "1.", sampling=sampling, max_new_tokens=60)
    assert plans.startswith("1.") and len(plans) > 10


def test_a_server_whose_template_is_unknown_gets_the_chat_endpoint(llamacpp_served, tmp_path):
    # Named by an alias, the served model is no file here: the messages go to /v1/chat/completions.
    remote = load_generator(ModelSpec("remote", llamacpp_served + "#smollm2", "served"), cache_dir=tmp_path)
    assert remote.backend.chat_template is None
    messages = [{"role": "user", "content": f"Premise: {PREMISE}\n\nList three plans for the story's next "
                                            "paragraph, numbered."}]
    prompt = remote.render_chat(messages) + "1."
    answer = "1." + remote.complete(prompt, sampling=SamplingParams(temperature=0.7, seed=4), max_new_tokens=80)
    # The prefix is not doubled and the list goes on. (Whether SmolLM2-135M stays on the premise this way is not
    # asserted: through the chat endpoint it often does not; the served GGUF's own template above does.)
    assert not answer.startswith("1. 1.") and not answer.startswith("1.1.")
    assert "2." in answer, answer
