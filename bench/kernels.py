"""Kernel benchmarks. CPU: repetition penalties + DRY per generated token at 10k, 100k and 1M tokens of history,
ours (kernels.penalties / kernels.dry, incremental state) against a per-token pure-Python implementation of the same
rules (what front ends do today: recount the history, then text-generation-webui's DRY loop), as a ratio measured in
the same run, with every baseline output checked equal to ours. GPU (skipped without CUDA, and said so in the JSON):
SSD scan tokens/s at L = 2k, 8k, 32k, 128k and step latency, against the torch reference, transformers' torch path
and mamba_ssm when importable, with ours' relative error against the fp32 reference; achieved memory bandwidth of
the scan, the step and penalties + DRY as a fraction of peak (spec sheet) and of a measured device-to-device copy.
`bench_gpu` is what bench.gpu_check runs (at TINY_GPU_SIZES on a CPU for its rehearsal).

    python -m bench.kernels --out bench/results/kernels_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

import torch

from bench.report import machine, write_result
from kernels.dry import DryState, apply_dry
from kernels.penalties import PenaltyState, apply_penalties
from kernels.ssd import ssd_chunk_scan, ssd_state_step
from kernels.ssd.reference import ssd_chunk_scan_torch, ssd_step_reference

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


@dataclass(frozen=True)
class GpuSizes:
    """What bench_gpu measures. The default is Mamba2-2.7B's SSD layer: 80 heads of 64, one group, state 128,
    chunk 256, bf16 inputs, 64 layers; TINY runs the same code in seconds on a CPU (bench.gpu_check --dry-run)."""

    heads: int = 80
    head_dim: int = 64
    groups: int = 1
    state_size: int = 128
    chunk_size: int = 256
    layers: int = 64
    scan_lengths: tuple[int, ...] = (2048, 8192, 32768, 131072)
    histories: tuple[int, ...] = (10_000, 100_000, 1_000_000)
    scan_repeats: int = 5
    step_repeats: int = 50
    penalty_repeats: int = 50
    # The torch references build [chunks, chunk, chunk] tensors: past this length they are not run (memory, time).
    reference_max_length: int = 131072


TINY_GPU_SIZES = GpuSizes(heads=4, head_dim=16, groups=1, state_size=16, chunk_size=16, layers=2,
                          scan_lengths=(40, 100), histories=(1000, 5000), scan_repeats=1, step_repeats=1,
                          penalty_repeats=1)


def _device_time(fn, repeats: int, device: torch.device) -> float:
    """Median seconds per call of fn after one warm-up call: CUDA events on a GPU, the host clock elsewhere."""
    fn()
    if device.type != "cuda":
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            fn()
            times.append(time.perf_counter() - started)
        return statistics.median(times)
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


def measured_copy_bandwidth(device: torch.device) -> float:
    """Bytes/s (read + written) of a device-to-device copy of 1 GiB (16 MiB on a CPU): the ceiling we can reach."""
    size = (1 << 30) if device.type == "cuda" else (1 << 24)
    source = torch.empty(size, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    return 2 * size / _device_time(lambda: target.copy_(source), 10, device)


def _peak_bandwidth(device: torch.device) -> tuple[float | None, str]:
    if device.type != "cuda":
        return None, "no spec sheet on a CPU"
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_BANDWIDTH:
        if key in name:
            return value, f"spec sheet ({key})"
    return None, f"no spec sheet entry for {name!r}"


def _error_text(error: Exception) -> str:
    return f"{type(error).__name__}: {(str(error).splitlines() or [''])[0][:200]}"


def _relative_error(out: torch.Tensor, reference: torch.Tensor) -> float:
    reference = reference.double()
    return float((out.double() - reference).norm() / reference.norm().clamp_min(1e-30))


def _fractions(bytes_moved: int, seconds: float, peak: float | None, measured: float) -> dict:
    achieved = bytes_moved / seconds
    return {"bandwidth_bytes_per_s": round(achieved),
            "fraction_of_peak": round(achieved / peak, 3) if peak else None,
            "fraction_of_measured_copy": round(achieved / measured, 3)}


def bench_gpu(device: str = "cuda", sizes: GpuSizes = GpuSizes(), on_update=None) -> dict:
    """Scan/step/penalties on `device` (CUDA; a CPU only to rehearse with TINY_GPU_SIZES under TRITON_INTERPRET=1,
    where our kernels run in Triton's interpreter). Each figure is computed independently; a failure is recorded,
    not raised. `on_update(result)` is called after every row, so a caller that may be killed keeps what was done."""
    device = torch.device(device)
    peak, peak_source = _peak_bandwidth(device)
    run = _GpuRun(device=device, sizes=sizes,
                  # On a CPU the public functions would call their torch references; the rehearsal runs the
                  # Triton launchers.
                  force_triton=device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1",
                  peak=peak, measured=measured_copy_bandwidth(device),
                  generator=torch.Generator(device=device).manual_seed(0), update=on_update or (lambda result: None))
    result: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                    "sizes": asdict(sizes), "peak_bandwidth_bytes_per_s": peak, "peak_source": peak_source,
                    "measured_copy_bandwidth_bytes_per_s": round(run.measured), "triton_forced": run.force_triton,
                    "scan": [], "step": {}, "penalties_dry": []}
    others = _other_implementations(result)
    run.update(result)
    A = -torch.rand(sizes.heads, generator=run.generator, device=device) - 0.5
    D, dt_bias = run.randn(sizes.heads, dtype=torch.float32), run.randn(sizes.heads, dtype=torch.float32)
    _bench_scan(run, result, others, A=A, D=D, dt_bias=dt_bias)
    _bench_step(run, result, others, A=A, D=D, dt_bias=dt_bias)
    _bench_penalties(run, result)
    return result


@dataclass
class _GpuRun:
    """What every part of bench_gpu shares: where it runs, its sizes, the roofline and the progress callback."""
    device: torch.device
    sizes: GpuSizes
    force_triton: bool
    peak: float
    measured: float
    generator: torch.Generator
    update: object

    def randn(self, *shape, dtype=torch.bfloat16):
        return torch.randn(*shape, generator=self.generator, device=self.device).to(dtype)


def _other_implementations(result: dict) -> dict:
    """transformers' torch path and mamba_ssm's kernels where importable (None, noted in `result`, where not)."""
    others = dict.fromkeys(("mamba2_chunk_scan", "mamba2_selective_state_update", "mamba_chunk_scan_combined",
                            "selective_state_update"))
    try:
        from transformers.models.mamba2.modeling_mamba2 import mamba2_chunk_scan, mamba2_selective_state_update
        others.update(mamba2_chunk_scan=mamba2_chunk_scan, mamba2_selective_state_update=mamba2_selective_state_update)
    except ImportError as error:
        result["transformers_torch_path"] = f"not importable: {error}"
    try:
        from mamba_ssm.ops.triton.selective_state_update import selective_state_update
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
        others.update(mamba_chunk_scan_combined=mamba_chunk_scan_combined,
                      selective_state_update=selective_state_update)
    except ImportError as error:
        result["mamba_ssm"] = f"not importable: {error}"
    return others


def _bench_scan(run: _GpuRun, result: dict, others: dict, *, A, D, dt_bias) -> None:
    """The chunked scan at each length: tokens/s and bandwidth per implementation, ours' error vs the reference."""
    s, chunk = run.sizes, run.sizes.chunk_size
    for length in s.scan_lengths:
        x, dt = run.randn(1, length, s.heads, s.head_dim), run.randn(1, length, s.heads, dtype=torch.float32)
        B, C = run.randn(1, length, s.groups, s.state_size), run.randn(1, length, s.groups, s.state_size)
        variants = {
            "ours": lambda: ssd_chunk_scan(x, dt, A, B, C, chunk, D=D, dt_bias=dt_bias, force_triton=run.force_triton),
        }
        if length <= s.reference_max_length:
            variants["torch_reference"] = lambda: ssd_chunk_scan_torch(x, dt, A, B, C, chunk, D=D, dt_bias=dt_bias)
            if others["mamba2_chunk_scan"] is not None:
                variants["transformers_torch"] = lambda: others["mamba2_chunk_scan"](
                    x, dt, A, B, C, chunk, D=D, dt_bias=dt_bias, dt_softplus=True)
        if others["mamba_chunk_scan_combined"] is not None:
            variants["mamba_ssm"] = lambda: others["mamba_chunk_scan_combined"](
                x, dt, A, B, C, chunk, D=D, dt_bias=dt_bias, dt_softplus=True)
        # The fewest bytes a scan moves: x, dt, B and C read once, y written once (the chunk states stay on chip
        # in the best case).
        scan_bytes = (2 * x.numel() * x.element_size() + dt.numel() * dt.element_size()
                      + 2 * B.numel() * B.element_size())
        row: dict = {"L": length, "min_bytes": scan_bytes}
        outputs = {}
        for name, fn in variants.items():
            try:
                seconds = _device_time(fn, s.scan_repeats, run.device)
                row[f"{name}_tokens_per_s"] = round(length / seconds)
                row[f"{name}_bandwidth_fraction_of_peak"] = _fractions(scan_bytes, seconds, run.peak, run.measured)[
                    "fraction_of_peak"]
                if name in ("ours", "torch_reference"):
                    out = fn()
                    outputs[name] = out[0] if isinstance(out, tuple) else out
            except Exception as error:  # e.g. out of memory for the torch paths at 128k
                row[f"{name}_error"] = _error_text(error)
            if run.device.type == "cuda":
                torch.cuda.empty_cache()
        if "ours" in outputs and "torch_reference" in outputs:
            # Correct first: ours against the fp32 reference on these random inputs (bf16 inputs: ~1e-3..1e-2).
            row["ours_relative_error_vs_reference"] = _relative_error(outputs["ours"], outputs["torch_reference"])
        del outputs
        result["scan"].append(row)
        run.update(result)
        print(json.dumps(row), flush=True)


def _bench_step(run: _GpuRun, result: dict, others: dict, *, A, D, dt_bias) -> None:
    """One layer's decode step per implementation: microseconds, steps/s and bandwidth."""
    s, batch = run.sizes, 1
    state = torch.zeros(batch, s.heads, s.head_dim, s.state_size, device=run.device)
    x, dt = run.randn(batch, s.heads, s.head_dim), run.randn(batch, s.heads, dtype=torch.float32)
    B, C = run.randn(batch, s.groups, s.state_size), run.randn(batch, s.groups, s.state_size)
    step_variants = {
        "ours": lambda: ssd_state_step(state, x, dt, A, B, C, D=D, dt_bias=dt_bias, force_triton=run.force_triton),
        "torch_reference": lambda: ssd_step_reference(state.clone(), x, dt, A, B, C, D=D, dt_bias=dt_bias),
    }
    if others["mamba2_selective_state_update"] is not None:
        dt_h = dt[:, :, None].expand(batch, s.heads, s.head_dim)
        A_h = A[:, None, None].expand(s.heads, s.head_dim, s.state_size)
        D_h, bias_h = D[:, None].expand(s.heads, s.head_dim), dt_bias[:, None].expand(s.heads, s.head_dim)
        step_variants["transformers_torch"] = lambda: others["mamba2_selective_state_update"](
            state, x, dt_h, A_h, B, C, D=D_h, dt_bias=bias_h, dt_softplus=True)
        if others["selective_state_update"] is not None:
            step_variants["mamba_ssm"] = lambda: others["selective_state_update"](
                state, x, dt_h, A_h, B, C, D=D_h, dt_bias=bias_h, dt_softplus=True)
    # The step reads and writes the fp32 state once; the rest (x, B, C, y) is negligible.
    step_bytes = 2 * state.numel() * state.element_size()
    for name, fn in step_variants.items():
        try:
            seconds = _device_time(fn, s.step_repeats, run.device)
            # One layer's step per call: a token of the whole model runs `layers` of them.
            result["step"][name] = {"us": round(seconds * 1e6, 2), "layer_steps_per_s": round(1 / seconds),
                                    "ssm_tokens_per_s_all_layers": round(1 / (seconds * s.layers), 1),
                                    **_fractions(step_bytes, seconds, run.peak, run.measured)}
        except Exception as error:
            result["step"][name] = {"error": _error_text(error)}
    run.update(result)


def _bench_penalties(run: _GpuRun, result: dict) -> None:
    """Penalties + DRY per generated token at each history length, against the 100 µs target."""
    for length in run.sizes.histories:
        history, breakers = synthetic_text(length, seed=length % 9973)
        history = history.to(run.device)
        penalty_state = PenaltyState.from_history(history, VOCAB_SIZE)
        dry_state = DryState.from_history(history, breakers, VOCAB_SIZE)
        logits = torch.randn(1, VOCAB_SIZE, device=run.device)
        token = torch.tensor([int(history[-7])], device=run.device)

        def one_token():
            penalty_state.append(token)
            dry_state.append(token)
            return apply_dry(apply_penalties(logits, penalty_state, **PENALTIES), dry_state, **DRY)

        seconds = _device_time(one_token, run.sizes.penalty_repeats, run.device)
        penalty_seconds = _device_time(lambda: apply_penalties(logits, penalty_state, **PENALTIES),
                                       run.sizes.penalty_repeats, run.device)
        # Penalties: logits read and written (fp32), counts read. DRY per token: the update reads history and match
        # and writes match (int32 each), the scatter reads match again, the apply pass reads and writes logits
        # and reads the per-token scratch.
        penalty_bytes = VOCAB_SIZE * (4 + 4 + 4)
        dry_bytes = length * (4 + 4 + 4 + 4) + VOCAB_SIZE * (4 + 4 + 4)
        row = {"history_tokens": length, "penalties_plus_dry_us_per_token": round(seconds * 1e6, 2),
               "penalties_plus_dry_bandwidth_fraction": _fractions(penalty_bytes + dry_bytes, seconds, run.peak,
                                                                   run.measured)["fraction_of_peak"],
               "penalties_us": round(penalty_seconds * 1e6, 2),
               "penalties_bandwidth_fraction": _fractions(penalty_bytes, penalty_seconds, run.peak, run.measured)[
                   "fraction_of_peak"],
               "target_us_per_token": 100}
        result["penalties_dry"].append(row)
        run.update(result)
        print(json.dumps(row), flush=True)


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
    if args.tokens <= WARMUP_TOKENS:
        # The first WARMUP_TOKENS are untimed, so fewer would leave nothing to measure.
        parser.error(f"--tokens must be more than {WARMUP_TOKENS} (the untimed warm-up tokens); got {args.tokens}")
    torch.set_num_threads(args.threads)
    started = datetime.now(timezone.utc)
    report = {
        "command": "python -m bench.kernels " + " ".join(argv if argv is not None else sys.argv[1:]),
        "started_utc": started.isoformat(timespec="seconds"),
        "machine": machine(torch_threads=torch.get_num_threads(), torch=torch.__version__),
        "cpu": bench_cpu([int(n) for n in args.histories.split(",")], args.tokens, args.baseline_budget_s),
    }
    if torch.cuda.is_available():
        report["gpu"] = bench_gpu()
    else:
        report["gpu"] = {"skipped": "no CUDA device on this machine: scan/step tokens/s, step and penalty bandwidth "
                                    "fractions are left for a run on a GPU"}
    report["wall_s"] = round((datetime.now(timezone.utc) - started).total_seconds(), 1)
    write_result(args.out, report)


if __name__ == "__main__":
    main()
