"""The in-place SSD state step (Mamba2 decode): Triton against the fp32 reference, and L steps against one scan."""

import math

import pytest
import torch
from ssd_cases import DEVICE, assert_close, make_inputs

from kernels.ssd import ssd_chunk_scan, ssd_state_step
from kernels.ssd.reference import ssd_scan_reference, ssd_step_reference

# (batch, heads, groups, head_dim, state_size): tiles wider than P and N, P and N that are not powers of two, and
# several head_dim tiles per head (8 rows at N=64, 4 rows at Mamba2's N=128).
SHAPES = [(1, 2, 1, 16, 16), (3, 4, 2, 8, 16), (2, 6, 3, 12, 10), (1, 4, 4, 64, 64), (1, 2, 1, 22, 128)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def token(inputs: dict, t: int) -> dict:
    """The step's arguments for token t of scan-shaped inputs."""
    per_token = {name: inputs[name][:, t] for name in ("x", "dt", "B", "C", "z") if name in inputs}
    return inputs | per_token


def step_inputs(batch, heads, groups, head_dim, state_size, dtype, seed=0, **options) -> tuple[torch.Tensor, dict]:
    inputs = token(make_inputs(batch, 1, heads, groups, head_dim, state_size, dtype, seed, with_initial=True,
                               **options), 0)
    return inputs.pop("initial_state"), inputs


@pytest.mark.parametrize("state_dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_step_matches_reference_with_every_input(shape, dtype, state_dtype):
    state, inputs = step_inputs(*shape, dtype, with_D="head_dim", with_z=True, with_dt_bias=True)
    state = state.to(state_dtype)
    state_ref = state.clone()
    y = torch.full_like(inputs["x"], math.nan)
    result = ssd_state_step(state, **inputs, dt_limit=(0.001, 0.8), force_triton=True, out=y)
    y_ref = ssd_step_reference(state_ref, **inputs, dt_limit=(0.001, 0.8))
    assert result is y and y.dtype == dtype and state.dtype == state_dtype
    assert_close(y, y_ref, dtype, "y")
    # state_ref was rounded to state_dtype by the same copy_, so an fp32 state must match to fp32 precision.
    assert_close(state, state_ref, torch.float32 if state_dtype == torch.float32 else torch.bfloat16, "state")


VARIANTS = {
    "nothing optional": {},
    "D per head": {"with_D": "head"},
    "D per head and channel": {"with_D": "head_dim"},
    "z gate": {"with_z": True},
    "dt_bias": {"with_dt_bias": True},
}
DT_VARIANTS = {
    "softplus": {},
    "no softplus (negative dt clamped to 0)": {"dt_softplus": False},
    "dt limits": {"dt_limit": (0.2, 0.4)},
}


@pytest.mark.parametrize("dt_variant", DT_VARIANTS, ids=str)
@pytest.mark.parametrize("variant", VARIANTS, ids=str)
def test_step_optional_inputs(variant, dt_variant):
    state, inputs = step_inputs(2, 4, 2, 16, 16, torch.float32, seed=1, **VARIANTS[variant])
    state_ref = state.clone()
    y = ssd_state_step(state, **inputs, **DT_VARIANTS[dt_variant], force_triton=True)
    y_ref = ssd_step_reference(state_ref, **inputs, **DT_VARIANTS[dt_variant])
    assert_close(y, y_ref, torch.float32, "y")
    assert_close(state, state_ref, torch.float32, "state")


@pytest.mark.parametrize(
    "length,with_initial", [(1, False), (1, True), (20, False), (63, True)],
    ids=["1 from zero", "1 from a non-zero state", "20 from zero", "63 from a non-zero state"],
)
def test_scanning_equals_single_steps_in_triton(length, with_initial):
    """The prefill/decode contract: scanning L tokens gives the same y and state as L calls of the step."""
    # Small (1 batch, 2 heads in 2 groups): the interpreter pays for every program of every one of the L launches.
    inputs = make_inputs(1, length, 2, 2, 16, 16, torch.float32, seed=2, with_D="head", with_z=True,
                         with_dt_bias=True, with_initial=with_initial)
    initial = inputs.pop("initial_state", None)
    y_scan, final = ssd_chunk_scan(**inputs, chunk_size=16, initial_state=initial, return_final_state=True,
                                   force_triton=True)
    state = torch.zeros_like(final) if initial is None else initial.clone()
    y_steps = torch.stack([ssd_state_step(state, **token(inputs, t), force_triton=True) for t in range(length)], 1)
    assert_close(y_steps, y_scan, torch.float32, "y")
    assert_close(state, final, torch.float32, "state")


def test_scanning_equals_single_steps_on_the_cpu_path():
    """The same contract for the torch path the CPU runtime uses: 257 tokens, chunk 32, from a non-zero state."""
    inputs = make_inputs(2, 257, 4, 2, 8, 12, torch.float32, seed=3, with_D="head_dim", with_z=True,
                         with_dt_bias=True, with_initial=True)
    inputs = {name: t.cpu() for name, t in inputs.items()}
    state = inputs.pop("initial_state")
    y_scan, final = ssd_chunk_scan(**inputs, chunk_size=32, initial_state=state, return_final_state=True)
    state = state.clone()
    y_steps = torch.stack([ssd_state_step(state, **token(inputs, t)) for t in range(257)], 1)
    assert_close(y_steps, y_scan, torch.float32, "y")
    assert_close(state, final, torch.float32, "state")


def test_decode_continues_a_prefill():
    """Prefill 40 tokens, then decode 5 with the step: the same as scanning all 45 (what a runtime does)."""
    inputs = make_inputs(1, 45, 4, 1, 16, 16, torch.float32, seed=4, with_D="head", with_dt_bias=True)
    y_all = ssd_chunk_scan(**inputs, chunk_size=16, force_triton=True)
    prefix = {name: t[:, :40] if t.dim() > 1 else t for name, t in inputs.items()}
    _, state = ssd_chunk_scan(**prefix, chunk_size=16, return_final_state=True, force_triton=True)
    for t in range(40, 45):
        y = ssd_state_step(state, **token(inputs, t), force_triton=True)
        assert_close(y, y_all[:, t], torch.float32, f"y at token {t}")


def test_reference_matches_transformers_torch_step():
    """Our step spec against transformers' torch selective_state_update, called the way its Mamba2Mixer calls it."""
    modeling = pytest.importorskip("transformers.models.mamba2.modeling_mamba2")
    torch_step = getattr(modeling.mamba2_selective_state_update, "__wrapped__",
                         modeling.mamba2_selective_state_update)
    state, inputs = step_inputs(2, 4, 2, 8, 16, torch.float32, seed=5, with_D="head", with_dt_bias=True)
    state, inputs = state.cpu(), {name: t.cpu() for name, t in inputs.items()}
    head_dim, state_size = inputs["x"].shape[-1], inputs["B"].shape[-1]
    state_hf = state.clone()
    y_hf = torch_step(
        state_hf, inputs["x"], inputs["dt"][..., None].expand(-1, -1, head_dim),
        inputs["A"][:, None, None].expand(-1, head_dim, state_size), inputs["B"], inputs["C"],
        inputs["D"][:, None].expand(-1, head_dim), z=None, dt_bias=inputs["dt_bias"][:, None].expand(-1, head_dim),
        dt_softplus=True,
    )
    y_ref = ssd_step_reference(state, **inputs)
    assert_close(y_hf, y_ref, torch.float32, "y")
    assert_close(state_hf, state, torch.float32, "state")


@pytest.mark.parametrize(
    "change,message",
    [
        ({"x": torch.zeros(1, 4, 8, 1)}, "x must be [B, H, P]"),
        ({"state": torch.zeros(1, 4, 16, 8)}, "state must have shape [1, 4, 8, 16], got [1, 4, 16, 8]"),
        ({"dt": torch.zeros(1, 4, 8)}, "dt must have shape [1, 4], got [1, 4, 8]"),
        ({"A": torch.zeros(4, 8, 16)}, "A must have shape [4], got [4, 8, 16]"),
        ({"B": torch.zeros(1, 3, 16), "C": torch.zeros(1, 3, 16)}, "G=3 (B.shape[1]) must divide"),
        ({"z": torch.zeros(1, 4, 9)}, "z must have shape [1, 4, 8], got [1, 4, 9]"),
        ({"dt_bias": torch.zeros(1, 4, 8, dtype=torch.int64)}, "dt_bias must have shape [4]"),
        ({"D": torch.zeros(4, dtype=torch.int64)}, "tensors must be floating point"),
    ],
)
def test_step_rejects_bad_inputs_saying_what_was_expected(change, message):
    args = {"state": torch.zeros(1, 4, 8, 16), "x": torch.zeros(1, 4, 8), "dt": torch.zeros(1, 4),
            "A": -torch.ones(4), "B": torch.zeros(1, 2, 16), "C": torch.zeros(1, 2, 16)}
    with pytest.raises(ValueError) as raised:
        ssd_state_step(**(args | change))
    assert message in str(raised.value)


@pytest.mark.parametrize("force_triton", [True, False], ids=["triton", "torch path"])
def test_prefill_in_place_into_the_initial_state(force_triton):
    """final_state_out may be initial_state itself: a runtime's cache slot updated in place by a prefill."""
    inputs = make_inputs(2, 37, 4, 2, 16, 16, torch.float32, seed=6, with_D="head", with_initial=True)
    if not force_triton:
        inputs = {name: t.cpu() for name, t in inputs.items()}
    cache_slot = inputs.pop("initial_state")
    _, final_ref = ssd_scan_reference(**inputs, initial_state=cache_slot)
    _, final = ssd_chunk_scan(**inputs, chunk_size=16, initial_state=cache_slot, return_final_state=True,
                              final_state_out=cache_slot, force_triton=force_triton)
    assert final is cache_slot
    assert_close(cache_slot, final_ref, torch.float32, "state")
