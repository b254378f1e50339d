"""When llama-cpp-python cannot be imported, a GGUF still runs: `--gguf-backend auto` says why in one line and takes
the transformers path; `--gguf-backend llama.cpp` refuses with a line saying what to do.

Each case runs in a fresh interpreter whose import system refuses `llama_cpp` (a meta-path finder that raises the
ImportError a missing or broken build raises), so nothing of this test process is patched. The real default GGUF;
its transformers cache is the session's (tests/conftest.py `default_generator`), so nothing is converted again.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from models.service import TextGenerator
from tests.refuse_llama_cpp import HOOK

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
# Run in the child: refuse llama_cpp, load the default GGUF with the backend choice in argv[2], write a few tokens.
CHILD = HOOK + r"""
import json
from app.offline import DEFAULT_LM_NAME, default_lm_path
from models.errors import ModelLoadError
from models.sampling import SamplingParams
from models.service import ModelSpec, load_generator

try:
    generator = load_generator(ModelSpec("gguf", str(default_lm_path()), DEFAULT_LM_NAME), device="cpu",
                               dtype="float32", cache_dir=sys.argv[1], threads=1, gguf_backend=sys.argv[2])
except ModelLoadError as exc:
    print(json.dumps({"error": str(exc)}))
    raise SystemExit(0)
text = generator.complete([{"role": "user", "content": "Name a colour."}], max_new_tokens=4,
                          sampling=SamplingParams(temperature=0.0))
print(json.dumps({"backend": type(generator.backend).__name__, "notice": generator.load_report.notice,
                  "text": text}))
"""


def _child(cache_dir: Path, choice: str) -> tuple[dict, list[str]]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", CHILD, str(cache_dir), choice], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    said = [line for line in done.stderr.splitlines() if line.startswith("longhand:")]
    return json.loads(done.stdout.strip().splitlines()[-1]), said


def _cache_dir(generator: TextGenerator) -> Path:
    return Path(generator.load_report.loaded_from).parent


def test_auto_says_so_in_one_line_and_runs_the_gguf_through_transformers(default_generator):
    result, said = _child(_cache_dir(default_generator), "auto")
    assert result["backend"] == "TransformersBackend" and result["text"].strip()
    assert len(said) == 1 and said[0] == f"longhand: {result['notice']}"
    assert "llama-cpp-python is not usable here (ImportError: libllama.so" in said[0]
    assert said[0].endswith("running the GGUF through transformers instead (slower).")


def test_asking_for_llamacpp_without_it_is_refused_with_what_to_do(default_generator):
    result, said = _child(_cache_dir(default_generator), "llama.cpp")
    assert not said
    assert "llama-cpp-python is not usable here" in result["error"]
    assert "--gguf-backend transformers" in result["error"] and "\n" not in result["error"]
