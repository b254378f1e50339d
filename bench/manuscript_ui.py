"""The Write tab at novel scale in real Chromium (issue 14): with a 300-paragraph novel open, how long loading the
Write tab and saving one paragraph's edit take, from the click to the manuscript drawn with the result, and where
that time goes.

    .venv/bin/python -m bench.manuscript_ui --paragraphs 300 --chapters 10 --repeats 5 \\
        --out bench/results/manuscript_ui.json

Serves the app (`python -m app serve`, default model, never loaded: nothing here generates) on a free port over a
fresh data dir holding two novels of N synthetic paragraphs of about 110 words (saved without vectors: an edit
embeds only the paragraph it saves, which is what is timed), built as a writer would:
  - `chaptered`: N paragraphs in `--chapters` chapters (the Write tab shows the open, last, chapter: N/chapters);
  - `one_chapter`: the worst case, all N in one chapter, all shown.
A third, one-paragraph novel is opened and edited first, so the app's first-use costs (the engine and the embedder
built, once per process) land on it (`first_open_s`, `first_save_s`), not on either layout. For each layout,
`repeats` times, median and worst:
  - open (once): Library's Open clicked until the Write tab's manuscript is drawn with the open chapter;
  - reload: the page reloaded (the browser remembers the novel) and the Write tab clicked, until it is drawn;
  - save: an edit of the open chapter's middle paragraph typed into the editor, Save clicked, until the manuscript
    is drawn with the new text (the save, its re-embedding, and the redraw of the Write tab).
Each timing is split, from the page's own clock, into `handler` (the server's event functions, as Gradio reports
each call's duration), `transfer` (the rest until the last response arrived: queueing, Gradio's pre- and
post-processing, the network, the round trips between chained events), and `render` (from the last response to the
frame drawn with the result); `bytes` is what the page received. Reload also has `boot`: from navigation start to
the page's first call to the server; its `transfer` also holds the frontend building every tab's components, which
runs on the page's one thread between the responses.
Target: under one second each, for the chaptered novel.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench.report import commit, machine, write_result
from memory import chapters as book
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
WARM_UP_TITLE = "Warm-up"
# In the page before Gradio's own scripts: every response of the app's API (each chunk of the event stream, each
# direct call) with its arrival time, size and, for a finished event, the server's duration; every redraw of the
# manuscript with the time its frame was drawn, how many paragraphs it shows and its text.
INSTRUMENT = """
(() => {
  const lh = window.__lh = {responses: [], redraws: [], firstCall: null};
  const original = window.fetch;
  const durations = (text) => {
    const found = [];
    for (const line of text.split('\\n')) {
      const body = line.startsWith('data:') ? line.slice(5) : line;
      if (!body.trim().startsWith('{')) continue;
      try {
        const message = JSON.parse(body);
        const output = message.msg === 'process_completed' ? message.output : message;
        if (output && typeof output.duration === 'number') found.push(output.duration);
      } catch (error) { /* a partial line: its end comes in the next chunk */ }
    }
    return found;
  };
  window.fetch = async (...args) => {
    const url = String(args[0] instanceof Request ? args[0].url : args[0]);
    if (url.includes('/gradio_api/') && lh.firstCall === null) lh.firstCall = performance.now();
    const response = await original(...args);
    if (!url.includes('/gradio_api/') || !response.body) return response;
    const reader = response.clone().body.getReader();
    const decoder = new TextDecoder();
    (async () => {
      let pending = '';
      for (;;) {
        const {done, value} = await reader.read();
        if (done) break;
        pending += decoder.decode(value, {stream: true});
        const cut = pending.lastIndexOf('\\n');
        const complete = url.includes('/queue/data') ? (cut >= 0 ? pending.slice(0, cut) : '') : '';
        if (url.includes('/queue/data')) pending = cut >= 0 ? pending.slice(cut + 1) : pending;
        lh.responses.push({t: performance.now(), bytes: value.byteLength, durations: durations(complete)});
      }
      if (pending) lh.responses.push({t: performance.now(), bytes: 0, durations: durations(pending)});
    })();
    return response;
  };
  // Gradio 6 patches the HTML component's nodes in place: a redraw is a batch of mutations inside #manuscript.
  let scheduled = false;
  const inManuscript = (node) => (node.nodeType === 1 ? node : node.parentElement)?.closest('#manuscript');
  new MutationObserver((mutations) => {
    if (scheduled || !mutations.some((mutation) => inManuscript(mutation.target))) return;
    scheduled = true;
    requestAnimationFrame(() => setTimeout(() => {
      scheduled = false;
      const box = document.querySelector('#manuscript .lh-manuscript');
      if (box) lh.redraws.push({t: performance.now(), count: box.querySelectorAll('.lh-para').length,
                                text: box.textContent});
    }, 0));
  }).observe(document, {childList: true, subtree: true, characterData: true});
})();
"""


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


def _seed(session_factory, title: str, paragraphs: int, chapters: int) -> int:
    """A novel written as a writer would: `chapters` chapters of paragraphs/chapters each, a new chapter begun
    when the one before is full."""
    per_chapter = -(-paragraphs // chapters)
    with session_factory() as session, session.begin():
        novel_id = store.create_novel(session, title, premise="A ferry pilot finds her own name.").id
        for number in range(1, paragraphs + 1):
            if number > 1 and (number - 1) % per_chapter == 0:
                book.add_chapter(session, novel_id, f"Chapter {(number - 1) // per_chapter + 1}")
            store.add_paragraph(session, novel_id, _paragraph(number), origin="generated")
    return novel_id


def _wait(predicate, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise TimeoutError("the page did not get there in time")


def _summary(values: list[float]) -> dict:
    return {"median_s": round(statistics.median(values), 3), "max_s": round(max(values), 3),
            "runs_s": [round(v, 3) for v in values]}


def _mark(page) -> float:
    """Start a measured action: forget earlier responses and redraws; the page's clock now."""
    return page.evaluate("() => { window.__lh.responses = []; window.__lh.redraws = []; return performance.now(); }")


