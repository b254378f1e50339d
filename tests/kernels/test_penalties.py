"""Repetition penalties: the incremental device counts and both paths (Triton: interpreter on CPU, real on GPU;
torch on CPU) against the recount-from-scratch reference.

Both paths do the reference's fp32 arithmetic in the same order and round once to the logits dtype, so on the CPU
they must match bit for bit; on a GPU the compiler may fuse c * frequency + presence into one FMA (1 ulp).
One exception: Triton's interpreter casts fp32 to bf16 by truncation, not round-to-nearest, so bf16 outputs of
the Triton path may differ by one bf16 ulp (2^-7 relative).
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels.penalties import PenaltyState, apply_penalties, apply_penalties_reference, token_counts_reference

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
EXACT = {"rtol": 0.0, "atol": 0.0} if DEVICE == "cpu" else {"rtol": 1e-6, "atol": 1e-6}
ONE_BF16_ULP = {"rtol": 2**-7, "atol": 0.0}
PATHS = [pytest.param(True, id="triton"), pytest.param(False, id="torch")]


def make_logits(batch, vocab_size, dtype, seed=0):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, vocab_size, generator=generator) * 4
    # Exact zeros and negatives exercise both branches of the sign rule.
    logits[:, ::5] = 0.0
    return logits.to(dtype)


def run_paths(logits, histories, vocab_size, range_, force_triton, **penalties):
    """Build a state from all but the last 12 tokens of each history, append those one by one, then apply."""
    histories = torch.as_tensor(histories, dtype=torch.long)
    half = max(0, histories.shape[1] - 12)
    state = PenaltyState.from_history(histories[:, :half].to(DEVICE), vocab_size, range_, force_triton=force_triton)
    for column in histories[:, half:].T:
        state.append(column.to(DEVICE))
    out = apply_penalties(logits.to(DEVICE), state, force_triton=force_triton, **penalties)
    return state, out.cpu()


@pytest.mark.parametrize("force_triton", PATHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("batch,vocab_size,length", [(1, 1, 5), (1, 63, 40), (3, 1031, 257), (2, 2500, 1)])
@pytest.mark.parametrize("range_", [0, 1, 7, 10_000])
def test_matches_reference(force_triton, dtype, batch, vocab_size, length, range_):
    generator = torch.Generator().manual_seed(batch * 1000 + length)
    histories = torch.randint(0, min(vocab_size, 50), (batch, length), generator=generator)
    logits = make_logits(batch, vocab_size, dtype)
    params = {"repetition": 1.3, "presence": 0.4, "frequency": 0.15}
    state, out = run_paths(logits, histories, vocab_size, range_, force_triton, **params)
    expected = apply_penalties_reference(logits, histories.tolist(), range=range_, **params)
    assert out.dtype == dtype
    tolerance = ONE_BF16_ULP if dtype == torch.bfloat16 and force_triton else EXACT
    torch.testing.assert_close(out, expected, **tolerance)
    for row in range(batch):
        counts = token_counts_reference(histories[row].tolist(), vocab_size, range_)
        assert torch.equal(state.counts[row].cpu().long(), counts)


@pytest.mark.parametrize("force_triton", PATHS)
def test_range_forgets_tokens_that_leave_the_window(force_triton):
    state = PenaltyState.from_history(torch.tensor([5, 5, 5], device=DEVICE), 10, range=3, force_triton=force_triton)
    assert state.counts[0, 5] == 3
    state.append(7)
    assert state.counts[0, 5] == 2 and state.counts[0, 7] == 1
    for _ in range(2):
        state.append(7)
    assert state.counts[0, 5] == 0 and state.counts[0, 7] == 3
    logits = torch.ones(10, device=DEVICE)
    out = apply_penalties(logits, state, repetition=2.0, presence=1.0, force_triton=force_triton).cpu()
    # Token 5 left the window: untouched. Token 7: 1 / 2 - 1 = -0.5.
    assert out[5] == 1.0 and out[7] == -0.5


@pytest.mark.parametrize("force_triton", PATHS)
def test_sign_rule_and_counts(force_triton):
    """Hand-computed: positive logits are divided, negative multiplied, then count * frequency + presence."""
    state = PenaltyState.from_history(torch.tensor([[1, 2, 2, 3, 3, 3]], device=DEVICE), 5, force_triton=force_triton)
    logits = torch.tensor([[2.0, 2.0, -2.0, 0.0, 1.0]], device=DEVICE)
    out = apply_penalties(logits, state, repetition=2.0, presence=0.5, frequency=0.25, force_triton=force_triton)
    expected = torch.tensor([[2.0, 1.0 - 0.75, -4.0 - 1.0, 0.0 - 1.25, 1.0]])
    torch.testing.assert_close(out.cpu(), expected, rtol=0, atol=0)


@pytest.mark.parametrize("force_triton", PATHS)
def test_empty_history_then_appends(force_triton):
    state = PenaltyState.from_history(torch.zeros(2, 0, dtype=torch.long, device=DEVICE), 4,
                                      force_triton=force_triton)
    logits = torch.full((2, 4), 3.0, device=DEVICE)
    assert torch.equal(apply_penalties(logits, state, 1.5, 1.0, 1.0, force_triton=force_triton), logits)
    state.append(torch.tensor([0, 3], device=DEVICE))
    out = apply_penalties(logits, state, frequency=1.0, force_triton=force_triton).cpu()
    assert out.tolist() == [[2.0, 3.0, 3.0, 3.0], [3.0, 3.0, 3.0, 2.0]]
    assert state.length == 1


@settings(max_examples=25, deadline=None)
@given(
    history=st.lists(st.integers(0, 11), min_size=0, max_size=80),
    extra=st.lists(st.integers(0, 11), min_size=0, max_size=20),
    range_=st.integers(0, 30),
    repetition=st.floats(0.5, 2.0),
    presence=st.floats(-1.0, 1.0),
    frequency=st.floats(-1.0, 1.0),
    force_triton=st.booleans(),
)
def test_random_histories(history, extra, range_, repetition, presence, frequency, force_triton):
    vocab_size = 12
    state = PenaltyState.from_history(torch.tensor(history, dtype=torch.long, device=DEVICE), vocab_size, range_,
                                      force_triton=force_triton)
    for token in extra:
        state.append(token)
    logits = make_logits(1, vocab_size, torch.float32, seed=len(history))
    out = apply_penalties(logits.to(DEVICE), state, repetition, presence, frequency, force_triton=force_triton)
    expected = apply_penalties_reference(logits, [history + extra], repetition, presence, frequency, range_)
    torch.testing.assert_close(out.cpu(), expected, **EXACT)


def test_bad_input_raises_one_line_errors():
    state = PenaltyState.from_history(torch.tensor([1, 2]), 4)
    with pytest.raises(ValueError, match="repetition penalty must be > 0"):
        apply_penalties(torch.zeros(4), state, repetition=0.0)
    with pytest.raises(ValueError, match="do not match the penalty state"):
        apply_penalties(torch.zeros(5), state)
    with pytest.raises(ValueError, match="must be a float tensor"):
        apply_penalties(torch.zeros(4, dtype=torch.long), state)
    with pytest.raises(ValueError, match=r"must lie in \[0, 4\)"):
        PenaltyState.from_history(torch.tensor([1, 4]), 4)
    with pytest.raises(ValueError, match=r"must lie in \[0, 4\)"):
        state.append(9)
    with pytest.raises(ValueError, match="one token per sequence"):
        state.append(torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="range must be >= 0"):
        PenaltyState.from_history(torch.tensor([1]), 4, range=-1)
    with pytest.raises(ValueError, match=r"must be \[B, T\] or \[T\]"):
        PenaltyState.from_history(torch.zeros(1, 1, 1, dtype=torch.long), 4)


def test_triton_writes_every_output_element():
    """The launcher into a NaN-filled output: every element is written (tokens seen or not, odd V)."""
    from kernels.penalties.penalties import _apply_penalties_triton

    vocab_size = 2 * 1024 + 37
    state = PenaltyState.from_history(torch.tensor([[3, 3, 2000], [5, 2080, 2080]], device=DEVICE), vocab_size,
                                      force_triton=True)
    logits = make_logits(2, vocab_size, torch.float32).to(DEVICE)
    out = torch.full_like(logits, float("nan"))
    _apply_penalties_triton(logits, state.counts, 1.2, 0.3, 0.1, out=out)
    expected = apply_penalties_reference(logits.cpu(), [[3, 3, 2000], [5, 2080, 2080]], 1.2, 0.3, 0.1)
    torch.testing.assert_close(out.cpu(), expected, **EXACT)
