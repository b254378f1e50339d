"""Engine logic with a scripted fake LM over a real SQLite store and the real MiniLM embedder: malformed answers
within the retry bound, nothing lost, nothing half-written on failure or cancellation, retry/undo/redo/edit,
modes, the inspector's budget, and the manuscript-state strategy."""

from __future__ import annotations

import threading

import pytest

from app.engine import MANUSCRIPT_STATE, PROMPT_ONLY, Cancelled, ContextTooLargeError, Engine, EngineError
from memory import alternatives, store
from memory.errors import ConflictError
from models.errors import GenerationError
from tests.engine.engine_fakes import GOOD, ScriptedGenerator, db_state, run

ATTEMPTS = 3


def make_engine(session_factory, embedder, generator, **kwargs) -> Engine:
    return Engine(session_factory, generator, embedder, max_attempts=ATTEMPTS, **kwargs)


def started(session_factory, embedder, novel_id, generator=None) -> tuple[Engine, ScriptedGenerator]:
    generator = generator or ScriptedGenerator()
    engine = make_engine(session_factory, embedder, generator)
    run(engine.start(novel_id))
    return engine, generator


def test_start_and_step_commit_paragraph_memory_and_plans(session_factory, embedder, novel_id):
    generator = ScriptedGenerator()
    engine = make_engine(session_factory, embedder, generator)
    events, outcome = run(engine.start(novel_id))
    kinds = [e.kind for e in events]
    assert kinds.index("paragraph") < kinds.index("memory") < kinds.index("plans") < kinds.index("done")
    streamed = "".join(e.text for e in events if e.kind == "token")
    assert outcome.paragraph == GOOD["opening"] and streamed.strip() == GOOD["opening"]
    assert outcome.title == "The Keeper of Skerry"  # the novel's title had been derived from the premise

    events, outcome = run(engine.step(novel_id, plan_index=1))
    state = db_state(session_factory, novel_id)
    assert [p[1] for p in state["paragraphs"]] == [GOOD["opening"], GOOD["paragraph"]]
    assert [m[1] for m in state["memory"]][-2:] == [GOOD["memory"], "On day 2, " + GOOD["memory"]]
    assert state["plans"][-1][1] == ["Mara lights the lamp anyway and waits.", "A boat appears in the storm "
                                     "without lights.", "Mara searches the logbook for her own handwriting."]
    chosen = state["plans"][-2]
    assert chosen[2] == 1 and chosen[3] == "A boat appears in the storm without lights."
    assert state["settings"]["outline"].startswith("Mara finds a bottle")
    assert outcome.strategy == PROMPT_ONLY


def test_malformed_paragraphs_are_retried_within_the_bound(session_factory, embedder, novel_id):
    engine, generator = started(session_factory, embedder, novel_id)
    generator.script["paragraph"] = ["", "Sure! Here is the next paragraph:", GOOD["paragraph"]]
    events, outcome = run(engine.step(novel_id, "Mara climbs the tower."))
    assert len(generator.calls_for("paragraph")) == 3
    assert [e.kind for e in events].count("reset") == 2
    assert outcome.paragraph == GOOD["paragraph"]


def test_no_usable_paragraph_fails_cleanly_and_saves_nothing(session_factory, embedder, novel_id):
    engine, generator = started(session_factory, embedder, novel_id)
    before = db_state(session_factory, novel_id)
    generator.script["paragraph"] = ["<|im_end|>"]
    with pytest.raises(EngineError, match="no usable paragraph in 3 tries"):
        run(engine.step(novel_id, "Mara climbs the tower."))
    assert len(generator.calls_for("paragraph")) == ATTEMPTS
    assert db_state(session_factory, novel_id) == before


def test_endless_looping_paragraph_is_bounded_and_cut(session_factory, embedder, novel_id):
    engine, generator = started(session_factory, embedder, novel_id)
    generator.script["paragraph"] = ["The waves rolled in over the black rocks. " * 500]
    _, outcome = run(engine.step(novel_id, "The sea."))
    call = generator.calls_for("paragraph")[-1]
    assert call.max_new_tokens == 250
    assert outcome.paragraph == "The waves rolled in over the black rocks."
    assert any("repeated sentence" in notice for notice in outcome.notices)


