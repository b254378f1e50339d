"""The engine's continuity guards with the scripted fake LM over a real SQLite store and the real MiniLM embedder:
leaked labels stripped and said, an instruction-only answer retried, the voice retried within the bound, an
overlong paragraph trimmed, a memory that copies a paragraph refused and replaced by the visible extractive
fallback (origin "extractive" in the history), and the document strategy's prompt sent as plain text."""

from __future__ import annotations

from app.engine import Engine
from app.engine.continuity import entities, memory_moved
from memory import store
from tests.engine.engine_fakes import GOOD, ScriptedGenerator, db_state, run

ATTEMPTS = 3
FIRST_PERSON = ("I climbed the spiral stair with the note in my fist. The lamp room smelled of paraffin and salt. I "
                "read the words again by the last light, and my hands shook.")


def started(session_factory, embedder, novel_id, **script):
    generator = ScriptedGenerator()
    engine = Engine(session_factory, generator, embedder, max_attempts=ATTEMPTS)
    run(engine.start(novel_id))
    generator.script.update(script)
    return engine, generator


def _notices(events) -> list[str]:
    return [e.text for e in events if e.kind == "notice"]


def test_a_paragraph_starting_with_a_prompt_label_is_saved_without_it(session_factory, embedder, novel_id):
    engine, generator = started(session_factory, embedder, novel_id,
                                paragraph=["(paragraph 4) " + GOOD["paragraph"]])
    events, outcome = run(engine.step(novel_id, "Mara climbs the tower."))
    assert outcome.paragraph == GOOD["paragraph"]
    assert len(generator.calls_for("paragraph")) == 1
    assert any("removed prompt labels" in n for n in _notices(events))


def test_an_answer_that_is_only_the_instruction_is_retried(session_factory, embedder, novel_id):
    copied = "This time take a different direction, focusing entirely on the boat and the storm and the sea."
    engine, generator = started(session_factory, embedder, novel_id, paragraph=[copied, GOOD["paragraph"]])
    events, outcome = run(engine.step(novel_id, "Mara climbs the tower."))
    assert len(generator.calls_for("paragraph")) == 2
    assert [e.text for e in events if e.kind == "reset"] == ["Retrying the paragraph (it was prompt text, not story)."]
    assert outcome.paragraph == GOOD["paragraph"]


def test_a_first_person_paragraph_is_retried_when_the_third_is_asked(session_factory, embedder, novel_id):
    engine, generator = started(session_factory, embedder, novel_id, paragraph=[FIRST_PERSON, GOOD["paragraph"]])
    events, outcome = run(engine.step(novel_id, "Mara climbs the tower."))
    assert len(generator.calls_for("paragraph")) == 2
    assert any("first person, not the third" in e.text for e in events if e.kind == "reset")
    assert outcome.paragraph == GOOD["paragraph"]


def test_the_voice_retry_is_bounded_and_the_kept_paragraph_said(session_factory, embedder, novel_id):
    engine, generator = started(session_factory, embedder, novel_id, paragraph=[FIRST_PERSON])
    events, outcome = run(engine.step(novel_id, "Mara climbs the tower."))
    assert len(generator.calls_for("paragraph")) == ATTEMPTS
    assert outcome.paragraph == FIRST_PERSON
    assert any(n.startswith("Every try was written in the first person, not the third") for n in _notices(events))


def test_an_overlong_paragraph_is_trimmed_at_a_sentence_end(session_factory, embedder, novel_id):
    with session_factory() as session, session.begin():
        store.update_novel_settings(session, novel_id, {"paragraph_words": 40})
    long_text = " ".join([GOOD["paragraph"], "Outside, the gulls wheeled over the black water of the bay.",
                          "Below her the sea broke against the rocks in long grey lines.",
                          "She thought of the mainland and the boat that came on Thursdays."])
    engine, generator = started(session_factory, embedder, novel_id, paragraph=[long_text])
    events, outcome = run(engine.step(novel_id, "Mara climbs the tower."))
    assert len(outcome.paragraph.split()) <= 48 and outcome.paragraph.endswith(".")
    assert long_text.startswith(outcome.paragraph)
    assert any("trimmed at a sentence end" in n for n in _notices(events))


def test_a_memory_copying_a_paragraph_falls_back_to_the_extractive_memory(session_factory, embedder, novel_id):
    copy_of_opening = " ".join(GOOD["opening"].split()[:30])
    engine, generator = started(session_factory, embedder, novel_id, memory=[copy_of_opening])
    old_memory = db_state(session_factory, novel_id)["memory"][-1][1]
    events, outcome = run(engine.step(novel_id, "Mara climbs the tower."))
    assert len(generator.calls_for("memory")) == 1 + ATTEMPTS
    assert outcome.memory.startswith(old_memory)
    added = outcome.memory[len(old_memory):].strip()
    assert added and added in GOOD["paragraph"]  # one sentence of the new paragraph, chosen by the embedder
    assert memory_moved(old_memory, outcome.memory, GOOD["paragraph"])
    assert len(outcome.memory.split()) <= 80
    assert any("copies paragraph 1" in n and "extractive" in n for n in _notices(events))
    with session_factory() as session:
        history = store.memory_history(session, novel_id)
        assert [m.origin for m in history][-2:] == ["generated", "extractive"]


