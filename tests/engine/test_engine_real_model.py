"""The engine with the real default model (SmolLM2-135M-Instruct) and the real MiniLM embedder on a real SQLite
file: start plus three steps, edits to memory and plan reaching the model verbatim, a planted needle coming back
through retrieval. Token limits are kept small so the module stays within a few minutes on two CPU cores."""

from __future__ import annotations

import pytest

from app.engine import Engine
from memory import store
from tests.engine.engine_fakes import db_state, run

pytestmark = pytest.mark.slow

SMALL = {"max_new_tokens": 60, "paragraph_words": 45, "memory_words": 30, "plan_tokens": 50, "title_tokens": 24,
         "max_attempts": 2, "sampling": {"seed": 7}}


class RecordingGenerator:
    """The real TextGenerator, with every prompt it is asked to continue recorded."""

    def __init__(self, generator):
        self._generator = generator
        self.prompts: list[str] = []

    def __getattr__(self, name):
        return getattr(self._generator, name)

    def stream(self, prompt, **kwargs):
        self.prompts.append(prompt)
        return self._generator.stream(prompt, **kwargs)


@pytest.fixture
def real_engine(session_factory, embedder, default_generator):
    return Engine(session_factory, RecordingGenerator(default_generator), embedder)


def test_start_then_three_steps_with_edits_reaching_the_model(real_engine, session_factory, novel_id):
    with session_factory() as session, session.begin():
        store.update_novel_settings(session, novel_id, SMALL)
    _, opening = run(real_engine.start(novel_id))
    assert opening.paragraph.strip()
    outcomes = [opening]
    for step in range(3):
        plan = None
        if step == 2:
            # The writer edits the memory and rewrites a plan before the third step.
            with session_factory() as session, session.begin():
                version = store.current_memory(session, novel_id).version
                store.set_memory(session, novel_id, "Mara's brother Tomas drowned off Skerry in 1987.",
                                 expected_version=version)
            plan = "Tomas's ghost knocks three times on the lamp-room window."
            preview = real_engine.inspect_context(novel_id, plan)
            assert "Mara's brother Tomas drowned off Skerry in 1987." in preview.prompt_text
            assert plan in preview.prompt_text
            sent_before = len(real_engine.generator.prompts)
            _, outcome = run(real_engine.step(novel_id, plan))
            assert preview.prompt_text in real_engine.generator.prompts[sent_before:]
        else:
            _, outcome = run(real_engine.step(novel_id, plan_index=0))
        outcomes.append(outcome)

    state = db_state(session_factory, novel_id)
    assert len(state["paragraphs"]) == 4
    assert all(len(text.split()) >= 8 for _, text, _ in state["paragraphs"])
    memories = [text for _, text in state["memory"]]
    assert len(memories) == 1 + 4 + 1  # the empty first one, four steps, the writer's edit
    assert all(m.strip() for m in memories[1:])
    for outcome in outcomes:
        assert len(outcome.plans) == 3 and len({p.lower() for p in outcome.plans}) == 3
        assert all(len(p.split()) >= 3 for p in outcome.plans)
    assert state["plans"][-2][3] == "Tomas's ghost knocks three times on the lamp-room window."


FILLER = [
    "The ferry to the mainland ran on Tuesdays, weather permitting, and the weather rarely permitted.",
    "Gulls nested in the gutter above the cottage door and screamed at anyone who came near.",
    "Mara hid the brass key to the lamp room inside the blue teapot on the cottage shelf.",
    "In winter the generator failed twice a week, and she learned to fix it with wire and patience.",
    "A seal slept on the slipway most afternoons, indifferent to the keeper and her chores.",
    "The logbook recorded every ship that passed: tankers, trawlers, once a yacht with torn sails.",
    "Her mother's letters arrived in bundles, months late, smelling of lavender and coal smoke.",
    "The fog came in so thick one morning that she could not see her own hands on the rail.",
    "She painted the railings red every spring, because the salt ate the paint by autumn.",
    "On clear nights she counted satellites and named them after people she had left behind.",
    "The radio crackled with voices from fishing boats arguing about prices and football.",
    "A storm tore the roof off the boathouse, and she spent a week nailing it back in the rain.",
]


def test_planted_needle_comes_back_through_retrieval_into_the_context(real_engine, session_factory, embedder,
                                                                      novel_id):
    with session_factory() as session, session.begin():
        for text in FILLER:
            store.add_paragraph(session, novel_id, text, embedding=embedder.vector(text))
    needle = FILLER[2]
    preview = real_engine.inspect_context(novel_id, "Mara needs the key that opens the lamp room; she remembers "
                                                    "where she put it.")
    retrieved = next(s for s in preview.sections if s.name == "retrieved")
    assert needle in retrieved.text
    assert needle in preview.prompt_text
    assert preview.total_tokens == real_engine.generator.count_tokens(preview.prompt_text) <= preview.budget


def test_two_versions_and_a_rewrite_with_the_real_model(real_engine, session_factory, novel_id):
    from memory import alternatives

    with session_factory() as session, session.begin():
        store.update_novel_settings(session, novel_id, {**SMALL, "candidates": 2})
    _, opening = run(real_engine.start(novel_id))
    with session_factory() as session:
        paragraph = store.paragraph_at(session, novel_id, 1)
        (second,) = alternatives.of_paragraph(session, paragraph.id)
    assert paragraph.text == opening.paragraph and second.text.strip() and second.memory.strip()
    assert len(second.plans) == 3
    sent_before = len(real_engine.generator.prompts)
    events, outcome = run(real_engine.rewrite(novel_id, paragraph.id, "half as long"))
    prompt = real_engine.generator.prompts[sent_before]
    assert "Paragraph to rewrite: " + opening.paragraph in prompt and "half as long" in prompt
    assert outcome.swapped and outcome.paragraph.strip()
    assert "".join(e.text for e in events if e.kind == "token").strip()
    with session_factory() as session:
        assert store.paragraph_at(session, novel_id, 1).text == outcome.paragraph
        kept = {a.kind: a.text for a in alternatives.of_paragraph(session, paragraph.id)}
    # The original is one pick (or one Undo) away.
    assert kept["swapped"] == opening.paragraph and kept["candidate"] == second.text
    assert real_engine.undo(novel_id)
    with session_factory() as session:
        assert store.paragraph_at(session, novel_id, 1).text == opening.paragraph
