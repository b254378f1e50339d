"""Compile every SSD kernel for a CUDA architecture with Triton's bundled ptxas: no GPU needed.

The interpreter the CPU tests run in does not check what only a GPU compile checks (tile sizes tl.dot accepts,
types, shared memory use), so test_ssd_*.py run this script in a process without TRITON_INTERPRET.
Usage: python ssd_cuda_compile.py <sm>,<dtype>,<head_dim>,<state_size>,<chunk> [...], e.g. 90,bfloat16,64,128,256
"""

import os
import sys

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from kernels.ssd import chunk_scan, state_step

TRITON_TYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}
# Scalar arguments: dt limits are floats, strides may be 64-bit, the rest are 32-bit ints.
FLOAT_ARGS = {"dt_min", "dt_max"}


def signature(kernel, pointer_type: str, constexprs: dict) -> dict:
    types = {}
    for name in kernel.arg_names:
        if name in constexprs:
            types[name] = "constexpr"
        elif name.startswith("p_"):
            # Buffers the launcher allocates in fp32; the inputs in the model dtype.
            types[name] = "*fp32" if name in ("p_states", "p_cum", "p_dt_out", "p_cum_out", "p_final") else pointer_type
        elif name in FLOAT_ARGS:
            types[name] = "fp32"
        else:
            types[name] = "i64" if name.startswith("s_") else "i32"
    return types


def compile_kernel(kernel, target, pointer_type, constexprs) -> int:
    compiled = triton.compile(ASTSource(kernel, signature(kernel, pointer_type, constexprs), constexprs), target=target)
    return compiled.metadata.shared


def compile_all(sm: str, dtype_name: str, head_dim: int, state_size: int, chunk_size: int) -> None:
    target = GPUTarget("cuda", int(sm), 32)
    pointer = "*" + TRITON_TYPES[dtype_name]
    tiles = chunk_scan.scan_tiles(getattr(torch, dtype_name), head_dim, state_size, chunk_size)
    block_p_step = min(state_step._block_p_for(state_size), max(16, triton.next_power_of_2(head_dim)))
    flags = {"HAS_D": True, "HAS_Z": True}
    kernels = {
        "chunk_dt": (chunk_scan._ssd_chunk_dt_kernel,
                     {"HAS_DT_BIAS": True, "DT_SOFTPLUS": True, "CHUNK": tiles.chunk, "BLOCK_H": 8}),
        "chunk_state": (chunk_scan._ssd_chunk_state_kernel,
                        {"CHUNK": tiles.chunk, "BLOCK_P": tiles.block_p, "BLOCK_N": tiles.block_n,
                         "BLOCK_K": tiles.block_m, "DOT_PRECISION": tiles.dot_precision, "DOT_UPCAST": False}),
        "state_passing": (chunk_scan._ssd_state_passing_kernel,
                          {"HAS_INITIAL": True, "CHUNK": tiles.chunk, "BLOCK": 1024}),
        "chunk_output": (chunk_scan._ssd_chunk_output_kernel,
                         flags | {"CHUNK": tiles.chunk, "BLOCK_M": tiles.block_m, "BLOCK_P": tiles.block_p,
                                  "BLOCK_N": tiles.block_n, "DOT_PRECISION": tiles.dot_precision,
                                  "DOT_UPCAST": False}),
        "state_step": (state_step._ssd_state_step_kernel,
                       flags | {"HAS_DT_BIAS": True, "DT_SOFTPLUS": True, "BLOCK_P": block_p_step,
                                "BLOCK_N": max(16, triton.next_power_of_2(state_size))}),
    }
    for name, (kernel, constexprs) in kernels.items():
        shared = compile_kernel(kernel, target, pointer, constexprs)
        print(f"{name}: sm_{sm} {dtype_name} shared={shared}")


def main() -> None:
    assert os.environ.get("TRITON_INTERPRET", "0") == "0", "run without TRITON_INTERPRET"
    for config in sys.argv[1:]:
        sm, dtype_name, head_dim, state_size, chunk_size = config.split(",")
        compile_all(sm, dtype_name, int(head_dim), int(state_size), int(chunk_size))


if __name__ == "__main__":
    main()