def test_bad_memory_falls_back_visibly_to_an_extractive_memory_and_keeps_the_paragraph(session_factory, embedder,
                                                                                       novel_id):
    engine, generator = started(session_factory, embedder, novel_id)
    old_memory = db_state(session_factory, novel_id)["memory"][-1][1]
    generator.script["memory"] = ["", "Summary:", "ok"]
    events, outcome = run(engine.step(novel_id, "Mara climbs the tower."))
    assert len(generator.calls_for("memory")) == 1 + ATTEMPTS  # one at the start, three now
    assert outcome.memory.startswith(old_memory) and outcome.memory != old_memory
    assert outcome.memory[len(old_memory):].strip() in GOOD["paragraph"]
    notices = [e.text for e in events if e.kind == "notice"]
    assert any("most telling sentence" in n and "extractive" in n for n in notices)
    assert db_state(session_factory, novel_id)["paragraphs"][-1][1] == GOOD["paragraph"]


@pytest.mark.parametrize("answers,expected", [
    ([" Opción uno: Mara sube a la torre.\nOpción 2: Mara quema la nota.\nOpción 3: Un barco aparece de noche."],
     ["Mara sube a la torre.", "Mara quema la nota.", "Un barco aparece de noche."]),
    ([" Mara lights the lamp.", "\nPlan B - A boat appears in the storm.", "\n- Mara reads the logbook again."],
     ["Mara lights the lamp.", "A boat appears in the storm.", "Mara reads the logbook again."]),
])
def test_plans_with_renamed_markers_or_missing_items(session_factory, embedder, novel_id, answers, expected):
    engine, generator = started(session_factory, embedder, novel_id)
    calls_before = len(generator.calls_for("plans"))
    generator.script["plans"] = list(answers)
    _, outcome = run(engine.step(novel_id, "Mara climbs the tower."))
    assert outcome.plans == expected
    assert len(generator.calls_for("plans")) - calls_before == len(answers)


def test_hopeless_plans_get_stock_plans_and_a_notice(session_factory, embedder, novel_id):
    engine, generator = started(session_factory, embedder, novel_id)
    generator.script["plans"] = [" ", " ...", "\n\n"]
    events, outcome = run(engine.step(novel_id, "Mara climbs the tower."))
    assert len(outcome.plans) == 3 and len(set(outcome.plans)) == 3
    assert any("stock plan" in e.text for e in events if e.kind == "notice")


def test_start_with_translated_markers_and_missing_outline(session_factory, embedder, novel_id):
    generator = ScriptedGenerator({"start": [" Le Gardien\n\nI. Introduction", " Le Gardien\nRésumé : Mara "
                                             "trouve une bouteille. Elle apprend la vérité."]})
    engine = make_engine(session_factory, embedder, generator)
    _, outcome = run(engine.start(novel_id))
    assert outcome.title == "Le Gardien"
    assert outcome.outline == "Mara trouve une bouteille. Elle apprend la vérité."
    assert len(generator.calls_for("start")) == 2


def test_cancel_mid_stream_leaves_the_database_unchanged(session_factory, embedder, novel_id):
    engine, generator = started(session_factory, embedder, novel_id)
    before = db_state(session_factory, novel_id)
    cancel = threading.Event()
    generator.cancel_after_pieces = 5
    with pytest.raises(Cancelled):
        run(engine.step(novel_id, "Mara climbs the tower.", cancel=cancel))
    assert db_state(session_factory, novel_id) == before


@pytest.mark.parametrize("stage", ["paragraph", "memory", "plans"])
def test_failure_mid_stream_leaves_the_database_unchanged(session_factory, embedder, novel_id, stage):
    engine, generator = started(session_factory, embedder, novel_id)
    before = db_state(session_factory, novel_id)
    generator.script[stage] = [GenerationError("the server dropped the stream")]
    with pytest.raises(GenerationError):
        run(engine.step(novel_id, "Mara climbs the tower."))
    assert db_state(session_factory, novel_id) == before


def test_step_refused_when_the_memory_was_edited_meanwhile(session_factory, embedder, novel_id):
    engine, generator = started(session_factory, embedder, novel_id)

    def edit_memory_while_generating(call):
        with session_factory() as session, session.begin():
            version = store.current_memory(session, novel_id).version
            store.set_memory(session, novel_id, "Edited in another tab.", expected_version=version)
        return GOOD["paragraph"]

    generator.script["paragraph"] = [edit_memory_while_generating]
    with pytest.raises(ConflictError):
        run(engine.step(novel_id, "Mara climbs the tower."))
    state = db_state(session_factory, novel_id)
    assert len(state["paragraphs"]) == 1 and state["memory"][-1][1] == "Edited in another tab."


