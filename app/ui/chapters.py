"""The chapters panel of the Write tab: the chapter list with word counts; new, rename, reorder, move a paragraph,
merge and delete (with confirmation, undoable like every edit); close a chapter (its summary and the synopsis are
then written by the model); the selected chapter's summary and the synopsis, editable, with history and restore.
Above them, the outline by chapter (the model proposes one line per chapter) and "write until the end of chapter N"
(auto-write that closes each chapter when it holds the paragraphs asked for), streaming into the Write tab's draft
box and status line like Auto-write, and stopped by either Stop button.

Handlers are plain functions returning {role: value}; each calls one store or engine function per action. A
summary or synopsis edited in another tab is never overwritten: saves carry the version the page read.
"""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from memory import chapters as book
from memory import store

from app.engine import Cancelled
from app.engine.chapter_outline import outline_chapters
from app.ui import services, write
from app.ui.common import GENERATION, InputError, bind, clean_text, components, handler, require_novel, returns

TABLE_HEADERS = ["#", "chapter", "paragraphs", "words", "state"]
DELETE_CONFIRM = "Yes, delete this chapter and its paragraphs (Undo brings them back)"
# The outline by chapter the panel asks for: at least 2 lines (the outliner refuses fewer), at most what the
# default model can plan in one answer of OUTLINE_TOKENS_PER_CHAPTER tokens a line.
OUTLINE_CHAPTERS = (2, 30)
# Paragraphs a chapter holds before "write until the end of chapter N" closes it, and the most steps one run
# writes (as Auto-write).
PARAGRAPHS_PER_CHAPTER = (1, 50)
MAX_STEPS = 100


def chapter_filter(paragraphs: list[tuple[int, str]], positions: tuple[int, ...]) -> list[tuple[int, str]]:
    """The (position, text) pairs of one chapter, from the whole manuscript's: for the Write tab to show only the
    open chapter's text (`positions` is `app.engine.reading.ChapterView.paragraph_positions`)."""
    wanted = set(positions)
    return [(position, text) for position, text in paragraphs if position in wanted]


def _state(info: book.ChapterInfo) -> str:
    if not info.closed:
        return "open"
    if info.summary_stale:
        return "closed, summary stale"
    return "closed, summarized" if info.summary_version else "closed, no summary"


def _history_choices(history) -> list[tuple[str, int]]:
    return [(f"v{item.version} ({item.origin}): {item.text[:60]}", item.version) for item in reversed(history)]


OPEN_CHAPTER_TEXT = "(the open chapter: its text is the manuscript above, where you edit it)"


def _panel(novel_id: int, chapter_id: int | None) -> dict:
    """Everything the panel shows for `chapter_id` (None or gone: the open chapter), in one short read."""
    with services.current().session() as session:
        overview = book.chapter_overview(session, novel_id)
        ids = [info.id for info in overview]
        if chapter_id not in ids:
            chapter_id = ids[-1]
        selected = overview[ids.index(chapter_id)]
        summaries = book.summary_history(session, chapter_id)
        synopses = book.synopsis_history(session, novel_id)
        # The open (last) chapter's text is the Write tab's manuscript already: sending it twice was half of a
        # long chapter's reload.
        is_open = chapter_id == ids[-1]
        texts = [] if is_open else [(p.position, p.text) for p in book.chapter_paragraphs(session, chapter_id)]
        outline = store.story(store.get_novel(session, novel_id))["outline"]
    read = {"chapter_id": chapter_id, "chapter_version": selected.version,
            "summary_version": summaries[-1].version if summaries else 0,
            "synopsis_version": synopses[-1].version if synopses else 0}
    text = (OPEN_CHAPTER_TEXT if is_open else
            "\n\n".join(f"{position}. {body}" for position, body in texts) or "(no paragraphs yet)")
    return {
        "chapters_table": [[info.position, info.title, info.paragraphs, info.words, _state(info)] for info in overview],
        "chapter_pick": gr.update(choices=[(f"{info.position}. {info.title}", info.id) for info in overview],
                                  value=chapter_id),
        "title_box": selected.title,
        "chapter_text": text,
        "summary_box": summaries[-1].text if summaries else "",
        "summary_history": gr.update(choices=_history_choices(summaries), value=None),
        "synopsis_box": synopses[-1].text if synopses else "",
        "synopsis_history": gr.update(choices=_history_choices(synopses), value=None),
        "read_state": read,
        "delete_confirm": False,
        "chapter_outline_box": outline,
    }


