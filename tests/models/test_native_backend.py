"""The native backend behind the Backend protocol: snapshots, clones, the graph's state binding, generation."""

import pytest
import torch

from models.backend import Backend
from models.generate import generate
from models.mamba2 import NativeBackend, load_native_backend
from models.mamba2.random_checkpoint import save_random_checkpoint
from models.sampling import PenaltyParams, SamplingParams

FAMILIES = ["mamba2", "bamba"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")
MANUSCRIPT = "The lighthouse keeper counted ships at night. " * 3
CONTINUATION = "Then the fog came in, and she stopped counting."


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return {family: save_random_checkpoint(family, tmp_path_factory.mktemp(family), seed=2) for family in FAMILIES}


@pytest.fixture(scope="module")
def backends(folders):
    return {family: load_native_backend(folder, max_seq_len=256) for family, folder in folders.items()}


def _generate(backend, prompt_ids, state=None, max_new_tokens=24):
    pieces = generate(backend, prompt_ids, sampling=SamplingParams(temperature=0.9, seed=11),
                      penalties=PenaltyParams(repetition=1.2, frequency=0.1), max_new_tokens=max_new_tokens,
                      state=state)
    return "".join(pieces)


@pytest.mark.parametrize("family", FAMILIES)
def test_backend_protocol(backends, family):
    backend = backends[family]
    assert isinstance(backend, Backend)
    assert backend.fixed_size_state == (family == "mamba2")
    assert backend.supports_state and 0 in backend.eos_token_ids
    assert backend.decode(backend.encode(MANUSCRIPT)) == MANUSCRIPT


@pytest.mark.parametrize("family", FAMILIES)
def test_generation_after_restoring_a_snapshot_equals_rereading(backends, family):
    backend = backends[family]
    manuscript, continuation = backend.encode(MANUSCRIPT), backend.encode(CONTINUATION)
    state = backend.new_state()
    backend.prefill(state, manuscript)
    snapshot = backend.state_to_bytes(state, dtype="fp32")
    restored = backend.state_from_bytes(snapshot)
    assert restored.length == len(manuscript)
    for key, tensor in state.tensors().items():
        assert torch.equal(getattr(restored, key), tensor), key
    from_snapshot = _generate(backend, continuation, state=restored)
    from_clone = _generate(backend, continuation, state=backend.clone_state(state))
    from_scratch = _generate(backend, manuscript + continuation)
    assert from_snapshot == from_clone == from_scratch
    assert len(from_snapshot) > 0


@pytest.mark.parametrize("family", FAMILIES)
def test_bf16_snapshot_is_smaller_and_close(backends, family):
    backend = backends[family]
    state = backend.new_state()
    logits = backend.prefill(state, backend.encode(MANUSCRIPT))
    fp32, bf16 = backend.state_to_bytes(state, "fp32"), backend.state_to_bytes(state, "bf16")
    assert len(bf16) < 0.6 * len(fp32)
    restored = backend.state_from_bytes(bf16)
    for key, tensor in state.tensors().items():
        if key in ("keys", "values"):
            tensor, restored_tensor = tensor[..., :state.length, :], getattr(restored, key)[..., :state.length, :]
        else:
            restored_tensor = getattr(restored, key)
        torch.testing.assert_close(restored_tensor, tensor, atol=0.02, rtol=0.02)
    token = int(logits.argmax())
    torch.testing.assert_close(backend.step(restored, token), backend.step(state, token), atol=0.05, rtol=0.05)


def test_state_size_is_fixed_for_mamba2_and_grows_for_the_hybrid(backends):
    mamba2, bamba = backends["mamba2"], backends["bamba"]
    c = mamba2.config
    expected = len(c.mamba_layers) * (c.conv_dim * (c.conv_kernel - 1) * 4 + c.n_heads * c.head_dim * c.state_size * 4)
    state = mamba2.new_state()
    assert mamba2.state_nbytes(state) == expected
    mamba2.prefill(state, mamba2.encode(MANUSCRIPT))
    assert mamba2.state_nbytes(state) == expected
    state = bamba.new_state()
    empty = bamba.state_nbytes(state)
    bamba.prefill(state, bamba.encode("ten bytes!"))
    per_token = 2 * len(bamba.config.attention_layers) * bamba.config.n_kv_heads * bamba.config.attention_head_dim * 4
    assert bamba.state_nbytes(state) == empty + 10 * per_token


def test_snapshot_of_another_model_is_refused(backends, folders):
    state = backends["mamba2"].new_state()
    backends["mamba2"].prefill(state, [1, 2, 3])
    other = load_native_backend(folders["mamba2"], identity="another checkpoint")
    with pytest.raises(ValueError, match="another model"):
        other.state_from_bytes(backends["mamba2"].state_to_bytes(state))


def test_hybrid_cache_overflow_is_a_clear_error(folders):
    backend = load_native_backend(folders["bamba"], max_seq_len=8)
    with pytest.raises(ValueError, match="attention cache holds 8"):
        backend.prefill(backend.new_state(), list(range(1, 10)))


class _EmulatedRecordBackend(NativeBackend):
    """NativeBackend whose 'graphs' run eagerly on the same static buffers: exercises binding and fused sampling."""

    def _record(self, run, warmup):
        warmup()
        return run


@pytest.mark.parametrize("family", FAMILIES)
def test_graph_state_binding_keeps_states_independent(backends, family):
    """Two states decoded in turn through the static buffers give what each gives alone (eager)."""
    eager = backends[family]
    graphed = _EmulatedRecordBackend(eager.model, eager.tokenizer, name="graphed", max_seq_len=256, cuda_graph=True)
    first, second = backend_states = [graphed.new_state(), graphed.new_state()]
    graphed.prefill(first, eager.encode(MANUSCRIPT))
    graphed.prefill(second, eager.encode(CONTINUATION))
    reference = [eager.clone_state(s) for s in backend_states]
    tokens = eager.encode("abcdef")
    for token in tokens:
        for state, ref in zip(backend_states, reference):
            torch.testing.assert_close(graphed.step(state, token), eager.step(ref, token), atol=1e-5, rtol=1e-5)
    # The state bound last aliases the static buffers; the other got its own copy back.
    assert second.ssm.data_ptr() == graphed._static.ssm.data_ptr()
    assert first.ssm.data_ptr() != graphed._static.ssm.data_ptr()
    snapshot = graphed.state_from_bytes(graphed.state_to_bytes(second))
    assert snapshot.length == reference[1].length and torch.equal(snapshot.ssm, reference[1].ssm)
    # The fused sampler then reuses the same static buffers (captured by step() above) for a third state.
    greedy, presence = SamplingParams(temperature=0.0), PenaltyParams(presence=0.5)
    fused, _ = _sample_tokens(graphed, eager.encode(CONTINUATION), 8, greedy, presence)
    plain, _ = _sample_tokens(eager, eager.encode(CONTINUATION), 8, greedy, presence)
    assert fused == plain
    assert graphed.step(first, tokens[0]).shape == (graphed.vocab_size,)


@pytest.mark.parametrize("family", FAMILIES)
def test_load_generator_picks_the_native_runtime(folders, family, tmp_path):
    from app.offline import ModelSource
    from models.service import load_generator

    generator = load_generator(ModelSource("folder", str(folders[family]), family), device="cpu", dtype="float32",
                               cache_dir=tmp_path)
    assert isinstance(generator.backend, NativeBackend)
    assert generator.backend.config.family == family
    assert generator.count_tokens("twelve bytes") == 12


def test_other_architectures_are_not_claimed(tmp_path):
    from models.mamba2 import supports

    (tmp_path / "config.json").write_text('{"architectures": ["LlamaForCausalLM"], "model_type": "llama"}')
    assert not supports(tmp_path)
    assert not supports(tmp_path / "missing")


def _sample_tokens(backend, prompt, n, sampling, penalties, seed=5):
    state = backend.new_state()
    sampler = backend.sampler(state, sampling, penalties, history_ids=prompt, seed=seed)
    tokens = [sampler.first(backend.prefill(state, prompt))]
    for _ in range(n - 1):
        tokens.append(sampler.next(tokens[-1]))
    return tokens, state


@pytest.mark.parametrize("family", FAMILIES)
def test_device_sampler_is_seeded_and_fused_equals_eager(backends, family):
    eager = backends[family]
    fused = _EmulatedRecordBackend(eager.model, eager.tokenizer, name="fused", max_seq_len=256, cuda_graph=True)
    prompt = eager.encode(MANUSCRIPT)
    sampling = SamplingParams(temperature=1.0, top_k=0, top_p=0.9, min_p=0.02)
    penalties = PenaltyParams(repetition=1.3, presence=0.2, frequency=0.1)
    first, _ = _sample_tokens(eager, prompt, 24, sampling, penalties)
    again, _ = _sample_tokens(eager, prompt, 24, sampling, penalties)
    other_seed, _ = _sample_tokens(eager, prompt, 24, sampling, penalties, seed=6)
    graphed, state = _sample_tokens(fused, prompt, 24, sampling, penalties)
    assert first == again == graphed
    assert other_seed != first
    assert state.length == len(prompt) + 23


def test_device_sampler_counts_drawn_tokens(backends):
    """Greedy with a huge presence penalty never draws a token twice: each draw must reach the counts."""
    backend = _EmulatedRecordBackend(backends["mamba2"].model, None, max_seq_len=256, cuda_graph=True)
    tokens, _ = _sample_tokens(backend, [1, 2, 3], 40, SamplingParams(temperature=0.0),
                               PenaltyParams(presence=1e4))
    assert len(set(tokens)) == 40 and not {1, 2, 3} & set(tokens)
    eager_greedy, _ = _sample_tokens(backends["mamba2"], [1, 2, 3], 40, SamplingParams(temperature=0.0),
                                     PenaltyParams())
    assert len(set(eager_greedy)) < 40  # without the penalty a tiny random model repeats itself


def test_device_sampler_with_dry_and_a_range_runs_eagerly_after_the_graph(backends):
    backend = _EmulatedRecordBackend(backends["bamba"].model, backends["bamba"].tokenizer, max_seq_len=256,
                                     cuda_graph=True)
    prompt = backend.encode(MANUSCRIPT)
    penalties = PenaltyParams(repetition=1.2, range=16, dry_multiplier=0.8)
    assert not backend.sampler(backend.new_state(), SamplingParams(), penalties, prompt).fused
    tokens, _ = _sample_tokens(backend, prompt, 12, SamplingParams(temperature=0.7), penalties)
    again, _ = _sample_tokens(backends["bamba"], prompt, 12, SamplingParams(temperature=0.7), penalties)
    assert tokens == again


def test_a_model_too_big_for_memory_is_a_one_line_error(tmp_path):
    from models.errors import ModelLoadError

    (tmp_path / "config.json").write_text(
        '{"architectures": ["Mamba2ForCausalLM"], "model_type": "mamba2", "vocab_size": 256000,'
        ' "hidden_size": 65536, "num_hidden_layers": 256, "num_heads": 2048, "head_dim": 64}'
    )
    with pytest.raises(ModelLoadError, match=r"needs about \d+\.\d GiB of RAM") as error:
        load_native_backend(tmp_path)
    assert "\n" not in str(error.value)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("family", FAMILIES)
def test_cuda_graph_decode_and_fused_sampling_match_eager(folders, family):
    graphed = load_native_backend(folders[family], device="cuda", max_seq_len=256, cuda_graph=True)
    eager = load_native_backend(folders[family], device="cuda", max_seq_len=256, cuda_graph=False)
    prompt = graphed.encode(MANUSCRIPT)
    states = [graphed.new_state(), eager.new_state()]
    for backend, state in zip((graphed, eager), states):
        backend.prefill(state, prompt)
    for token in graphed.encode("abcdefgh"):
        torch.testing.assert_close(graphed.step(states[0], token), eager.step(states[1], token), atol=1e-4,
                                   rtol=1e-4)
    sampling = SamplingParams(temperature=0.9, top_p=0.9, min_p=0.02)
    penalties = PenaltyParams(repetition=1.2, presence=0.1)
    fused, _ = _sample_tokens(graphed, prompt, 32, sampling, penalties)
    plain, _ = _sample_tokens(eager, prompt, 32, sampling, penalties)
    assert fused == plain


def test_two_threads_decoding_at_once_get_what_each_gets_alone(backends):
    import threading

    backend = _EmulatedRecordBackend(backends["mamba2"].model, backends["mamba2"].tokenizer, max_seq_len=256,
                                     cuda_graph=True)
    prompts = [backend.encode(MANUSCRIPT), backend.encode(CONTINUATION)]
    sampling, penalties = SamplingParams(temperature=0.8), PenaltyParams(repetition=1.2)
    alone = [_sample_tokens(backends["mamba2"], prompt, 40, sampling, penalties)[0] for prompt in prompts]
    together = [None, None]

    def run(i):
        together[i] = _sample_tokens(backend, prompts[i], 40, sampling, penalties)[0]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert together == alone
