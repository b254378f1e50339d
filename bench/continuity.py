"""Whether the text is one story: auto-write N steps from each demo premise in data/premises with the default model,
per paragraph-prompt strategy, then measure continuity with app/engine/continuity.py.

Measures (each over the saved paragraphs and memory versions; see app/engine/continuity.py for the definitions):
carry-over (share of paragraphs after the first naming a character or place of the previous paragraph or of the
memory), restarts (paragraphs after the first that open like a new story), leaks (paragraphs holding prompt
labels, section markers, the instruction or talk about the text), memory movement (share of steps whose memory
changed and names something of the new paragraph), memory copies (share of memories with more than half their
words in one run from a paragraph), extractive memory fallbacks, voice (share of paragraphs in the third person,
past tense the write mode asks for), LongWriter's length score against `paragraph_words`, and the paragraphs saved
short (under CONTINUE_BELOW of it) or continued by the engine because they came out short.

Two phases, so the engine of another checkout (the code before the guards) can write with the same bench:
`write` auto-writes and stores the raw texts in a JSON file (it needs only app APIs older checkouts have);
`measure` computes the figures of one or more written files with this checkout's measures.

    nice python -m bench.continuity write --label after --strategies instruction document --steps 8 \\
        --premises lighthouse detective generation_ship --out /tmp/after.json
    (one process per strategy, `--strategies instruction` and `--strategies document`, writes both at once; on a
     shared machine keep `--threads 1` (the default; the model's threads, llama.cpp's and torch's) or pin each to a
     core of its own, `taskset -c 0 nice python -m bench.continuity write ...`: two spin-waiting llama.cpp threads per
     process under other load took ~20 minutes for a step that takes ~40 s with one)
    (`--seed` is the first premise's sampling seed, the next premise's is one more: a second sample of the same
     premises takes another `--seed`, e.g. 2234 beside the default 1234)
    (copy this file into <checkout before>/bench/, then there: nice python -m bench.continuity write --label before
     --strategies instruction --commit <sha> ...; run as a script from here, bench/kernels.py would shadow the
     `kernels` package transformers imports)
    python -m bench.continuity measure /tmp/before.json /tmp/after.json --out bench/results/continuity.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

STRATEGIES = ("instruction", "document")
# A paragraph under this share of `paragraph_words` counts as short (the engine continues it: app/engine/stages.py
# CONTINUE_BELOW; the same figure is written here so the bench runs in checkouts that lack it).
CONTINUE_BELOW = 0.7


def _commit(root: Path) -> str | None:
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "app", "models", "memory", "prompts"],
                               cwd=root).returncode != 0
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+changes" if dirty else "")


def _texts(session_factory, novel_id: int) -> dict:
    from memory import store

    with session_factory() as session:
        return {"paragraphs": [p.text for p in store.paragraphs(session, novel_id)],
                "memories": [{"text": m.text, "origin": m.origin} for m in store.memory_history(session, novel_id)],
                "paragraph_words": int((store.get_novel(session, novel_id).settings or {}).get("paragraph_words")
                                       or 110)}


def write(args) -> int:
    """Auto-write `--steps` steps per premise and strategy, in rounds; the JSON is rewritten after every step."""
    from app.offline import enforce_offline

    enforce_offline()
    import torch

    torch.set_num_threads(args.threads)
    from app.config import Config, default_data_dir
    from app.engine.events import StepProgress
    from app.engine.premises import create_novel, demo_premise_paths, load_premise
    from app.wiring import open_parts

    premises = [load_premise(p) for p in demo_premise_paths()]
    if args.premises:
        premises = [p for p in premises if p.id in args.premises]
    work = Path(tempfile.mkdtemp(prefix="longhand-continuity-"))
    config = Config(data_dir=work, database_url=f"sqlite:///{work / 'continuity.db'}", device="cpu", dtype="float32",
                    threads=args.threads)
    parts = open_parts(config, models_dir=default_data_dir() / "models")
    session_factory, embedder = parts.session_factory, parts.embedder()
    engine = parts.engine(parts.models.generator())
    runs = []
    for index, premise in enumerate(premises):
        for strategy in args.strategies:
            settings = {"sampling": {"seed": args.seed + index}, "paragraph_prompt": strategy}
            runs.append({"premise": premise.id, "strategy": strategy, "seconds": 0.0, "steps": 0, "notices": [],
                         "error": None, "novel_id": create_novel(session_factory, embedder, premise,
                                                                 settings=settings)})
    # The code that writes is what was imported now: a commit made while the bench runs does not change it.
    commit = args.commit or _commit(Path.cwd())
    out = Path(args.out)
    started = time.perf_counter()
    for round_number in range(1, args.steps + 1):
        for run in runs:
            if run["error"]:
                continue
            progress = StepProgress()
            began = time.perf_counter()
            try:
                for event in engine.auto_write(run["novel_id"], 1):
                    progress.add(event)
            except Exception as exc:  # one broken run must not end the others; the JSON says what happened
                run["error"] = f"{type(exc).__name__}: {exc}"
            run["seconds"] += time.perf_counter() - began
            run["steps"] += 0 if run["error"] else 1
            run["notices"].extend(progress.notices)
            run.update(_texts(session_factory, run["novel_id"]))
            result = {"benchmark": "continuity-write", "label": args.label,
                      "command": "python -m bench.continuity " + " ".join(sys.argv[1:]),
                      "commit": commit,
                      "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                      "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads":
                                  args.threads, "load_average_now": list(os.getloadavg())},
                      "model": engine.generator.name, "backend": type(engine.generator.backend).__name__,
                      "requested": {"steps": args.steps, "seed": args.seed},
                      "completed_rounds": round_number - 1 + (run is runs[-1]),
                      "wall_seconds": round(time.perf_counter() - started, 1), "runs": runs}
            out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
            print(f"{args.label} round {round_number}, {run['premise']}/{run['strategy']}: "
                  f"{time.perf_counter() - started:.0f}s", flush=True)
    return 0


def run_figures(run: dict) -> dict:
    """The continuity figures of one written run (paragraphs, memory versions in order: the first is the empty
    memory the novel starts with, then one per step)."""
    from app.engine import continuity

    paragraphs = run["paragraphs"]
    memories = [m["text"] for m in run["memories"]]
    # memories[i] is the memory before paragraph i, memories[i + 1] the one written after it.
    before = [memories[i] if i < len(memories) else "" for i in range(len(paragraphs))]
    after = [memories[i + 1] if i + 1 < len(memories) else before[i] for i in range(len(paragraphs))]
    voice = continuity.MODE_VOICES["write"]
    leaked = [continuity.leaks(p) for p in paragraphs]
    target = int(run.get("paragraph_words") or 110)
    count = len(paragraphs)
    share = lambda hits, total: round(hits / total, 3) if total else None  # noqa: E731
    return {
        "paragraphs": count,
        "carry_over": (round(continuity.carry_over_share(paragraphs, before), 3) if count > 1 else None),
        "restarts": sum(continuity.is_restart(p) for p in paragraphs[1:]),
        "leaking_paragraphs": sum(bool(kinds) for kinds in leaked),
        "leaks_by_kind": {kind: sum(kind in kinds for kinds in leaked) for kind in continuity.LEAK_KINDS},
        "memory_moved": share(sum(continuity.memory_moved(before[i], after[i], paragraphs[i]) for i in range(count)),
                              count),
        "memory_copies": share(sum(continuity.copied_paragraph(after[i], paragraphs[:i + 1]) is not None
                                   for i in range(count)), count),
        "memory_extractive": sum(m.get("origin") == "extractive" for m in run["memories"]),
        "voice_ok": share(sum(continuity.voice_ok(p, voice) for p in paragraphs), count),
        "length_score": (round(sum(continuity.length_score(len(p.split()), target) for p in paragraphs) / count, 1)
                         if count else None),
        "words_mean": round(sum(len(p.split()) for p in paragraphs) / count, 1) if count else None,
        "short_paragraphs": sum(len(p.split()) < target * CONTINUE_BELOW for p in paragraphs),
        "seconds_per_step": round(run["seconds"] / max(1, run["steps"]), 1),
        "repairs": sum(n.startswith("Paragraph repaired") for n in run["notices"]),
        "continued": sum(n.startswith("Paragraph repaired") and "continued from" in n for n in run["notices"]),
    }


def aggregate(rows: list[dict]) -> dict:
    """Totals over runs (paragraph-weighted shares) of one label and strategy."""
    paragraphs = sum(r["paragraphs"] for r in rows)
    pairs = sum(max(0, r["paragraphs"] - 1) for r in rows)

    def weighted(key: str, weight) -> float | None:
        values = [(r[key], weight(r)) for r in rows if r[key] is not None]
        total = sum(w for _, w in values)
        return round(sum(v * w for v, w in values) / total, 3) if total else None

    return {
        "runs": len(rows), "paragraphs": paragraphs,
        "carry_over": weighted("carry_over", lambda r: r["paragraphs"] - 1),
        "restarts": sum(r["restarts"] for r in rows), "restart_share": round(sum(r["restarts"] for r in rows)
                                                                             / pairs, 3) if pairs else None,
        "leaking_paragraphs": sum(r["leaking_paragraphs"] for r in rows),
        "leaks_by_kind": {k: sum(r["leaks_by_kind"][k] for r in rows) for k in rows[0]["leaks_by_kind"]},
        "memory_moved": weighted("memory_moved", lambda r: r["paragraphs"]),
        "memory_copies": weighted("memory_copies", lambda r: r["paragraphs"]),
        "memory_extractive": sum(r["memory_extractive"] for r in rows),
        "voice_ok": weighted("voice_ok", lambda r: r["paragraphs"]),
        "length_score": weighted("length_score", lambda r: r["paragraphs"]),
        "seconds_per_step": weighted("seconds_per_step", lambda r: r["paragraphs"]),
        "repairs": sum(r["repairs"] for r in rows),
        "short_paragraphs": sum(r["short_paragraphs"] for r in rows),
        "continued": sum(r["continued"] for r in rows),
    }


def measure(args) -> int:
    parts = [json.loads(Path(p).read_text(encoding="utf-8")) for p in args.files]
    runs = []
    for part in parts:
        for run in part["runs"]:
            runs.append({"label": part["label"], "premise": run["premise"], "strategy": run["strategy"],
                         "steps": run["steps"], "error": run["error"], **run_figures(run),
                         "paragraph_texts": run["paragraphs"], "memory_texts": run["memories"]})
    by_condition = {}
    for label, strategy in sorted({(r["label"], r["strategy"]) for r in runs}):
        rows = [r for r in runs if r["label"] == label and r["strategy"] == strategy and r["paragraphs"]]
        if rows:
            by_condition[f"{label}/{strategy}"] = aggregate(rows)
    result = {
        "benchmark": "continuity",
        "command": "python -m bench.continuity " + " ".join(sys.argv[1:]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "parts": [{"file": f, "label": p["label"], "command": p["command"], "commit": p["commit"],
                   "model": p["model"], "backend": p.get("backend"), "completed_rounds": p["completed_rounds"], "wall_seconds": p["wall_seconds"],
                   "machine": p["machine"]} for f, p in zip(args.files, parts)],
        "by_condition": by_condition,
        "runs": runs,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(json.dumps(by_condition, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    writing = commands.add_parser("write", help="auto-write the runs and store their texts")
    writing.add_argument("--label", default="after", help="what this checkout is (before, after)")
    writing.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    writing.add_argument("--steps", type=int, default=4, help="steps per run, the opening included (default 4)")
    writing.add_argument("--premises", nargs="*", default=[], help="premise ids from data/premises (default: all)")
    writing.add_argument("--seed", type=int, default=1234)
    writing.add_argument("--threads", type=int, default=1, help="CPU threads of the model (llama.cpp and torch)")
    writing.add_argument("--out", required=True)
    writing.add_argument("--commit", help="the commit written from, when the checkout is no git repository")
    measuring = commands.add_parser("measure", help="compute the figures of written files")
    measuring.add_argument("files", nargs="+")
    measuring.add_argument("--out", default="bench/results/continuity.json")
    args = parser.parse_args(argv)
    return write(args) if args.command == "write" else measure(args)


if __name__ == "__main__":
    sys.exit(main())