def _drawn(page, started_ms: float, shows) -> dict:
    """Wait for the first redraw after `started_ms` that `shows` (a redraw dict -> bool) accepts; its timing split
    into handler, transfer and render (seconds), and the bytes received until then."""
    found: list[dict] = []

    def done() -> bool:
        redraws = page.evaluate("() => window.__lh.redraws")
        found[:] = [r for r in redraws if r["t"] >= started_ms and shows(r)][:1]
        return bool(found)

    _wait(done)
    # The responses' reader runs in the page's own time: let the last chunks of the chain be noted.
    page.wait_for_timeout(50)
    drawn_ms = found[0]["t"]
    responses = [r for r in page.evaluate("() => window.__lh.responses") if started_ms <= r["t"] <= drawn_ms]
    handler_s = sum(d for r in responses for d in r["durations"])
    last_ms = max((r["t"] for r in responses), default=started_ms)
    total_s = (drawn_ms - started_ms) / 1000
    transfer_s = max((last_ms - started_ms) / 1000 - handler_s, 0.0)
    return {"total_s": total_s, "handler_s": handler_s, "transfer_s": transfer_s,
            "render_s": (drawn_ms - last_ms) / 1000, "bytes": sum(r["bytes"] for r in responses)}


def _breakdown(parts: list[dict]) -> dict:
    """The median of each part over the runs (seconds, and bytes received)."""
    return {key: round(statistics.median(part[key] for part in parts), 3) if key.endswith("_s")
            else int(statistics.median(part[key] for part in parts))
            for key in parts[0] if key != "total_s"}


def _open(page, title: str, novel_id: int, shown: int) -> dict:
    page.locator("#novel_dropdown input").first.click()
    page.get_by_role("option", name=f"{title} (#{novel_id})").click()
    started = _mark(page)
    page.locator("#open_btn").click()
    page.get_by_role("tab", name="Write", exact=True).click()
    return _drawn(page, started, lambda redraw: redraw["count"] == shown and title in redraw["text"])


def _reload(page, title: str, shown: int) -> dict:
    page.reload()
    page.get_by_role("tab", name="Write", exact=True).click()
    # The page's clock starts at navigation: everything since the reload began is in the figure.
    timing = _drawn(page, 0.0, lambda redraw: redraw["count"] == shown and title in redraw["text"])
    timing["boot_s"] = page.evaluate("() => window.__lh.firstCall") / 1000
    return timing


