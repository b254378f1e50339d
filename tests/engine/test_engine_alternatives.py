"""Versions of a paragraph in the engine, with the scripted fake LM over a real SQLite store and the real MiniLM
embedder: several versions per step (each with its own memory and plans), Retry keeping the version it replaced,
Another version, a cancelled generation adding nothing, a refused step kept pending, and rewrites on request with
the context a step gets. The real default model rewrites in test_engine_real_model.py."""

from __future__ import annotations

import threading

import pytest

from app.engine import Cancelled, Engine, EngineError
from memory import alternatives, store
from tests.engine.engine_fakes import GOOD, ScriptedGenerator, db_state, run

FIRST = "Mara climbed the spiral stair with the note in her fist and did not look back at the sea below her."
SECOND = "Mara went down to the boathouse instead and lit a candle there for the dead of the island."


def started(session_factory, embedder, novel_id, *, candidates: int = 1) -> tuple[Engine, ScriptedGenerator]:
    generator = ScriptedGenerator()
    engine = Engine(session_factory, generator, embedder, max_attempts=3)
    run(engine.start(novel_id))
    with session_factory() as session, session.begin():
        store.update_novel_settings(session, novel_id, {"candidates": candidates})
    return engine, generator


def kept(session_factory, novel_id, position: int) -> list:
    with session_factory() as session:
        paragraph = store.paragraph_at(session, novel_id, position)
        return [(a.text, a.kind, a.memory, a.plans) for a in alternatives.of_paragraph(session, paragraph.id)]


def test_a_step_writes_each_version_with_its_own_memory_and_plans(session_factory, embedder, novel_id):
    engine, generator = started(session_factory, embedder, novel_id, candidates=2)
    generator.script["paragraph"] = [FIRST, SECOND]
    generator.script["memory"] = ["Mara climbed to the lamp.", "Mara lit a candle in the boathouse."]
    generator.script["plans"] = [GOOD["plans"], " Mara rows out to the rock at night.\n2. A stranger waits in the "
                                 "boathouse.\n3. The candle goes out by itself."]
    events, outcome = run(engine.step(novel_id, "Mara decides what to do with the note."))
    assert [e.text for e in events if e.kind == "reset"] == ["Writing version 1 of 2…", "Writing version 2 of 2…"]
    # Both versions were written from the same prompt.
    first_prompt, second_prompt = [c.prompt for c in generator.calls_for("paragraph")[-2:]]
    assert first_prompt == second_prompt
    state = db_state(session_factory, novel_id)
    assert state["paragraphs"][-1][1] == FIRST and state["memory"][-1][1] == "Mara climbed to the lamp."
    assert kept(session_factory, novel_id, 2) == [(SECOND, "candidate", "Mara lit a candle in the boathouse.",
                                                    ["Mara rows out to the rock at night.",
                                                     "A stranger waits in the boathouse.",
                                                     "The candle goes out by itself."])]
    assert outcome.kept == 1 and "1 more version kept" in events[-1].text
    # The step is one undo, its second version with it.
    assert engine.undo(novel_id)
    assert len(db_state(session_factory, novel_id)["paragraphs"]) == 1


def test_picking_the_second_version_makes_memory_and_plans_follow(session_factory, embedder, novel_id):
    engine, generator = started(session_factory, embedder, novel_id, candidates=2)
    generator.script["paragraph"] = [FIRST, SECOND]
    generator.script["memory"] = ["Mara climbed to the lamp.", "Mara lit a candle in the boathouse."]
    run(engine.step(novel_id, "Mara decides what to do with the note."))
    with session_factory() as session:
        paragraph = store.paragraph_at(session, novel_id, 2)
        (second,) = alternatives.of_paragraph(session, paragraph.id)
    outcome = engine.pick_version(second.id, paragraph.version)
    assert outcome.memory_followed
    state = db_state(session_factory, novel_id)
    assert state["paragraphs"][-1][1] == SECOND and state["memory"][-1][1] == "Mara lit a candle in the boathouse."
    # The next step reads the picked version and its memory.
    generator.script["paragraph"] = [GOOD["paragraph"]]
    run(engine.step(novel_id, "Mara sleeps."))
    prompt = generator.calls_for("paragraph")[-1].prompt
    assert SECOND in prompt and "Mara lit a candle in the boathouse." in prompt and FIRST not in prompt
    with pytest.raises(store.ConflictError):
        engine.pick_version(second.id, paragraph.version)  # a stale page


def test_retry_keeps_the_version_it_replaced_and_another_version_keeps_one_more(session_factory, embedder,
                                                                                  novel_id):
    engine, generator = started(session_factory, embedder, novel_id)
    generator.script["paragraph"] = [FIRST, SECOND, GOOD["paragraph"]]
    run(engine.step(novel_id, "Mara decides what to do with the note."))
    events, outcome = run(engine.retry(novel_id))
    assert outcome.swapped and "The version it replaced is kept beside it." in events[-1].text
    assert db_state(session_factory, novel_id)["paragraphs"][-1][1] == SECOND
    assert [k[:2] for k in kept(session_factory, novel_id, 2)] == [(FIRST, "swapped")]
    events, outcome = run(engine.another_version(novel_id))
    assert not outcome.swapped and "pick it under Versions" in events[-1].text
    assert db_state(session_factory, novel_id)["paragraphs"][-1][1] == SECOND
    assert [k[:2] for k in kept(session_factory, novel_id, 2)] == [(FIRST, "swapped"), (GOOD["paragraph"], "version")]
    # All three were written from the same inputs.
    prompts = {c.prompt for c in generator.calls_for("paragraph")[-3:]}
    assert len(prompts) == 1


