"""One step's prompts start with the same text (issue 16): the paragraph, memory and plans prompts, rendered as the
engine sends them, share the system line, the premise and the summary, so a backend that reuses the longest common
prompt prefix (llama.cpp's context, the transformers backend's cropped cache) reads that start once.

A scripted fake LM over a real SQLite store and the real embedder; the prompts are the exact texts it was sent.
"""

from __future__ import annotations

import os

from app.engine import Engine
from tests.engine.engine_fakes import PREMISE, ScriptedGenerator, run


def _shared(a: str, b: str) -> str:
    return os.path.commonprefix([a, b])


def _steps(session_factory, embedder, novel_id, settings: dict | None = None) -> ScriptedGenerator:
    generator = ScriptedGenerator()
    engine = Engine(session_factory, generator, embedder, max_attempts=2)
    if settings:
        from memory import store

        with session_factory() as session, session.begin():
            store.get_novel(session, novel_id).settings = settings
    run(engine.start(novel_id))
    run(engine.step(novel_id, plan_index=0))
    run(engine.step(novel_id, plan_index=1))
    return generator


def test_paragraph_memory_and_plans_prompts_share_their_start(session_factory, embedder, novel_id):
    generator = _steps(session_factory, embedder, novel_id)
    calls = [c for c in generator.calls if c.stage in ("paragraph", "memory", "plans")]
    # A retried stage (the fake's second paragraph repeats its first, so it is retried) sends the same prompt again.
    calls = [c for i, c in enumerate(calls) if i + 1 == len(calls) or calls[i + 1].stage != c.stage
             or calls[i + 1].prompt != c.prompt]
    assert [c.stage for c in calls[-6:]] == ["paragraph", "memory", "plans"] * 2
    p2, m2, l2, p3, m3, l3 = (c.prompt for c in calls[-6:])
    memory_before = m2.split("Summary so far: ", 1)[1].split("\n", 1)[0]
    memory_after = p3.split("Summary so far: ", 1)[1].split("\n", 1)[0]
    assert memory_before and memory_after != memory_before
    head = f"Premise: {PREMISE}\nSummary so far: "
    # The paragraph and the memory read the same summary (the one before the step): shared through its end.
    assert _shared(p2, m2).endswith(head + memory_before + "\n")
    # The plans read the memory the step just wrote: shared through the heading of the summary.
    assert head in _shared(m2, l2) and memory_after not in _shared(m2, l2)
    # The next step's paragraph reads the memory the plans read: shared through its end.
    assert _shared(l2, p3).endswith(head + memory_after + "\n")
    assert _shared(p3, m3).endswith(head + memory_after + "\n") and head in _shared(m3, l3)


def test_the_voice_is_still_asked_for_in_the_paragraph_prompt(session_factory, embedder, novel_id):
    from app.engine.reading import VOICES

    generator = _steps(session_factory, embedder, novel_id)
    paragraph = generator.calls_for("paragraph")[-1].prompt
    system = paragraph.split("<|user|>", 1)[0]
    assert VOICES["write"] in paragraph and VOICES["write"] not in system
    assert not any(VOICES["write"] in c.prompt for c in generator.calls_for("memory") + generator.calls_for("plans"))


def test_in_auto_mode_the_plans_the_choice_and_the_next_paragraph_share_their_start(session_factory, embedder,
                                                                                     novel_id):
    generator = ScriptedGenerator()
    engine = Engine(session_factory, generator, embedder, max_attempts=2)
    for _event in engine.auto_write(novel_id, 2):
        pass
    order = [c.stage for c in generator.calls]
    plans = max(i for i, stage in enumerate(order) if stage == "plans" and "choose" in order[i:])
    choose = order.index("choose", plans)
    paragraph = order.index("paragraph", choose)
    plans, choose, paragraph = (generator.calls[i].prompt for i in (plans, choose, paragraph))
    memory = choose.split("Summary so far: ", 1)[1].split("\n", 1)[0]
    head = f"Premise: {PREMISE}\nSummary so far: {memory}\n"
    # Shared through the end of the summary (the choice reads the plans' memory; the paragraph reads it too).
    assert memory and head in _shared(plans, choose) and head in _shared(choose, paragraph)