def test_retry_rewrites_the_last_step_from_the_same_inputs(session_factory, embedder, novel_id):
    engine, generator = started(session_factory, embedder, novel_id)
    run(engine.step(novel_id, "Mara climbs the tower."))
    memory_before_step = db_state(session_factory, novel_id)["memory"][-2][1]
    first_prompt = generator.calls_for("paragraph")[-1].prompt
    generator.script["paragraph"] = ["Mara went down to the boathouse instead and lit a candle there for the dead."]
    _, outcome = run(engine.retry(novel_id))
    assert generator.calls_for("paragraph")[-1].prompt == first_prompt
    assert memory_before_step in generator.calls_for("memory")[-1].prompt
    state = db_state(session_factory, novel_id)
    assert [p[1] for p in state["paragraphs"]][-1] == outcome.paragraph and len(state["paragraphs"]) == 2
    # Retry keeps the version it replaced: Undo swaps it back, and the retried text stays kept beside it.
    assert engine.undo(novel_id)
    assert [p[1] for p in db_state(session_factory, novel_id)["paragraphs"]] == [GOOD["opening"], GOOD["paragraph"]]
    with session_factory() as session:
        last = store.paragraphs(session, novel_id)[-1]
        assert [a.text for a in alternatives.of_paragraph(session, last.id)] == [outcome.paragraph]


def test_undo_and_redo_restore_exact_states(session_factory, embedder, novel_id):
    engine, generator = started(session_factory, embedder, novel_id)
    after_start = db_state(session_factory, novel_id)
    run(engine.step(novel_id, plan_index=0))
    after_step = db_state(session_factory, novel_id)
    assert engine.undo(novel_id)
    undone = db_state(session_factory, novel_id)
    assert {k: undone[k] for k in ("paragraphs", "memory", "plans")} == \
        {k: after_start[k] for k in ("paragraphs", "memory", "plans")}
    assert engine.redo(novel_id)
    redone = db_state(session_factory, novel_id)
    assert {k: redone[k] for k in ("paragraphs", "memory", "plans")} == \
        {k: after_step[k] for k in ("paragraphs", "memory", "plans")}


def test_edit_paragraph_refreshes_its_embedding(session_factory, embedder, novel_id):
    from memory import retrieval

    engine, generator = started(session_factory, embedder, novel_id)
    run(engine.step(novel_id, plan_index=0))
    with session_factory() as session:
        first = store.paragraphs(session, novel_id)[0]
        paragraph_id, version = first.id, first.version
    engine.edit_paragraph(paragraph_id, "The brass telescope in the attic was pointed at the volcano.", version)
    query = embedder.vector("Where was the telescope pointed?")
    with session_factory() as session:
        best, _ = retrieval.top_k(session, novel_id, query, 1)[0]
        assert best.id == paragraph_id
    with pytest.raises(ConflictError):
        engine.edit_paragraph(paragraph_id, "stale", version)


def test_inspector_shows_edited_memory_and_plan_verbatim(session_factory, embedder, novel_id):
    engine, generator = started(session_factory, embedder, novel_id)
    with session_factory() as session, session.begin():
        version = store.current_memory(session, novel_id).version
        store.set_memory(session, novel_id, "Mara's brother Tomas drowned here in 1987.", expected_version=version)
    plan = "Tomas's ghost knocks on the lamp-room window."
    preview = engine.inspect_context(novel_id, plan)
    assert "Mara's brother Tomas drowned here in 1987." in preview.prompt_text
    assert plan in preview.prompt_text
    run(engine.step(novel_id, plan))
    assert generator.calls_for("paragraph")[-1].prompt == preview.prompt_text
    sections = {s.name: s for s in preview.sections}
    assert sections["memory"].tokens > 0 and sections["plan"].tokens == len(plan.split())
    assert preview.total_tokens <= preview.budget
    assert sum(s.tokens for s in preview.sections) == preview.total_tokens


# The words each paragraph prompt never cuts, besides the plan (prompts/paragraph.txt, continue_paragraph.txt).
NEVER_CUT = {"instruction": ("Plan for the next paragraph: ", "Write the next paragraph, about 110 words."),
             "document": ("What happens next: ", "Narration: Write in the third person")}


