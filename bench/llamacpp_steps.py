"""Real engine steps through each GGUF backend: the opening plus `--steps` steps of one demo novel, written by the
engine itself (paragraph, memory and plans, retries and all) from the default GGUF through llama.cpp and through
transformers, at each thread count, alternating step by step (llama.cpp@1, transformers@1, llama.cpp@2, ...) so
load from other processes hits every configuration alike.

Each configuration writes its own copy of the same novel (same premise, settings, seed and default penalties) into
one fresh store. Per step it records the seconds, the prompt tokens sent (what a backend without prefix reuse
reads), the tokens actually read (`backend.reads` during prefill: prefix reuse reads only what a prompt does not
share with the one before), prefill seconds and tokens/s, and decode tokens and tokens/s (one `step` per new token).
The summary gives per configuration the median seconds per step over the steps after the opening, and the ratio of
the transformers path to llama.cpp at each thread count.

    nice -n 10 python -m bench.llamacpp_steps --steps 5 --out bench/results/llamacpp_steps.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.report import commit, machine, write_result

# "transformers-whole" is the transformers path with prefix reuse off: every prompt read whole, as the default path
# read them before issue 16 (the baseline its 3x target is set against). "llama.cpp" is the app's path (a Q4_1 file
# read through its Q8_0 copy, models/requantize.py); "llama.cpp-original" reads the Q4_1 file as it is.
BACKENDS = ("llama.cpp", "llama.cpp-original", "transformers", "transformers-whole")
LLAMACPP = ("llama.cpp", "llama.cpp-original")


@dataclass
class StepFigures:
    seconds: float = 0.0
    prompt_tokens: int = 0  # tokens of every prompt sent to prefill
    prefill_tokens: int = 0  # of those, the tokens the backend read (the rest came from the reused prefix)
    prefill_s: float = 0.0
    decode_tokens: int = 0
    decode_s: float = 0.0


class Meter:
    """Counts and times one backend's prefill and decode calls (bench instrumentation: it wraps the instance's
    `prefill` and `step`; llama.cpp's `step` calls its own `prefill`, which is then not counted twice)."""

    def __init__(self, backend) -> None:
        self.backend = backend
        self.figures = StepFigures()
        self._prefill, self._step = backend.prefill, backend.step
        self._in_step = False
        backend.prefill, backend.step = self.prefill, self.step

    def prefill(self, state, ids):
        if self._in_step:
            return self._prefill(state, ids)
        before, started = self.backend.reads, time.perf_counter()
        logits = self._prefill(state, ids)
        self.figures.prefill_s += time.perf_counter() - started
        self.figures.prompt_tokens += len(ids)
        self.figures.prefill_tokens += self.backend.reads - before
        return logits

    def step(self, state, token_id):
        self._in_step = True
        started = time.perf_counter()
        try:
            return self._step(state, token_id)
        finally:
            self._in_step = False
            self.figures.decode_s += time.perf_counter() - started
            self.figures.decode_tokens += 1

    def take(self) -> StepFigures:
        figures, self.figures = self.figures, StepFigures()
        return figures


def _drain(events) -> None:
    for _event in events:
        pass


def _summary(runs: dict[str, list[StepFigures]]) -> dict:
    out = {}
    for key, steps in runs.items():
        later = steps[1:] or steps  # the steps after the opening (the opening also proposes title and outline)

        def total(name: str) -> float:
            return sum(getattr(step, name) for step in later)

        out[key] = {
            "opening_seconds": round(steps[0].seconds, 2),
            "seconds_per_step_median": round(statistics.median(step.seconds for step in later), 2),
            "prompt_tokens_per_step": round(total("prompt_tokens") / len(later)),
            "prefill_tokens_per_step": round(total("prefill_tokens") / len(later)),
            "prefill_tok_s": round(total("prefill_tokens") / total("prefill_s"), 1) if total("prefill_s") else None,
            "decode_tok_s": round(total("decode_tokens") / total("decode_s"), 1) if total("decode_s") else None,
            "decode_tokens_per_step": round(total("decode_tokens") / len(later)),
            "steps": [asdict(step) for step in steps],
        }
    return out


def _ratios(summary: dict, threads: list[int], baseline: str = "transformers") -> dict:
    """Seconds per step of the `baseline` path over each llama.cpp path's, per thread count and best against best;
    and the same ratio at equal decode work ("@N same decode"): each side's decode time rescaled to the mean number
    of tokens both decoded, since sampled paragraphs differ in length from one path to the other."""
    ratios = {}
    for llama_name in LLAMACPP:
        tag = "" if llama_name == "llama.cpp" else f" {llama_name}"
        for count in threads:
            llama, other = summary.get(f"{llama_name}@{count}"), summary.get(f"{baseline}@{count}")
            if llama and other:
                ratios[f"@{count}{tag}"] = round(other["seconds_per_step_median"]
                                                 / llama["seconds_per_step_median"], 2)
                tokens = (llama["decode_tokens_per_step"] + other["decode_tokens_per_step"]) / 2
                ratios[f"@{count}{tag} same decode"] = round(_same_decode(other, tokens)
                                                             / _same_decode(llama, tokens), 2)
        best = {name: min((s["seconds_per_step_median"] for k, s in summary.items() if k.startswith(name + "@")),
                          default=None) for name in (llama_name, baseline)}
        if all(best.values()):
            ratios[f"best_vs_best{tag}"] = round(best[baseline] / best[llama_name], 2)
    return ratios


