"""The default GGUF through llama.cpp against the transformers path: seconds per step, decode and prefill tokens/s.

A *step* here is a proxy of the engine's: three generations (paragraph, memory, plans) after prompts that share the
same long start (a ~600-token manuscript context in the chat template), each with the app's default sampling and
penalties (NovelSettings(): repetition 1.1, DRY 0.8, seeded), each stopped at `--new-tokens` new tokens. Both
backends run at 1 and 2 threads, alternating (llama.cpp, transformers, llama.cpp, ...) within one run, so load from
other processes hits both alike. Prefill is a fresh read of the shared prompt; decode is new tokens over the time
after the first one. `prefill_tokens_per_step` counts what each backend actually read in a step: transformers reads
every prompt whole, llama.cpp only what a prompt does not share with the one before.

    python -m bench.llamacpp --rounds 2 --new-tokens 48 --out bench/results/llamacpp.json

bench/llamacpp_steps.py measures the same two backends over real engine steps instead.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from app.engine.settings import NovelSettings
from app.offline import DEFAULT_LM_NAME, default_lm_path
from models.generate import GenerationInfo, generate
from models.service import ModelSpec, load_generator

MANUSCRIPT = ("The lighthouse keeper counted the ships that passed at night and wrote their names in a book "
              "that nobody read. ") * 24
TASKS = {
    "paragraph": "Write the next paragraph of the story.",
    "memory": "Summarize what happened so far in three sentences.",
    "plans": "Propose three different plans for the next paragraph, numbered 1 to 3.",
}


def _messages(task: str) -> list[dict]:
    return [{"role": "system", "content": "You are a novelist. The story so far:\n\n" + MANUSCRIPT},
            {"role": "user", "content": task}]


def _step(generator, new_tokens: int, seed: int) -> dict:
    """One proxy step; returns seconds, new tokens, the tokens read and the decode time."""
    settings = NovelSettings()
    backend = generator.backend
    started = time.perf_counter()
    new, read, decode_s = 0, 0, 0.0
    for index, task in enumerate(TASKS.values()):
        sampling = settings.sampling_params()
        sampling.seed = seed + index
        ids = generator.prompt_ids(_messages(task))
        info = GenerationInfo()
        before = getattr(backend, "reads", None)
        begun = time.perf_counter()
        first = None
        for _piece in generate(backend, ids, sampling=sampling, penalties=settings.penalty_params(),
                               max_new_tokens=new_tokens, info=info):
            first = first or time.perf_counter()
        ended = time.perf_counter()
        new += len(info.new_token_ids)
        decode_s += ended - (first or ended)
        # Generation reads each new token but the last one when it stopped at the limit.
        stepped = len(info.new_token_ids) - (1 if info.finish_reason == "length" else 0)
        read += (backend.reads - before - stepped) if before is not None else len(ids)
    return {"seconds": time.perf_counter() - started, "new_tokens": new, "prefill_tokens": read,
            "decode_s": decode_s}


def _prefill(generator) -> float:
    backend = generator.backend
    ids = generator.prompt_ids(_messages(TASKS["paragraph"]))
    if hasattr(backend, "_clear"):
        backend._clear()  # llama.cpp would otherwise reuse the prompt it read last
    started = time.perf_counter()
    backend.prefill(backend.new_state(), ids)
    return len(ids) / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "longhand-bench"))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    source = ModelSpec("gguf", str(default_lm_path()), DEFAULT_LM_NAME)
    generators = {}
    for threads in args.threads:
        generators[("llama.cpp", threads)] = load_generator(source, device="cpu", cache_dir=args.cache_dir,
                                                            threads=threads, gguf_backend="llama.cpp")
    transformers = load_generator(source, device="cpu", dtype="float32", cache_dir=args.cache_dir,
                                  gguf_backend="transformers")
    runs: dict[str, list] = {}
    load_before = os.getloadavg()
    for round_ in range(args.rounds):
        for threads in args.threads:
            for name in ("llama.cpp", "transformers"):
                generator = generators[(name, threads)] if name == "llama.cpp" else transformers
                torch.set_num_threads(threads)
                step = _step(generator, args.new_tokens, seed=100 + round_)
                step["prefill_tok_s"] = _prefill(generator)
                step["decode_tok_s"] = step["new_tokens"] / step["decode_s"] if step["decode_s"] else None
                runs.setdefault(f"{name}@{threads}", []).append(step)
                print(f"round {round_} {name}@{threads}: {step['seconds']:.1f} s/step, "
                      f"decode {step['decode_tok_s']:.1f} tok/s, prefill {step['prefill_tok_s']:.0f} tok/s, "
                      f"read {step['prefill_tokens']} prompt tokens", flush=True)
    summary = {
        key: {"seconds_per_step_median": statistics.median(r["seconds"] for r in steps),
              "decode_tok_s_median": statistics.median(r["decode_tok_s"] for r in steps),
              "prefill_tok_s_median": statistics.median(r["prefill_tok_s"] for r in steps),
              "prefill_tokens_per_step": steps[-1]["prefill_tokens"], "steps": steps}
        for key, steps in runs.items()
    }
    result = {
        "command": "python -m bench.llamacpp " + " ".join(argv if argv is not None else sys.argv[1:]),
        "what": "proxy step: 3 generations of --new-tokens each after prompts sharing a ~600-token start; "
                "NovelSettings() sampling and penalties; default SmolLM2-135M-Instruct Q4_1 GGUF; CPU",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_before": load_before,
                    "load_after": os.getloadavg(),
                    "note": "2 cores shared with other engineers' tests and builds: figures are noisy"},
        "new_tokens": args.new_tokens, "rounds": args.rounds, "results": summary,
    }
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(json.dumps({k: {m: v for m, v in s.items() if m != "steps"} for k, s in summary.items()}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
