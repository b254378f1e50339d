"""Decode speed of the native Mamba2 / hybrid runtime vs transformers (with our kernels, and its torch path).

Batch 1, random weights at real shapes (Mamba2-130M, Mamba2-2.7B, Bamba-9B) on a GPU, or tiny shapes on the CPU so
the harness runs anywhere. Every variant runs the same loop the app runs (`Backend.step`, then the argmax read back
to the host), each in its own subprocess so that one variant's kernel installation or memory cannot leak into the
next. Reports tokens/s, the ratio to transformers, and the fraction of the memory-bandwidth roofline: bytes that
must cross memory per token (weights, plus the recurrent state read and written, plus the attention cache read)
times tokens/s, over the device's peak (spec sheet) and over a measured device-to-device copy.

    python -m bench.native --device cpu --out bench/results/native_cpu.json
    python -m bench.native --device cuda --out bench/results/native_gpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone

import torch

from models.mamba2.config import PRESETS, Mamba2Config

# Each variant times this many bursts of the decode loop (continuing the same text) and keeps the fastest: the
# others only measure interference from whatever else shares the machine. A shared CPU needs many short bursts.
REPEATS = {"cuda": 3, "cpu": 10}
VARIANTS = ("native", "native_sampled", "hf_kernels", "hf_torch")
GPU_SHAPES = ("mamba2-130m", "mamba2-2.7b", "bamba-9b")
# Tiny shapes for the CPU run: big enough that the model (not Python) shows, small enough to finish in a minute.
CPU_SHAPES = {
    "tiny-mamba2": Mamba2Config(family="mamba2", vocab_size=2048, hidden_size=256, n_layers=4, state_size=32,
                                head_dim=32, n_groups=1, chunk_size=64, tie_embeddings=True, eos_token_ids=[0]),
    "tiny-bamba": Mamba2Config(family="bamba", vocab_size=2048, hidden_size=256, n_layers=4,
                               layer_types=["mamba", "mamba", "attention", "mamba"], state_size=32, head_dim=32,
                               n_groups=1, chunk_size=64, residual_in_fp32=False, tie_embeddings=False,
                               n_attention_heads=4, n_kv_heads=2, partial_rotary_factor=0.5,
                               mlp_intermediate_size=512, eos_token_ids=[0]),
}
# Peak DRAM bandwidth from the spec sheets, matched against torch.cuda.get_device_name().
PEAK_BANDWIDTH = [("H200", 4.8e12), ("H100 NVL", 3.9e12), ("H100 PCIe", 2.0e12), ("H100", 3.35e12),
                  ("A100-SXM4-80GB", 2.039e12), ("A100 80GB PCIe", 1.935e12), ("A100", 1.555e12), ("L40S", 0.864e12),
                  ("L4", 0.3e12), ("RTX 4090", 1.008e12), ("RTX 3090", 0.936e12)]


def shape_config(shape: str) -> Mamba2Config:
    return CPU_SHAPES[shape] if shape in CPU_SHAPES else PRESETS[shape]


def hf_config(config: Mamba2Config):
    """The transformers config of the same shape."""
    from transformers import BambaConfig, Mamba2Config as HFMamba2Config

    c = config
    if c.family == "mamba2":
        return HFMamba2Config(vocab_size=c.vocab_size, hidden_size=c.hidden_size, num_hidden_layers=c.n_layers,
                              state_size=c.state_size, expand=c.expand, head_dim=c.head_dim, num_heads=c.n_heads,
                              n_groups=c.n_groups, conv_kernel=c.conv_kernel, chunk_size=c.chunk_size,
                              tie_word_embeddings=c.tie_embeddings)
    return BambaConfig(vocab_size=c.vocab_size, hidden_size=c.hidden_size, num_hidden_layers=c.n_layers,
                       attn_layer_indices=c.attention_layers, num_attention_heads=c.n_attention_heads,
                       num_key_value_heads=c.n_kv_heads, intermediate_size=c.mlp_intermediate_size,
                       mamba_n_heads=c.n_heads, mamba_d_head=c.head_dim, mamba_n_groups=c.n_groups,
                       mamba_d_state=c.state_size, mamba_d_conv=c.conv_kernel, mamba_chunk_size=c.chunk_size,
                       tie_word_embeddings=c.tie_embeddings)


def bytes_per_token(config: Mamba2Config, dtype: torch.dtype, context: int) -> int:
    """What one decode step must move at least: each weight once (one embedding row, the whole head), the SSM and
    conv state read and written, the attention cache read up to `context`."""
    c = config
    element = torch.finfo(dtype).bits // 8
    embedding = c.vocab_size * c.hidden_size
    weights = (c.n_params() - embedding + c.hidden_size) * element
    if c.tie_embeddings:
        weights += embedding * element  # the tied embedding is the head, read whole
    n_mamba = len(c.mamba_layers)
    ssm = n_mamba * c.n_heads * c.head_dim * c.state_size * 4
    conv = n_mamba * c.conv_dim * (c.conv_kernel - 1) * element
    kv = 2 * len(c.attention_layers) * c.n_kv_heads * c.attention_head_dim * context * element
    return weights + 2 * ssm + 2 * conv + kv


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _backend(variant: str, config: Mamba2Config, device: torch.device, dtype: torch.dtype, max_seq_len: int):
    if variant in ("native", "native_sampled"):
        from models.mamba2.backend import NativeBackend
        from models.mamba2.model import build_model

        model = build_model(config, device, dtype).init_random_(seed=0)
        return NativeBackend(model, name=f"native-{config.family}", identity="bench", max_seq_len=max_seq_len)
    from transformers import BambaForCausalLM, Mamba2ForCausalLM

    from models.hf_backend import TransformersBackend
    from models.mamba2.model import randomize_

    if variant == "hf_kernels":
        from kernels import hf_provider

        hf_provider.install()
    cls = Mamba2ForCausalLM if config.family == "mamba2" else BambaForCausalLM
    with torch.device(device):
        model = cls._from_config(hf_config(config), dtype=dtype)
    randomize_(model, seed=0)
    return TransformersBackend(model, None, name=f"hf-{config.family}", identity="bench")


def run_variant(variant: str, shape: str, device_name: str, dtype_name: str, prompt_len: int, new_tokens: int) -> dict:
    """One measurement, in this process: tokens/s of the fastest of REPEATS bursts of `new_tokens` decode steps
    after a `prompt_len` prefill."""
    device, dtype = torch.device(device_name), getattr(torch, dtype_name)
    repeats = REPEATS[device.type]
    if device.type == "cpu":
        # One thread: batch-1 decode of tiny shapes is latency-bound, and on a shared machine OpenMP's spinning
        # threads make every variant's timing noise rather than measurement.
        torch.set_num_threads(1)
    config = shape_config(shape)
    torch.manual_seed(0)
    backend = _backend(variant, config, device, dtype, max_seq_len=prompt_len + repeats * new_tokens + 16)
    prompt = torch.randint(1, config.vocab_size, (prompt_len,)).tolist()
    if variant == "native_sampled":
        seconds, state = _time_device_sampler(backend, prompt, new_tokens, repeats, device)
    else:
        seconds, state = _time_steps(backend, prompt, new_tokens, repeats, device)
    context = prompt_len + 3 + repeats * new_tokens // 2
    return {"variant": variant, "shape": shape, "tokens": new_tokens, "seconds": round(seconds, 4),
            "tokens_per_s": round(new_tokens / seconds, 2),
            "bytes_per_token": bytes_per_token(config, dtype, context),
            "state_bytes": int(backend.state_nbytes(state)),
            "cuda_graph": bool(getattr(backend, "use_cuda_graph", False))}


def _time_steps(backend, prompt: list[int], new_tokens: int, repeats: int, device: torch.device):
    """Greedy decode through `Backend.step`, the argmax read back each token (as the app's loop does)."""
    with torch.inference_mode():
        state = backend.new_state()
        logits = backend.prefill(state, prompt)
        # Warm-up: Triton compiles and (native on CUDA) the graph is captured on the first step.
        for _ in range(3):
            logits = backend.step(state, int(logits.argmax()))
        best = float("inf")
        for _ in range(repeats):
            _sync(device)
            started = time.perf_counter()
            for _ in range(new_tokens):
                logits = backend.step(state, int(logits.argmax()))
            _sync(device)
            best = min(best, time.perf_counter() - started)
    return best, state


def _time_device_sampler(backend, prompt: list[int], new_tokens: int, repeats: int, device: torch.device):
    """Sampled decode with penalties, all on the device (fused into the step's graph on CUDA)."""
    from models.sampling import PenaltyParams, SamplingParams

    sampling = SamplingParams(temperature=0.8, top_k=0, top_p=0.95, min_p=0.05)
    penalties = PenaltyParams(repetition=1.1, presence=0.1, frequency=0.05)
    with torch.inference_mode():
        state = backend.new_state()
        sampler = backend.sampler(state, sampling, penalties, history_ids=prompt, seed=0)
        token = sampler.first(backend.prefill(state, prompt))
        for _ in range(3):
            token = sampler.next(token)
        best = float("inf")
        for _ in range(repeats):
            _sync(device)
            started = time.perf_counter()
            for _ in range(new_tokens):
                token = sampler.next(token)
            _sync(device)
            best = min(best, time.perf_counter() - started)
    return best, state


def measured_bandwidth(device: torch.device) -> float:
    """Achievable bytes/s of a large device-to-device copy (read + write)."""
    size = (1 << 30) if device.type == "cuda" else (1 << 27)
    src = torch.empty(size, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    _sync(device)
    runs = 10 if device.type == "cuda" else 3
    started = time.perf_counter()
    for _ in range(runs):
        dst.copy_(src)
    _sync(device)
    return 2 * size * runs / (time.perf_counter() - started)


def peak_bandwidth(device: torch.device) -> tuple[str, float | None]:
    if device.type != "cuda":
        return platform.processor() or platform.machine(), None
    name = torch.cuda.get_device_name(device)
    return name, next((bw for key, bw in PEAK_BANDWIDTH if key in name), None)


def _subprocess(variant: str, shape: str, device: str, dtype: str, prompt_len: int, new_tokens: int,
                timeout: int) -> dict:
    command = [sys.executable, "-m", "bench.native", "--one", variant, shape, "--device", device, "--dtype", dtype,
               "--prompt-len", str(prompt_len), "--tokens", str(new_tokens)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=os.environ.copy())
    except subprocess.TimeoutExpired:
        return {"variant": variant, "shape": shape, "error": f"timed out after {timeout} s"}
    if done.returncode != 0:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        return {"variant": variant, "shape": shape, "error": lines[-1] if lines else f"exit {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def section(device: str, dtype: str, shapes, prompt_len: int, new_tokens: int, timeout: int,
            on_update=None) -> dict:
    """Every variant at every shape, each in its own subprocess. `on_update(report)` is called after every variant,
    so a caller that may be killed keeps what was measured."""
    torch_device = torch.device(device)
    name, peak = peak_bandwidth(torch_device)
    measured = measured_bandwidth(torch_device)
    report = {"device": name, "dtype": dtype, "cpu_count": os.cpu_count(), "peak_bandwidth_bytes_per_s": peak,
              "measured_copy_bandwidth_bytes_per_s": round(measured), "prompt_tokens": prompt_len,
              "decode_tokens": new_tokens, "best_of": REPEATS[torch_device.type], "batch": 1, "shapes": []}
    for shape in shapes:
        rows: dict[str, dict] = {}
        report["shapes"].append({"shape": shape, "config": _shape_summary(shape_config(shape)), "runs": []})
        for variant in VARIANTS:
            row = rows[variant] = _subprocess(variant, shape, device, dtype, prompt_len, new_tokens, timeout)
            print(json.dumps(row), file=sys.stderr)
            if "tokens_per_s" in row:
                achieved = row["bytes_per_token"] * row["tokens_per_s"]
                row["fraction_of_measured_copy_bandwidth"] = round(achieved / measured, 4)
                row["fraction_of_peak_bandwidth"] = round(achieved / peak, 4) if peak else None
            report["shapes"][-1]["runs"].append(row)
            if on_update is not None:
                on_update(report)
        for ours in ("native", "native_sampled"):
            mine = rows[ours].get("tokens_per_s")
            for variant in ("hf_kernels", "hf_torch"):
                other = rows[variant].get("tokens_per_s")
                rows[ours][f"speedup_vs_{variant}"] = round(mine / other, 2) if mine and other else None
    # Load average at the end of the section: other work on the machine shows up in every figure here.
    report["load_average_1m"] = round(os.getloadavg()[0], 2)
    return report


def _shape_summary(config: Mamba2Config) -> dict:
    return {"family": config.family, "params": config.n_params(), "layers": config.n_layers,
            "hidden_size": config.hidden_size, "attention_layers": config.attention_layers}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on cuda, float32 on cpu")
    parser.add_argument("--prompt-len", type=int, default=None)
    parser.add_argument("--tokens", type=int, default=None, help="decode steps timed per variant")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per variant")
    parser.add_argument("--shapes", nargs="+", default=None,
                        help=f"default: {' '.join(GPU_SHAPES)} on cuda, {' '.join(CPU_SHAPES)} on cpu")
    parser.add_argument("--out", default=None, help="write the JSON here (default: print it)")
    parser.add_argument("--one", nargs=2, metavar=("VARIANT", "SHAPE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    gpu = args.device == "cuda"
    dtype = args.dtype or ("bfloat16" if gpu else "float32")
    prompt_len = args.prompt_len or (512 if gpu else 32)
    new_tokens = args.tokens or (512 if gpu else 32)
    if args.one:
        print(json.dumps(run_variant(args.one[0], args.one[1], args.device, dtype, prompt_len, new_tokens)))
        return
    report = {
        "command": "python -m bench.native " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "variants": {"native": "models.mamba2 NativeBackend.step, greedy, argmax read back per token "
                               "(CUDA graph on GPU)",
                 "native_sampled": "NativeBackend.sampler: temperature/top-p/min-p + repetition/presence/frequency "
                                   "penalties on the device, fused into the step's graph on GPU",
                     "hf_kernels": "transformers + kernels.hf_provider.install(), through models.hf_backend",
                     "hf_torch": "transformers' torch path, through models.hf_backend"},
    }
    if gpu:
        report["gpu"] = section("cuda", dtype, args.shapes or GPU_SHAPES, prompt_len, new_tokens, args.timeout)
    else:
        report["gpu"] = {"skipped": True, "reason": "no CUDA device in this run (torch.cuda.is_available() is "
                         f"{torch.cuda.is_available()}); run `python -m bench.native --device cuda` on a GPU"}
        report["cpu"] = section("cpu", dtype, args.shapes or list(CPU_SHAPES), prompt_len, new_tokens, args.timeout)
        report["cpu"]["note"] = ("tiny shapes that exercise the harness, one torch thread per variant; on CPU every "
                                 "variant runs torch code (our kernels dispatch to their references), so these "
                                 "figures say nothing about the GPU targets")
    text = json.dumps(report, indent=2)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