@pytest.mark.parametrize("paragraph_prompt", ["instruction", "document"])
def test_budget_drops_least_important_sections_first_and_never_the_plan(session_factory, embedder, novel_id,
                                                                       paragraph_prompt):
    with session_factory() as session, session.begin():
        store.update_novel_settings(session, novel_id, {"paragraph_prompt": paragraph_prompt})
    engine, generator = started(session_factory, embedder, novel_id)
    for i in range(4):
        generator.script["paragraph"] = [f"Paragraph {i} tells of the lamp and of the sea for a while. " * 6]
        run(engine.step(novel_id, "Mara climbs the tower."))
    plan = "Mara opens the lamp-room door."
    full = engine.inspect_context(novel_id, plan)
    assert full.stage == ("paragraph" if paragraph_prompt == "instruction" else "continue_paragraph")
    assert any(s.name == "retrieved" and s.kept for s in full.sections)
    with session_factory() as session, session.begin():
        store.update_novel_settings(session, novel_id, {"context_tokens": full.total_tokens + 250 - 40})
    tight = engine.inspect_context(novel_id, plan)
    assert tight.total_tokens <= tight.budget
    assert tight.dropped and tight.dropped[0].startswith("retrieved paragraph")
    for item in tight.dropped:
        assert item.startswith("retrieved paragraph ")  # the last paragraph and memory are only shortened later
        assert f"(paragraph {item.rsplit(' ', 1)[1]})" not in tight.prompt_text
    assert NEVER_CUT[paragraph_prompt][0] + plan in tight.prompt_text
    for words in NEVER_CUT[paragraph_prompt][1:]:
        assert words in tight.prompt_text
    other = NEVER_CUT["document" if paragraph_prompt == "instruction" else "instruction"]
    assert not any(words in tight.prompt_text for words in other)
    with session_factory() as session, session.begin():
        store.update_novel_settings(session, novel_id, {"context_tokens": 250 + 30})
    with pytest.raises(ContextTooLargeError):
        engine.inspect_context(novel_id, plan)


def test_auto_write_commits_each_step_and_stops_between_steps(session_factory, embedder, novel_id):
    generator = ScriptedGenerator()
    engine = make_engine(session_factory, embedder, generator)
    cancel = threading.Event()
    done_events = []
    with pytest.raises(Cancelled):
        for event in engine.auto_write(novel_id, 5, cancel=cancel):
            if event.kind == "done":
                done_events.append(event)
                if len(done_events) == 3:
                    cancel.set()
    assert [e.done for e in done_events] == [1, 2, 3] and all(e.total == 5 for e in done_events)
    state = db_state(session_factory, novel_id)
    assert len(state["paragraphs"]) == 3
    # The model chose plan 2 ("Answer: 2") for each step after the opening.
    assert [p[2] for p in state["plans"][0:2]] == [1, 1]


def test_interactive_fiction_second_person_and_choices(session_factory, embedder, novel_id):
    generator = ScriptedGenerator()
    engine = make_engine(session_factory, embedder, generator)
    engine.set_mode(novel_id, "interactive")
    run(engine.start(novel_id))
    assert "second person" in generator.calls_for("opening")[-1].prompt
    reader = engine.reader_view(novel_id)
    assert reader.choices and len(reader.choices) == 3
    run(engine.choose(novel_id, 2))
    call = generator.calls_for("paragraph")[-1]
    assert reader.choices[2] in call.prompt and "'you'" in call.prompt
    with pytest.raises(EngineError, match="no plan 4"):
        run(engine.choose(novel_id, 3))


