"""The step's retrieval and the Memory tab's search go through the LM rerank (app/engine/rerank.py): the Context
tab's why line says the LM rank; a model that cannot score, or the off switch, says the rerank was skipped."""

from __future__ import annotations

from app.engine import Engine
from memory import store
from tests.engine.engine_fakes import ScoringBackend, ScriptedGenerator, run

PLAN = "Mara looks for the brass key she hid."
TEXTS = ["Mara hid the brass key in the blue teapot on the shelf.", "The ferryman brought tobacco and letters.",
         "Gulls wheeled over the boathouse at dawn.", "The wind rattled the shutters."]


def _engine(session_factory, embedder, novel_id, generator) -> Engine:
    engine = Engine(session_factory, generator, embedder, lm_rerank=True)
    with session_factory() as session, session.begin():
        for text in TEXTS:
            store.add_paragraph(session, novel_id, text, embedding=embedder.passage(text))
    return engine


def test_step_context_says_the_lm_rank_of_each_retrieved_paragraph(session_factory, embedder, novel_id):
    generator = ScriptedGenerator()
    generator.backend = ScoringBackend()
    engine = _engine(session_factory, embedder, novel_id, generator)
    preview = engine.inspect_context(novel_id, PLAN)
    assert preview.retrieval_notice == ""
    assert preview.retrieved and all("LM rerank rank" in item.why for item in preview.retrieved)
    assert generator.backend.scored and all(" ".join(c) == PLAN for _, c in generator.backend.scored)
    best = next(item for item in preview.retrieved if "teapot" in item.text)
    assert "LM rerank rank 1" in best.why
    found = engine.search_memory(novel_id, PLAN, 2)
    assert found.notice == "" and "teapot" in found.hits[0].paragraph.text
    assert "LM rerank rank 1" in found.hits[0].why()
    before = len(generator.backend.scored)
    run(engine.step(novel_id, PLAN))
    assert len(generator.backend.scored) > before  # the step itself reranks what it retrieves


def test_a_model_that_cannot_score_and_the_off_switch_say_the_rerank_was_skipped(session_factory, embedder,
                                                                                 novel_id):
    engine = _engine(session_factory, embedder, novel_id, ScriptedGenerator())
    preview = engine.inspect_context(novel_id, PLAN)
    assert preview.retrieval_notice == "LM rerank skipped: fake has no text scoring (a remote server has none)."
    assert preview.retrieved and not any("LM rerank" in item.why for item in preview.retrieved)

    generator = ScriptedGenerator()
    generator.backend = ScoringBackend()
    off = Engine(session_factory, generator, embedder)  # the default: off
    preview = off.inspect_context(novel_id, PLAN)
    assert "LM rerank skipped: off (--lm-rerank 1" in preview.retrieval_notice and not generator.backend.scored
    assert "LM rerank skipped: off" in off.search_memory(novel_id, PLAN, 2).notice
    run(off.step(novel_id, PLAN))
    assert not generator.backend.scored