PANEL = ("chapters_table", "chapter_pick", "title_box", "chapter_text", "summary_box", "summary_history",
         "synopsis_box", "synopsis_history", "read_state", "delete_confirm", "chapter_outline_box")


@handler
@returns(*PANEL)
def refresh(novel_id):
    """The panel for the open novel. The status line is left as it is: every tab is redrawn after an action, and
    the action's own message must stay readable."""
    if novel_id in (None, ""):
        return {"chapters_table": [], "chapter_pick": gr.update(choices=[], value=None), "title_box": "",
                "chapter_text": "", "summary_box": "", "summary_history": gr.update(choices=[], value=None),
                "synopsis_box": "", "synopsis_history": gr.update(choices=[], value=None), "read_state": {},
                "delete_confirm": False, "chapter_outline_box": ""}
    return _panel(int(novel_id), None)


@handler
@returns(*PANEL)
def select(novel_id, chapter_id):
    return _panel(require_novel(novel_id), int(chapter_id) if chapter_id not in (None, "") else None)


def _chapter(read: dict) -> int:
    if not read or read.get("chapter_id") is None:
        raise InputError("No chapter is selected: pick one in the list.")
    return int(read["chapter_id"])


def _done(novel_id: int, chapter_id: int | None, message: str) -> dict:
    return {**_panel(novel_id, chapter_id), "chapters_status": message}


@handler
@returns(*PANEL, "chapters_status")
def new_chapter(novel_id, title):
    novel_id = require_novel(novel_id)
    title = clean_text(title, "The chapter title", required=True, max_chars=store.MAX_TITLE_CHARS)
    with services.current().session() as session, session.begin():
        chapter_id = book.add_chapter(session, novel_id, title).id
    return _done(novel_id, chapter_id, f"Added chapter {title!r} at the end; new steps are written into it.")


@handler
@returns(*PANEL, "chapters_status")
def rename(novel_id, read, title):
    novel_id = require_novel(novel_id)
    title = clean_text(title, "The chapter title", required=True, max_chars=store.MAX_TITLE_CHARS)
    with services.current().session() as session, session.begin():
        book.rename_chapter(session, _chapter(read), title, expected_version=int(read["chapter_version"]))
    return _done(novel_id, _chapter(read), f"Renamed to {title!r}.")


def _move(novel_id, read, delta: int) -> dict:
    novel_id = require_novel(novel_id)
    chapter_id = _chapter(read)
    with services.current().session() as session, session.begin():
        chapter = book.get_chapter(session, chapter_id)
        count = len(store.chapters(session, novel_id))
        target = chapter.position + delta
        if not 1 <= target <= count:
            raise InputError(f"Chapter {chapter.title!r} is already the {'first' if delta < 0 else 'last'}.")
        book.move_chapter(session, chapter_id, target)
    return _done(novel_id, chapter_id, f"Moved to place {target}, with its paragraphs.")


@handler
@returns(*PANEL, "chapters_status")
def move_up(novel_id, read):
    return _move(novel_id, read, -1)


@handler
@returns(*PANEL, "chapters_status")
def move_down(novel_id, read):
    return _move(novel_id, read, +1)


@handler
@returns(*PANEL, "chapters_status")
def move_paragraph(novel_id, read, position):
    novel_id = require_novel(novel_id)
    if position in (None, ""):
        raise InputError("Give the number of the paragraph to move.")
    with services.current().session() as session, session.begin():
        paragraph = store.paragraph_at(session, novel_id, int(position))
        if paragraph is None:
            raise InputError(f"There is no paragraph {int(position)}.")
        book.move_paragraph(session, paragraph.id, _chapter(read))
    return _done(novel_id, _chapter(read), f"Paragraph {int(position)} now ends this chapter.")


@handler
@returns(*PANEL, "chapters_status")
def merge(novel_id, read):
    novel_id = require_novel(novel_id)
    with services.current().session() as session, session.begin():
        book.merge_with_next(session, _chapter(read))
    return _done(novel_id, _chapter(read), "Merged the next chapter into this one (Undo separates them again).")


@handler
@returns(*PANEL, "chapters_status")
def delete(novel_id, read, confirmed):
    novel_id = require_novel(novel_id)
    if not confirmed:
        raise InputError("Tick the confirmation box first: deleting a chapter deletes its paragraphs too.")
    with services.current().session() as session, session.begin():
        title = book.get_chapter(session, _chapter(read)).title
        book.delete_chapter(session, _chapter(read))
    return _done(novel_id, None, f"Deleted chapter {title!r} and its paragraphs; Undo brings them back.")


