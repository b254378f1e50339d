"""Writing quality with and without the repetition penalties: auto-write N steps from each demo premise in
data/premises with the default model, then measure what writers notice first.

Per run (premise x penalties off/on): the share of sentences that repeat an earlier sentence of the novel exactly
(normalized), distinct-2/3/4 over all generated paragraphs, the number of paragraphs whose raw generation was caught
in a loop, fallbacks used (memory kept, stock plans), seconds per step, and needle recall: a fact planted as a
written paragraph after step `--needle-after` must come back (a) in retrieval's top 3 for a paraphrased question
and (b) in the next step's context when the plan asks about it.

Runs advance in rounds (one step of every run per round) and the JSON is rewritten after every step, so a run
stopped by `--time-limit` (or killed) keeps what it measured; `completed_rounds` and each run's `steps` say the
scale reached.

    nice -n 10 python -m bench.quality --steps 30 --out bench/results/quality.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from app.engine import DEFAULT_PENALTIES
from bench.report import commit, machine, write_result

PENALTY_CONDITIONS = {
    # Every penalty off (models.sampling.PenaltyParams' own defaults), spelled out: a novel without penalties in
    # its settings writes with the engine's DEFAULT_PENALTIES.
    "off": {"repetition": 1.0, "presence": 0.0, "frequency": 0.0, "dry_multiplier": 0.0},
    # Repetition penalty over the last 512 tokens plus DRY: the engine's defaults.
    "on": DEFAULT_PENALTIES,
}


@dataclass
class Run:
    premise_id: str
    condition: str
    novel_id: int
    needle: dict | None
    steps_done: int = 0
    seconds: float = 0.0
    looping_raw: int = 0
    loop_repairs: int = 0
    notices: list[str] = field(default_factory=list)
    needle_paragraph_id: int | None = None
    error: str | None = None


def _paragraph_texts(session_factory, run: Run) -> list[str]:
    from memory import store

    with session_factory() as session:
        return [p.text for p in store.paragraphs(session, run.novel_id) if p.id != run.needle_paragraph_id]


def _plant_needle(session_factory, embedder, run: Run) -> None:
    from memory import store

    fact = run.needle["fact"]
    with session_factory() as session, session.begin():
        paragraph = store.add_paragraph(session, run.novel_id, fact, origin="written", embedding=embedder.vector(fact))
        run.needle_paragraph_id = paragraph.id


def _needle_scores(engine, session_factory, embedder, run: Run) -> dict:
    from memory import retrieval

    if run.needle_paragraph_id is None:
        return {"planted": False}
    question = run.needle["question"]
    with session_factory() as session:
        found = retrieval.top_k(session, run.novel_id, embedder.vector(question), 3)
    ranks = [i for i, (paragraph, _) in enumerate(found, 1) if paragraph.id == run.needle_paragraph_id]
    preview = engine.inspect_context(run.novel_id, question)
    return {"planted": True, "in_top3": bool(ranks), "rank": ranks[0] if ranks else None,
            "in_context": run.needle["fact"] in preview.prompt_text}


def _metrics(texts: list[str]) -> dict:
    from app.engine.text import distinct_n, is_looping, repeated_sentence_share

    return {
        "paragraphs": len(texts),
        "words": sum(len(t.split()) for t in texts),
        "repeated_sentence_share": round(repeated_sentence_share(texts), 4),
        "distinct_2": round(distinct_n(texts, 2), 4),
        "distinct_3": round(distinct_n(texts, 3), 4),
        "distinct_4": round(distinct_n(texts, 4), 4),
        "looping_saved_paragraphs": sum(is_looping(t) for t in texts),
    }


def _one_step(engine, run: Run) -> None:
    from app.engine.events import StepProgress
    from app.engine.text import is_looping

    progress = StepProgress()
    started = time.perf_counter()
    try:
        for event in engine.auto_write(run.novel_id, 1):
            if event.kind == "paragraph":
                # The raw stream, before the engine's repairs replace it with the saved paragraph.
                run.looping_raw += int(is_looping(progress.draft))
            progress.add(event)
    finally:
        run.notices.extend(progress.notices)
        run.loop_repairs += sum("repeated sentence" in notice for notice in progress.notices)
    run.seconds += time.perf_counter() - started
    run.steps_done += 1


def aggregate(results: list[dict]) -> dict:
    """Per penalty condition: means over runs of the per-run measures, totals of loops, needle recall."""
    by_condition = {}
    for condition in sorted({r["penalties"] for r in results}):
        rows = [r for r in results if r["penalties"] == condition and r["paragraphs"]]
        if not rows:
            continue
        mean = lambda key: round(sum(r[key] for r in rows) / len(rows), 4)  # noqa: E731
        needles = [r["needle"] for r in rows if r.get("needle", {}).get("planted")]
        by_condition[condition] = {
            "runs": len(rows), "paragraphs": sum(r["paragraphs"] for r in rows),
            "repeated_sentence_share": mean("repeated_sentence_share"),
            "distinct_2": mean("distinct_2"), "distinct_3": mean("distinct_3"), "distinct_4": mean("distinct_4"),
            "looping_raw_paragraphs": sum(r["looping_raw_paragraphs"] for r in rows),
            "looping_saved_paragraphs": sum(r["looping_saved_paragraphs"] for r in rows),
            "needle_recall_top3": round(sum(n["in_top3"] for n in needles) / len(needles), 3) if needles else None,
            "needle_in_context": round(sum(n["in_context"] for n in needles) / len(needles), 3) if needles else None,
            "seconds_per_step": mean("seconds_per_step"),
        }
    return by_condition


def _summary(runs: list[Run], engine, session_factory, embedder, args, started: float, rounds: int) -> dict:
    results = []
    for run in runs:
        texts = _paragraph_texts(session_factory, run)
        entry = {"premise": run.premise_id, "penalties": run.condition, "steps": run.steps_done,
                 "seconds_per_step": round(run.seconds / max(1, run.steps_done), 1),
                 "looping_raw_paragraphs": run.looping_raw, "loop_repairs": run.loop_repairs,
                 "memory_fallbacks": sum("memory" in n and "kept" in n for n in run.notices),
                 "plan_fallbacks": sum("stock plan" in n for n in run.notices),
                 **_metrics(texts), "error": run.error}
        if run.needle is not None:
            entry["needle"] = _needle_scores(engine, session_factory, embedder, run)
        results.append(entry)
    by_condition = aggregate(results)
    return {
        "benchmark": "quality",
        "command": "python -m bench.quality " + " ".join(sys.argv[1:]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "commit": args.commit,
        "machine": machine(torch_threads=args.threads, load_average_at_start=args.load_at_start,
                           load_average_now=list(os.getloadavg())),
        "model": engine.generator.name,
        "strategy": engine.strategy,
        "requested": {"steps": args.steps, "premises": args.premises, "penalties": args.penalties,
                      "needle_after": args.needle_after, "max_new_tokens": args.max_new_tokens, "seed": args.seed},
        "completed_rounds": rounds,
        "finished": rounds >= args.steps,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "penalty_settings": {k: PENALTY_CONDITIONS[k] for k in args.penalties},
        "by_condition": by_condition,
        "runs": results,
    }


def merge(paths: list[str], out: Path) -> int:
    parts = [json.loads(Path(p).read_text(encoding="utf-8")) for p in paths]
    runs = [run for part in parts for run in part["runs"]]
    merged = {
        "benchmark": "quality",
        "command": "python -m bench.quality --merge " + " ".join(paths),
        "parts": [{"file": p, "command": part["command"], "commit": part.get("commit"),
                   "completed_rounds": part["completed_rounds"], "finished": part["finished"],
                   "wall_seconds": part["wall_seconds"], "machine": part["machine"]} for p, part in zip(paths, parts)],
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": parts[0]["machine"], "model": parts[0]["model"], "strategy": parts[0]["strategy"],
        "penalty_settings": parts[0]["penalty_settings"],
        "steps_per_run": sorted({run["steps"] for run in runs}),
        "by_condition": aggregate(runs),
        "runs": runs,
    }
    write_result(out, merged)
    print(json.dumps(merged["by_condition"], indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30, help="steps per run, the opening included (default 30)")
    parser.add_argument("--premises", nargs="*", default=[], help="premise ids from data/premises (default: all)")
    parser.add_argument("--penalties", nargs="*", default=["off", "on"], choices=sorted(PENALTY_CONDITIONS))
    parser.add_argument("--needle-after", type=int, default=3, help="plant the needle after this step (0: never)")
    parser.add_argument("--max-new-tokens", type=int, default=200, help="paragraph token limit")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--time-limit", type=float, default=0, help="stop after the round that passes this many "
                        "seconds (0: no limit)")
    parser.add_argument("--out", default="bench/results/quality.json")
    parser.add_argument("--cache-dir", help="where the GGUF is converted to safetensors once (default: the app's "
                        "<data dir>/models)")
    parser.add_argument("--merge", nargs="+", metavar="JSON", help="combine finished result files (one per premise "
                        "when runs were split across processes) into --out, and exit")
    args = parser.parse_args(argv)
    args.commit = commit("app", "models", "memory", "kernels", "prompts")
    args.load_at_start = list(os.getloadavg())
    if args.merge:
        return merge(args.merge, Path(args.out))

    from app.offline import enforce_offline

    enforce_offline()
    import torch

    torch.set_num_threads(args.threads)
    from app.config import Config, default_data_dir
    from app.engine.premises import create_novel, demo_premise_paths, load_premise
    from app.wiring import open_parts

    premises = [load_premise(p) for p in demo_premise_paths()]
    if args.premises:
        premises = [p for p in premises if p.id in args.premises]
        if len(premises) != len(args.premises):
            parser.error(f"unknown premise id; known: {', '.join(load_premise(p).id for p in demo_premise_paths())}")
    args.premises = [p.id for p in premises]

    work = Path(tempfile.mkdtemp(prefix="longhand-quality-"))
    # The default model and embedder, on the CPU, over a fresh store in `work`, wired as the app wires them.
    config = Config(data_dir=work, database_url=f"sqlite:///{work / 'quality.db'}", device="cpu", dtype="float32")
    parts = open_parts(config, models_dir=Path(args.cache_dir) if args.cache_dir else default_data_dir() / "models")
    session_factory, embedder = parts.session_factory, parts.embedder()
    engine = parts.engine(parts.models.generator())

    runs: list[Run] = []
    for index, premise in enumerate(premises):
        for condition in args.penalties:
            settings = {"sampling": {"seed": args.seed + index}, "penalties": PENALTY_CONDITIONS[condition],
                        "max_new_tokens": args.max_new_tokens}
            novel_id = create_novel(session_factory, embedder, premise, settings=settings)
            runs.append(Run(premise.id, condition, novel_id, premise.needle))

    started = time.perf_counter()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rounds = 0
    stopped = False
    for rounds in range(1, args.steps + 1):
        for run in runs:
            if run.error:
                continue
            try:
                _one_step(engine, run)
            except Exception as exc:  # one broken run must not end the others; the JSON says what happened
                run.error = f"{type(exc).__name__}: {exc}"
            if rounds == args.needle_after and run.needle is not None and run.needle_paragraph_id is None:
                _plant_needle(session_factory, embedder, run)
            # Written after every step: a run stopped by the time limit (or killed) keeps what it measured.
            summary = _summary(runs, engine, session_factory, embedder, args, started, rounds - 1)
            write_result(out, summary)
            print(f"round {rounds}, {run.premise_id}/{run.condition}: step {run.steps_done} done at "
                  f"{time.perf_counter() - started:.0f}s", flush=True)
            if args.time_limit and time.perf_counter() - started > args.time_limit:
                stopped = True
                break
        if stopped:
            print(f"time limit reached in round {rounds}", flush=True)
            break
    summary = _summary(runs, engine, session_factory, embedder, args, started, rounds if not stopped else rounds - 1)
    write_result(out, summary)
    print(json.dumps(summary["by_condition"], indent=2), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
