"""What the security tests share: the real app served in a subprocess, a seeded database, and Gradio's event
protocol spoken over plain HTTP (join the queue, read the event stream) with headers of the test's choosing."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from memory import store
from memory.db import open_database
from tests.ui.test_ui_browser import stop_server

REPO = Path(__file__).resolve().parents[2]
SEED_TITLE = "The Lighthouse Ledger"
SEED_PREMISE = "A keeper counts ships that never arrive."


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def app_env(**extra: str) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False",
           "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **extra}
    env.pop("LONGHAND_DATA_DIR", None)
    env.pop("GRADIO_TEMP_DIR", None)
    return env


def seed_database(data_dir: Path) -> int:
    """One novel, written before the app starts; returns its id."""
    _, session_factory = open_database(f"sqlite:///{data_dir / 'longhand.db'}", data_dir / "backups")
    with session_factory() as session, session.begin():
        return store.create_novel(session, title=SEED_TITLE, premise=SEED_PREMISE).id


def novel_titles(data_dir: Path) -> list[str]:
    _, session_factory = open_database(f"sqlite:///{data_dir / 'longhand.db'}")
    with session_factory() as session:
        return sorted(summary.title for summary in store.list_novels(session))


@contextmanager
def served(tmp_path: Path, *flags: str, timeout: float = 240):
    """The real app (`python -m app serve`) on a free port; yields (base url, port, data dir, log file)."""
    port = free_port()
    data_dir = tmp_path / "data"
    data_dir.mkdir(exist_ok=True)
    # World-readable, as a data dir made by an older Longhand would be: serving must tighten it.
    os.chmod(data_dir, 0o755)
    seed_database(data_dir)
    log = tmp_path / "server.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "app", "serve", "--data-dir", str(data_dir), "--port", str(port), *flags],
            cwd=REPO, env=app_env(), stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                pytest.fail(f"the app exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{base}/gradio_api/info", timeout=5).status_code in (200, 401):
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the app did not answer within {timeout:.0f}s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield base, port, data_dir, log
    finally:
        stop_server(process)


def fn_index(config: dict, api_name: str) -> int:
    for dependency in config["dependencies"]:
        if dependency.get("api_name") == api_name:
            return dependency["id"]
    raise AssertionError(f"no event with api_name {api_name!r}")


def call_event(client: httpx.Client, index: int, data: list, session_hash: str | None = None) -> dict:
    """Run one event the way Gradio's page does; returns {'join': status, 'join_text', 'output', 'success'}."""
    session_hash = session_hash or uuid.uuid4().hex[:12]
    joined = client.post("/gradio_api/queue/join", json={"data": data, "fn_index": index, "trigger_id": None,
                                                         "session_hash": session_hash, "event_data": None})
    result = {"join": joined.status_code, "join_text": joined.text, "output": None, "success": None}
    if joined.status_code != 200:
        return result
    with client.stream("GET", "/gradio_api/queue/data", params={"session_hash": session_hash}) as stream:
        for line in stream.iter_lines():
            if not line.startswith("data:"):
                continue
            message = json.loads(line[5:])
            if message.get("msg") == "process_completed":
                result.update(output=message.get("output"), success=message.get("success"))
                return result
    raise AssertionError("the event stream ended without process_completed")