def _outcomes_line(outcomes) -> str:
    return " ".join(o.notice or f"Wrote {o.what} (version {o.version})." for o in outcomes)


@handler
@returns(*PANEL, "chapters_status")
def close(novel_id, read):
    """Close the chapter, then have the model write its summary and rebuild the synopsis."""
    novel_id = require_novel(novel_id)
    chapter_id = _chapter(read)
    outcomes = services.current().engine().summarizer(novel_id).close_chapter(novel_id, chapter_id)
    return _done(novel_id, None, "Closed the chapter. " + _outcomes_line(outcomes))


@handler
@returns(*PANEL, "chapters_status")
def summarize(novel_id, read):
    novel_id = require_novel(novel_id)
    chapter_id = _chapter(read)
    outcome = services.current().engine().summarizer(novel_id).summarize_chapter(novel_id, chapter_id)
    return _done(novel_id, chapter_id, _outcomes_line([outcome]))


@handler
@returns(*PANEL, "chapters_status")
def rebuild_synopsis(novel_id, read):
    novel_id = require_novel(novel_id)
    outcome = services.current().engine().summarizer(novel_id).rebuild_synopsis(novel_id)
    return _done(novel_id, (read or {}).get("chapter_id"), _outcomes_line([outcome]))


@handler
@returns(*PANEL, "chapters_status")
def save_summary(novel_id, read, text):
    novel_id = require_novel(novel_id)
    text = clean_text(text, "The summary")
    with services.current().session() as session, session.begin():
        saved = book.set_summary(session, _chapter(read), text, expected_version=int(read["summary_version"]))
    return _done(novel_id, _chapter(read), f"Saved the summary (version {saved.version}).")


@handler
@returns(*PANEL, "chapters_status")
def restore_summary(novel_id, read, version):
    novel_id = require_novel(novel_id)
    if version in (None, ""):
        raise InputError("Pick the version to restore from the history.")
    with services.current().session() as session, session.begin():
        history = {item.version: item.text for item in book.summary_history(session, _chapter(read))}
        saved = book.set_summary(session, _chapter(read), history[int(version)],
                                 expected_version=int(read["summary_version"]))
    return _done(novel_id, _chapter(read), f"Restored version {int(version)} as version {saved.version}.")


@handler
@returns(*PANEL, "chapters_status")
def save_synopsis(novel_id, read, text):
    novel_id = require_novel(novel_id)
    text = clean_text(text, "The synopsis")
    with services.current().session() as session, session.begin():
        saved = book.set_synopsis(session, novel_id, text, expected_version=int(read["synopsis_version"]))
    return _done(novel_id, (read or {}).get("chapter_id"), f"Saved the synopsis (version {saved.version}).")


@handler
@returns(*PANEL, "chapters_status")
def restore_synopsis(novel_id, read, version):
    novel_id = require_novel(novel_id)
    if version in (None, ""):
        raise InputError("Pick the version to restore from the history.")
    with services.current().session() as session, session.begin():
        history = {item.version: item.text for item in book.synopsis_history(session, novel_id)}
        saved = book.set_synopsis(session, novel_id, history[int(version)],
                                  expected_version=int(read["synopsis_version"]))
    return _done(novel_id, (read or {}).get("chapter_id"), f"Restored version {int(version)} as version "
                                                            f"{saved.version}.")


# ---------------------------------------------------------------- outline by chapter, write to a chapter


def _whole_number(value, field: str, bounds: tuple[int, int]) -> int:
    low, high = bounds
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{field} needs a whole number from {low} to {high}.") from None
    if not number.is_integer() or not low <= number <= high:
        raise InputError(f"{field} needs a whole number from {low} to {high}, not {value}.")
    return int(number)


