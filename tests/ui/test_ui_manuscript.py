"""The Write tab's manuscript editor called as plain handlers over a real SQLite store and the real MiniLM embedder
(issue 14): every edit kind and its undo/redo through the Write tab's buttons, version checks against a stale tab,
bad input, the Update memory now button, the manuscript's marks (written, versions kept), unsaved typing kept, and
which events redraw which tab (app/ui/redraw.py)."""

from __future__ import annotations

import gradio as gr
import pytest

from app.ui import library, manuscript, redraw, services, write
from memory import alternatives, store

MINE = "Orla rowed out to the skerry at dawn with her father's brass telescope."


def _novel(texts) -> int:
    novel_id = library.create_novel("A lighthouse keeper finds a message in a bottle.", "", "", "default")["novel_id"]
    for text in texts:
        manuscript.add_at_end(novel_id, text)
    return novel_id


def _texts(services, novel_id) -> list[tuple[str, str]]:
    with services.session() as session:
        return [(p.text, p.origin) for p in store.paragraphs(session, novel_id)]


def _memory(novel_id) -> str:
    with services.current().session() as session:
        return store.current_memory(session, novel_id).text


def _read(novel_id, number) -> dict:
    return manuscript.select_paragraph(novel_id, number)["para_read"]


def _each_edit():
    # Each: (name, function(novel_id) doing one edit through the editor's handlers).
    return {
        "save": lambda n: manuscript.save_paragraph(n, "second, rewritten", _read(n, 2)),
        "add_at_end": lambda n: manuscript.add_at_end(n, MINE),
        "insert_before": lambda n: manuscript.insert_before(n, MINE, _read(n, 1)),
        "insert_after": lambda n: manuscript.insert_after(n, MINE, _read(n, 1)),
        "delete": lambda n: manuscript.delete_paragraph(n, _read(n, 2)),
        "up": lambda n: manuscript.move_up(n, _read(n, 3)),
        "down": lambda n: manuscript.move_down(n, _read(n, 1)),
        "split": lambda n: manuscript.split_paragraph(n, _read(n, 3)["text"], _read(n, 3)),
        "merge": lambda n: manuscript.merge_paragraph(n, "first", _read(n, 1)),
    }


@pytest.mark.parametrize("name", list(_each_edit()))
def test_every_edit_kind_is_undone_and_redone_through_the_write_tab(with_embedder, name):
    novel_id = _novel(["first", "second", "third\n\nthird, after a blank line"])
    before = _texts(with_embedder, novel_id)
    result = _each_edit()[name](novel_id)
    after = _texts(with_embedder, novel_id)
    assert after != before and result["edit_status_md"]
    # The editor shows the paragraph the edit left chosen, at its new version.
    read = result["para_read"]
    assert read is None or after[read["position"] - 1][0] == read["text"]
    assert write.undo(novel_id).startswith("Undone")
    assert _texts(with_embedder, novel_id) == before
    assert write.redo(novel_id) == "Redone."
    assert _texts(with_embedder, novel_id) == after


def test_the_writers_paragraphs_are_marked_written_and_counted(with_embedder):
    novel_id = _novel([MINE, "A second one of my own."])
    view = write.refresh(novel_id)
    assert "lh-written" in view["manuscript_html"] and "data-position='2'" in view["manuscript_html"]
    assert view["counts_md"].startswith("2 paragraphs · 19 words")
    assert _texts(with_embedder, novel_id) == [(MINE, "written"), ("A second one of my own.", "written")]


def test_a_stale_tab_is_refused_and_overwrites_nothing(with_embedder):
    novel_id = _novel(["first", "second"])
    stale = _read(novel_id, 1)
    manuscript.save_paragraph(novel_id, "saved in the other tab", _read(novel_id, 1))
    for attempt in (lambda: manuscript.save_paragraph(novel_id, "from the stale tab", stale),
                    lambda: manuscript.delete_paragraph(novel_id, stale),
                    lambda: manuscript.move_down(novel_id, stale)):
        with pytest.raises(gr.Error, match="changed elsewhere"):
            attempt()
    assert _texts(with_embedder, novel_id)[0][0] == "saved in the other tab"


