"""The chunked SSD scan (Mamba2 prefill): Triton against the fp32 reference, the reference against transformers."""

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ssd_cases import DEVICE, TOLERANCE, assert_close, make_inputs

from kernels.ssd import ssd_chunk_scan
from kernels.ssd.reference import ssd_chunk_scan_torch, ssd_scan_reference

# (batch, L, heads, groups, head_dim, state_size, chunk_size): L of 1, below and far above the chunk size, never a
# multiple of it; head_dim and state_size below the 16-wide tiles or not powers of two, so the masks are exercised;
# the last has several row tiles per chunk and several head_dim tiles per head (the GPU tile sizes).
SHAPES = [
    (1, 1, 2, 1, 16, 16, 16),
    (2, 63, 4, 2, 16, 16, 16),
    (1, 257, 4, 4, 8, 16, 32),
    (2, 100, 6, 3, 12, 10, 32),
    (1, 150, 2, 1, 80, 24, 128),
]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def run_triton(inputs, chunk_size, **options):
    """The Triton path, into outputs filled with NaN so that any element the kernels never write shows."""
    batch, length, heads, head_dim = inputs["x"].shape
    y = torch.full_like(inputs["x"], math.nan)
    final = torch.full((batch, heads, head_dim, inputs["B"].shape[-1]), math.nan, device=DEVICE)
    result = ssd_chunk_scan(**inputs, chunk_size=chunk_size, return_final_state=True, force_triton=True, out=y,
                            final_state_out=final, **options)
    assert result[0] is y and result[1] is final
    return y, final


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_scan_matches_reference_with_every_input(shape, dtype):
    batch, length, heads, groups, head_dim, state_size, chunk = shape
    inputs = make_inputs(batch, length, heads, groups, head_dim, state_size, dtype, with_D="head_dim", with_z=True,
                         with_dt_bias=True, with_initial=True)
    y, final = run_triton(inputs, chunk, dt_limit=(0.001, 0.8))
    y_ref, final_ref = ssd_scan_reference(**inputs, dt_limit=(0.001, 0.8))
    assert y.dtype == dtype
    assert_close(y, y_ref, dtype, "y")
    assert_close(final, final_ref, dtype, "final state")


# Each optional input alone, and the ways dt can be processed.
VARIANTS = {
    "nothing optional": {},
    "D per head": {"with_D": "head"},
    "D per head and channel": {"with_D": "head_dim"},
    "z gate": {"with_z": True},
    "dt_bias": {"with_dt_bias": True},
    "initial state": {"with_initial": True},
}
DT_VARIANTS = {
    "softplus": {},
    "no softplus (negative dt clamped to 0)": {"dt_softplus": False},
    "dt limits": {"dt_limit": (0.2, 0.4)},
}


@pytest.mark.parametrize("variant", VARIANTS, ids=str)
def test_scan_optional_inputs(variant):
    inputs = make_inputs(2, 40, 4, 2, 16, 16, torch.float32, seed=1, **VARIANTS[variant])
    y, final = run_triton(inputs, 16)
    y_ref, final_ref = ssd_scan_reference(**inputs)
    assert_close(y, y_ref, torch.float32, "y")
    assert_close(final, final_ref, torch.float32, "final state")


@pytest.mark.parametrize("variant", DT_VARIANTS, ids=str)
def test_scan_dt_processing(variant):
    inputs = make_inputs(1, 40, 2, 1, 16, 16, torch.float32, seed=2, with_dt_bias=True)
    y, final = run_triton(inputs, 16, **DT_VARIANTS[variant])
    y_ref, final_ref = ssd_scan_reference(**inputs, **DT_VARIANTS[variant])
    assert_close(y, y_ref, torch.float32, "y")
    assert_close(final, final_ref, torch.float32, "final state")


def test_scan_reads_strided_views_as_transformers_passes_them():
    """x, B, C as views into one projected tensor (how Mamba2 splits xBC), dt a view too; chunk_size 256 > L."""
    batch, length, heads, groups, head_dim, state_size = 2, 70, 4, 2, 16, 16
    width = heads * head_dim + 2 * groups * state_size + heads
    projected = torch.randn(batch, length, width, generator=torch.Generator().manual_seed(3)).to(DEVICE)
    x, B, C, dt = projected.split([heads * head_dim, groups * state_size, groups * state_size, heads], dim=-1)
    inputs = {
        "x": x.view(batch, length, heads, head_dim),
        "dt": dt,
        "A": -torch.linspace(0.05, 1.0, heads, device=DEVICE),
        "B": B.view(batch, length, groups, state_size),
        "C": C.view(batch, length, groups, state_size),
        "D": torch.ones(heads, device=DEVICE),
    }
    assert not inputs["x"].is_contiguous()
    y, final = run_triton(inputs, 256)
    y_ref, final_ref = ssd_scan_reference(**inputs)
    assert_close(y, y_ref, torch.float32, "y")
    assert_close(final, final_ref, torch.float32, "final state")


@pytest.mark.parametrize("length,chunk", [(1, 16), (63, 16), (257, 32), (257, 256)])
def test_chunked_torch_path_matches_the_sequential_reference(length, chunk):
    """The CPU path of ssd_chunk_scan (chunked torch) against the spec: L single steps."""
    inputs = make_inputs(2, length, 4, 2, 8, 12, torch.float32, seed=4, with_D="head", with_z=True,
                         with_dt_bias=True, with_initial=True)
    inputs = {name: t.cpu() for name, t in inputs.items()}
    y, final = ssd_chunk_scan(**inputs, chunk_size=chunk, return_final_state=True)
    y_ref, final_ref = ssd_scan_reference(**inputs)
    assert_close(y, y_ref, torch.float32, "y")
    assert_close(final, final_ref, torch.float32, "final state")
    y_direct, _ = ssd_chunk_scan_torch(**inputs, chunk_size=chunk)
    assert torch.equal(y_direct, y)