@handler
@returns(*PANEL, "chapters_status")
def propose_outline(novel_id, count):
    """The model proposes what happens in each of `count` chapters; saved as the novel's outline (one undoable edit,
    refused when the outline was edited meanwhile). Stop ends it and keeps the old outline."""
    novel_id = require_novel(novel_id)
    count = _whole_number(count, "The number of chapters in the outline", OUTLINE_CHAPTERS)
    svc = services.current()
    key = f"novel-{novel_id}"
    cancel = svc.cancel_event(key)
    try:
        loading = svc.loaded_generator() is None
        waiting = " (loading the model first; the first time takes a while)…" if loading else "…"
        yield {"chapters_status": f"Proposing an outline of {count} chapters{waiting}"}
        try:
            lines = svc.engine().chapter_outliner(novel_id).propose(novel_id, count, cancel=cancel)
        except Cancelled:
            yield _done(novel_id, None, "Stopped. The outline was not changed.")
            return
        short = "" if len(lines) == count else f" (the model planned {len(lines)} of the {count} asked for)"
        yield _done(novel_id, None, f"Saved an outline of {len(lines)} chapters{short}; each chapter's first step "
                                    "follows its line. Edit it in the Memory tab; Undo restores the old one.")
    finally:
        svc.finished(key, cancel)


def plan_to_chapter(novel_id: int, through: int, per_chapter: int) -> int:
    """The steps "write until the end of chapter `through`" will write, or `InputError` saying why it cannot: the
    chapter is closed already, it is beyond the outline by chapter, or the run would be longer than MAX_STEPS."""
    with services.current().session() as session:
        overview = book.chapter_overview(session, novel_id)
        outline = store.story(store.get_novel(session, novel_id))["outline"]
    open_chapter = overview[-1]
    if through < open_chapter.position:
        raise InputError(f"Chapter {through} is closed already: steps now go into chapter {open_chapter.position} "
                         f"({open_chapter.title!r}). Give {open_chapter.position} or a later chapter.")
    planned = outline_chapters(outline)
    if planned and through > planned:
        raise InputError(f"The outline by chapter plans {planned} chapters: write until chapter {planned} at most, "
                         "or propose a longer outline first.")
    # The open chapter is filled up to `per_chapter` (one that holds more is closed as it is), each later one from
    # empty.
    steps = max(0, per_chapter - open_chapter.paragraphs) + (through - open_chapter.position) * per_chapter
    if steps > MAX_STEPS:
        raise InputError(f"That is {steps} steps; one run writes at most {MAX_STEPS}. Give an earlier chapter or "
                         "fewer paragraphs per chapter.")
    return steps


@handler
@returns("draft_box", "status_md", "chapters_status")
def write_to_chapter(novel_id, through, per_chapter, progress=gr.Progress()):
    """Auto-write until the end of chapter `through`: the open chapter fills to `per_chapter` paragraphs, is closed
    (the model writes its summary and the synopsis) and the next one opens. Streams like Auto-write; every
    finished step and close is saved, Stop ends after the current token."""
    novel_id = require_novel(novel_id)
    through = _whole_number(through, "The chapter to write until", (1, 1000))
    per_chapter = _whole_number(per_chapter, "Paragraphs per chapter", PARAGRAPHS_PER_CHAPTER)
    steps = plan_to_chapter(novel_id, through, per_chapter)

    def events(engine, cancel):
        for event in engine.write_chapters(novel_id, through, per_chapter, cancel=cancel):
            if event.kind == "progress" and event.total:
                progress((event.done, event.total), desc=f"step {event.done + 1} of {event.total}")
            yield event

    frame: dict = {}
    what = f"writing until the end of chapter {through} ({steps} step{'' if steps == 1 else 's'})"
    for frame in write._run(novel_id, events, what):
        yield {**frame, "chapters_status": frame["status_md"]}
    with services.current().session() as session:
        open_chapter = book.chapter_overview(session, novel_id)[-1]
    if open_chapter.position > through:
        line = (f"Chapter {through} is written and closed; new steps go into chapter {open_chapter.position}. "
                + frame.get("status_md", ""))
        yield {"status_md": line, "chapters_status": line}


# ---------------------------------------------------------------- layout


@dataclass
class ChaptersPanel:
    chapters_table: gr.Dataframe
    chapter_pick: gr.Dropdown
    title_box: gr.Textbox
    chapter_text: gr.Textbox
    new_title_box: gr.Textbox
    new_btn: gr.Button
    rename_btn: gr.Button
    move_up_btn: gr.Button
    move_down_btn: gr.Button
    paragraph_number: gr.Number
    move_paragraph_btn: gr.Button
    merge_btn: gr.Button
    delete_confirm: gr.Checkbox
    delete_btn: gr.Button
    close_btn: gr.Button
    summarize_btn: gr.Button
    summary_box: gr.Textbox
    save_summary_btn: gr.Button
    summary_history: gr.Dropdown
    restore_summary_btn: gr.Button
    synopsis_box: gr.Textbox
    save_synopsis_btn: gr.Button
    rebuild_synopsis_btn: gr.Button
    synopsis_history: gr.Dropdown
    restore_synopsis_btn: gr.Button
    chapters_status: gr.Markdown
    read_state: gr.State
    outline_chapters: gr.Number
    propose_outline_btn: gr.Button
    chapter_outline_box: gr.Textbox
    through_chapter: gr.Number
    per_chapter: gr.Number
    write_chapters_btn: gr.Button
    chapters_stop_btn: gr.Button