def test_reselect_keeps_unsaved_typing_and_reloads_otherwise(with_embedder):
    novel_id = _novel(["first", "second"])
    read = _read(novel_id, 2)
    manuscript.save_paragraph(novel_id, "second, saved elsewhere", _read(novel_id, 2))
    assert manuscript.reselect(novel_id, 2, "my unsaved typing", read) == {"para_read": read}
    reloaded = manuscript.reselect(novel_id, 2, read["text"], read)
    assert reloaded["para_read"]["text"] == "second, saved elsewhere"


def test_bad_input_is_refused_with_a_message_and_a_megabyte_paste_is_kept(with_embedder):
    novel_id = _novel(["first"])
    with pytest.raises(gr.Error, match="empty"):
        manuscript.add_at_end(novel_id, "   \n  ")
    with pytest.raises(gr.Error, match="empty"):
        manuscript.save_paragraph(novel_id, "", _read(novel_id, 1))
    with pytest.raises(gr.Error, match="no blank line"):
        manuscript.split_paragraph(novel_id, "first", _read(novel_id, 1))
    with pytest.raises(gr.Error, match="not saved"):
        manuscript.merge_paragraph(novel_id, "first, typed but not saved", _read(novel_id, 1))
    with pytest.raises(gr.Error, match="No paragraph is chosen"):
        manuscript.insert_after(novel_id, MINE, None)
    huge = ("The tide came in over the causeway. " * 28_000)[:1_000_000].strip()
    manuscript.add_at_end(novel_id, huge)
    assert _texts(with_embedder, novel_id)[-1] == (huge, "written")


def test_deleting_the_only_paragraph_is_allowed_and_undoable(with_embedder):
    novel_id = _novel(["the only one"])
    result = manuscript.delete_paragraph(novel_id, _read(novel_id, 1))
    assert result["para_read"] is None and _texts(with_embedder, novel_id) == []
    assert "No paragraphs yet" in write.refresh(novel_id)["manuscript_html"]
    write.undo(novel_id)
    assert _texts(with_embedder, novel_id) == [("the only one", "written")]


def test_update_memory_now_streams_and_is_undoable(scripted):
    novel_id = _novel([MINE])
    scripted.script["memory"] = ["Orla rowed to the skerry with her father's telescope at dawn."]
    frames = list(write.update_memory(novel_id))
    drafts = [frame["draft_box"] for frame in frames if frame.get("draft_box")]
    assert len(drafts) >= 3 and drafts[-1].strip() == "Orla rowed to the skerry with her father's telescope at dawn."
    assert frames[-1]["status_md"].startswith("Memory updated from paragraph 1.")
    assert MINE in scripted.calls_for("memory")[-1].prompt
    assert _memory(novel_id) == "Orla rowed to the skerry with her father's telescope at dawn."
    frames = list(write.update_memory(novel_id))
    assert "up to date" in frames[-1]["status_md"]
    write.undo(novel_id)
    assert _memory(novel_id) == ""


def test_the_app_builds_with_the_editor(ui_services):
    from app.ui import build_app

    demo = build_app(ui_services.config, ui_services.source, installed=ui_services)
    ids = {getattr(block, "elem_id", None) for block in demo.blocks.values()}
    assert {"para_number", "para_box", "para_save_btn", "add_end_btn", "update_memory_btn"} <= ids