def _save(page, position: int, attempt: int) -> dict:
    number = page.locator("#para_number input").first
    number.fill(str(position))
    number.press("Enter")
    box = page.locator("#para_box textarea").first
    # "Paragraph 285." as seeded, "Paragraph 285," once an earlier run edited it (never paragraph 28's text).
    _wait(lambda: box.input_value().startswith((f"Paragraph {position}.", f"Paragraph {position},")))
    edited = f"Paragraph {position}, edited in run {attempt}. The fog lifted over Skerry."
    box.fill(edited)
    started = _mark(page)
    page.locator("#para_save_btn").click()
    return _drawn(page, started, lambda redraw: edited in redraw["text"])


def _layout(page, title: str, novel_id: int, paragraphs: int, chapters: int, repeats: int) -> dict:
    """Open, reload and save, `repeats` times, for one novel; the Write tab shows its last chapter."""
    per_chapter = -(-paragraphs // chapters)
    shown = paragraphs - per_chapter * (chapters - 1)
    edited = paragraphs - shown + (shown + 1) // 2
    runs: dict[str, list[dict]] = {"open": [_open(page, title, novel_id, shown)], "reload": [], "save": []}
    for attempt in range(repeats):
        runs["reload"].append(_reload(page, title, shown))
        runs["save"].append(_save(page, edited, attempt))
    return {"chapters": chapters, "paragraphs_shown": shown, "edited_paragraph": edited,
            **{name: {**_summary([run["total_s"] for run in timings]), "parts": _breakdown(timings)}
               for name, timings in runs.items()}}


def measure(paragraphs: int, chapters: int, repeats: int) -> dict:
    from playwright.sync_api import sync_playwright

    work = Path(tempfile.mkdtemp(prefix="longhand-bench-ui-"))
    data_dir = work / "data"
    port = _free_port()
    # The server creates the schema; seed once it is up (the app migrates a fresh data dir on start).
    server = _serve(data_dir, port, work / "server.log")
    engine, session_factory = open_database(f"sqlite:///{data_dir / 'longhand.db'}")
    layouts = {"chaptered": chapters, "one_chapter": 1}
    titles = {name: f"Ferry at night ({name.replace('_', ' ')})" for name in layouts}
    novels = {name: (titles[name], _seed(session_factory, titles[name], paragraphs, layouts[name]))
              for name in layouts}
    warm_up_id = _seed(session_factory, WARM_UP_TITLE, 1, 1)
    engine.dispose()
    result: dict = {}
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.add_init_script(INSTRUMENT)
            page.goto(f"http://127.0.0.1:{port}/")
            page.locator("#novels_table").get_by_text(WARM_UP_TITLE).first.wait_for(state="attached",
                                                                                   timeout=90_000)
            result["first_open_s"] = round(_open(page, WARM_UP_TITLE, warm_up_id, 1)["total_s"], 3)
            result["first_save_s"] = round(_save(page, 1, -1)["total_s"], 3)
            for name, (title, novel_id) in novels.items():
                page.get_by_role("tab", name="Library", exact=True).click()
                result[name] = _layout(page, title, novel_id, paragraphs, layouts[name], repeats)
            browser.close()
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(work, ignore_errors=True)
    return {"paragraphs": paragraphs, "repeats": repeats, "target_s": 1.0, **result}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--paragraphs", type=int, default=300)
    parser.add_argument("--chapters", type=int, default=10, help="chapters of the chaptered novel")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if not 1 <= args.chapters <= args.paragraphs:
        parser.error("--chapters must be between 1 and --paragraphs")
    load = list(os.getloadavg())
    result = measure(args.paragraphs, args.chapters, args.repeats)
    result["command"] = (f".venv/bin/python -m bench.manuscript_ui --paragraphs {args.paragraphs} "
                         f"--chapters {args.chapters} --repeats {args.repeats}"
                         + (f" --out {args.out}" if args.out else ""))
    result["commit"] = commit("app", "memory", "bench/manuscript_ui.py")
    result["machine"] = machine(load_average_at_start=load, browser="headless Chromium (Debian)")
    print(json.dumps(result, indent=2))
    if args.out is not None:
        write_result(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
