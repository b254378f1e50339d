"""The generating handlers (Write, Reader, Context) driven as plain generators over the real store and embedder,
with the engine tests' scripted LM as the process-wide model. The real default model runs in test_ui_browser.py."""

from __future__ import annotations

import gradio as gr
import pytest

from app.ui import context, library, memory_tab, reader, write
from memory import store
from tests.engine.engine_fakes import GOOD, PREMISE, ScriptedGenerator


def _texts(services, novel_id) -> list[str]:
    with services.session() as s:
        return [p.text for p in store.paragraphs(s, novel_id)]


def _started(services) -> int:
    novel_id = library.create_novel(PREMISE, "", "", "default")["novel_id"]
    frames = list(write.start_story(novel_id))
    assert frames[-1]["status_md"].startswith("Saved.")
    return novel_id


def test_opening_streams_token_by_token_then_saves(scripted, with_embedder):
    novel_id = library.create_novel(PREMISE, "", "", "default")["novel_id"]
    frames = list(write.start_story(novel_id))
    drafts = [frame["draft_box"] for frame in frames if frame["draft_box"]]
    assert len(set(drafts)) > 10, "the paragraph should arrive piece by piece"
    assert all(len(a) <= len(b) for a, b in zip(drafts, drafts[1:]))
    assert frames[-1] == {"draft_box": GOOD["opening"], "status_md": "Saved."}
    assert _texts(with_embedder, novel_id) == [GOOD["opening"]]
    refreshed = write.refresh(novel_id)
    manuscript, radio = refreshed["manuscript_html"], refreshed["plan_radio"]
    instruction, counts = write.first_plan(refreshed["plans_shown"]), refreshed["counts_md"]
    assert "The Keeper of Skerry" in manuscript and "data-position='1'" in manuscript
    assert len(radio["choices"]) == 3 and instruction == "Mara lights the lamp anyway and waits."
    assert "tokens (scripted)" in counts


def test_next_step_uses_the_rewritten_instruction(scripted, with_embedder):
    novel_id = _started(with_embedder)
    instruction = "Mara hides the note under the lamp and says nothing to the boatman."
    frames = list(write.next_step(novel_id, instruction))
    assert frames[-1]["status_md"] == "Saved."
    assert _texts(with_embedder, novel_id) == [GOOD["opening"], GOOD["paragraph"]]
    assert instruction in scripted.calls_for("paragraph")[-1].prompt


def test_next_step_needs_an_instruction(scripted, with_embedder):
    novel_id = _started(with_embedder)
    with pytest.raises(gr.Error, match="instruction is empty"):
        list(write.next_step(novel_id, "  \x00 "))


def test_stop_mid_paragraph_saves_nothing(scripted, with_embedder):
    novel_id = _started(with_embedder)
    stream = write.next_step(novel_id, "Mara lights the lamp anyway and waits.")
    frames = [next(stream) for _ in range(5)]
    assert frames[-1]["draft_box"], "the paragraph had started streaming"
    assert write.stop(novel_id).startswith("Stopping")
    rest = list(stream)
    assert rest[-1]["status_md"].startswith("Stopped. Nothing of the unfinished paragraph was saved.")
    assert _texts(with_embedder, novel_id) == [GOOD["opening"]]
    assert write.stop(novel_id) == "Nothing is running."


def test_closing_the_page_mid_paragraph_saves_nothing(scripted, with_embedder):
    novel_id = _started(with_embedder)
    stream = write.next_step(novel_id, "Mara lights the lamp anyway and waits.")
    for _ in range(5):
        next(stream)
    stream.close()  # what Gradio does to a generator whose page went away
    assert _texts(with_embedder, novel_id) == [GOOD["opening"]]
    assert write.stop(novel_id) == "Nothing is running."


def test_a_failing_model_is_a_readable_error_and_saves_nothing(with_embedder):
    with_embedder.use_generator(ScriptedGenerator({"opening": [RuntimeError("CUDA out of memory\nat frame 3")]}))
    novel_id = library.create_novel(PREMISE, "", "", "default")["novel_id"]
    with pytest.raises(gr.Error) as caught:
        list(write.start_story(novel_id))
    assert "CUDA out of memory" in caught.value.message and "frame 3" not in caught.value.message
    assert _texts(with_embedder, novel_id) == []


def test_next_step_on_an_empty_novel_writes_the_opening(scripted, with_embedder):
    novel_id = library.create_novel(PREMISE, "", "", "default")["novel_id"]
    assert list(write.next_step(novel_id, ""))[-1]["status_md"] == "Saved."
    assert _texts(with_embedder, novel_id) == [GOOD["opening"]]


def test_retry_undo_redo(scripted, with_embedder):
    novel_id = _started(with_embedder)
    list(write.next_step(novel_id, "Mara lights the lamp anyway and waits."))
    scripted.script["paragraph"] = ["The lamp would not catch. Mara struck match after match while the wind "
                                    "worked at the glass, and the note lay open on the floor beside her boots."]
    assert list(write.retry(novel_id))[-1]["status_md"] == "Saved."
    assert _texts(with_embedder, novel_id)[1].startswith("The lamp would not catch.")
    # Retry keeps the version it replaced: Undo swaps it back.
    assert write.undo(novel_id).startswith("Undone")
    assert _texts(with_embedder, novel_id) == [GOOD["opening"], GOOD["paragraph"]]
    assert write.redo(novel_id) == "Redone."
    assert _texts(with_embedder, novel_id)[1].startswith("The lamp would not catch.")


