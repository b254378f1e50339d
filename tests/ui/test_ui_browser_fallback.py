"""In real headless Chromium: the app served where llama-cpp-python cannot be imported still writes with the default
GGUF (through transformers), and the Write tab says why it is slower, in the step's own status line.

The served process gets a `sitecustomize` whose import hook refuses `llama_cpp` with the ImportError a missing or
broken build raises; nothing else of the app is changed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.refuse_llama_cpp import HOOK
from tests.ui.test_ui_browser import (  # noqa: F401 (fixtures)
    REPO,
    _create_novel,
    _free_port,
    _wait_for_server,
    _wait_saved,
    chromium,
    docs_shots,
    stop_server,
)

@pytest.fixture
def served_without_llama_cpp(tmp_path: Path):
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(HOOK)
    port, data_dir, log = _free_port(), tmp_path / "data", tmp_path / "server.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False",
           "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{hook}{os.pathsep}{REPO}"}
    env.pop("LONGHAND_DATA_DIR", None)
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "app", "serve", "--data-dir", str(data_dir), "--port", str(port), "--threads", "1"],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        _wait_for_server(url, process, log)
        yield url, log
    finally:
        stop_server(process)


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.timeout(900)
def test_the_write_tab_says_the_gguf_runs_through_transformers(chromium, served_without_llama_cpp,  # noqa: F811
                                                                tmp_path: Path):
    url, log = served_without_llama_cpp
    page = chromium.new_context(viewport={"width": 1280, "height": 1000}).new_page()
    page.goto(url)
    page.wait_for_selector("#create_btn", timeout=60_000)
    _create_novel(page, "A lighthouse keeper finds a message in a bottle addressed to her.", paragraph_tokens=40)
    shots = tmp_path / "shots"
    shots.mkdir()
    _wait_saved(page, shots, log, "opening", timeout_s=600)
    status = page.locator("#write_status").inner_text()
    assert "llama-cpp-python is not usable here" in status and "through transformers" in status
    page.locator("#manuscript .lh-para").first.wait_for(timeout=30_000)
    page.screenshot(path=str(docs_shots() / "16-fallback-notice.png"), full_page=True)
    assert "longhand: llama-cpp-python is not usable here" in log.read_text()
