"""Kernel benchmarks. CPU: repetition penalties + DRY per generated token at 10k, 100k and 1M tokens of history,
ours (kernels.penalties / kernels.dry, incremental state) against a per-token pure-Python implementation of the same
rules (what front ends do today: recount the history, then text-generation-webui's DRY loop), as a ratio measured in
the same run, with every baseline output checked equal to ours. GPU (skipped without CUDA, and said so in the JSON):
SSD scan tokens/s at L = 2k, 8k, 32k, 128k and step latency, against the torch reference, transformers' torch path
and mamba_ssm when importable; achieved memory bandwidth of the step and of penalties + DRY as a fraction of peak.

    python -m bench.kernels --out bench/results/kernels_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections import Counter
from datetime import datetime, timezone

import torch

from kernels.dry import DryState, apply_dry
from kernels.penalties import PenaltyState, apply_penalties

VOCAB_SIZE = 49152  # SmolLM2's, the default model
PENALTIES = {"repetition": 1.1, "presence": 0.1, "frequency": 0.05}
DRY = {"multiplier": 0.8, "base": 1.75, "allowed_length": 2}
WARMUP_TOKENS = 5
# Peak DRAM bandwidth from the spec sheets, matched against torch.cuda.get_device_name().
PEAK_BANDWIDTH = [("H200", 4.8e12), ("H100 NVL", 3.9e12), ("H100 PCIe", 2.0e12), ("H100", 3.35e12),
                  ("A100-SXM4-80GB", 2.039e12), ("A100 80GB PCIe", 1.935e12), ("A100", 1.555e12), ("L40S", 0.864e12),
                  ("L4", 0.3e12), ("RTX 4090", 1.008e12), ("RTX 3090", 0.936e12)]


def synthetic_text(length: int, seed: int) -> tuple[torch.Tensor, set[int]]:
    """Prose-like token ids: Zipf(1.1) over the vocabulary, four breakers at prose frequencies ("\\n" ~1 in 40),
    and 2% of the text copied from earlier passages (names, phrases, refrains), so that DRY finds real repeats."""
    generator = torch.Generator().manual_seed(seed)
    ranks = torch.multinomial(1.0 / torch.arange(1, VOCAB_SIZE + 1, dtype=torch.float64) ** 1.1, length,
                              replacement=True, generator=generator)
    rank_to_token = torch.randperm(VOCAB_SIZE, generator=generator)
    tokens = rank_to_token[ranks]
    breakers = {int(token) for token in rank_to_token[[3, 12, 40, 200]]}
    newline = int(rank_to_token[3])
    tokens[torch.rand(length, generator=generator) < 0.025] = newline
    copies = max(1, length // 2000)
    for _ in range(copies):
        size = int(torch.randint(4, 40, (1,), generator=generator))
        if length <= 2 * size:
            break
        source = int(torch.randint(0, length - 2 * size, (1,), generator=generator))
        target = int(torch.randint(source + size, length - size + 1, (1,), generator=generator))
        tokens[target:target + size] = tokens[source:source + size].clone()
    return tokens, breakers


def continuation(history: torch.Tensor, count: int, seed: int) -> list[int]:
    """Next tokens as a model repeating itself might write them: fresh Zipf text, and a third of the time the
    token that followed an earlier occurrence of the current last token (so repeats grow and DRY fires)."""
    fresh, _ = synthetic_text(count, seed)
    generator = torch.Generator().manual_seed(seed + 1)
    out: list[int] = []
    tail = history[-4096:].tolist()
    for step in range(count):
        token = int(fresh[step])
        last = (tail + out)[-1]
        if torch.rand(1, generator=generator) < 0.33:
            earlier = tail + out
            try:
                position = len(earlier) - 2 - earlier[-2::-1].index(last)
                token = earlier[position + 1]
            except ValueError:
                pass
        out.append(token)
    return out


def python_penalties_and_dry(logits: list[float], history: list[int], breakers: set[int]) -> list[float]:
    """The per-token pure-Python baseline: recount the history, penalize, then text-generation-webui's DRY loop
    (its cap of 50 on the match length lifted, so both sides compute the same rule). O(history) Python per token."""
    logits = list(logits)
    repetition, presence, frequency = PENALTIES["repetition"], PENALTIES["presence"], PENALTIES["frequency"]
    for token, count in Counter(history).items():
        logit = logits[token]
        logit = logit / repetition if logit > 0 else logit * repetition
        logits[token] = logit - (count * frequency + presence)
    last_token = history[-1]
    if last_token not in breakers:
        match_lengths: dict[int, int] = {}
        for i in [idx for idx, val in enumerate(history[:-1]) if val == last_token]:
            next_token = history[i + 1]
            if next_token in breakers:
                continue
            match_length = 1
            while i - match_length >= 0:
                previous_token = history[-(match_length + 1)]
                if history[i - match_length] != previous_token or previous_token in breakers:
                    break
                match_length += 1
            match_lengths[next_token] = max(match_length, match_lengths.get(next_token, 0))
        for token, match_length in match_lengths.items():
            if match_length >= DRY["allowed_length"]:
                logits[token] -= DRY["multiplier"] * DRY["base"] ** (match_length - DRY["allowed_length"])
    return logits


def bench_cpu_history(length: int, tokens: int, baseline_budget_s: float, seed: int) -> dict:
    history, breakers = synthetic_text(length, seed)
    generated = continuation(history, tokens, seed + 7)
    logits = torch.randn(VOCAB_SIZE, generator=torch.Generator().manual_seed(seed)) * 3

    started = time.perf_counter()
    penalty_state = PenaltyState.from_history(history, VOCAB_SIZE)
    dry_state = DryState.from_history(history, breakers, VOCAB_SIZE)
    build_s = time.perf_counter() - started

    ours_s, ours_cpu_s, ours_out, dry_fired = [], [], [], 0
    # Five untimed tokens first: the first calls pay one-off costs (the DRY penalty table, allocator warm-up).
    for token in generated[:WARMUP_TOKENS]:
        penalty_state.append(token)
        dry_state.append(token)
        ours_out.append(apply_dry(apply_penalties(logits, penalty_state, **PENALTIES), dry_state, **DRY))
    for token in generated[WARMUP_TOKENS:]:
        started, started_cpu = time.perf_counter(), time.thread_time()
        penalty_state.append(token)
        dry_state.append(token)
        penalized = apply_penalties(logits, penalty_state, **PENALTIES)
        out = apply_dry(penalized, dry_state, **DRY)
        ours_cpu_s.append(time.thread_time() - started_cpu)
        ours_s.append(time.perf_counter() - started)
        ours_out.append(out)
        dry_fired += int(bool((out != penalized).any()))

    # The baseline, on the same tokens, as many as fit the time budget (at least 3), each checked against ours.
    history_list, logits_list = history.tolist(), logits.tolist()
    base_s, base_cpu_s, max_error = [], [], 0.0
    for step, token in enumerate(generated):
        history_list.append(token)
        started, started_cpu = time.perf_counter(), time.thread_time()
        out = python_penalties_and_dry(logits_list, history_list, breakers)
        base_cpu_s.append(time.thread_time() - started_cpu)
        base_s.append(time.perf_counter() - started)
        max_error = max(max_error, float((torch.tensor(out, dtype=torch.float32) - ours_out[step]).abs().max()))
        if step + 1 >= 3 and sum(base_s) > baseline_budget_s:
            break
    ours_cpu, base_cpu = statistics.fmean(ours_cpu_s), statistics.fmean(base_cpu_s)
    ours_wall, base_wall = statistics.fmean(ours_s), statistics.fmean(base_s)
    return {
        "history_tokens": length,
        "state_build_s": round(build_s, 4),
        "ours_tokens_measured": len(ours_s),
        "ours_cpu_us_per_token_mean": round(ours_cpu * 1e6, 1),
        "ours_wall_us_per_token_mean": round(ours_wall * 1e6, 1),
        "ours_wall_us_per_token_median": round(statistics.median(ours_s) * 1e6, 1),
        "baseline_tokens_measured": len(base_s),
        "baseline_cpu_us_per_token_mean": round(base_cpu * 1e6, 1),
        "baseline_wall_us_per_token_mean": round(base_wall * 1e6, 1),
        "speedup_cpu_time": round(base_cpu / ours_cpu, 1),
        "speedup_wall": round(base_wall / ours_wall, 1),
        "max_abs_difference_vs_baseline": max_error,
        "tokens_where_dry_fired": dry_fired,
    }


def bench_cpu(histories: list[int], tokens: int, baseline_budget_s: float) -> dict:
    rows = []
    for length in histories:
        row = bench_cpu_history(length, tokens, baseline_budget_s, seed=length % 9973)
        print(json.dumps(row), flush=True)
        rows.append(row)
    return {
        "what": "repetition penalties (whole history) + DRY per generated token, CPU, batch 1, V = 49152",
        "parameters": {**PENALTIES, **{f"dry_{key}": value for key, value in DRY.items()}},
        "ours": "PenaltyState/DryState.append + apply_penalties + apply_dry (their CPU paths: torch/numpy on the "
                "seen tokens and on the earlier occurrences of the new token)",
        "baseline": "pure Python per token: Counter over the history + text-generation-webui's DRY loop",
        "note": "each side's per-token cost is measured, not extrapolated; the baseline runs fewer tokens (its time "
                "budget), every one checked against ours (max_abs_difference: our fp32 against python floats). Both "
                "sides run on one thread; speedup_cpu_time compares thread CPU time, which other jobs on a shared machine "
                "distort far less than wall time (reported too, with the load average at start)",
        "histories": rows,
    }


def _cuda_time(fn, repeats: int = 20) -> float:
    """Median seconds per call of fn on the current CUDA stream, after one warm-up call."""
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def _peak_bandwidth() -> tuple[float, str]:
    name = torch.cuda.get_device_name()
    for key, value in PEAK_BANDWIDTH:
        if key in name:
            return value, f"spec sheet ({key})"
    buffer = torch.empty(1 << 28, dtype=torch.uint8, device="cuda")
    seconds = _cuda_time(lambda: buffer.clone())
    return 2 * buffer.numel() / seconds, "measured device-to-device copy"


def bench_gpu() -> dict:
    """Scan/step/penalties on CUDA. Each figure is computed independently; a failure is recorded, not raised."""
    from kernels.ssd import ssd_chunk_scan, ssd_state_step
    from kernels.ssd.reference import ssd_chunk_scan_torch, ssd_step_reference

    peak, peak_source = _peak_bandwidth()
    result: dict = {"device": torch.cuda.get_device_name(), "peak_bandwidth_bytes_per_s": peak,
                    "peak_source": peak_source, "scan": [], "step": {}, "penalties_dry": []}
    try:
        from transformers.models.mamba2.modeling_mamba2 import mamba2_chunk_scan, mamba2_selective_state_update
    except ImportError as error:
        mamba2_chunk_scan = mamba2_selective_state_update = None
        result["transformers_torch_path"] = f"not importable: {error}"
    try:
        from mamba_ssm.ops.triton.selective_state_update import selective_state_update
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
    except ImportError as error:
        mamba_chunk_scan_combined = selective_state_update = None
        result["mamba_ssm"] = f"not importable: {error}"

    # Mamba2-2.7B's SSD shape: 80 heads of 64, one group, state 128, chunk 256, bf16 inputs.
    heads, head_dim, groups, state_size, dtype = 80, 64, 1, 128, torch.bfloat16
    generator = torch.Generator(device="cuda").manual_seed(0)

    def randn(*shape, dtype=dtype):
        return torch.randn(*shape, generator=generator, device="cuda").to(dtype)

    A = -torch.rand(heads, generator=generator, device="cuda") - 0.5
    D, dt_bias = randn(heads, dtype=torch.float32), randn(heads, dtype=torch.float32)
    for length in (2048, 8192, 32768, 131072):
        x, dt = randn(1, length, heads, head_dim), randn(1, length, heads, dtype=torch.float32)
        B, C = randn(1, length, groups, state_size), randn(1, length, groups, state_size)
        variants = {
            "ours": lambda: ssd_chunk_scan(x, dt, A, B, C, 256, D=D, dt_bias=dt_bias),
            "torch_reference": lambda: ssd_chunk_scan_torch(x, dt, A, B, C, 256, D=D, dt_bias=dt_bias),
        }
        if mamba2_chunk_scan is not None:
            variants["transformers_torch"] = lambda: mamba2_chunk_scan(x, dt, A, B, C, 256, D=D, dt_bias=dt_bias,
                                                                        dt_softplus=True)
        if mamba_chunk_scan_combined is not None:
            variants["mamba_ssm"] = lambda: mamba_chunk_scan_combined(x, dt, A, B, C, 256, D=D, dt_bias=dt_bias,
                                                                      dt_softplus=True)
        row: dict = {"L": length}
        for name, fn in variants.items():
            try:
                row[f"{name}_tokens_per_s"] = round(length / _cuda_time(fn, repeats=5))
            except Exception as error:  # e.g. out of memory for the torch paths at 128k
                row[f"{name}_error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
            torch.cuda.empty_cache()
        result["scan"].append(row)
        print(json.dumps(row), flush=True)

    batch = 1
    state = torch.zeros(batch, heads, head_dim, state_size, device="cuda")
    x, dt = randn(batch, heads, head_dim), randn(batch, heads, dtype=torch.float32)
    B, C = randn(batch, groups, state_size), randn(batch, groups, state_size)
    step_variants = {
        "ours": lambda: ssd_state_step(state, x, dt, A, B, C, D=D, dt_bias=dt_bias),
        "torch_reference": lambda: ssd_step_reference(state.clone(), x, dt, A, B, C, D=D, dt_bias=dt_bias),
    }
    if mamba2_selective_state_update is not None:
        dt_h = dt[:, :, None].expand(batch, heads, head_dim)
        A_h = A[:, None, None].expand(heads, head_dim, state_size)
        D_h, bias_h = D[:, None].expand(heads, head_dim), dt_bias[:, None].expand(heads, head_dim)
        step_variants["transformers_torch"] = lambda: mamba2_selective_state_update(
            state, x, dt_h, A_h, B, C, D=D_h, dt_bias=bias_h, dt_softplus=True)
        if selective_state_update is not None:
            step_variants["mamba_ssm"] = lambda: selective_state_update(state, x, dt_h, A_h, B, C, D=D_h,
                                                                         dt_bias=bias_h, dt_softplus=True)
    # The step reads and writes the fp32 state once; the rest (x, B, C, y) is negligible.
    step_bytes = 2 * state.numel() * state.element_size()
    for name, fn in step_variants.items():
        try:
            seconds = _cuda_time(fn, repeats=50)
            result["step"][name] = {"us": round(seconds * 1e6, 2),
                                    "bandwidth_fraction": round(step_bytes / seconds / peak, 3)}
        except Exception as error:
            result["step"][name] = {"error": f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"}

    for length in (10_000, 100_000, 1_000_000):
        history, breakers = synthetic_text(length, seed=length % 9973)
        history = history.cuda()
        penalty_state = PenaltyState.from_history(history, VOCAB_SIZE)
        dry_state = DryState.from_history(history, breakers, VOCAB_SIZE)
        logits = torch.randn(1, VOCAB_SIZE, device="cuda")
        token = torch.tensor([int(history[-7])], device="cuda")

        def one_token():
            penalty_state.append(token)
            dry_state.append(token)
            return apply_dry(apply_penalties(logits, penalty_state, **PENALTIES), dry_state, **DRY)

        seconds = _cuda_time(one_token, repeats=50)
        penalty_seconds = _cuda_time(lambda: apply_penalties(logits, penalty_state, **PENALTIES), repeats=50)
        # Penalties: logits read and written (fp32), counts read. DRY per token: the update reads history and match
        # and writes match (int32 each), the scatter reads match again, the apply pass reads and writes logits
        # and reads the per-token scratch.
        penalty_bytes = VOCAB_SIZE * (4 + 4 + 4)
        dry_bytes = length * (4 + 4 + 4 + 4) + VOCAB_SIZE * (4 + 4 + 4)
        row = {"history_tokens": length, "penalties_plus_dry_us_per_token": round(seconds * 1e6, 2),
               "penalties_plus_dry_bandwidth_fraction": round((penalty_bytes + dry_bytes) / seconds / peak, 3),
               "penalties_us": round(penalty_seconds * 1e6, 2),
               "penalties_bandwidth_fraction": round(penalty_bytes / penalty_seconds / peak, 3)}
        result["penalties_dry"].append(row)
        print(json.dumps(row), flush=True)
    return result


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            cpu = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "logical_cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "load_average_at_start": os.getloadavg(), "python": sys.version.split()[0],
            "torch": torch.__version__, "platform": platform.platform()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results/kernels_cpu.json")
    parser.add_argument("--histories", default="10000,100000,1000000", help="history lengths, comma-separated")
    parser.add_argument("--tokens", type=int, default=200, help="generated tokens timed per history (ours)")
    parser.add_argument("--baseline-budget-s", type=float, default=20.0,
                        help="time budget of the slow baseline per history (at least 3 tokens run)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1: stable figures on a shared machine; the baseline is 1 thread)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = datetime.now(timezone.utc)
    report = {
        "command": "python -m bench.kernels " + " ".join(argv if argv is not None else sys.argv[1:]),
        "started_utc": started.isoformat(timespec="seconds"),
        "machine": machine(),
        "cpu": bench_cpu([int(n) for n in args.histories.split(",")], args.tokens, args.baseline_budget_s),
    }
    if torch.cuda.is_available():
        report["gpu"] = bench_gpu()
    else:
        report["gpu"] = {"skipped": "no CUDA device on this machine: scan/step tokens/s, step and penalty bandwidth "
                                    "fractions are left for a run on a GPU"}
    report["wall_s"] = round((datetime.now(timezone.utc) - started).total_seconds(), 1)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as handle:
        json.dump(report, handle, indent=2)
        handle.write("\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