def _build_plan_row() -> dict:
    """The outline by chapter and "write until the end of chapter N"."""
    with gr.Row(elem_id="chapter_plan_row"):
        with gr.Column(scale=1, min_width=220):
            outline_chapters = gr.Number(value=5, precision=0, minimum=OUTLINE_CHAPTERS[0],
                                         maximum=OUTLINE_CHAPTERS[1], label="Chapters in the outline",
                                         elem_id="outline_chapters")
            propose_outline_btn = gr.Button("Propose an outline by chapter", elem_id="propose_outline_btn")
        chapter_outline_box = gr.Textbox(label="Outline (one line per chapter; edit it in the Memory tab)", lines=4,
                                         max_lines=12, interactive=False, scale=2, elem_id="chapter_outline_box")
        with gr.Column(scale=1, min_width=220):
            with gr.Row():
                through_chapter = gr.Number(value=1, precision=0, minimum=1, label="Write until the end of chapter",
                                            elem_id="through_chapter")
                per_chapter = gr.Number(value=3, precision=0, minimum=PARAGRAPHS_PER_CHAPTER[0],
                                        maximum=PARAGRAPHS_PER_CHAPTER[1], label="Paragraphs per chapter",
                                        elem_id="per_chapter")
            with gr.Row():
                write_chapters_btn = gr.Button("Write to the end of chapter N", variant="primary",
                                               elem_id="write_chapters_btn")
                chapters_stop_btn = gr.Button("Stop", variant="stop", elem_id="chapters_stop_btn")
    return {"outline_chapters": outline_chapters, "propose_outline_btn": propose_outline_btn,
            "chapter_outline_box": chapter_outline_box, "through_chapter": through_chapter,
            "per_chapter": per_chapter, "write_chapters_btn": write_chapters_btn,
            "chapters_stop_btn": chapters_stop_btn}


def build() -> ChaptersPanel:
    with gr.Accordion("Chapters, summaries and synopsis", open=True, elem_id="chapters_panel"):
        chapters_status = gr.Markdown("", elem_id="chapters_status")
        plan_row = _build_plan_row()
        with gr.Row():
            with gr.Column(scale=2):
                chapters_table = gr.Dataframe(headers=TABLE_HEADERS, interactive=False, label="Chapters",
                                              elem_id="chapters_table")
                with gr.Row():
                    new_title_box = gr.Textbox(label="New chapter title", elem_id="new_chapter_title")
                    new_btn = gr.Button("New chapter", elem_id="new_chapter_btn")
                chapter_pick = gr.Dropdown([], label="Chapter", elem_id="chapter_pick")
                with gr.Row():
                    title_box = gr.Textbox(label="Title", elem_id="chapter_title")
                    rename_btn = gr.Button("Rename", elem_id="rename_chapter_btn")
                with gr.Row():
                    move_up_btn = gr.Button("Move up", elem_id="chapter_up_btn")
                    move_down_btn = gr.Button("Move down", elem_id="chapter_down_btn")
                    merge_btn = gr.Button("Merge with next", elem_id="merge_chapter_btn")
                with gr.Row():
                    paragraph_number = gr.Number(label="Paragraph number", precision=0, elem_id="move_paragraph_no")
                    move_paragraph_btn = gr.Button("Move it to the end of this chapter",
                                                   elem_id="move_paragraph_btn")
                with gr.Row():
                    delete_confirm = gr.Checkbox(label=DELETE_CONFIRM, value=False, elem_id="delete_chapter_ok")
                    delete_btn = gr.Button("Delete chapter", variant="stop", elem_id="delete_chapter_btn")
                with gr.Row():
                    close_btn = gr.Button("Close chapter (write its summary)", variant="primary",
                                          elem_id="close_chapter_btn")
                    summarize_btn = gr.Button("Rewrite summary", elem_id="summarize_btn")
                chapter_text = gr.Textbox(label="This chapter's text", lines=6, max_lines=20, interactive=False,
                                          elem_id="chapter_text")
            with gr.Column(scale=2):
                summary_box = gr.Textbox(label="Chapter summary", lines=5, elem_id="summary_box")
                with gr.Row():
                    save_summary_btn = gr.Button("Save summary", elem_id="save_summary_btn")
                    summary_history = gr.Dropdown([], label="Summary history", elem_id="summary_history")
                    restore_summary_btn = gr.Button("Restore", elem_id="restore_summary_btn")
                synopsis_box = gr.Textbox(label="Synopsis of the book so far", lines=5, elem_id="synopsis_box")
                with gr.Row():
                    save_synopsis_btn = gr.Button("Save synopsis", elem_id="save_synopsis_btn")
                    rebuild_synopsis_btn = gr.Button("Rebuild from summaries", elem_id="rebuild_synopsis_btn")
                with gr.Row():
                    synopsis_history = gr.Dropdown([], label="Synopsis history", elem_id="synopsis_history")
                    restore_synopsis_btn = gr.Button("Restore", elem_id="restore_synopsis_btn")
        read_state = gr.State({})
    return ChaptersPanel(chapters_table, chapter_pick, title_box, chapter_text, new_title_box, new_btn, rename_btn,
                         move_up_btn, move_down_btn, paragraph_number, move_paragraph_btn, merge_btn, delete_confirm,
                         delete_btn, close_btn, summarize_btn, summary_box, save_summary_btn, summary_history,
                         restore_summary_btn, synopsis_box, save_synopsis_btn, rebuild_synopsis_btn, synopsis_history,
                         restore_synopsis_btn, chapters_status, read_state, **plan_row)


