"""`generate()` on the native Mamba2 / Bamba backend takes the device sampler (penalties and sampling fused with the
decode step) and keeps every behaviour of the python chain: greedy tokens, seeds, stop strings, cancellation, end of
sequence, the token limit, the context limit and the penalties.

The fused (graph) path is exercised on the CPU by a backend whose 'graphs' run eagerly on the same static buffers;
the real CUDA graph is compared with eager decoding in test_native_backend.py.
"""

from __future__ import annotations

import threading

import pytest

from models.errors import Cancelled
from models.generate import GenerationInfo, generate
from models.mamba2 import NativeBackend, load_native_backend
from models.mamba2.random_checkpoint import save_random_checkpoint
from models.sampling import PenaltyParams, SamplingParams

pytestmark = pytest.mark.usefixtures("one_torch_thread")
PROMPT = "The lighthouse keeper counted ships at night. "
GREEDY = SamplingParams(temperature=0.0)
HOT = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=11)


class _EmulatedRecordBackend(NativeBackend):
    """NativeBackend whose 'graphs' run eagerly on the same static buffers: the fused sampler's path on a CPU."""

    def _record(self, run, warmup):
        warmup()
        return run


class _WithoutSampler:
    """The same backend with its `sampler` hidden: `generate` falls back to `step` + the python sampling chain."""

    def __init__(self, backend) -> None:
        self._backend = backend

    def __getattr__(self, name):
        if name == "sampler":
            raise AttributeError(name)
        return getattr(self._backend, name)


class _SamplerSpy:
    """Wraps `backend.sampler` (on the instance) and records every sampler built and every token it drew."""

    def __init__(self, backend) -> None:
        self.backend = backend
        self.real = backend.sampler
        self.built: list[dict] = []
        self.drawn: list[int] = []
        self.nexts = 0

    def __call__(self, state, sampling, penalties, history_ids, seed=None):
        self.built.append(dict(history_ids=list(history_ids), seed=seed, penalties=penalties))
        sampler = self.real(state, sampling, penalties, history_ids, seed=seed)
        real_first, real_next = sampler.first, sampler.next

        def first(logits):
            self.drawn.append(real_first(logits))
            return self.drawn[-1]

        def next_(token_id):
            self.nexts += 1
            self.drawn.append(real_next(token_id))
            return self.drawn[-1]

        sampler.first, sampler.next = first, next_
        return sampler


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return {family: save_random_checkpoint(family, tmp_path_factory.mktemp(family), seed=3)
            for family in ("mamba2", "bamba")}


@pytest.fixture(scope="module")
def eager(folders):
    return load_native_backend(folders["mamba2"], max_seq_len=256)


@pytest.fixture(scope="module")
def fused(eager):
    backend = _EmulatedRecordBackend(eager.model, eager.tokenizer, name="fused", max_seq_len=256, cuda_graph=True)
    assert backend.sampler(backend.new_state(), GREEDY, PenaltyParams(repetition=1.5), [1, 2]).fused
    return backend


@pytest.fixture
def spied(monkeypatch):
    """spied(backend) -> a _SamplerSpy installed on `backend` for this test only."""

    def install(backend):
        spy = _SamplerSpy(backend)
        monkeypatch.setattr(backend, "sampler", spy)
        return spy

    return install


def _run(backend, prompt=PROMPT, **kwargs):
    info = GenerationInfo()
    text = "".join(generate(backend, backend.encode(prompt), info=info, **kwargs))
    return text, info


@pytest.mark.parametrize("kind", ["eager", "fused"])
def test_generate_draws_every_token_from_the_backend_sampler(request, spied, kind):
    backend = request.getfixturevalue(kind)
    spy = spied(backend)
    history = backend.encode("Earlier chapters.")
    penalties = PenaltyParams(repetition=1.3, presence=0.2)
    text, info = _run(backend, sampling=HOT, penalties=penalties, max_new_tokens=16, penalty_history_ids=history)
    assert len(spy.built) == 1
    assert spy.built[0]["seed"] == info.seed == 11
    assert spy.built[0]["history_ids"] == history and spy.built[0]["penalties"] is penalties
    kept = len(info.new_token_ids)
    assert spy.drawn[:kept] == info.new_token_ids and kept > 0
    # One draw per kept token (plus an end-of-sequence draw, if that is how it ended); the step is inside next().
    assert spy.nexts == len(spy.drawn) - 1
    assert text == backend.decode(info.new_token_ids)

    # The same stream as the sampler gives when driven by hand with that seed.
    state = backend.new_state()
    prompt = backend.encode(PROMPT)
    sampler = spy.real(state, HOT, penalties, history, seed=11)
    by_hand = [sampler.first(backend.prefill(state, prompt))]
    while len(by_hand) < len(spy.drawn):
        by_hand.append(sampler.next(by_hand[-1]))
    assert by_hand == spy.drawn


@pytest.mark.parametrize("kind", ["eager", "fused"])
@pytest.mark.parametrize("penalties", [PenaltyParams(), PenaltyParams(repetition=1.4, presence=0.3, frequency=0.2)],
                         ids=["plain", "penalized"])
