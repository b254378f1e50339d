"""The Q8_0 copy llama.cpp reads a Q4_1 GGUF through (models/requantize.py), on the real default GGUF: made once,
atomically, the same model within a measured bound, and the file itself whenever no copy should or can be made."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

llama_cpp = pytest.importorskip("llama_cpp")

from app.offline import DEFAULT_LM_NAME, ModelSource, default_lm_path  # noqa: E402
from models.llamacpp_backend import LlamaCppBackend  # noqa: E402
from models.requantize import copy_path, fast_copy, weight_type  # noqa: E402
from models.service import load_generator  # noqa: E402

# Teacher-forced over 200 positions of a real prompt the copy picked the original's next token at 0.985 of them with
# a mean KL of 0.004 nats (one run); a copy that lost the weights' low bits (Q4_0) or scrambled a block would
# fall far below these.
MIN_TOP1_AGREEMENT = 0.95
MAX_MEAN_KL = 0.02


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> tuple[Path, Path, str]:
    cache = tmp_path_factory.mktemp("models")
    copy, note = fast_copy(default_lm_path(), cache_dir=cache, threads=1)
    return cache, copy, note


def test_the_default_q4_1_file_gets_a_q8_0_copy_once(made):
    cache, copy, note = made
    assert weight_type(default_lm_path()) == "Q4_1"
    assert copy == copy_path(default_lm_path(), cache_dir=cache) and copy.is_file()
    assert weight_type(copy) == "Q8_0"
    assert "made once" in note and "Q4_1" in note
    assert not list(copy.parent.glob("*.partial")), "nothing half-written stays behind"
    stamp = copy.stat().st_mtime_ns
    again, note_again = fast_copy(default_lm_path(), cache_dir=cache, threads=1)
    assert again == copy and copy.stat().st_mtime_ns == stamp, "a second load reuses the copy"
    assert "made before" in note_again


@pytest.mark.slow
def test_the_copy_is_the_same_model_within_the_bound(made):
    _, copy, _ = made
    original = LlamaCppBackend(default_lm_path(), name="q4_1", threads=1, identity="q4_1")
    quick = LlamaCppBackend(copy, name="q8_0", threads=1, identity="q8_0")
    text = Path("prompts/paragraph.txt").read_text() + Path("README.md").read_text()[:3000]
    ids = original.encode(text)[:400]
    assert quick.encode(text)[:400] == ids, "the copy keeps the vocabulary"
    a_state, b_state = original.new_state(), quick.new_state()
    a_logits, b_logits = original.prefill(a_state, ids[:200]), quick.prefill(b_state, ids[:200])
    agree, kl = 0, 0.0
    for token in ids[200:]:
        a_log, b_log = torch.log_softmax(a_logits, -1), torch.log_softmax(b_logits, -1)
        agree += int(a_logits.argmax() == b_logits.argmax())
        kl += float((a_log.exp() * (a_log - b_log)).sum())
        a_logits, b_logits = original.step(a_state, token), quick.step(b_state, token)
    positions = len(ids) - 200
    assert agree / positions >= MIN_TOP1_AGREEMENT
    assert kl / positions <= MAX_MEAN_KL
    assert not torch.equal(a_logits, b_logits), "the copy is another file, not the original read twice"


def test_a_file_that_is_fast_already_is_loaded_as_it_is(made, tmp_path):
    _, copy, _ = made
    assert fast_copy(copy, cache_dir=tmp_path, threads=1) == (copy, "")
    assert not (tmp_path / "gguf-q8_0").exists()


def test_a_file_that_is_not_a_gguf_is_left_to_the_load_to_refuse(tmp_path):
    fake = tmp_path / "weights.gguf"
    fake.write_bytes(b"definitely not gguf")
    assert fast_copy(fake, cache_dir=tmp_path, threads=1) == (fake, "")
    assert not (tmp_path / "gguf-q8_0").exists()


def test_a_copy_too_large_is_not_made_and_the_note_says_how(tmp_path):
    path, note = fast_copy(default_lm_path(), cache_dir=tmp_path, threads=1, max_bytes=1000)
    assert path == default_lm_path()
    assert "llama-quantize" in note and "none was made" in note
    assert not (tmp_path / "gguf-q8_0").exists()


def test_the_cache_folder_being_a_file_falls_back_to_the_file(tmp_path):
    (tmp_path / "gguf-q8_0").write_text("not a folder")
    path, note = fast_copy(default_lm_path(), cache_dir=tmp_path, threads=1)
    assert path == default_lm_path() and "No Q8_0 copy" in note


@pytest.mark.parametrize("choice", ["auto", "off"])
def test_the_app_loads_the_copy_unless_told_off(made, choice):
    cache, copy, _ = made
    source = ModelSource("gguf", str(default_lm_path()), DEFAULT_LM_NAME)
    generator = load_generator(source, device="cpu", dtype="float32", cache_dir=cache, threads=1,
                               gguf_backend="llama.cpp", gguf_requantize=choice)
    expected = copy if choice == "auto" else default_lm_path()
    assert generator.backend.path == expected
    assert generator.load_report.loaded_from == str(expected)
    assert bool(generator.load_report.note) == (choice == "auto")


def test_the_launch_threads_reach_llama_cpp_through_the_one_wiring(made, tmp_path):
    from app.config import Config
    from app.wiring import open_parts

    cache, copy, _ = made
    config = Config(data_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'l.db'}", device="cpu",
                    gguf_backend="llama.cpp", threads=1)
    generator = open_parts(config, models_dir=cache).models.generator()
    assert generator.backend.threads == 1 and generator.backend.path == copy
