"""DRY: the spec against text-generation-webui's original loop and hand-computed cases, then both incremental
paths (Triton: interpreter on CPU, real on GPU; the sparse torch CPU path) against the spec, exactly.

Match lengths are integers and must be equal. Penalties come from one fp32 table built with the spec's own python
expression, so penalized logits are bit-identical too (fp32 and fp16; bf16 on the Triton path within one bf16 ulp,
because Triton's interpreter casts to bf16 by truncation).
"""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels.dry import (
    DryState,
    apply_dry,
    apply_dry_reference,
    default_max_exponent,
    dry_match_lengths_reference,
    dry_penalties_reference,
)
from kernels.dry.matching import suffix_match_lengths

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
PATHS = [pytest.param(True, id="triton"), pytest.param(False, id="torch")]
DRY = {"multiplier": 0.8, "base": 1.75, "allowed_length": 2}


def text_generation_webui_lengths(input_ids: list[int], breakers: set[int]) -> dict[int, int]:
    """The per-row loop of text-generation-webui's DRYLogitsProcessor (its cap of 50 on the match length lifted)."""
    last_token = input_ids[-1]
    if last_token in breakers:
        return {}
    match_lengths: dict[int, int] = {}
    for i in [idx for idx, val in enumerate(input_ids[:-1]) if val == last_token]:
        next_token = input_ids[i + 1]
        if next_token in breakers:
            continue
        match_length = 1
        while i - match_length >= 0:
            previous_token = input_ids[-(match_length + 1)]
            if input_ids[i - match_length] != previous_token or previous_token in breakers:
                break
            match_length += 1
        match_lengths[next_token] = max(match_length, match_lengths.get(next_token, 0))
    return match_lengths


def check_state(state: DryState, histories: list[list[int]], breakers: set[int], vocab_size: int) -> None:
    """The state's match lengths and penalized logits equal the spec's for every row."""
    lengths = state.match_lengths().cpu()
    for row, history in enumerate(histories):
        assert torch.equal(lengths[row], dry_match_lengths_reference(history, vocab_size, breakers)), history
    logits = torch.randn(len(histories), vocab_size, generator=torch.Generator().manual_seed(len(histories[0])))
    expected = apply_dry_reference(logits, histories, breakers, **DRY)
    out = apply_dry(logits.to(state.device), state, **DRY).cpu()
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def grow(histories, state, tokens_per_step):
    for tokens in tokens_per_step:
        state.append(torch.tensor(tokens, device=state.device))
        for history, token in zip(histories, tokens):
            history.append(token)


# Adversarial histories: (name, history, breakers).
PASSAGE = [(7 * i) % 23 + 3 for i in range(40)]
ADVERSARIAL = [
    ("one token", [4], {0}),
    ("two equal tokens", [4, 4], set()),
    ("long run of one token", [5] * 300, set()),
    ("long exact repeat", PASSAGE * 3 + PASSAGE[:17], set()),
    ("repeat of exactly allowed_length", [1, 2, 9, 1, 2], set()),
    ("repeat one short of allowed_length", [1, 9, 1], set()),
    ("breaker inside the repeat", [3, 1, 0, 1, 2, 8, 3, 1, 0, 1, 2], {0}),
    ("breaker as the candidate", [1, 2, 0, 5, 1, 2], {0}),
    ("breaker as the last token", [1, 2, 0, 1, 2, 0], {0}),
    ("period two", [1, 2] * 60, set()),
    ("period two with breakers", [1, 2, 0] * 40 + [1, 2], {0}),
]


@pytest.mark.parametrize("name,history,breakers", ADVERSARIAL, ids=[case[0] for case in ADVERSARIAL])
def test_spec_equals_text_generation_webui(name, history, breakers):
    expected = torch.zeros(32, dtype=torch.int64)
    for token, length in text_generation_webui_lengths(history, breakers).items():
        expected[token] = length
    assert torch.equal(dry_match_lengths_reference(history, 32, breakers), expected)