def test_choosing_another_paragraph_keeps_unsaved_typing_until_saved_or_discarded(with_embedder):
    novel_id = _novel(["first", "second", "third"])
    read = _read(novel_id, 2)
    with pytest.warns(UserWarning, match="Paragraph 2 has changes that are not saved"):
        kept = manuscript.select_paragraph(novel_id, 3, "second, typed and not saved", read)
    # The editor stays on paragraph 2 with the typing; only the number goes back.
    assert kept == {"para_number": 2}
    for edit in (lambda: manuscript.delete_paragraph(novel_id, read, "second, typed and not saved"),
                 lambda: manuscript.move_down(novel_id, read, "second, typed and not saved")):
        with pytest.raises(gr.Error, match="not saved"):
            edit()
    inserted = manuscript.insert_after(novel_id, MINE, read, "second, typed and not saved")
    assert "para_box" not in inserted and "unsaved changes stay" in inserted["edit_status_md"]
    assert [text for text, _ in _texts(with_embedder, novel_id)] == ["first", "second", MINE, "third"]
    discarded = manuscript.discard_changes(novel_id, read)
    assert discarded["para_read"]["text"] == "second" and discarded["para_box"]["value"] == "second"
    moved_on = manuscript.select_paragraph(novel_id, 4, "second", discarded["para_read"])
    assert moved_on["para_read"]["text"] == "third"


def test_paragraphs_with_other_versions_carry_a_badge(with_embedder):
    novel_id = _novel(["first", "second", "third"])
    with services.current().session() as session, session.begin():
        second = store.paragraph_at(session, novel_id, 2).id
        alternatives.keep(session, second, alternatives.Version(text="second, another take", kind="version"))
    html = write.refresh(novel_id)["manuscript_html"]
    marked = [chunk for chunk in html.split("<p ")[1:] if "lh-badge" in chunk]
    assert len(marked) == 1 and "data-position='2'" in marked[0] and "2 versions" in marked[0]


def test_a_tab_is_drawn_again_on_opening_only_when_the_novel_changed_since(with_embedder):
    import gradio as gr

    novel_id = _novel(["first", "second"])
    with gr.Blocks():
        box = gr.HTML()
        panel = redraw.Panel("write", [(write.refresh, {"manuscript_html": box, "plan_radio": gr.Radio(),
                                                        "plans_shown": gr.Textbox(), "counts_md": gr.Markdown(),
                                                        "draft_box": gr.Textbox(), "undo_btn": gr.Button(),
                                                        "redo_btn": gr.Button(), "receiver_md": gr.Markdown()})])
    when_stale = panel.when_stale_event(gr.State())["fn"]
    drawn = when_stale(novel_id, None)
    stamp = drawn[panel.drawn]
    assert "second" in drawn[box]
    assert when_stale(novel_id, stamp) == {panel.drawn: stamp}
    manuscript.save_paragraph(novel_id, "second, edited in the Write tab", _read(novel_id, 2))
    again = when_stale(novel_id, stamp)
    assert again[panel.drawn] != stamp and "second, edited in the Write tab" in again[box]
    write.undo(novel_id)
    assert when_stale(novel_id, again[panel.drawn])[panel.drawn] != again[panel.drawn]


def test_an_edit_redraws_the_write_tab_only_and_the_other_tabs_when_opened(ui_services):
    from app.ui import build_app

    demo = build_app(ui_services.config, ui_services.source, installed=ui_services)
    by_id = {getattr(block, "elem_id", None): block for block in demo.blocks.values()}
    memory_table, reader_story = by_id["paragraph_table"], by_id["reader_story"]
    manuscript_box = by_id["manuscript"]
    filling = {name: {fn.name for fn in demo.fns.values() if block in fn.outputs}
               for name, block in [("memory", memory_table), ("reader", reader_story), ("write", manuscript_box)]}
    # The Memory tab's own save fills its table; no edit elsewhere does.
    assert filling["memory"] == {"draw_memory", "draw_memory_if_stale", "save_paragraph_edits"}
    assert filling["reader"] == {"draw_reader", "draw_reader_if_stale"}
    assert filling["write"] == {"refresh_all", "draw_write", "draw_write_if_stale"}
