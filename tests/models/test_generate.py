"""The generation loop on a tiny random Mamba2 behind the real TransformersBackend: determinism, stop strings,
token limit, end of sequence, cancellation from another thread, and penalty state built once per generation."""

from __future__ import annotations

import threading

import pytest
import torch

import models.sampling as sampling_module
from models.errors import Cancelled
from models.generate import GenerationInfo, StopFilter, generate
from models.sampling import PenaltyParams, SamplingParams

PROMPT = "The lighthouse keeper wrote in her log: "
HOT = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=11)


def _run(backend, **kwargs):
    info = GenerationInfo()
    pieces = list(generate(backend, backend.encode(PROMPT), info=info, **kwargs))
    return pieces, info


def test_same_seed_same_tokens_and_other_seeds_differ(tiny_mamba2):
    first, info_a = _run(tiny_mamba2, sampling=HOT, max_new_tokens=24)
    second, info_b = _run(tiny_mamba2, sampling=HOT, max_new_tokens=24)
    other, info_c = _run(tiny_mamba2, sampling=SamplingParams(**{**HOT.to_dict(), "seed": 12}), max_new_tokens=24)
    assert info_a.new_token_ids == info_b.new_token_ids and "".join(first) == "".join(second)
    assert info_a.new_token_ids != info_c.new_token_ids
    assert len(info_a.new_token_ids) == 24 and info_a.finish_reason == "length"
    assert "".join(first) == tiny_mamba2.decode(info_a.new_token_ids)


def test_stream_stops_before_a_stop_string_and_never_yields_part_of_it(tiny_mamba2):
    pieces, info = _run(tiny_mamba2, sampling=HOT, max_new_tokens=24)
    full = "".join(pieces)
    stop = full[10:13]  # a string the unconstrained run produces
    stopped, stopped_info = _run(tiny_mamba2, sampling=HOT, max_new_tokens=24, stop=[stop])
    text = "".join(stopped)
    assert text == full[: full.index(stop)]
    assert stopped_info.finish_reason == "stop"


def test_stop_filter_holds_back_a_possible_stop_prefix():
    stops = StopFilter(["\n\nChapter"])
    assert stops.update("It rained.\n") == "It rained."
    assert stops.update("It rained.\n\nCha") == ""
    assert stops.update("It rained.\n\nChapel bells") == "\n\nChapel bells"
    assert stops.update("It rained.\n\nChapel bells.\n\nChapter 2") == "."
    assert stops.stopped


def test_end_of_sequence_ends_the_stream(tiny_mamba2):
    eos = tiny_mamba2.eos_token_ids[0]
    # A bias that makes EOS certain after a few steps: wrap the model's step.
    calls = {"n": 0}
    real_step = tiny_mamba2.step

    def step(state, token):
        logits = real_step(state, token)
        calls["n"] += 1
        if calls["n"] >= 3:
            logits = logits.clone()
            logits[eos] = 1e4
        return logits

    tiny_mamba2.step = step
    try:
        _pieces, info = _run(tiny_mamba2, sampling=HOT, max_new_tokens=50)
    finally:
        del tiny_mamba2.step
    assert info.finish_reason == "eos" and len(info.new_token_ids) == 3


def test_cancel_from_another_thread_between_tokens(tiny_mamba2):
    cancel = threading.Event()
    received = []
    errors = []

    def consume():
        try:
            for piece in generate(tiny_mamba2, tiny_mamba2.encode(PROMPT), sampling=HOT, max_new_tokens=10_000,
                                  cancel=cancel):
                received.append(piece)
        except Cancelled as exc:
            errors.append(exc)

    worker = threading.Thread(target=consume)
    worker.start()
    while not received:
        worker.join(0.01)
    cancel.set()
    worker.join(60)
    assert not worker.is_alive()
    assert len(errors) == 1 and 0 < len("".join(received)) < 10_000


def test_a_set_event_cancels_before_any_work(tiny_mamba2):
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        next(generate(tiny_mamba2, tiny_mamba2.encode(PROMPT), cancel=cancel))


def test_penalties_change_the_output_and_their_state_is_built_once(tiny_mamba2, monkeypatch):
    plain_pieces, plain = _run(tiny_mamba2, sampling=SamplingParams(temperature=0, seed=1), max_new_tokens=30)
    built = []
    real_init = sampling_module.PenaltyTracker.__init__

    def counting_init(self, *args, **kwargs):
        built.append(1)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(sampling_module.PenaltyTracker, "__init__", counting_init)
    appended = []
    real_append = sampling_module.PenaltyTracker.append
    monkeypatch.setattr(sampling_module.PenaltyTracker, "append",
                        lambda self, token: (appended.append(token), real_append(self, token)))
    penalties = PenaltyParams(repetition=3.0, presence=2.0, frequency=1.0, dry_multiplier=2.0)
    _pieces, penalized = _run(tiny_mamba2, sampling=SamplingParams(temperature=0, seed=1), penalties=penalties,
                              max_new_tokens=30)
    assert built == [1]
    assert appended == penalized.new_token_ids
    assert penalized.new_token_ids != plain.new_token_ids
    # Greedy decoding of a random model repeats itself; strong penalties spread the choice over more tokens.
    assert len(set(penalized.new_token_ids)) > len(set(plain.new_token_ids))


def test_generation_continues_a_given_state_in_place(tiny_mamba2):
    ids = tiny_mamba2.encode(PROMPT)
    whole = GenerationInfo()
    list(generate(tiny_mamba2, ids, sampling=HOT, max_new_tokens=12, info=whole))
    state = tiny_mamba2.new_state()
    tiny_mamba2.prefill(state, ids[:20])
    continued = GenerationInfo()
    list(generate(tiny_mamba2, ids[20:], sampling=HOT, max_new_tokens=12, state=state, info=continued))
    assert continued.new_token_ids == whole.new_token_ids
    assert state.length == len(ids) + 11  # the last sampled token is not read back
    assert torch.is_tensor(tiny_mamba2.step(state, 65))


def test_text_generator_without_a_template_reads_and_reencodes_only_new_manuscript(tiny_mamba2, monkeypatch):
    from models.service import TextGenerator

    generator = TextGenerator(tiny_mamba2)
    assert generator.render_chat([{"role": "user", "content": "Go on."}]) == "User: Go on.\n\nAssistant:"
    state = tiny_mamba2.new_state()
    assert generator.read(state, "Four") == 4 and state.length == 4

    encoded = []
    real_encode = tiny_mamba2.encode
    monkeypatch.setattr(tiny_mamba2, "encode", lambda text: (encoded.append(text), real_encode(text))[1])
    penalties = PenaltyParams(presence=0.5)
    list(generator.stream("Go", penalties=penalties, max_new_tokens=2, penalty_history="One.\n\nTwo.",
                          sampling=HOT))
    list(generator.stream("Go", penalties=penalties, max_new_tokens=2, penalty_history="One.\n\nTwo.\n\nThree.",
                          sampling=HOT))
    assert encoded == ["One.\n\nTwo.", "Go", "\n\nThree.", "Go"]