def test_a_first_memory_that_copies_the_opening_falls_back_within_the_word_limit(session_factory, embedder,
                                                                                 novel_id):
    with session_factory() as session, session.begin():
        store.update_novel_settings(session, novel_id, {"memory_words": 20})
    generator = ScriptedGenerator({"memory": [GOOD["opening"]]})
    engine = Engine(session_factory, generator, embedder, max_attempts=ATTEMPTS)
    events, outcome = run(engine.start(novel_id))
    assert len(generator.calls_for("memory")) == ATTEMPTS
    assert 0 < len(outcome.memory.split()) <= 20
    assert entities(outcome.memory) & entities(GOOD["opening"])
    with session_factory() as session:
        assert store.current_memory(session, novel_id).origin == "extractive"


def test_the_document_strategy_sends_the_manuscript_as_plain_text(session_factory, embedder, novel_id):
    with session_factory() as session, session.begin():
        store.update_novel_settings(session, novel_id, {"paragraph_prompt": "document"})
    engine, generator = started(session_factory, embedder, novel_id)
    opening_prompt = generator.calls_for("opening")[-1].prompt
    assert "<|user|>" not in opening_prompt and opening_prompt.endswith("Chapter One\n\n")
    preview = engine.inspect_context(novel_id, "Mara climbs the tower.")
    _, outcome = run(engine.step(novel_id, "Mara climbs the tower."))
    prompt = generator.calls_for("paragraph")[-1].prompt
    assert prompt == preview.prompt_text
    assert "<|" not in prompt and prompt.startswith("Notes on the novel, for the next passage")
    assert prompt.endswith(GOOD["opening"] + "\n\n")  # the model continues the manuscript itself
    assert "What happens next: Mara climbs the tower." in prompt
    assert outcome.paragraph == GOOD["paragraph"]


SHORT = "Mara climbed the spiral stair with the note in her fist."
MORE = (" The lamp room smelled of paraffin and salt. She read the words again by the last light: do not light the "
        "lamp tonight. The hand that wrote it was hers.")


def test_a_short_paragraph_is_continued_within_the_bound(session_factory, embedder, novel_id):
    with session_factory() as session, session.begin():
        store.update_novel_settings(session, novel_id, {"paragraph_words": 40})
    engine, generator = started(session_factory, embedder, novel_id, paragraph=[SHORT], continuation=[MORE])
    events, outcome = run(engine.step(novel_id, "Mara climbs the tower."))
    assert outcome.paragraph == SHORT + MORE
    [continuation] = generator.calls_for("continuation")
    # The step's own prompt with the short paragraph as the answer so far, asked for about the missing words.
    assert continuation.prompt == generator.calls_for("paragraph")[-1].prompt + SHORT
    assert continuation.max_new_tokens == int((40 - len(SHORT.split())) * 1.6) + 16
    assert any(f"continued from {len(SHORT.split())} to {len((SHORT + MORE).split())} words" in n
               for n in _notices(events))
    with session_factory() as session:
        assert store.paragraphs(session, novel_id)[-1].text == SHORT + MORE


def test_a_continuation_that_repeats_or_leaks_is_refused_and_the_short_paragraph_kept(session_factory, embedder,
                                                                                       novel_id):
    with session_factory() as session, session.begin():
        store.update_novel_settings(session, novel_id, {"paragraph_words": 40})
    engine, generator = started(session_factory, embedder, novel_id, paragraph=[SHORT],
                                continuation=[" " + GOOD["opening"], " Write the next paragraph, about 40 words."])
    events, outcome = run(engine.step(novel_id, "Mara climbs the tower."))
    assert outcome.paragraph == SHORT
    assert len(generator.calls_for("continuation")) == ATTEMPTS
    assert any(n.startswith(f"The paragraph stopped at {len(SHORT.split())} words of about 40")
               and "prompt text" in n for n in _notices(events))


def test_a_paragraph_near_its_length_is_not_continued(session_factory, embedder, novel_id):
    with session_factory() as session, session.begin():
        store.update_novel_settings(session, novel_id, {"paragraph_words": 40})
    engine, generator = started(session_factory, embedder, novel_id, continuation=[MORE])
    _, outcome = run(engine.step(novel_id, "Mara climbs the tower."))
    assert outcome.paragraph == GOOD["paragraph"] and not generator.calls_for("continuation")


def test_a_model_that_ends_the_paragraph_at_once_is_not_asked_again(session_factory, embedder, novel_id):
    with session_factory() as session, session.begin():
        store.update_novel_settings(session, novel_id, {"paragraph_words": 40})
    engine, generator = started(session_factory, embedder, novel_id, paragraph=[SHORT], continuation=[""])
    events, outcome = run(engine.step(novel_id, "Mara climbs the tower."))
    assert outcome.paragraph == SHORT and len(generator.calls_for("continuation")) == 1
    assert not any("stopped at" in n or "continued from" in n for n in _notices(events))
