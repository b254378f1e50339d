"""The transformers backend on each kind of cache layer the locked transformers gives our supported models: attention
(`DynamicLayer`, Llama), sliding-window attention (`DynamicSlidingWindowLayer`, Mistral), Mamba2's linear layer
(`LinearAttentionLayer`), a hybrid stack mixing both (Bamba) and a hybrid layer holding both (`LinearAttentionAndFull
AttentionLayer`, Falcon-H1). Tiny random-weight models built here; every forward runs with transformers'
deprecations turned into failures, so a cache API that moves again shows here first."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load as safetensors_load

from models.hf_backend import EmptyStateError, TransformersBackend
from tests.models.conftest import BYTE_VOCAB, EOS_ID, ByteTokenizer, empty_snapshot

pytestmark = pytest.mark.usefixtures("no_deprecations")

TEXT = "The lamp went out at the third bell, and the keeper climbed the stairs in the dark. " * 2
SLIDING_WINDOW = 8  # far shorter than TEXT, so the sliding layers really drop keys
SHARED = dict(vocab_size=BYTE_VOCAB + 1, hidden_size=64, num_hidden_layers=2, eos_token_id=EOS_ID, pad_token_id=0,
              bos_token_id=0)
ATTENTION = dict(intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096)
MAMBA = dict(mamba_n_heads=8, mamba_d_head=16, mamba_n_groups=1, mamba_d_state=16, mamba_d_conv=4, mamba_expand=2,
             mamba_chunk_size=16)


def _llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(**SHARED, **ATTENTION))


def _mistral_sliding():
    from transformers import MistralConfig, MistralForCausalLM

    return MistralForCausalLM(MistralConfig(**SHARED, **ATTENTION, sliding_window=SLIDING_WINDOW))


def _mamba2():
    from transformers import Mamba2Config, Mamba2ForCausalLM

    return Mamba2ForCausalLM(Mamba2Config(**SHARED, state_size=16, num_heads=8, head_dim=16, expand=2, n_groups=1,
                                          conv_kernel=4, chunk_size=16))


def _bamba():
    from transformers import BambaConfig, BambaForCausalLM

    return BambaForCausalLM(BambaConfig(**(SHARED | {"num_hidden_layers": 3}), **ATTENTION, **MAMBA,
                                        attn_layer_indices=[1]))


def _falcon_h1():
    from transformers import FalconH1Config, FalconH1ForCausalLM

    # mamba_d_ssm: Falcon-H1's default is sized for its real models; ours is heads x head size.
    return FalconH1ForCausalLM(FalconH1Config(**SHARED, **ATTENTION, **MAMBA, mamba_d_ssm=128))


KV = ("DynamicLayer", {"keys", "values"})
SLIDING_KV = ("DynamicSlidingWindowLayer", {"keys", "values"})
SSM = ("LinearAttentionLayer", {"conv", "recurrent"})
SSM_AND_KV = ("LinearAttentionAndFullAttentionLayer", {"conv", "recurrent", "keys", "values"})
# name: (builder, per model layer: the cache layer class transformers must build, the tensors it must yield)
MODELS = {
    "attention": (_llama, [KV, KV]),
    "sliding-attention": (_mistral_sliding, [SLIDING_KV, SLIDING_KV]),
    "linear": (_mamba2, [SSM, SSM]),
    "hybrid-stack": (_bamba, [SSM, KV, SSM]),
    "hybrid-layer": (_falcon_h1, [SSM_AND_KV, SSM_AND_KV]),
}
GROWS_WITH_TEXT = {"attention", "hybrid-stack", "hybrid-layer"}


@pytest.fixture(scope="module", params=sorted(MODELS))
def case(request):
    build, layers = MODELS[request.param]
    torch.manual_seed(0)
    backend = TransformersBackend(build().float().eval(), ByteTokenizer(), name=request.param,
                                  identity=f"{request.param}-seed0")
    return request.param, backend, layers


def _read(backend, text=TEXT):
    state = backend.new_state()
    backend.prefill(state, backend.encode(text))
    return state


def test_the_cache_has_the_layer_classes_this_backend_knows(case):
    name, backend, layers = case
    state = _read(backend)
    assert [type(layer).__name__ for layer in state.cache.layers] == [layer_class for layer_class, _ in layers]
    # Only a cache with no attention layer at all is fixed-size (a sliding window still grows up to the window).
    assert backend.fixed_size_state == (name == "linear")


def test_every_layer_yields_its_tensors(case):
    name, backend, layers = case
    state = _read(backend)
    tensors = safetensors_load(backend.state_to_bytes(state))
    assert backend.state_nbytes(state) == sum(t.numel() * t.element_size() for t in tensors.values()) > 0
    for index, (layer_class, expected_kinds) in enumerate(layers):
        kinds = {key.split(".")[1] for key in tensors if key.split(".")[0] == str(index)}
        assert kinds == expected_kinds, (index, layer_class)
    if name == "sliding-attention":
        # The window, not the text, bounds what a sliding layer keeps.
        assert all(t.shape[-2] < SLIDING_WINDOW for key, t in tensors.items() if key.endswith("keys"))


def test_state_grows_with_the_text_only_where_a_layer_keeps_every_key(case):
    name, backend, _ = case
    short, long = backend.state_nbytes(_read(backend, TEXT[:30])), backend.state_nbytes(_read(backend))
    assert (long > short) == (name in GROWS_WITH_TEXT)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_a_restored_state_continues_as_the_original(case, dtype):
    _, backend, _ = case
    state = _read(backend)
    restored = backend.state_from_bytes(backend.state_to_bytes(state, dtype=dtype))
    assert restored.length == state.length
    assert [type(layer).__name__ for layer in restored.cache.layers] == [type(layer).__name__
                                                                         for layer in state.cache.layers]
    for token in backend.encode(" and then the light"):
        expected, got = backend.step(state, token), backend.step(restored, token)
        if dtype == "fp32":
            assert torch.equal(expected, got)
        else:
            assert torch.allclose(expected, got, atol=0.05 * expected.abs().max().item())
    # The restored state saves again, to the same tensors as the original that read the same tokens.
    again, original = safetensors_load(backend.state_to_bytes(restored)), safetensors_load(backend.state_to_bytes(state))
    assert again.keys() == original.keys()


def test_a_state_that_read_tokens_but_holds_no_tensors_is_an_error(case):
    _, backend, layers = case
    state = backend.new_state()
    # What a transformers release with unknown cache layers looks like: the forward ran, the cache stayed empty.
    state.length = 12
    with pytest.raises(EmptyStateError) as error:
        backend.state_to_bytes(state)
    message = str(error.value)
    assert "12 tokens" in message and "DynamicCache[" in message and "\n" not in message
    assert all(layer_class in message for layer_class, _ in layers)
    with pytest.raises(EmptyStateError):
        backend.state_nbytes(state)


def test_an_empty_snapshot_that_claims_tokens_is_refused(case):
    _, backend, _ = case
    with pytest.raises(ValueError, match="read 12 tokens but holds no tensors"):
        backend.state_from_bytes(empty_snapshot(backend, 12))


def test_a_state_that_read_nothing_is_empty_not_an_error(case):
    _, backend, _ = case
    state = backend.new_state()
    assert backend.state_nbytes(state) == 0
    assert backend.state_from_bytes(backend.state_to_bytes(state)).length == 0


def test_forward_passes_the_cache_by_its_current_name(case):
    _, backend, _ = case
    # Every test here fails on a deprecation; this one also checks the backend found the `cache` argument.
    assert backend._cache_arg == "cache"
