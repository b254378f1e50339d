"""Text scoring (models/scoring.py) on the real default model, through llama.cpp (the app's default on a CPU) and
transformers: a passage holding the answer makes the question likelier than an unrelated one, and scoring leaves
the generation state alone."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from app.engine.rerank import RERANK_PROMPT
from models.scoring import log_likelihood, scoring_unavailable

pytestmark = pytest.mark.slow

ANSWER = ("Mara climbed down from the gallery as the fog thickened. Before bed she slipped the brass key to the lamp "
          "room inside the blue teapot on the cottage shelf. The wind worried at the shutters all night.")
UNRELATED = ("The caravan made camp in the lee of a red dune. Camels groaned as the drivers unloaded the water "
             "skins. By dawn the wind had wiped away every footprint.")
QUESTION = " Where did the keeper hide the key to the lamp room?"


@pytest.fixture(scope="module")
def llamacpp_backend():
    pytest.importorskip("llama_cpp")
    from app.offline import DEFAULT_LM_NAME, default_lm_path
    from models.llamacpp_backend import load_llamacpp_backend

    return load_llamacpp_backend(default_lm_path(), name=DEFAULT_LM_NAME, threads=1, identity="test-scoring")


def _scores(backend) -> tuple[float, float]:
    return tuple(log_likelihood(backend, RERANK_PROMPT.format(passage=p), QUESTION) for p in (ANSWER, UNRELATED))


def test_llamacpp_scores_the_answering_passage_higher_and_keeps_the_generation_context(llamacpp_backend):
    backend = llamacpp_backend
    state = backend.new_state()
    logits = backend.prefill(state, backend.encode("The lighthouse stood on the cliff."))
    held = list(backend._context)
    answer, unrelated = _scores(backend)
    assert answer < 0 and unrelated < 0
    assert answer > unrelated + 1.0
    assert _scores(backend) == (answer, unrelated)  # deterministic: the scoring context starts empty each time
    assert backend._context == held
    again = backend.prefill(backend.clone_state(state), backend.encode(" It"))
    fresh = backend.new_state()
    backend.prefill(fresh, backend.encode("The lighthouse stood on the cliff."))
    assert logits.shape == again.shape
    assert (backend.prefill(fresh, backend.encode(" It")) - again).abs().max() < 1e-3


def test_transformers_scores_the_same_way(default_generator, llamacpp_backend):
    answer, unrelated = _scores(default_generator.backend)
    assert answer > unrelated + 1.0
    # The same weights (the GGUF dequantized, against llama.cpp's Q4_1 kernels): close, not equal.
    llama_answer, _ = _scores(llamacpp_backend)
    assert abs(answer - llama_answer) < 0.1 * abs(answer)


def test_a_backend_without_scoring_says_why():
    remote = SimpleNamespace(name="http://127.0.0.1:8000/v1")
    assert scoring_unavailable(remote) == "http://127.0.0.1:8000/v1 has no text scoring (a remote server has none)"
    assert scoring_unavailable(None) == "no language model is loaded"
    with pytest.raises(ValueError, match="no text scoring"):
        log_likelihood(remote, "Passage:", " Why?")