def test_auto_write_commits_each_step(scripted, with_embedder):
    novel_id = _started(with_embedder)
    # Two different paragraphs: the engine rightly flags a step that copies an earlier one. Both name Mara, whom the
    # fake LM's memory names: a memory that names nothing of its paragraph is refused (the extractive fallback).
    scripted.script["paragraph"] = [
        "At dawn the boatman came back without his oars, and Mara met him on the slipway with the note folded small.",
        "By noon the fog had lifted enough to show Mara the second lighthouse, dark where no lighthouse should stand.",
    ]
    frames = list(write.auto_write(novel_id, 2))
    assert frames[-1]["status_md"] == "Saved."
    assert any("Step 2 of 2" in frame["status_md"] for frame in frames)
    assert len(_texts(with_embedder, novel_id)) == 3
    with pytest.raises(gr.Error, match="between 1 and 100"):
        list(write.auto_write(novel_id, 0))


def test_context_shows_the_edited_memory_and_the_instruction_verbatim(scripted, with_embedder):
    novel_id = _started(with_embedder)
    version = memory_tab.refresh(novel_id)["memory_version"]
    edited = "Mara now knows the note was written by her future self. The boatman lies."
    memory_tab.save_memory(novel_id, edited, version)
    inspected = context.inspect(novel_id, "Mara confronts the boatman on the jetty.")
    prompt, rows, budget = inspected["context_box"], inspected["sections_table"], inspected["budget_md"]
    assert edited in prompt and "Mara confronts the boatman on the jetty." in prompt
    sections = {row[0]: row[1] for row in rows}
    assert sections["memory"] > 0 and "tokens of a" in budget
    assert context.inspect(None, "")["budget_md"].startswith("Open a novel")


def test_edited_outline_and_style_reach_the_next_step(scripted, with_embedder):
    novel_id = _started(with_embedder)
    refreshed = memory_tab.refresh(novel_id)
    premise, style = refreshed["premise_box"], refreshed["style_box"]
    outline, read = refreshed["outline_box"], refreshed["story_read"]
    assert outline and read["outline"] == outline  # the opening proposed one, and the page shows it
    new_outline = "1. Mara refuses the boatman.\n2. The lamp fails on the longest night."
    status = memory_tab.save_story(novel_id, premise, "Write it like a ship's log.", new_outline, read)["status_md"]
    assert "Saved" in status
    prompt = context.inspect(novel_id, "Mara waits for the boat.")["context_box"]
    assert new_outline in prompt and "Write it like a ship's log." in prompt and outline not in prompt
    run_step = list(write.next_step(novel_id, "Mara waits for the boat."))
    assert run_step and new_outline in scripted.calls_for("paragraph")[-1].prompt
    # A tab still holding the old story gets the conflict, and the saved outline stays.
    with pytest.raises(gr.Error, match="changed elsewhere"):
        memory_tab.save_story(novel_id, premise, style, "Tab two's outline.", read)
    assert memory_tab.refresh(novel_id)["outline_box"] == new_outline
    with pytest.raises(gr.Error, match="premise is empty"):
        memory_tab.save_story(novel_id, "", style, new_outline, memory_tab.refresh(novel_id)["story_read"])


def test_stale_memory_from_another_tab_blocks_the_step_visibly(scripted, with_embedder):
    novel_id = _started(with_embedder)
    version = memory_tab.refresh(novel_id)["memory_version"]
    memory_tab.save_memory(novel_id, "Tab one's memory.", version)
    with pytest.raises(gr.Error, match="changed elsewhere"):
        memory_tab.save_memory(novel_id, "Tab two's memory.", version)


def test_reader_choices_are_buttons_and_a_choice_writes_the_next_passage(scripted, with_embedder):
    novel_id = _started(with_embedder)
    refreshed = reader.refresh(novel_id)
    story, buttons = refreshed["story_html"], refreshed["choice_btns"]
    assert "Mara kept the lighthouse" in story
    assert [b["value"] for b in buttons] == ["Mara lights the lamp anyway and waits.",
                                             "A boat appears in the storm without lights.",
                                             "Mara searches the logbook for her own handwriting."]
    assert all(b["visible"] for b in buttons)
    # Interactive fiction asks for the second person, present tense (the engine retries a paragraph in another
    # voice); it names Skerry, as the fake memory does (a memory naming nothing of its paragraph is refused).
    scripted.script["paragraph"] = ["You climb the spiral stair of the Skerry light with the note in your fist. The "
                                    "lamp room smells of paraffin and salt, and you read the words again: do not "
                                    "light the lamp."]
    frames = list(reader._choice_handler(1)(novel_id))
    assert frames[-1]["status_md"] == "Saved."
    assert "A boat appears in the storm without lights." in scripted.calls_for("paragraph")[-1].prompt
    assert "second person" in scripted.calls_for("paragraph")[-1].prompt
    assert len(_texts(with_embedder, novel_id)) == 2
    list(reader.own_choice(novel_id, "You row out to meet the boat."))
    assert "You row out to meet the boat." in scripted.calls_for("paragraph")[-1].prompt
    with pytest.raises(gr.Error, match="empty"):
        list(reader.own_choice(novel_id, ""))
