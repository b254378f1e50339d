"""The chapters panel's handlers without a browser (real store, real MiniLM, the scripted LM): the list with word
counts, new/rename/reorder/move/merge/delete with confirmation and undo, close with a summary, the summary and
synopsis editors with history, restore and refusal of a stale save."""

from __future__ import annotations

import gradio as gr
import pytest

from app.ui import chapters as panel
from app.ui import library
from memory import chapters, store
from tests.engine.engine_fakes import PREMISE


@pytest.fixture
def novel(scripted, with_embedder) -> int:
    with with_embedder.session() as s, s.begin():
        novel_id = store.create_novel(s, "Panel", premise=PREMISE).id
        for text in ("One two three.", "Four five.", "Six."):
            store.add_paragraph(s, novel_id, text)
    return novel_id


def test_the_list_shows_chapters_with_word_counts_and_the_library_counts_them(novel, with_embedder):
    shown = panel.refresh(novel)
    assert shown["chapters_table"] == [[1, "Chapter 1", 3, 6, "open"]]
    shown = panel.new_chapter(novel, "The Storm")
    assert [row[1] for row in shown["chapters_table"]] == ["Chapter 1", "The Storm"]
    assert library.novel_rows()[0][4] == 2
    with pytest.raises(gr.Error, match="title is empty"):
        panel.new_chapter(novel, "   ")


def test_move_merge_and_delete_with_confirmation_then_undo(novel, with_embedder):
    storm = panel.new_chapter(novel, "The Storm")["read_state"]
    shown = panel.move_paragraph(novel, storm, 2)
    assert [row[2] for row in shown["chapters_table"]] == [2, 1]
    # The open chapter's text is the Write tab's manuscript; another chapter's is shown here.
    assert shown["chapter_text"] == panel.OPEN_CHAPTER_TEXT
    first_id = shown["chapter_pick"]["choices"][0][1]
    assert panel.select(novel, first_id)["chapter_text"] == "1. One two three.\n\n2. Six."
    shown = panel.move_up(novel, storm)
    assert [row[1] for row in shown["chapters_table"]] == ["The Storm", "Chapter 1"]
    with pytest.raises(gr.Error, match="Tick the confirmation"):
        panel.delete(novel, shown["read_state"], False)
    shown = panel.delete(novel, shown["read_state"], True)
    assert [row[1] for row in shown["chapters_table"]] == ["Chapter 1"]
    assert with_embedder.engine().undo(novel)
    with with_embedder.session() as s:
        assert [p.text for p in store.paragraphs(s, novel)] == ["Four five.", "One two three.", "Six."]
    first = panel.select(novel, panel.refresh(novel)["read_state"]["chapter_id"])["read_state"]
    shown = panel.merge(novel, panel.select(novel, storm["chapter_id"])["read_state"])
    assert [row[2] for row in shown["chapters_table"]] == [3]
    assert first


def test_close_writes_a_summary_and_edits_keep_history_and_refuse_stale_saves(novel, with_embedder, scripted):
    read = panel.refresh(novel)["read_state"]
    shown = panel.close(novel, read)
    assert "Closed the chapter" in shown["chapters_status"]
    assert [row[1] for row in shown["chapters_table"]] == ["Chapter 1", "Chapter 2"]
    first = panel.select(novel, read["chapter_id"])
    assert first["summary_box"].startswith("Mara finds a note")
    assert first["synopsis_box"].startswith("Mara, the keeper")
    edited = panel.save_summary(novel, first["read_state"], "Edited by hand.")
    assert edited["summary_box"] == "Edited by hand."
    with pytest.raises(gr.Error, match="changed elsewhere"):
        panel.save_summary(novel, first["read_state"], "From a stale page.")
    restored = panel.restore_summary(novel, edited["read_state"], 1)
    assert restored["summary_box"].startswith("Mara finds a note")
    with with_embedder.session() as s:
        assert [m.text for m in chapters.summary_history(s, read["chapter_id"])][1] == "Edited by hand."


def test_chapter_filter_keeps_one_chapters_paragraphs():
    assert panel.chapter_filter([(1, "a"), (2, "b"), (3, "c")], (2, 3)) == [(2, "b"), (3, "c")]


def test_the_write_tab_shows_the_open_chapter_only(novel, with_embedder):
    from app.ui import write

    alone = write.refresh(novel)["manuscript_html"]
    assert all(text in alone for text in ("One two three.", "Four five.", "Six."))
    with with_embedder.session() as s, s.begin():
        storm = chapters.add_chapter(s, novel, "The Storm")
        store.add_paragraph(s, novel, "Rain on the roof.", chapter_id=storm.id)
    shown = write.refresh(novel)
    assert "Rain on the roof." in shown["manuscript_html"] and "The Storm" in shown["manuscript_html"]
    assert "One two three." not in shown["manuscript_html"]
    # The counts are the whole novel's.
    assert shown["counts_md"].startswith("4 paragraphs")