def test_a_cancelled_version_adds_nothing(session_factory, embedder, novel_id):
    engine, generator = started(session_factory, embedder, novel_id, candidates=2)
    run(engine.step(novel_id, "Mara climbs the tower."))
    before = db_state(session_factory, novel_id)
    cancel = threading.Event()
    generator.cancel_after_pieces = 5
    for action in (lambda: engine.step(novel_id, "Mara sleeps.", cancel=cancel),
                   lambda: engine.another_version(novel_id, cancel=cancel),
                   lambda: engine.retry(novel_id, cancel=cancel)):
        cancel.clear()
        with pytest.raises(Cancelled):
            run(action())
        assert db_state(session_factory, novel_id) == before
    with session_factory() as session:
        paragraph_id = store.paragraph_at(session, novel_id, 2).id
    cancel.clear()
    with pytest.raises(Cancelled):
        run(engine.rewrite(novel_id, paragraph_id, "tenser", cancel=cancel))
    with session_factory() as session:
        assert alternatives.pending(session, novel_id) == []
    assert db_state(session_factory, novel_id) == before
    assert kept(session_factory, novel_id, 2) != [] and all(k[1] == "candidate" for k in kept(session_factory,
                                                                                              novel_id, 2))


def test_a_step_refused_by_the_store_is_kept_pending_and_can_be_applied(session_factory, embedder, novel_id):
    engine, generator = started(session_factory, embedder, novel_id)

    def write_in_another_tab(call):
        with session_factory() as session, session.begin():
            store.add_paragraph(session, novel_id, "Another tab wrote this meanwhile.")
        return FIRST

    generator.script["paragraph"] = [write_in_another_tab]
    with pytest.raises(store.ConflictError, match="kept as a pending version for position 2"):
        run(engine.step(novel_id, "Mara climbs the tower."))
    with session_factory() as session:
        (waiting,) = alternatives.pending(session, novel_id)
        # The second memory the fake writes (it moves at every step: tests/engine/engine_fakes.moving_memory).
        assert (waiting.text, waiting.position, waiting.memory) == (FIRST, 2, f"On day 2, {GOOD['memory']}")
    outcome = engine.apply_pending(waiting.id)
    assert outcome.position == 2
    assert [p[1] for p in db_state(session_factory, novel_id)["paragraphs"]] == [
        GOOD["opening"], FIRST, "Another tab wrote this meanwhile."]
    assert engine.undo(novel_id)
    with session_factory() as session:
        assert [a.text for a in alternatives.pending(session, novel_id)] == [FIRST]
    engine.drop_version(waiting.id)
    with session_factory() as session:
        assert alternatives.pending(session, novel_id) == []


def test_rewrite_uses_the_step_context_and_the_original_is_one_pick_away(session_factory, embedder, novel_id):
    engine, generator = started(session_factory, embedder, novel_id)
    generator.script["paragraph"] = [FIRST, SECOND]
    run(engine.step(novel_id, "Mara climbs the tower."))
    run(engine.step(novel_id, "Mara goes to the boathouse."))
    before = db_state(session_factory, novel_id)
    with session_factory() as session:
        target = store.paragraph_at(session, novel_id, 2)
    events, outcome = run(engine.rewrite(novel_id, target.id, "from Orla's point of view"))
    assert outcome.swapped and outcome.paragraph == GOOD["rewrite"]
    assert "".join(e.text for e in events if e.kind == "token").strip() == GOOD["rewrite"]
    prompt = generator.calls_for("rewrite")[-1].prompt
    # The paragraph, the instruction, the plan it came from, the memory, and the paragraph before it as "last".
    assert "Paragraph to rewrite: " + FIRST in prompt and "from Orla's point of view" in prompt
    assert "It was written from this plan: Mara climbs the tower." in prompt
    assert "Paragraph before it: " + GOOD["opening"] in prompt and GOOD["memory"] in prompt
    assert SECOND not in prompt.split("Paragraph to rewrite")[0].split("Paragraph before it")[-1]
    state = db_state(session_factory, novel_id)
    assert [p[1] for p in state["paragraphs"]] == [GOOD["opening"], GOOD["rewrite"], SECOND]
    assert state["memory"] == before["memory"] and state["plans"] == before["plans"]
    assert kept(session_factory, novel_id, 2) == [(FIRST, "swapped", None, None)]
    # One Undo puts the original back; the rewrite stays kept beside it.
    assert engine.undo(novel_id)
    assert db_state(session_factory, novel_id)["paragraphs"] == before["paragraphs"]
    assert [k[:2] for k in kept(session_factory, novel_id, 2)] == [(GOOD["rewrite"], "rewrite")]
    with pytest.raises(EngineError, match="instruction is empty"):
        run(engine.rewrite(novel_id, target.id, "   "))


def test_a_rewrite_of_a_paragraph_edited_meanwhile_is_kept_beside_it(session_factory, embedder, novel_id):
    engine, generator = started(session_factory, embedder, novel_id)
    with session_factory() as session:
        target = store.paragraph_at(session, novel_id, 1)

    def edit_in_another_tab(call):
        engine.edit_paragraph(target.id, "Edited in another tab while the rewrite ran.", target.version)
        return GOOD["rewrite"]

    generator.script["rewrite"] = [edit_in_another_tab]
    events, outcome = run(engine.rewrite(novel_id, target.id, "tenser"))
    assert not outcome.swapped
    assert any(e.kind == "notice" and "not swapped in" in e.text for e in events)
    assert db_state(session_factory, novel_id)["paragraphs"][0][1] == "Edited in another tab while the rewrite ran."
    assert [k[:2] for k in kept(session_factory, novel_id, 1)] == [(GOOD["rewrite"], "rewrite")]