def wire(panel: ChaptersPanel, novel_state: gr.State, on_novel_changed, stream_to) -> None:
    """Actions that change the manuscript redraw every tab (`on_novel_changed`); summary edits redraw the panel.
    Writing to a chapter streams into `stream_to` (the Write tab: its draft box and status line)."""
    roles = {**components(panel), "draft_box": stream_to.draft_box, "status_md": stream_to.status_md}
    read = panel.read_state
    panel.chapter_pick.input(inputs=[novel_state, panel.chapter_pick], **bind(select, roles), queue=False)
    manuscript_changes = [
        (panel.new_btn, new_chapter, [novel_state, panel.new_title_box]),
        (panel.rename_btn, rename, [novel_state, read, panel.title_box]),
        (panel.move_up_btn, move_up, [novel_state, read]),
        (panel.move_down_btn, move_down, [novel_state, read]),
        (panel.move_paragraph_btn, move_paragraph, [novel_state, read, panel.paragraph_number]),
        (panel.merge_btn, merge, [novel_state, read]),
        (panel.delete_btn, delete, [novel_state, read, panel.delete_confirm]),
    ]
    for button, fn, inputs in manuscript_changes:
        on_novel_changed(button.click(inputs=inputs, **bind(fn, roles)))
    # Closing opens a new chapter, which the Write tab then shows.
    on_novel_changed(panel.close_btn.click(inputs=[novel_state, read], **bind(close, roles), **GENERATION))
    for button, fn in [(panel.summarize_btn, summarize), (panel.rebuild_synopsis_btn, rebuild_synopsis)]:
        button.click(inputs=[novel_state, read], **bind(fn, roles), **GENERATION)
    on_novel_changed(panel.propose_outline_btn.click(inputs=[novel_state, panel.outline_chapters],
                                                     **bind(propose_outline, roles), **GENERATION))
    on_novel_changed(panel.write_chapters_btn.click(
        inputs=[novel_state, panel.through_chapter, panel.per_chapter], **bind(write_to_chapter, roles),
        **{**GENERATION, "show_progress": "minimal"}, show_progress_on=[stream_to.status_md]))
    panel.chapters_stop_btn.click(write.stop, [novel_state], [panel.chapters_status], queue=False)
    panel.save_summary_btn.click(inputs=[novel_state, read, panel.summary_box], **bind(save_summary, roles))
    panel.restore_summary_btn.click(inputs=[novel_state, read, panel.summary_history],
                                    **bind(restore_summary, roles))
    panel.save_synopsis_btn.click(inputs=[novel_state, read, panel.synopsis_box], **bind(save_synopsis, roles))
    panel.restore_synopsis_btn.click(inputs=[novel_state, read, panel.synopsis_history],
                                     **bind(restore_synopsis, roles))