# ---------------------------------------------------------------- outline by chapter, write to a chapter


def _story(with_embedder, novel_id: int) -> dict:
    with with_embedder.session() as s:
        return store.story(store.get_novel(s, novel_id))


def test_propose_an_outline_by_chapter_saves_it_and_shows_it(novel, with_embedder, scripted):
    frames = list(panel.propose_outline(novel, 3))
    assert frames[0]["chapters_status"].startswith("Proposing an outline of 3 chapters")
    last = frames[-1]
    assert last["chapters_status"].startswith("Saved an outline of 3 chapters")
    assert last["chapter_outline_box"].splitlines()[1] == "Chapter 2: Mara rows to the reef to find who wrote it."
    assert _story(with_embedder, novel)["outline"] == last["chapter_outline_box"]
    assert len(scripted.calls_for("chapter_outline")) == 1
    # Undo brings the old (empty) outline back.
    assert with_embedder.engine().undo(novel)
    assert _story(with_embedder, novel)["outline"] == ""


@pytest.mark.parametrize("count", [1, 31, None, "three", 2.5])
def test_an_outline_of_a_bad_number_of_chapters_is_refused_before_the_model_runs(novel, with_embedder, scripted,
                                                                                 count):
    with pytest.raises(gr.Error, match="whole number from 2 to 30"):
        list(panel.propose_outline(novel, count))
    assert scripted.calls == []


def test_a_failed_outline_keeps_the_old_one_and_says_so(novel, with_embedder, scripted):
    scripted.script["chapter_outline"] = ["nothing useful here"]
    with pytest.raises(gr.Error, match="no usable outline"):
        list(panel.propose_outline(novel, 3))
    assert _story(with_embedder, novel)["outline"] == ""


def test_write_until_the_end_of_chapter_two_closes_chapters_and_streams(novel, with_embedder, scripted):
    list(panel.propose_outline(novel, 3))
    frames = list(panel.write_to_chapter(novel, 2, 2))
    assert frames[0]["status_md"].startswith("Writing until the end of chapter 2 (2 steps)")
    assert any(frame["draft_box"] for frame in frames), "the paragraphs stream into the draft box"
    assert any("Closing 'Chapter 1'" in frame["status_md"] for frame in frames)
    assert frames[-1]["status_md"].startswith("Chapter 2 is written and closed; new steps go into chapter 3.")
    assert frames[-1]["chapters_status"] == frames[-1]["status_md"]
    shown = panel.refresh(novel)
    # Chapter 1 already held 3 paragraphs (more than 2): it is closed at once; chapter 2 gets 2 new ones.
    assert [row[2] for row in shown["chapters_table"]] == [3, 2, 0]
    assert [row[4] for row in shown["chapters_table"]] == ["closed, summarized", "closed, summarized", "open"]
    # Chapter 2's first step followed its line of the outline.
    plans = [call.prompt for call in scripted.calls_for("paragraph")]
    assert "Plan for the next paragraph: Mara rows to the reef to find who wrote it." in plans[0]


def test_writing_to_a_chapter_refuses_bad_input_with_a_clear_message(novel, with_embedder, scripted):
    list(panel.propose_outline(novel, 3))
    with pytest.raises(gr.Error, match="plans 3 chapters: write until chapter 3 at most"):
        list(panel.write_to_chapter(novel, 4, 2))
    with pytest.raises(gr.Error, match="Paragraphs per chapter needs a whole number from 1 to 50"):
        list(panel.write_to_chapter(novel, 2, 0))
    with pytest.raises(gr.Error, match="The chapter to write until needs a whole number"):
        list(panel.write_to_chapter(novel, None, 2))
    with pytest.raises(gr.Error, match="at most 100"):
        list(panel.write_to_chapter(novel, 3, 50))
    panel.close(novel, panel.refresh(novel)["read_state"])
    with pytest.raises(gr.Error, match="Chapter 1 is closed already: steps now go into chapter 2"):
        list(panel.write_to_chapter(novel, 1, 2))
    assert scripted.calls_for("paragraph") == []
    with pytest.raises(gr.Error, match="No novel is open"):
        list(panel.write_to_chapter(None, 2, 2))


def test_stop_while_writing_to_a_chapter_saves_no_half_paragraph(novel, with_embedder, scripted):
    scripted.cancel_after_pieces = 3
    frames = list(panel.write_to_chapter(novel, 1, 4))
    assert frames[-1]["status_md"].startswith("Stopped. Nothing of the unfinished paragraph was saved.")
    with with_embedder.session() as s:
        assert [p.text for p in store.paragraphs(s, novel)] == ["One two three.", "Four five.", "Six."]
        assert not store.chapters(s, novel)[0].closed
    assert panel.refresh(novel)["chapters_table"][0][4] == "open"