def test_spec_by_hand():
    # "a b c a b": the suffix "a b" occurred before "c"; "b" alone before nothing else.
    assert dry_match_lengths_reference([0, 1, 2, 0, 1], 4, set()).tolist() == [0, 0, 2, 0]
    # "x a b y a b": the repeat stops at x != y, so y gets 2; a breaker candidate gets nothing.
    assert dry_match_lengths_reference([5, 0, 1, 6, 0, 1], 7, set()).tolist() == [0, 0, 0, 0, 0, 0, 2]
    assert dry_match_lengths_reference([5, 0, 1, 6, 0, 1], 7, {6}).tolist() == [0] * 7
    # A breaker inside the current suffix cuts the match: "b ; a b ; a" -> only "a" matches, candidate b: 1.
    assert dry_match_lengths_reference([1, 9, 0, 1, 9, 0], 10, {9}).tolist() == [0, 1] + [0] * 8
    penalties = dry_penalties_reference([0, 1, 2, 0, 1, 2, 0, 1], 4, set(), 0.8, 1.75, 2)
    # "0 1" repeated: candidate 2 extends "... 0 1" of length 5 (0 1 2 0 1) -> 0.8 * 1.75 ** 3.
    assert penalties.tolist() == pytest.approx([0.0, 0.0, 0.8 * 1.75**3, 0.0])


@pytest.mark.parametrize("force_triton", PATHS)
@pytest.mark.parametrize("name,history,breakers", ADVERSARIAL, ids=[case[0] for case in ADVERSARIAL])
def test_adversarial_histories(force_triton, name, history, breakers):
    vocab_size = 32
    state = DryState.from_history(torch.tensor(history, device=DEVICE), breakers, vocab_size,
                                  force_triton=force_triton)
    check_state(state, [history], breakers, vocab_size)
    # Keep going: continue the pattern for a few tokens, then break it.
    history = list(history)
    continuation = [[history[len(history) - 2]], [history[len(history) - 1]], [31], [history[0]]]
    for tokens in continuation:
        grow([history], state, [tokens])
        check_state(state, [history], breakers, vocab_size)


@pytest.mark.parametrize("force_triton", PATHS)
def test_incremental_batch_from_empty_across_capacity(force_triton):
    """Three sequences from no history at all, past the initial buffer capacity (twice), with copied passages."""
    vocab_size, breakers = 9, {0}
    generator = torch.Generator().manual_seed(3)
    state = DryState.from_history(torch.zeros(3, 0, dtype=torch.long, device=DEVICE), breakers, vocab_size,
                                  force_triton=force_triton, capacity=16)
    histories = [[], [], []]
    for step in range(70):
        tokens = torch.randint(0, vocab_size, (3,), generator=generator).tolist()
        if step > 10 and step % 3:
            # Copy the token that followed an earlier occurrence of the last one: long repeats form.
            tokens = [history[history.index(history[-1]) + 1] if history.index(history[-1]) < len(history) - 1
                      else token for history, token in zip(histories, tokens)]
        grow(histories, state, [tokens])
        if step in (0, 1, 2, 15, 16, 33, 69):
            check_state(state, histories, breakers, vocab_size)


