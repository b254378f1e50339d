"""The three memory tiers in a step's context and the summaries that fill them: the truncation order (instruction
and plan never cut), the summaries most relevant to the plan, a failed generation keeping the old text and saying
so, an edited summary reaching the next step verbatim, the manuscript-state control block holding the summaries;
and a chapter summary by the real default model (slow)."""

from __future__ import annotations

import pytest

from app.engine import Engine
from app.engine.context import (
    MANUSCRIPT_STATE,
    TRUNCATION_ORDER,
    ChapterSummaryItem,
    ContextInputs,
    ContextTooLargeError,
    LoreItem,
    RetrievedItem,
    build_context,
)
from app.engine.prompts import PromptLibrary
from memory import chapters, store
from tests.engine.engine_fakes import ScriptedGenerator, run


def full_inputs() -> ContextInputs:
    return ContextInputs(
        premise="premise " * 30, outline="outline " * 30, style="style " * 30,
        lore=[LoreItem("Always", "always " * 10, True), LoreItem("Triggered", "triggered " * 10, False)],
        memory="memory " * 40, retrieved=[RetrievedItem(3, "retrieved " * 20, 0.9)],
        last_paragraph="last " * 40, plan="PLAN words here", voice="Third person.", words=100,
        synopsis="synopsis " * 40, chapters=[ChapterSummaryItem(1, "One", "first " * 20, 0.2),
                                             ChapterSummaryItem(2, "Two", "second " * 20, 0.8)],
        chapter_so_far="sofar " * 40)


# The never-cut words of each paragraph prompt: the instruction's plan and closing line, the document's plan and
# narration lines (prompts/paragraph.txt, prompts/continue_paragraph.txt, prompts/continue_opening.txt).
NEVER_CUT = {"paragraph": ("Plan for the next paragraph: PLAN words here", "Write the next paragraph, about 100 words. "
                           "Third person."),
             "continue_paragraph": ("What happens next: PLAN words here",
                                    "Narration: Third person. Paragraphs of about 100 words."),
             "continue_opening": ("Narration: Third person. Paragraphs of about 100 words.",)}


# Each piece of full_inputs() (two of its words) and what `dropped` says when it is removed altogether.
REMOVED = (("retrieved retrieved", "retrieved paragraph 3"), ("triggered triggered", "lore entry 'Triggered'"),
           ("outline outline", "outline"), ("style style", "style"), ("first first", "summary of 'One'"),
           ("second second", "summary of 'Two'"), ("always always", "lore entry 'Always' (always on)"),
           ("last last", "last paragraph (dropped)"), ("memory memory", "memory (dropped)"),
           ("sofar sofar", "chapter so far (dropped)"), ("synopsis synopsis", "synopsis (dropped)"),
           ("premise premise", "premise (dropped)"))


def removal_sequence(generator, stage: str = "paragraph") -> list[str]:
    """Lower the budget one token at a time and note which piece goes next, until nothing more can go; every
    prompt on the way keeps the stage's never-cut lines verbatim and shows each piece unless it says it dropped it."""
    library = PromptLibrary()
    inputs = full_inputs()
    budget = build_context(library, generator, inputs, 100_000, stage=stage).total_tokens
    seen: list[str] = []
    while True:
        budget -= 1
        try:
            preview = build_context(library, generator, inputs, budget, stage=stage)
        except ContextTooLargeError:
            return seen
        assert preview.total_tokens <= budget
        for line in NEVER_CUT[stage]:
            assert line in preview.prompt_text
        for filler, label in REMOVED:
            shown, removed = filler in preview.prompt_text, label in preview.dropped
            assert not (shown and removed), label
            assert shown or removed or stage == "continue_opening", label
        for item in preview.dropped:
            if item not in seen:
                seen.append(item)


def removal_kinds(seen: list[str]) -> list[str]:
    """The TRUNCATION_ORDER names of the removed pieces, in the order they first went."""
    kinds = []
    for item in seen:
        kind = ("retrieved" if item.startswith("retrieved") else "triggered lore" if "'Triggered'" in item
                else "always-on lore" if "'Always'" in item else "chapters" if item.startswith("summary of")
                else item.split(" (")[0].replace(" ", "_"))
        if kind not in kinds:
            kinds.append(kind)
    return kinds