def _same_decode(figures: dict, tokens: float) -> float:
    """Mean seconds per step (after the opening) with `tokens` decoded at the path's own decode rate."""
    later = figures["steps"][1:] or figures["steps"]
    prefill = statistics.mean(step["prefill_s"] for step in later)
    other = statistics.mean(step["seconds"] - step["prefill_s"] - step["decode_s"] for step in later)
    return prefill + other + tokens / figures["decode_tok_s"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=5, help="steps after the opening (default 5)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--backends", nargs="+", default=["llama.cpp", "transformers"], choices=BACKENDS)
    parser.add_argument("--premise", default="lighthouse", help="a demo premise id from data/premises")
    parser.add_argument("--paragraph-prompt", default="instruction", choices=("instruction", "document"))
    parser.add_argument("--max-new-tokens", type=int, help="paragraph token limit (default: the app's)")
    parser.add_argument("--plan-tokens", type=int, help="plans token limit (default: the app's)")
    parser.add_argument("--memory-words", type=int, help="memory length (default: the app's)")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--lm-rerank", type=int, choices=(0, 1), default=1,
                        help="retrieval's LM rerank (the app's default 1; 0 for the steps without it)")
    parser.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "longhand-bench"))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    load_at_start = list(os.getloadavg())

    from app.offline import enforce_offline

    enforce_offline()
    import torch

    from app.config import Config
    from app.engine.premises import create_novel, demo_premise_paths, load_premise
    from app.offline import DEFAULT_LM_NAME, default_lm_path
    from app.wiring import open_parts
    from models.service import ModelSpec, load_generator

    premise = next((p for p in map(load_premise, demo_premise_paths()) if p.id == args.premise), None)
    if premise is None:
        parser.error(f"unknown premise {args.premise!r}")
    work = Path(tempfile.mkdtemp(prefix="longhand-llamacpp-steps-"))
    config = Config(data_dir=work, database_url=f"sqlite:///{work / 'steps.db'}", device="cpu", dtype="float32",
                    lm_rerank=bool(args.lm_rerank))
    parts = open_parts(config, models_dir=Path(args.cache_dir))
    embedder = parts.embedder()
    source = ModelSpec("gguf", str(default_lm_path()), DEFAULT_LM_NAME)
    settings = {"sampling": {"seed": args.seed}, "paragraph_prompt": args.paragraph_prompt}
    for key in ("max_new_tokens", "plan_tokens", "memory_words"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)

    started = time.perf_counter()
    loaded: dict[str, object] = {}  # one transformers model per variant, for every thread count
    meters: dict[int, Meter] = {}  # one per backend object (transformers serves every thread count)
    configs = []  # (key, threads, engine, meter, novel id)
    for count in args.threads:
        for name in args.backends:
            if name in LLAMACPP:
                generator = load_generator(source, device="cpu", cache_dir=args.cache_dir, threads=count,
                                           gguf_backend="llama.cpp",
                                           gguf_requantize="off" if name == "llama.cpp-original" else "auto")
            else:
                # One transformers model per variant for every thread count: torch's thread count is set before
                # each step.
                if name not in loaded:
                    loaded[name] = load_generator(source, device="cpu", dtype="float32", cache_dir=args.cache_dir,
                                                  gguf_backend="transformers")
                    if name == "transformers-whole":
                        loaded[name].backend.reuses_prefix = False
                generator = loaded[name]
            meter = meters.setdefault(id(generator.backend), None) or Meter(generator.backend)
            meters[id(generator.backend)] = meter
            novel_id = create_novel(parts.session_factory, embedder, premise, settings=settings)
            configs.append((f"{name}@{count}", count, parts.engine(generator), meter, novel_id))
    load_s = time.perf_counter() - started

    runs: dict[str, list[StepFigures]] = {}
    for number in range(args.steps + 1):
        for key, count, engine, meter, novel_id in configs:
            torch.set_num_threads(count)
            meter.take()
            begun = time.perf_counter()
            _drain(engine.start(novel_id) if number == 0 else engine.step(novel_id, plan_index=0))
            figures = meter.take()
            figures.seconds = time.perf_counter() - begun
            runs.setdefault(key, []).append(figures)
            print(f"step {number} {key}: {figures.seconds:.1f} s, read {figures.prefill_tokens} of "
                  f"{figures.prompt_tokens} prompt tokens, decoded {figures.decode_tokens}", flush=True)
    summary = _summary(runs)
    result = {
        "command": "python -m bench.llamacpp_steps " + " ".join(argv if argv is not None else sys.argv[1:]),
        "what": "the real engine: opening + N steps of one demo novel per configuration, alternating; default "
                "SmolLM2-135M-Instruct Q4_1 GGUF through llama.cpp (its Q8_0 copy, or the file as it is) and through "
                "transformers (fp32); CPU",
        "commit": commit("app", "models", "prompts", "bench"),
        "machine": machine(load_average_at_start=load_at_start, load_average_at_end=list(os.getloadavg())),
        "settings": settings, "lm_rerank": bool(args.lm_rerank), "premise": args.premise, "load_seconds": round(load_s, 1),
        "total_seconds": round(time.perf_counter() - started, 1),
        "transformers_over_llamacpp": _ratios(summary, args.threads),
        "transformers_whole_over_llamacpp": _ratios(summary, args.threads, baseline="transformers-whole"),
        "results": summary,
    }
    if args.out:
        write_result(args.out, result)
    print(json.dumps({"ratios": result["transformers_over_llamacpp"],
                      "ratios_whole": result["transformers_whole_over_llamacpp"],
                      **{k: {m: v for m, v in s.items() if m != "steps"} for k, s in summary.items()}}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
