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
    assert shown["chapter_text"] == "3. Four five."
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