@pytest.mark.parametrize("stage", ["paragraph", "continue_paragraph"])
def test_truncation_follows_the_documented_order_and_never_cuts_instruction_or_plan(stage):
    seen = removal_sequence(ScriptedGenerator(), stage)
    assert removal_kinds(seen) == list(TRUNCATION_ORDER)
    # The less relevant chapter summary goes first.
    assert seen.index("summary of 'One'") < seen.index("summary of 'Two'")


def test_sections_a_template_cannot_hold_are_neither_dropped_nor_listed():
    """The document opening has no memory, retrieved passages or chapter summaries: a tight budget drops only what
    its prompt shows, and the inspector lists only those sections."""
    library = PromptLibrary()
    seen = removal_sequence(ScriptedGenerator(), "continue_opening")
    assert removal_kinds(seen) == ["triggered lore", "outline", "style", "always-on lore", "premise"]
    preview = build_context(library, ScriptedGenerator(), full_inputs(), 100_000, stage="continue_opening")
    assert [s.name for s in preview.sections] == ["instruction", "premise", "outline", "style", "bible"]


def engine_for(session_factory, embedder, generator) -> Engine:
    return Engine(session_factory, generator, embedder, max_attempts=2)


def two_chapters(session_factory, engine, novel_id) -> list[int]:
    run(engine.start(novel_id))
    run(engine.step(novel_id, plan_index=0))
    with session_factory() as s:
        return [store.last_chapter(s, novel_id).id]


def test_closing_a_chapter_writes_its_summary_and_the_synopsis_and_the_next_step_reads_them(
        session_factory, embedder, novel_id):
    generator = ScriptedGenerator()
    engine = engine_for(session_factory, embedder, generator)
    [first] = two_chapters(session_factory, engine, novel_id)
    outcomes = engine.summarizer(novel_id).close_chapter(novel_id, first)
    assert [o.saved for o in outcomes] == [True, True]
    # The writer edits the summary by hand; the next step's context holds the edit verbatim.
    with session_factory() as s, s.begin():
        chapters.set_summary(s, first, "EDITED: the note is a trap set by Jonah.", expected_version=1)
    preview = engine.inspect_context(novel_id, "Mara goes down to the shore.")
    sections = {section.name: section for section in preview.sections}
    assert "EDITED: the note is a trap set by Jonah." in sections["chapters"].text
    assert sections["chapters"].tokens > 0 and sections["synopsis"].tokens > 0
    assert "Mara, the keeper of Skerry" in sections["synopsis"].text
    run(engine.step(novel_id, plan_index=0))
    assert "EDITED: the note is a trap set by Jonah." in generator.calls_for("paragraph")[-1].prompt
    with session_factory() as s:
        assert [c.title for c in store.chapters(s, novel_id)] == ["Chapter 1", "Chapter 2"]
        assert store.paragraphs(s, novel_id)[-1].chapter_id != first


def test_a_failed_summary_keeps_the_old_one_and_says_so(session_factory, embedder, novel_id):
    generator = ScriptedGenerator()
    engine = engine_for(session_factory, embedder, generator)
    [first] = two_chapters(session_factory, engine, novel_id)
    with session_factory() as s, s.begin():
        chapters.set_summary(s, first, "The old summary by hand.", expected_version=0)
    generator.script["chapter_summary"] = ["", RuntimeError("the model crashed")]
    outcome = engine.summarizer(novel_id).summarize_chapter(novel_id, first)
    assert not outcome.saved and "the old one is kept" in outcome.notice
    with session_factory() as s:
        assert chapters.current_summary(s, first).text == "The old summary by hand."
    # A summary that only copies the chapter is refused the same way.
    with session_factory() as s:
        copied = " ".join(p.text for p in chapters.chapter_paragraphs(s, first))
    generator.script["chapter_summary"] = [copied]
    outcome = engine.summarizer(novel_id).summarize_chapter(novel_id, first)
    assert not outcome.saved and "copied" in outcome.notice


def test_a_summary_edited_while_it_was_generated_is_not_overwritten(session_factory, embedder, novel_id):
    generator = ScriptedGenerator()
    engine = engine_for(session_factory, embedder, generator)
    [first] = two_chapters(session_factory, engine, novel_id)

    def edit_meanwhile(call):
        with session_factory() as s, s.begin():
            chapters.set_summary(s, first, "Typed in another tab.", expected_version=0)
        return "Mara reads a warning and climbs the stair to the lamp room before the storm."

    generator.script["chapter_summary"] = [edit_meanwhile]
    outcome = engine.summarizer(novel_id).summarize_chapter(novel_id, first)
    assert not outcome.saved and "changed elsewhere" in outcome.notice
    with session_factory() as s:
        assert chapters.current_summary(s, first).text == "Typed in another tab."