def test_scan_returns_y_alone_in_the_input_dtype():
    inputs = make_inputs(1, 20, 2, 1, 16, 16, torch.bfloat16)
    y = ssd_chunk_scan(**inputs, chunk_size=16, force_triton=True)
    assert isinstance(y, torch.Tensor) and y.dtype == torch.bfloat16 and y.shape == inputs["x"].shape
    y_cpu, final_cpu = ssd_chunk_scan(**{n: t.cpu() for n, t in inputs.items()}, chunk_size=16,
                                      return_final_state=True)
    assert y_cpu.dtype == torch.bfloat16 and final_cpu.dtype == torch.float32
    assert_close(y, y_cpu, torch.bfloat16, "y")


def test_reference_matches_transformers_torch_path():
    """Our spec against transformers' own torch Mamba2 scan (D per head, no z: what its Mamba2Mixer passes)."""
    modeling = pytest.importorskip("transformers.models.mamba2.modeling_mamba2")
    torch_scan = getattr(modeling.mamba2_chunk_scan, "__wrapped__", modeling.mamba2_chunk_scan)
    inputs = make_inputs(2, 45, 4, 2, 8, 16, torch.float32, seed=5, with_D="head", with_dt_bias=True,
                         with_initial=True)
    inputs = {name: t.cpu() for name, t in inputs.items()}
    y_hf, final_hf = torch_scan(
        inputs["x"], inputs["dt"], inputs["A"], inputs["B"], inputs["C"], chunk_size=16, D=inputs["D"],
        dt_bias=inputs["dt_bias"], initial_states=inputs["initial_state"], dt_softplus=True, dt_limit=(0.0, 0.5),
        return_final_states=True,
    )
    y_ref, final_ref = ssd_scan_reference(**inputs, dt_limit=(0.0, 0.5))
    assert_close(y_hf, y_ref, torch.float32, "y")
    assert_close(final_hf, final_ref, torch.float32, "final state")


@pytest.mark.parametrize(
    "change,message",
    [
        ({"x": torch.zeros(1, 5, 4, 8, 1)}, "x must be [B, L, H, P]"),
        ({"dt": torch.zeros(1, 5, 3)}, "dt must have shape [1, 5, 4], got [1, 5, 3]"),
        ({"B": torch.zeros(1, 5, 3, 16), "C": torch.zeros(1, 5, 3, 16)}, "G=3 (B.shape[2]) must divide"),
        ({"C": torch.zeros(1, 5, 2, 8)}, "C must have shape [1, 5, 2, 16], got [1, 5, 2, 8]"),
        ({"D": torch.zeros(8)}, "D must have shape [4] or [4, 8], got [8]"),
        ({"initial_state": torch.zeros(1, 4, 16, 8)}, "initial_state must have shape [1, 4, 8, 16]"),
        ({"x": torch.zeros(1, 0, 4, 8), "dt": torch.zeros(1, 0, 4), "B": torch.zeros(1, 0, 2, 16),
          "C": torch.zeros(1, 0, 2, 16)}, "at least one token"),
        ({"chunk_size": 0}, "chunk_size must be a positive int"),
        ({"dt_limit": (1.0, 0.5)}, "min <= max"),
    ],
)
def test_scan_rejects_bad_inputs_saying_what_was_expected(change, message):
    args = {"x": torch.zeros(1, 5, 4, 8), "dt": torch.zeros(1, 5, 4), "A": -torch.ones(4),
            "B": torch.zeros(1, 5, 2, 16), "C": torch.zeros(1, 5, 2, 16)}
    with pytest.raises(ValueError) as raised:
        ssd_chunk_scan(**(args | change))
    assert message in str(raised.value)


def test_tolerances_are_tight_enough_to_catch_a_wrong_decay():
    """The fp32 tolerance must fail a plausible bug: the decay applied one step late."""
    inputs = make_inputs(1, 30, 2, 1, 8, 8, torch.float32, seed=6)
    y_ref, _ = ssd_scan_reference(**inputs)
    wrong = dict(inputs, A=inputs["A"] * 1.01)
    y_wrong, _ = ssd_scan_reference(**wrong)
    error = (y_wrong - y_ref).abs().max() / max(1.0, y_ref.abs().max().item())
    assert error > 10 * TOLERANCE[torch.float32]


def test_kernels_compile_for_cuda_without_a_gpu():
    """Every SSD kernel (scan and step) compiles to a cubin with the launchers' tile table, through ptxas.

    The interpreter never checks what only a real compile does (tl.dot tile rules, types, shared memory). Configs:
    Mamba2 in bf16 on an H100, fp32 on an RTX 30xx (about 100 KB of shared memory), fp16 with N=256 on an A100.
    """
    configs = ["90,bfloat16,64,128,256", "86,float32,64,128,256", "80,float16,64,256,128"]
    root = Path(__file__).resolve().parents[2]
    env = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    env |= {"PYTHONPATH": str(root), "TRITON_DEFAULT_FP_FUSION": "1"}
    script = Path(__file__).with_name("ssd_cuda_compile.py")
    done = subprocess.run([sys.executable, str(script), *configs], env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    for config in configs:
        arch, dtype = config.split(",")[:2]
        assert done.stdout.count(f"sm_{arch} {dtype}") == 5, done.stdout
