"""Prefix reuse in the transformers backend (models/hf_backend.py): a fresh state whose prompt shares its start with
the state read last starts from that state's cache cut back to the shared part, writes the same greedy text as a
backend that reads the prompt whole, and reads only the tokens after the shared part.

A tiny random Llama (full attention only, the layers that can be cropped) over the byte tokenizer for the fast
tests; the real default model for the slow one. The hybrid fixture checks that a model whose cache cannot be cut
back reads every prompt whole.
"""

from __future__ import annotations

import pytest
import torch

from models.generate import GenerationInfo, generate
from models.hf_backend import MIN_REUSED_TOKENS, TransformersBackend
from models.sampling import PenaltyParams, SamplingParams
from tests.models.conftest import BYTE_VOCAB, EOS_ID, ByteTokenizer

GREEDY = SamplingParams(temperature=0.0)
# The default penalties' kinds: their history is the prompt, which reuse must not change.
PENALTIES = PenaltyParams(repetition=1.1, dry_multiplier=0.8)
SHARED = ("Premise: a lighthouse keeper finds a note in her own hand.\nSummary so far: Mara keeps the light on "
          "Skerry alone and counts the ships that pass at night.\n")
FIRST = SHARED + "New text of the story: the lamp went out at midnight.\nRewrite the summary."
SECOND = SHARED + "Last paragraph: the lamp went out at midnight.\nWhat could happen next?"


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=BYTE_VOCAB + 1, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         eos_token_id=EOS_ID, pad_token_id=0, bos_token_id=0)
    torch.manual_seed(0)
    return LlamaForCausalLM(config).float().eval()


@pytest.fixture(scope="module")
def llama_model():
    return _tiny_llama()


def _backend(model) -> TransformersBackend:
    return TransformersBackend(model, ByteTokenizer(), name="tiny-llama", identity="tiny-llama-seed0")


def _greedy(backend, text: str, tokens: int = 24) -> tuple[list[int], int]:
    """The greedy tokens after `text` and how many prompt tokens the backend read for it."""
    info = GenerationInfo()
    before = backend.reads
    list(generate(backend, backend.encode(text), sampling=GREEDY, penalties=PENALTIES, max_new_tokens=tokens,
                  info=info))
    stepped = len(info.new_token_ids) - (1 if info.finish_reason == "length" else 0)
    return info.new_token_ids, backend.reads - before - stepped


def _shared_length(backend, first: str, second: str) -> int:
    a, b = backend.encode(first), backend.encode(second)
    return next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)


def test_a_shared_start_is_read_once_and_the_text_is_the_same(llama_model):
    reusing = _backend(llama_model)
    assert reusing.reuses_prefix
    _greedy(reusing, FIRST)
    reused_tokens, read = _greedy(reusing, SECOND)
    whole_tokens, whole_read = _greedy(_backend(llama_model), SECOND)
    shared = _shared_length(reusing, FIRST, SECOND)
    assert shared >= MIN_REUSED_TOKENS
    assert whole_read == len(reusing.encode(SECOND))
    assert read == whole_read - shared
    assert reused_tokens == whole_tokens


def test_the_same_prompt_again_reads_only_its_last_token(llama_model):
    backend = _backend(llama_model)
    first, _ = _greedy(backend, FIRST)
    again, read = _greedy(backend, FIRST)
    assert read == 1 and again == first


def test_reuse_leaves_the_earlier_state_as_it_was(llama_model):
    """The copy is cut back, not the state it came from: that one still continues as before."""
    backend = _backend(llama_model)
    state = backend.new_state()
    logits = backend.prefill(state, backend.encode(FIRST))
    backend.prefill(backend.new_state(), backend.encode(SECOND))
    assert state.length == len(state.tokens) == len(backend.encode(FIRST))
    probe = backend.encode(" Then")
    fresh = _backend(llama_model)
    expected = fresh.prefill(fresh.new_state(), backend.encode(FIRST) + probe)
    assert torch.allclose(backend.prefill(state, probe), expected, atol=1e-5)
    assert logits.shape == (BYTE_VOCAB + 1,)


def test_a_short_shared_start_is_read_whole(llama_model):
    backend = _backend(llama_model)
    _greedy(backend, "Premise: x. " + FIRST)
    other = "Premise: y. " + SECOND
    _, read = _greedy(backend, other)
    assert _shared_length(backend, "Premise: x. " + FIRST, other) < MIN_REUSED_TOKENS
    assert read == len(backend.encode(other))


def test_a_hybrid_cache_is_never_cut_back(tiny_hybrid):
    assert not tiny_hybrid.reuses_prefix
    _greedy(tiny_hybrid, FIRST, tokens=4)
    _, read = _greedy(tiny_hybrid, SECOND, tokens=4)
    assert read == len(tiny_hybrid.encode(SECOND))


@pytest.mark.slow
def test_the_default_model_writes_the_same_greedy_text_with_reuse(default_generator):
    from models.service import TextGenerator

    backend = default_generator.backend
    first = default_generator.render_chat([{"role": "user", "content": FIRST}])
    second = default_generator.render_chat([{"role": "user", "content": SECOND}])
    _greedy(backend, first, tokens=4)
    reused_tokens, read = _greedy(backend, second, tokens=16)
    fresh = TextGenerator(TransformersBackend(backend.model, backend.tokenizer, name="fresh", identity="fresh"))
    whole_tokens, whole_read = _greedy(fresh.backend, second, tokens=16)
    assert read == whole_read - _shared_length(backend, first, second) and read < whole_read / 2
    assert reused_tokens == whole_tokens