def test_the_summaries_most_relevant_to_the_plan_are_kept(session_factory, embedder, novel_id):
    engine = engine_for(session_factory, embedder, ScriptedGenerator())
    run(engine.start(novel_id))
    topics = ["The orchard harvest and cider apples.", "A shipwreck on the reef at night.",
              "The village school and its teacher.", "Bees and honey in the summer.",
              "A wedding in the chapel.", "The storm breaks the lighthouse lamp."]
    with session_factory() as s, s.begin():
        for topic in topics:
            chapter = store.last_chapter(s, novel_id)
            chapters.set_summary(s, chapter.id, topic, expected_version=0)
            chapters.close_chapter(s, chapter.id)
    items = engine.reader.relevant_chapters(engine.reader.read(novel_id), "The keeper repairs the broken lamp "
                                            "after the storm.", k=2)
    assert len(items) == 2 and any("storm" in item.text for item in items)
    assert [i.position for i in items] == sorted(i.position for i in items)


def test_the_manuscript_state_control_block_holds_the_summaries(session_factory, embedder, novel_id):
    inputs = full_inputs()
    inputs.retrieved, inputs.last_paragraph = [], ""
    preview = build_context(PromptLibrary(), ScriptedGenerator(), inputs, 100_000, strategy=MANUSCRIPT_STATE)
    assert "The story so far: synopsis" in preview.prompt_text and "- Two: second" in preview.prompt_text


@pytest.mark.slow
def test_the_default_model_summarizes_a_chapter_or_says_why_not(session_factory, embedder, novel_id,
                                                                 default_generator):
    engine = engine_for(session_factory, embedder, default_generator)
    with session_factory() as s, s.begin():
        for text in ("Mara kept the lighthouse on Skerry alone, and every morning she counted the gulls.",
                     "One grey morning she found a green bottle in the weed with a note in her own hand.",
                     "The note said: do not light the lamp tonight. Jonah the ferryman laughed at it."):
            store.add_paragraph(s, novel_id, text)
        chapter_id = store.last_chapter(s, novel_id).id
    outcomes = engine.summarizer(novel_id).close_chapter(novel_id, chapter_id)
    for outcome in outcomes:
        assert outcome.saved or outcome.notice
    with session_factory() as s:
        current = chapters.current_summary(s, chapter_id)
        assert (current is not None) == outcomes[0].saved
        if current is not None:
            assert current.origin == "generated" and current.text.strip()


CHAPTER = ["Mara kept the lighthouse on Skerry alone, and every morning she counted the gulls on the rocks.",
           "One grey morning she found a green bottle in the weed, with a note inside written in her own hand.",
           "The note said: do not light the lamp tonight. Jonah the ferryman laughed when she showed it to him.",
           "At dusk the storm came in from the west, and Mara sat in the lamp room with the match unlit."]


@pytest.fixture(scope="module")
def default_llamacpp_generator(tmp_path_factory):
    """The default model as the app runs it on a CPU: the SmolLM2-135M GGUF through llama.cpp."""
    from app.offline import DEFAULT_LM_NAME, default_lm_path
    from models.service import ModelSpec, load_generator

    return load_generator(ModelSpec("gguf", str(default_lm_path()), DEFAULT_LM_NAME), device="cpu",
                          dtype="float32", cache_dir=tmp_path_factory.mktemp("lm-cache"), gguf_backend="llama.cpp")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_default_model_writes_a_chapter_summary_saved_with_history_and_not_copied(
        session_factory, embedder, novel_id, default_llamacpp_generator):
    """The real default model summarizes one chapter: the summary is saved as version 1 of its history (origin
    "generated"), is no paragraph of the chapter, and at most half its sentences are sentences of the chapter copied
    out (the summarizer refuses more, bench/results/chapters.json says how often the default model does)."""
    from app.engine.parsing import copies_text
    from app.engine.text import sentences

    with session_factory() as s, s.begin():
        store.update_novel_settings(s, novel_id, {"sampling": {"seed": 11}, "max_attempts": 3})
        for text in CHAPTER:
            store.add_paragraph(s, novel_id, text)
        chapter_id = store.last_chapter(s, novel_id).id
    engine = Engine(session_factory, default_llamacpp_generator, embedder)
    outcome = engine.summarizer(novel_id).summarize_chapter(novel_id, chapter_id)
    print(f"the default model's summary: saved={outcome.saved} {outcome.text!r} {outcome.notice}")
    assert outcome.saved, f"no summary in 3 tries: {outcome.notice}"
    with session_factory() as s:
        history = chapters.summary_history(s, chapter_id)
    assert [(h.version, h.origin, h.text) for h in history] == [(1, "generated", outcome.text)]
    assert outcome.text.strip() and all(outcome.text.strip() != text for text in CHAPTER)
    parts = sentences(outcome.text)
    copied = [part for part in parts if copies_text(part, "\n\n".join(CHAPTER))]
    assert len(copied) * 2 <= len(parts), f"most of the summary is copied: {copied}"