@settings(max_examples=40, deadline=None)
@given(
    prefix=st.lists(st.integers(0, 5), min_size=0, max_size=40),
    repeats=st.integers(0, 3),
    extra=st.lists(st.integers(0, 5), min_size=0, max_size=6),
    breakers=st.sets(st.integers(0, 5), max_size=2),
    force_triton=st.booleans(),
)
def test_random_histories(prefix, repeats, extra, breakers, force_triton):
    history = prefix + prefix[len(prefix) // 2:] * repeats
    state = DryState.from_history(torch.tensor(history, dtype=torch.long, device=DEVICE), breakers, 6,
                                  force_triton=force_triton)
    if history:
        check_state(state, [history], breakers, 6)
    for token in extra:
        grow([history], state, [[token]])
        check_state(state, [history], breakers, 6)


@pytest.mark.parametrize("force_triton", PATHS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_logits(force_triton, dtype):
    # Penalties up to 0.8 * 1.75 ** 10 (larger ones would be -inf in fp16, on both paths alike).
    history = PASSAGE + PASSAGE[:12]
    state = DryState.from_history(torch.tensor(history, device=DEVICE), set(), 32, force_triton=force_triton)
    logits = (torch.randn(1, 32, generator=torch.Generator().manual_seed(0)) * 4).to(dtype)
    out = apply_dry(logits.to(DEVICE), state, **DRY).cpu()
    expected = apply_dry_reference(logits, [history], set(), **DRY)
    assert out.dtype == dtype
    tolerance = {"rtol": 2**-7, "atol": 0.0} if dtype == torch.bfloat16 and force_triton else {"rtol": 0, "atol": 0}
    torch.testing.assert_close(out, expected, **tolerance)
    assert (out != logits).any()


@pytest.mark.parametrize("force_triton", PATHS)
def test_exponent_clamp(force_triton):
    history = [5] * 400  # candidate 5 extends a 399-token repeat
    state = DryState.from_history(torch.tensor(history, device=DEVICE), set(), 8, force_triton=force_triton)
    logits = torch.zeros(8, device=DEVICE)
    clamped = apply_dry(logits, state, multiplier=1.0, base=2.0, allowed_length=2, max_exponent=3.5).cpu()
    assert clamped[5] == -torch.tensor(2.0**3.5, dtype=torch.float32)
    # Default clamp: the largest exponent keeping the penalty finite in fp32, so no -inf and no NaN.
    default = apply_dry(logits, state, multiplier=1.0, base=4.0, allowed_length=2).cpu()
    assert math.isfinite(default[5]) and default[5] < -1e37
    assert default_max_exponent(1.0, 4.0) == 62.0
    assert torch.equal(default[torch.arange(8) != 5], torch.zeros(7))


def test_from_history_long_runs_use_the_z_fallback_and_agree():
    """The vectorized extension hands very long exact repeats to the Z-algorithm: both give the spec's lengths."""
    is_breaker = torch.zeros(4, dtype=torch.bool)
    for history in ([1] * 3000, ([1, 2, 3] * 700)[:-1], [2] + [1] * 50 + [2] + [1] * 50):
        lengths = suffix_match_lengths(torch.tensor(history), is_breaker).tolist()
        last = len(history) - 1
        for j in range(0, last, 37):
            expected = 0
            while expected <= j and history[j - expected] == history[last - expected]:
                expected += 1
            assert lengths[j] == expected


def test_bad_input_raises_one_line_errors():
    state = DryState.from_history(torch.tensor([1, 2, 1]), {0}, 4)
    with pytest.raises(ValueError, match="dry base must be >= 1"):
        apply_dry(torch.zeros(4), state, 0.8, 0.5, 2)
    with pytest.raises(ValueError, match="allowed_length must be an integer >= 1"):
        apply_dry(torch.zeros(4), state, 0.8, 1.75, 0)
    with pytest.raises(ValueError, match="multiplier must be >= 0"):
        apply_dry(torch.zeros(4), state, -1.0, 1.75, 2)
    with pytest.raises(ValueError, match="max_exponent must lie in"):
        apply_dry(torch.zeros(4), state, 0.8, 1.75, 2, max_exponent=-1.0)
    with pytest.raises(ValueError, match="do not match the DRY state"):
        apply_dry(torch.zeros(2, 4), state, 0.8, 1.75, 2)
    with pytest.raises(ValueError, match=r"breaker ids must lie in \[0, 4\)"):
        DryState.from_history(torch.tensor([1]), {7}, 4)
    with pytest.raises(ValueError, match=r"history token ids must lie in \[0, 4\)"):
        DryState.from_history(torch.tensor([1, 4]), set(), 4)
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 4\)"):
        state.append(-1)
    with pytest.raises(ValueError, match="one token per sequence"):
        state.append(torch.tensor([1, 2]))


def test_triton_writes_every_output_element():
    """The apply launcher into a NaN-filled output: every element is written, penalized or not, odd V."""
    from kernels.dry.dry import _dry_apply_triton, _dry_scatter_triton, _penalty_table

    vocab_size = 2 * 1024 + 37
    history = [2050, 7, 2050, 7, 2050]
    state = DryState.from_history(torch.tensor(history, device=DEVICE), set(), vocab_size, force_triton=True)
    logits = torch.randn(1, vocab_size, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    out = torch.full_like(logits, float("nan"))
    _dry_scatter_triton(state.history, state.match, state.is_breaker, state.length, 2, state._best)
    table = _penalty_table(0.8, 1.75, 2, default_max_exponent(0.8, 1.75), logits.device)
    _dry_apply_triton(logits, state._best, table, 2, out=out)
    expected = apply_dry_reference(logits.cpu(), [history], set(), **DRY)
    torch.testing.assert_close(out.cpu(), expected, rtol=0, atol=0)
    assert out[0, 7] < logits[0, 7]  # "7 2050" repeated: candidate 7 extends a 3-token repeat
    assert not state._best.any()  # the scratch is left all-zero for the next token