def test_manuscript_state_reads_only_what_is_new(session_factory, embedder, novel_id, tmp_path):
    from memory.snapshots import FileSnapshotStore

    generator = ScriptedGenerator(stateful=True)
    snapshots = FileSnapshotStore(session_factory, tmp_path / "snapshots")
    engine = make_engine(session_factory, embedder, generator, snapshot_store=snapshots)
    assert engine.strategy == MANUSCRIPT_STATE
    run(engine.start(novel_id))
    _, outcome = run(engine.step(novel_id, "Mara climbs the tower."))
    assert outcome.strategy == MANUSCRIPT_STATE
    call = generator.calls_for("paragraph")[-1]
    # The model had read the opening (from the snapshot saved after it), not reading it again now.
    assert " ".join(call.state) == GOOD["opening"]
    assert "Last paragraph" not in call.prompt and "Earlier passages" not in call.prompt
    assert generator.tokens_read == len(GOOD["opening"].split()) + len(GOOD["paragraph"].split())
    assert 2 in [p for p, _ in snapshots.list(novel_id, "fake-1")]
    run(engine.step(novel_id, "Mara lights the lamp."))
    # The third paragraph was written from the snapshot after the second: nothing was read again.
    assert generator.tokens_read == len(GOOD["opening"].split()) + 2 * len(GOOD["paragraph"].split())
    # Editing paragraph 1 drops the snapshots that read it; the next step re-reads the manuscript.
    with session_factory() as session:
        first = store.paragraphs(session, novel_id)[0]
    engine.edit_paragraph(first.id, "Mara kept the lamp alone and hated the gulls.", first.version)
    assert snapshots.list(novel_id, "fake-1") == []
    run(engine.step(novel_id, "Mara sleeps."))
    assert " ".join(generator.calls_for("paragraph")[-1].state) == \
        "Mara kept the lamp alone and hated the gulls. " + " ".join([GOOD["paragraph"]] * 2)


def test_retry_of_the_opening_replaces_it(session_factory, embedder, novel_id):
    engine, generator = started(session_factory, embedder, novel_id)
    generator.script["opening"] = ["The island was only a rock, and Mara was its only keeper for nine long years."]
    _, outcome = run(engine.retry(novel_id))
    state = db_state(session_factory, novel_id)
    assert [p[1] for p in state["paragraphs"]] == [outcome.paragraph]
    assert outcome.paragraph.startswith("The island was only a rock")
    assert state["title"] == "The Keeper of Skerry"


def test_retry_after_a_memory_edit_keeps_the_writers_memory(session_factory, embedder, novel_id):
    engine, generator = started(session_factory, embedder, novel_id)
    with session_factory() as session, session.begin():
        version = store.current_memory(session, novel_id).version
        store.set_memory(session, novel_id, "The writer's own memory.", expected_version=version)
    generator.script["opening"] = ["The island was only a rock, and Mara was its only keeper for nine long years."]
    events, outcome = run(engine.retry(novel_id))
    state = db_state(session_factory, novel_id)
    assert [p[1] for p in state["paragraphs"]] == [outcome.paragraph]
    assert state["memory"][-1][1] == "The writer's own memory."
    assert any(e.kind == "notice" and "left as they are" in e.text for e in events)


def test_retry_refused_when_the_last_paragraph_was_not_written_by_a_step(session_factory, embedder, novel_id):
    engine, generator = started(session_factory, embedder, novel_id)
    with session_factory() as session, session.begin():
        store.add_paragraph(session, novel_id, "The writer's own paragraph.")
    before = db_state(session_factory, novel_id)
    with pytest.raises(EngineError, match="not written by a step"):
        run(engine.retry(novel_id))
    assert db_state(session_factory, novel_id) == before


def test_a_copy_of_the_last_paragraph_is_retried_then_kept_visibly(session_factory, embedder, novel_id):
    engine, generator = started(session_factory, embedder, novel_id)
    generator.script["paragraph"] = [GOOD["opening"], GOOD["paragraph"]]
    _, outcome = run(engine.step(novel_id, "Mara climbs the tower."))
    assert outcome.paragraph == GOOD["paragraph"] and len(generator.calls_for("paragraph")) == 2
    generator.script["paragraph"] = [GOOD["paragraph"]]
    events, outcome = run(engine.step(novel_id, "Mara climbs the tower."))
    assert len(generator.calls_for("paragraph")) == 2 + ATTEMPTS
    assert outcome.paragraph == GOOD["paragraph"]
    assert any("repeated earlier paragraphs" in e.text for e in events if e.kind == "notice")


STORM = [
    "The storm broke over the island at dusk. Rain hammered the lantern glass, the wind screamed through the gallery "
    "rail, and Mara braced the door of the tower with her shoulder while the sea threw spray over the rocks below.",
    "All night the gale went on. Waves climbed the rocks and burst against the tower, the lamp shuddered in its "
    "cradle, and Mara kept the light turning by hand while the rain ran down the inside of the windows.",
    "By midnight the wind had torn a shutter loose. It banged against the tower wall like a fist, the rain blew in "
    "sideways, and Mara climbed the iron stairs again and again to wipe the salt from the lantern glass.",
    "Toward morning the storm was still rising. Spray reached the gallery, the tower groaned in the gusts, and Mara, "
    "soaked and shaking, kept the lamp alight while thunder rolled over the black water around the island.",
]
KEY = "Mara's brother hid the spare key under the blue stone beside the well."