def test_auto_write_until_the_end_of_chapter_two_closes_chapters_as_it_goes(session_factory, embedder, novel_id):
    generator = ScriptedGenerator()
    engine = engine_for(session_factory, embedder, generator)
    run(engine.write_chapters(novel_id, 2, 2))
    with session_factory() as s:
        book = store.chapters(s, novel_id)
        assert [(c.title, c.closed) for c in book] == [("Chapter 1", True), ("Chapter 2", True), ("Chapter 3", False)]
        assert [len(chapters.chapter_paragraphs(s, c.id)) for c in book] == [2, 2, 0]
        assert all(chapters.current_summary(s, c.id) is not None for c in book[:2])
        assert chapters.current_synopsis(s, novel_id).version == 2
    # Asking again for a chapter already closed is refused.
    with pytest.raises(Exception, match="already closed"):
        run(engine.write_chapters(novel_id, 2, 2))


def test_the_outline_by_chapter_is_saved_and_steers_each_chapters_first_step(session_factory, embedder, novel_id):
    from app.engine.chapter_outline import parse_chapter_outline

    assert parse_chapter_outline("Chapter 1: a\nnoise\n2. b\nChapter 4: skipped", 5) == ["a", "b"]
    generator = ScriptedGenerator()
    engine = engine_for(session_factory, embedder, generator)
    lines = engine.chapter_outliner(novel_id).propose(novel_id, 3)
    assert lines[1] == "Mara rows to the reef to find who wrote it."
    with session_factory() as s:
        assert store.story(store.get_novel(s, novel_id))["outline"].splitlines()[1].startswith("Chapter 2: Mara rows")
    run(engine.write_chapters(novel_id, 2, 1))
    plans = [call.prompt for call in generator.calls_for("paragraph")]
    assert any("Plan for the next paragraph: Mara rows to the reef to find who wrote it." in p for p in plans)
    # No usable answer: the outline is kept and the writer is told.
    generator.script["chapter_outline"] = ["nothing useful"]
    with pytest.raises(Exception, match="no usable outline"):
        engine.chapter_outliner(novel_id).propose(novel_id, 3)


def test_an_outline_that_stops_after_one_line_is_asked_for_the_next_lines_by_number(session_factory, embedder,
                                                                                     novel_id):
    generator = ScriptedGenerator({"chapter_outline": [" Mara finds the bottle.", " A stranger asks for Mara.",
                                                       " The lamp is lit at last."]})
    engine = engine_for(session_factory, embedder, generator)
    lines = engine.chapter_outliner(novel_id).propose(novel_id, 3)
    assert lines == ["Mara finds the bottle.", "A stranger asks for Mara.", "The lamp is lit at last."]
    asked = [call.prompt for call in generator.calls_for("chapter_outline")]
    assert len(asked) == 3
    assert asked[1].endswith("Chapter 1: Mara finds the bottle.\nChapter 2:")
    assert asked[2].endswith("Chapter 2: A stranger asks for Mara.\nChapter 3:")
    # A model that only repeats its line gives no outline: the repeat is refused, the old outline kept.
    generator.script["chapter_outline"] = [" The same line again."]
    with pytest.raises(Exception, match="no usable outline"):
        engine.chapter_outliner(novel_id).propose(novel_id, 3)
    with session_factory() as s:
        assert store.story(store.get_novel(s, novel_id))["outline"].startswith("Chapter 1: Mara finds the bottle.")
