"""The sampling chain as pure functions, the settings' JSON round trip, and the incremental penalty state."""

from __future__ import annotations

import json

import pytest
import torch

from kernels.dry import apply_dry_reference
from kernels.penalties import apply_penalties_reference
from models.sampling import (
    PenaltyParams,
    PenaltyTracker,
    SamplingParams,
    draw,
    kept_probs,
    logits_to_probs,
    make_generator,
    sample,
)


def test_params_round_trip_through_json_and_ignore_unknown_keys():
    sampling = SamplingParams(temperature=0.5, top_k=40, top_p=0.9, min_p=0.1, seed=7)
    penalties = PenaltyParams(repetition=1.2, presence=0.3, frequency=0.1, range=64, dry_multiplier=0.8,
                              dry_sequence_breakers=["\n", "."])
    assert SamplingParams.from_dict(json.loads(json.dumps(sampling.to_dict()))) == sampling
    assert PenaltyParams.from_dict(json.loads(json.dumps(penalties.to_dict()))) == penalties
    assert SamplingParams.from_dict({"temperature": 0.3, "from_a_newer_version": 1}).temperature == 0.3
    assert PenaltyParams.from_dict(None) == PenaltyParams()


@pytest.mark.parametrize("bad", [{"temperature": -1}, {"top_p": 0}, {"top_k": -2}, {"min_p": 1.0}])
def test_bad_sampling_values_are_refused(bad):
    with pytest.raises(ValueError):
        SamplingParams(**bad)


def test_temperature_zero_is_greedy():
    logits = torch.tensor([0.1, 2.0, 1.9, -1.0])
    probs = logits_to_probs(logits, SamplingParams(temperature=0))
    assert probs.tolist() == [0.0, 1.0, 0.0, 0.0]


def test_top_k_min_p_and_top_p_cut_the_tail():
    logits = torch.log(torch.tensor([0.5, 0.25, 0.15, 0.07, 0.03]))
    off = dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)
    assert torch.allclose(logits_to_probs(logits, SamplingParams(**off)), torch.softmax(logits, -1))
    top2 = logits_to_probs(logits, SamplingParams(**{**off, "top_k": 2}))
    assert (top2 > 0).tolist() == [True, True, False, False, False]
    assert torch.allclose(top2[:2], torch.tensor([2 / 3, 1 / 3]))
    # min_p 0.2: keep tokens with at least 0.2 * 0.5 = 0.1
    assert (logits_to_probs(logits, SamplingParams(**{**off, "min_p": 0.2})) > 0).tolist() == \
        [True, True, True, False, False]
    # top_p 0.8: 0.5 + 0.25 = 0.75 < 0.8, so the third token (crossing the line) stays
    assert (logits_to_probs(logits, SamplingParams(**{**off, "top_p": 0.8})) > 0).tolist() == \
        [True, True, True, False, False]


def test_same_seed_same_draws():
    probs = torch.softmax(torch.randn(1000), -1)
    first, _ = make_generator(123)
    second, _ = make_generator(123)
    draws = [sample(probs, first) for _ in range(20)]
    assert draws == [sample(probs, second) for _ in range(20)]
    other, _ = make_generator(124)
    assert draws != [sample(probs, other) for _ in range(20)]


def test_tracker_updated_per_token_matches_the_reference_on_the_whole_history():
    vocab = 50
    torch.manual_seed(0)
    history = torch.randint(0, vocab, (40,)).tolist()
    params = PenaltyParams(repetition=1.3, presence=0.4, frequency=0.2, range=16, dry_multiplier=0.9,
                           dry_allowed_length=2)
    breakers = {0, 1}
    tracker = PenaltyTracker(params, history, vocab, "cpu", breakers)
    logits = torch.randn(vocab)
    for token in [5, 6, 7, 5, 6]:
        tracker.append(token)
        history.append(token)
        expected = apply_penalties_reference(logits[None], [history], params.repetition, params.presence,
                                             params.frequency, params.range)
        expected = apply_dry_reference(expected, [history], breakers, params.dry_multiplier, params.dry_base,
                                       params.dry_allowed_length)[0]
        assert torch.allclose(tracker.apply(logits), expected, atol=1e-5)


@pytest.mark.parametrize("params", [
    SamplingParams(), SamplingParams(temperature=1.3, top_p=0.5, min_p=0.0), SamplingParams(top_k=7, top_p=1.0),
    SamplingParams(temperature=0.5, top_k=40, top_p=0.9, min_p=0.1), SamplingParams(min_p=0.0, top_p=1.0),
])
def test_the_kept_tokens_carry_exactly_the_chains_probabilities(params):
    torch.manual_seed(0)
    for _ in range(20):
        logits = torch.randn(5000) * 3
        logits[:10] += 8 * torch.rand(10)
        full = logits_to_probs(logits, params)
        ids, probs = kept_probs(logits, params)
        assert sorted(ids.tolist()) == (full > 0).nonzero().squeeze(1).tolist()
        assert torch.allclose(probs, full[ids], atol=1e-6)


def test_draw_follows_the_distribution_and_the_seed():
    logits = torch.log(torch.tensor([0.5, 0.25, 0.15, 0.07, 0.03]))
    params = SamplingParams(temperature=1.0, top_p=1.0, min_p=0.2)  # keeps p >= 0.1: the first three
    generator, _ = make_generator(5)
    draws = [draw(logits, params, generator) for _ in range(6000)]
    assert set(draws) == {0, 1, 2}
    for token, share in zip(range(3), [0.5 / 0.9, 0.25 / 0.9, 0.15 / 0.9]):
        assert abs(draws.count(token) / len(draws) - share) < 0.03
    again, _ = make_generator(5)
    assert [draw(logits, params, again) for _ in range(50)] == draws[:50]
    assert draw(logits, SamplingParams(temperature=0), generator) == 0