def test_retrieval_follows_the_plan_not_only_the_long_last_paragraph(session_factory, embedder, novel_id):
    """The plan asks for something said once, early; the manuscript since is a long storm, like the last paragraph.
    Retrieval must still bring the early fact into the context."""
    with session_factory() as session, session.begin():
        for text in [STORM[0], KEY, *STORM[1:]]:
            store.add_paragraph(session, novel_id, text, embedding=embedder.passage(text))
    engine = make_engine(session_factory, embedder, ScriptedGenerator())
    preview = engine.inspect_context(novel_id, "Mara goes looking for the spare key her brother hid.")
    retrieved = next(s for s in preview.sections if s.name == "retrieved")
    assert KEY in retrieved.text
    # The preview says why each passage is there; the key's paragraph was found by its vector.
    assert len(preview.retrieved) == 3 and all(item.why for item in preview.retrieved)
    key_item = next(item for item in preview.retrieved if item.text == KEY)
    assert key_item.why.startswith("vector rank 1") and key_item.sentence == KEY


def test_a_step_backfills_sentence_vectors_with_progress(session_factory, embedder, novel_id):
    """Paragraphs saved before sentence vectors existed get them on the next step, with a progress event."""
    from sqlalchemy import func, select

    from memory.schema import Embedding

    with session_factory() as session, session.begin():
        for text in [STORM[0], KEY, *STORM[1:]]:
            store.add_paragraph(session, novel_id, text, embedding=embedder.vector(text))
    engine = make_engine(session_factory, embedder, ScriptedGenerator())
    events, _ = run(engine.step(novel_id, "Mara goes looking for the spare key her brother hid."))
    progress = [e.text for e in events if e.kind == "progress" and "sentence vectors" in e.text]
    assert progress == [f"Preparing retrieval: sentence vectors for {len(STORM) + 1} of {len(STORM) + 1} earlier "
                        "paragraphs…"]
    with session_factory() as session:
        missing = session.scalar(select(func.count()).select_from(Embedding).where(
            Embedding.novel_id == novel_id, Embedding.paragraph_id.is_not(None),
            Embedding.sentence_vectors.is_(None)))
        assert missing == 0
    events, _ = run(engine.step(novel_id, "Mara waits."))
    assert not [e for e in events if e.kind == "progress" and "sentence vectors" in e.text]


def test_penalties_are_on_by_default_and_a_novels_own_win(session_factory, embedder, novel_id):
    from app.engine import DEFAULT_PENALTIES

    engine, generator = started(session_factory, embedder, novel_id)
    sent = generator.calls_for("opening")[-1].penalties
    assert (sent.repetition, sent.range, sent.dry_multiplier) == (1.1, 512, 0.8) == \
        tuple(DEFAULT_PENALTIES[k] for k in ("repetition", "range", "dry_multiplier"))
    # The memory and the plans restate names and events on purpose: they are written without penalties.
    assert generator.calls_for("memory")[-1].penalties is None and generator.calls_for("plans")[-1].penalties is None
    with session_factory() as session, session.begin():
        store.update_novel_settings(session, novel_id, {"penalties": {"repetition": 1.0, "dry_multiplier": 0.0,
                                                                      "presence": 0.3}})
    run(engine.step(novel_id, "Mara climbs the tower."))
    sent = generator.calls_for("paragraph")[-1].penalties
    assert (sent.repetition, sent.dry_multiplier, sent.presence) == (1.0, 0.0, 0.3)


def test_a_degraded_model_load_is_told_in_every_steps_notices(session_factory, embedder, novel_id):
    from models.loading import LoadReport

    generator = ScriptedGenerator()
    generator.load_report = LoadReport(source_path="m.gguf", loaded_from="m.gguf",
                                       notice="llama-cpp-python is not usable here; running the GGUF through "
                                              "transformers instead (slower).")
    engine = make_engine(session_factory, embedder, generator)
    _, opening = run(engine.start(novel_id))
    _, step = run(engine.step(novel_id, plan_index=0))
    for outcome in (opening, step):
        assert generator.load_report.notice in outcome.notices
        assert outcome.notices.count(generator.load_report.notice) == 1
    generator.load_report.notice = ""
    _, quiet = run(engine.step(novel_id, plan_index=0))
    assert not any("llama-cpp-python" in notice for notice in quiet.notices)
