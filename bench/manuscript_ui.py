"""The Write tab at novel scale in real Chromium (issue 14): with a 300-paragraph novel open, how long loading the
Write tab and saving one paragraph's edit take, from the click to the manuscript showing the result.

    .venv/bin/python -m bench.manuscript_ui --paragraphs 300 --repeats 3 --out bench/results/manuscript_ui.json

Serves the app (`python -m app serve`, default model, never loaded: nothing here generates) on a free port over a
fresh data dir holding one novel of N synthetic paragraphs of about 110 words (saved without vectors: an edit embeds
only the paragraph it saves, which is what is timed). Measured, each `repeats` times, median and worst:
  - open (once: a second open of the same novel redraws the same page): Library's Open clicked until the Write
    tab's manuscript shows all N paragraphs;
  - reload: the page reloaded (the browser remembers the novel) and the Write tab clicked, until the manuscript
    shows all N;
  - save: an edit of paragraph N/2 typed into the editor, Save clicked, until the manuscript shows the new text
    (the save, its re-embedding, and the redraw of every tab).
Target: under one second each.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from memory import store
from memory.db import open_database

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
SENTENCES = ["The ferry crossed the sound in the grey before dawn.", "Orla kept her hands in her coat and watched "
             "the buoys.", "Somewhere below, the engine knocked like a heart that had missed a beat.", "The harbour "
             "master had said nothing about the list.", "Gulls followed the wake and fell away one by one.",
             "She thought of the name again, her own, written in a hand she did not know.", "Fog gathered over "
             "the water and the lights of Skerry went out.", "Nobody on board had been born in 1952."]


def _paragraph(number: int) -> str:
    picked = [SENTENCES[(number + i) % len(SENTENCES)] for i in range(12)]
    return f"Paragraph {number}. " + " ".join(picked)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _serve(data_dir: Path, port: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False",
           "OMP_NUM_THREADS": "1"}
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "-m", "app", "serve", "--data-dir", str(data_dir), "--port",
                                    str(port)], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the app exited:\n{log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5):
                return process
        except OSError:
            time.sleep(0.5)
    process.kill()
    raise RuntimeError("the app did not start within 240 s")


def _seed(data_dir: Path, paragraphs: int) -> int:
    engine, session_factory = open_database(f"sqlite:///{data_dir / 'longhand.db'}")
    with session_factory() as session, session.begin():
        novel_id = store.create_novel(session, "Ferry at night", premise="A ferry pilot finds her own name.").id
        for number in range(1, paragraphs + 1):
            store.add_paragraph(session, novel_id, _paragraph(number), origin="generated")
    engine.dispose()
    return novel_id


def _wait(predicate, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise TimeoutError("the page did not get there in time")


def _summary(values: list[float]) -> dict:
    return {"median_s": round(statistics.median(values), 3), "max_s": round(max(values), 3),
            "runs_s": [round(v, 3) for v in values]}


def measure(paragraphs: int, repeats: int) -> dict:
    from playwright.sync_api import sync_playwright

    work = Path(tempfile.mkdtemp(prefix="longhand-bench-ui-"))
    data_dir = work / "data"
    port = _free_port()
    # The server creates the schema; seed once it is up (the app migrates a fresh data dir on start).
    server = _serve(data_dir, port, work / "server.log")
    url = f"http://127.0.0.1:{port}/"
    novel_id = _seed(data_dir, paragraphs)
    times: dict[str, list[float]] = {"open": [], "reload": [], "save": []}
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            paras = page.locator("#manuscript .lh-para")
            page.goto(url)
            page.locator("#novels_table").get_by_text("Ferry at night").first.wait_for(state="attached",
                                                                                      timeout=60_000)
            page.locator("#novel_dropdown input").first.click()
            page.get_by_role("option", name=f"Ferry at night (#{novel_id})").click()
            started = time.perf_counter()
            page.locator("#open_btn").click()
            page.get_by_role("tab", name="Write", exact=True).click()
            _wait(lambda: paras.count() == paragraphs)
            times["open"].append(time.perf_counter() - started)
            for attempt in range(repeats):
                started = time.perf_counter()
                page.reload()
                page.get_by_role("tab", name="Write", exact=True).click()
                _wait(lambda: paras.count() == paragraphs)
                times["reload"].append(time.perf_counter() - started)

                middle = paragraphs // 2
                number = page.locator("#para_number input").first
                number.fill(str(middle))
                number.press("Enter")
                box = page.locator("#para_box textarea").first
                _wait(lambda: box.input_value().startswith(f"Paragraph {middle}"))
                edited = f"Paragraph {middle}, edited in run {attempt}. The fog lifted over Skerry."
                box.fill(edited)
                target = paras.nth(middle - 1)
                started = time.perf_counter()
                page.locator("#para_save_btn").click()
                _wait(lambda: edited in target.inner_text())
                times["save"].append(time.perf_counter() - started)
            browser.close()
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(work, ignore_errors=True)
    return {"paragraphs": paragraphs, "repeats": repeats, "target_s": 1.0,
            **{name: _summary(values) for name, values in times.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--paragraphs", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    result = measure(args.paragraphs, args.repeats)
    result["command"] = (f".venv/bin/python -m bench.manuscript_ui --paragraphs {args.paragraphs} "
                         f"--repeats {args.repeats}" + (f" --out {args.out}" if args.out else ""))
    result["machine"] = f"{platform.machine()}, {os.cpu_count()} cores (shared), headless Chromium"
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