def test_greedy_tokens_equal_the_python_chain(request, spied, kind, penalties, monkeypatch):
    backend = request.getfixturevalue(kind)
    monkeypatch.setattr(backend, "eos_token_ids", [])
    spy = spied(backend)
    text, info = _run(backend, sampling=GREEDY, penalties=penalties, max_new_tokens=32)
    chain_text, chain = _run(_WithoutSampler(backend), sampling=GREEDY, penalties=penalties, max_new_tokens=32)
    assert len(spy.built) == 1  # the chain run never asked for a sampler
    assert info.new_token_ids == chain.new_token_ids and len(chain.new_token_ids) == 32
    assert text == chain_text
    assert info.finish_reason == chain.finish_reason == "length"


def test_seeded_sampling_is_deterministic_and_a_drawn_seed_replays(fused, spied, monkeypatch):
    monkeypatch.setattr(fused, "eos_token_ids", [])
    spy = spied(fused)
    first_text, first = _run(fused, sampling=HOT, max_new_tokens=24)
    second_text, second = _run(fused, sampling=HOT, max_new_tokens=24)
    _, other = _run(fused, sampling=SamplingParams(**{**HOT.to_dict(), "seed": 12}), max_new_tokens=24)
    assert first.new_token_ids == second.new_token_ids and first_text == second_text
    assert other.new_token_ids != first.new_token_ids
    # No seed: one is drawn, recorded in the info, and replays the run.
    _, unseeded = _run(fused, sampling=SamplingParams(**{**HOT.to_dict(), "seed": None}), max_new_tokens=24)
    _, replayed = _run(fused, sampling=SamplingParams(**{**HOT.to_dict(), "seed": unseeded.seed}), max_new_tokens=24)
    assert replayed.new_token_ids == unseeded.new_token_ids
    assert [built["seed"] for built in spy.built] == [11, 11, 12, unseeded.seed, unseeded.seed]


def test_stop_strings_end_the_stream_before_the_stop(fused, spied, monkeypatch):
    monkeypatch.setattr(fused, "eos_token_ids", [])
    full, _ = _run(fused, sampling=HOT, max_new_tokens=32)
    stop = full[12:15]
    spy = spied(fused)
    text, info = _run(fused, sampling=HOT, max_new_tokens=32, stop=[stop])
    assert spy.built and text == full[: full.index(stop)]
    assert info.finish_reason == "stop" and len(info.new_token_ids) < 32


def test_cancel_between_tokens_stops_the_sampler(fused, spied, monkeypatch):
    monkeypatch.setattr(fused, "eos_token_ids", [])
    spy = spied(fused)
    cancel = threading.Event()
    stream = generate(fused, fused.encode(PROMPT), sampling=HOT, max_new_tokens=10_000, cancel=cancel)
    first_piece = next(stream)
    drawn_before = len(spy.drawn)
    cancel.set()
    with pytest.raises(Cancelled):
        for _ in stream:
            pass
    assert first_piece and drawn_before > 0
    assert len(spy.drawn) == drawn_before  # nothing was drawn after the cancel


def test_end_of_sequence_from_the_sampler_ends_the_stream(fused, monkeypatch):
    eos = 7
    monkeypatch.setattr(fused, "eos_token_ids", [eos])
    real = fused.sampler

    def sampler_drawing_eos_third(*args, **kwargs):
        sampler = real(*args, **kwargs)
        inner, calls = sampler.next, []
        sampler.next = lambda token_id: (calls.append(token_id), eos if len(calls) == 3 else inner(token_id))[1]
        return sampler

    monkeypatch.setattr(fused, "sampler", sampler_drawing_eos_third)
    text, info = _run(fused, sampling=GREEDY, max_new_tokens=50)
    assert info.finish_reason == "eos" and len(info.new_token_ids) == 3 and eos not in info.new_token_ids
    assert text == fused.decode(info.new_token_ids)


def test_hybrid_stops_at_its_context_window_as_the_chain_does(folders, spied, monkeypatch):
    backend = load_native_backend(folders["bamba"], max_seq_len=64)
    monkeypatch.setattr(backend, "eos_token_ids", [])
    spy = spied(backend)
    prompt = "x" * 50
    text, info = _run(backend, prompt=prompt, sampling=GREEDY, max_new_tokens=100)
    chain_text, chain = _run(_WithoutSampler(backend), prompt=prompt, sampling=GREEDY, max_new_tokens=100)
    assert info.finish_reason == chain.finish_reason == "context"
    assert info.new_token_ids == chain.new_token_ids and len(info.new_token_ids) == 64 - 50
    assert len(spy.built) == 1 and spy.nexts == len(info.new_token_ids) - 1
    assert text == chain_text


def test_a_strong_repetition_penalty_changes_greedy_output(fused, spied, monkeypatch):
    monkeypatch.setattr(fused, "eos_token_ids", [])
    _, plain = _run(fused, sampling=GREEDY, max_new_tokens=40)
    spy = spied(fused)
    _, penalized = _run(fused, sampling=GREEDY, penalties=PenaltyParams(repetition=5.0), max_new_tokens=40)
    assert spy.built[0]["penalties"].repetition == 5.0
    assert penalized.new_token_ids != plain.new_token_ids
    # Greedy decoding of a random model repeats itself; the penalty spreads the choice over more tokens.
    assert len(set(penalized.new_token_ids)) > len(set(plain.new_token_ids))
