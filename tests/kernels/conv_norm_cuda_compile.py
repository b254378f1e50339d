"""Compile the conv1d and gated-norm kernels for a CUDA architecture with Triton's bundled ptxas: no GPU needed.

The CPU tests run in Triton's interpreter, which checks neither types nor what lowering does with barriers, masks
and runtime branches; test_conv1d.py and test_gated_norm.py run this script in a process without TRITON_INTERPRET.
Usage: python conv_norm_cuda_compile.py <sm>:<dtype> ... (e.g. 90:bfloat16 86:float32; dtype bfloat16|float16|float32)
"""

import os
import sys

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from kernels.conv1d import conv1d
from kernels.gated_norm import gated_norm

TRITON_TYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}


def signature(kernel, pointer_type: str, constexprs: dict) -> dict:
    types = {}
    for name in kernel.arg_names:
        if name in constexprs:
            types[name] = "constexpr"
        elif name.endswith("_ptr"):
            types[name] = pointer_type
        elif name == "eps":
            types[name] = "fp32"
        else:
            # Strides and sizes: Triton passes them as 32-bit ints when they fit, which is the case to check.
            types[name] = "i32"
    return types


def compile_all(sm: str, dtype_name: str) -> None:
    target = GPUTarget("cuda", int(sm), 32)
    pointer = "*" + TRITON_TYPES[dtype_name]
    conv_flags = {"W": 4, "HAS_BIAS": True, "HAS_STATE": True, "SILU": True, "BLOCK_D": 32, "BLOCK_S": 4}
    kernels = {
        "conv_prefill": (conv1d._causal_conv1d_kernel,
                         conv_flags | {"WRITE_FINAL": True, "IN_PLACE": False, "BLOCK_L": 64}),
        "conv_update": (conv1d._causal_conv1d_kernel,
                        conv_flags | {"WRITE_FINAL": True, "IN_PLACE": True, "BLOCK_L": 4}),
        "gated_norm": (gated_norm._gated_rms_norm_kernel,
                       {"HAS_Z": True, "NORM_BEFORE_GATE": False, "BLOCK_M": 1, "BLOCK_N": 4096}),
    }
    for name, (kernel, constexprs) in kernels.items():
        compiled = triton.compile(ASTSource(kernel, signature(kernel, pointer, constexprs), constexprs), target=target)
        # The in-place update relies on a barrier between the reads of the state and its overwrite.
        barriers = compiled.asm["ptx"].count("bar.sync") + compiled.asm["ptx"].count("barrier.sync")
        print(f"{name}: sm_{sm} {dtype_name} shared={compiled.metadata.shared} barriers={barriers}")


def main() -> None:
    assert os.environ.get("TRITON_INTERPRET", "0") == "0", "run without TRITON_INTERPRET"
    for pair in sys.argv[1:]:
        compile_all(*pair.split(":"))


if __name__ == "__main__":
    main()
