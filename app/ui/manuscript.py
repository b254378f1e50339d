"""The Write tab's manuscript editor: the paragraph chosen by number (or by a click in the manuscript) in an editor
box with Save, Delete, Up, Down, Split and Merge, and a box for the writer's own paragraph with Insert before,
Insert after and Add at end.

Every button is one engine edit (app/engine/editing.py), so one undoable revision; the page keeps the paragraph's
id and version as it read them (`para_read`), and a save from a stale view gets the store's conflict message and
overwrites nothing. After an edit the Write tab is redrawn (the caller's `on_novel_changed`); `reselect` then
reloads the chosen paragraph. Typing not saved yet is never dropped silently: choosing another paragraph keeps it
(with a warning, until Save or Discard changes), an insert leaves it in the editor, and an edit of the chosen
paragraph as saved (delete, move, split, merge) is refused until it is saved or discarded. The manuscript itself is
drawn by `manuscript_html`, from the list of paragraphs to show (the open chapter's), with a badge on each paragraph
that has other versions kept.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

import gradio as gr

from app.ui import services
from app.ui.common import InputError, bind, clean_text, components, handler, require_novel, returns, word_count

# A pasted paragraph is kept whole up to this size (a 1 MB paste included); the page's request limit is 16 MB.
MAX_PARAGRAPH_CHARS = 2_000_000
EDITOR_ROLES = ("para_number", "para_box", "para_read", "para_words_md")
# Word counts as the writer types: one request at a time, the last keystroke's text winning, no queue.
AS_YOU_TYPE = {"queue": False, "trigger_mode": "always_last", "show_progress": "hidden"}
# The paragraph the editor moved to is brought into view now, and again after the redraw that follows an edit
# (see SCRIPT in app/ui/__init__.py).
FOCUS_PARAGRAPH = "(n) => { window.lhFocus = {position: n, at: Date.now()}; window.lhShow && window.lhShow(n); }"


def versions_badge(count: int) -> str:
    """The mark of a paragraph with other versions kept beside it: how many versions it has, its own included."""
    return f"<span class='lh-badge' title='Versions of this paragraph: see Versions below'>{count + 1} versions</span>"


def manuscript_html(title: str, paragraphs: list[tuple[int, str]], written: set[int] | frozenset = frozenset(),
                    kept: dict[int, int] | None = None) -> str:
    """The manuscript with paragraph numbers, from the (position, text) pairs to show; the writer's own paragraphs
    (positions in `written`) are marked, and so are those with other versions kept (`kept`: {position: how many}).
    The text is escaped, so whatever a paragraph holds shows literally; a click on a paragraph chooses it in the
    editor."""
    if not paragraphs:
        return f"<div class='lh-manuscript'><h2>{html.escape(title)}</h2><p><em>No paragraphs yet: write your own "
        "below, or start the story with Next step.</em></p></div>"
    kept = kept or {}
    body = "".join(
        f"<p class='lh-para{' lh-written' if position in written else ''}' data-position='{position}' "
        f"title='Paragraph {position}: click to edit'><span class='lh-num'>{position}</span> "
        f"{html.escape(text)}{versions_badge(kept[position]) if kept.get(position) else ''}</p>"
        for position, text in paragraphs)
    return f"<div class='lh-manuscript'><h2>{html.escape(title)}</h2>{body}</div>"


def words_line(text: str | None) -> str:
    """The editor's word count line."""
    count = word_count(text or "")
    return f"{count:,} word{'' if count == 1 else 's'}"


def _paragraph_text(value, field: str) -> str:
    return clean_text(value, field, required=True, max_chars=MAX_PARAGRAPH_CHARS)


# ---------------------------------------------------------------- reading


def _editor_view(novel_id: int, *, paragraph_id: int | None = None, position: int | None = None) -> dict:
    """The editor showing one paragraph: by id when it still exists, else by position (clamped to the manuscript)."""
    from memory import store

    with services.current().session() as session:
        paragraph = store.get_paragraph(session, paragraph_id) if paragraph_id is not None else None
        if paragraph is not None and paragraph.novel_id != novel_id:
            paragraph = None
        count = store.paragraph_count(session, novel_id)
        if paragraph is None and count:
            wanted = count if position is None else min(max(int(position), 1), count)
            paragraph = store.paragraph_at(session, novel_id, wanted)
        if paragraph is None:
            return {"para_number": gr.update(value=None, maximum=None), "para_read": None,
                    "para_box": gr.update(value="", label="No paragraph yet"), "para_words_md": ""}
        read = {"novel_id": novel_id, "id": paragraph.id, "version": paragraph.version,
                "position": paragraph.position, "text": paragraph.text}
    return {"para_number": gr.update(value=read["position"], maximum=count), "para_read": read,
            "para_box": gr.update(value=read["text"], label=f"Paragraph {read['position']} of {count}"),
            "para_words_md": words_line(read["text"])}


def _require_read(read, novel_id: int) -> dict:
    if not read or read.get("id") is None:
        raise InputError("No paragraph is chosen: pick one by its number, or click it in the manuscript.")
    if read.get("novel_id") != novel_id:
        raise InputError("The editor shows a paragraph of another novel: choose the paragraph again.")
    return read


# ---------------------------------------------------------------- handlers


def _has_unsaved(read, box_text) -> bool:
    """Whether the editor's box holds typing other than the chosen paragraph as read (`box_text` None: unknown)."""
    return box_text is not None and bool(read) and read.get("id") is not None and box_text != read.get("text", "")


@handler
@returns(*EDITOR_ROLES)
def select_paragraph(novel_id, number, box_text=None, read=None) -> dict:
    """Show paragraph `number` in the editor. While the editor holds typing not saved yet, another paragraph is not
    shown: the typing stays, the number goes back to its paragraph, and a warning says to Save or Discard first."""
    if novel_id in (None, ""):
        return {"para_number": None, "para_read": None, "para_box": "", "para_words_md": ""}
    try:
        position = int(number) if number not in (None, "") else None
    except (TypeError, ValueError):
        raise InputError("The paragraph number must be a whole number.") from None
    if _has_unsaved(read, box_text) and read.get("novel_id") == int(novel_id):
        if position != read["position"]:
            gr.Warning(f"Paragraph {read['position']} has changes that are not saved: Save them, or Discard "
                       "changes, before choosing another paragraph.")
        return {"para_number": read["position"]}
    return _editor_view(int(novel_id), position=position)


@handler
@returns(*EDITOR_ROLES)
def discard_changes(novel_id, read) -> dict:
    """Drop the editor's unsaved typing: the chosen paragraph as saved now."""
    novel_id = require_novel(novel_id)
    read = _require_read(read, novel_id)
    return _editor_view(novel_id, paragraph_id=read["id"], position=read["position"])


@handler
@returns(*EDITOR_ROLES)
def reselect(novel_id, number, box_text, read) -> dict:
    """After the novel changed (a step, an undo, an edit in another tab): show the chosen paragraph as saved now,
    unless the editor holds typing not saved yet, which stays (saving it later is version-checked)."""
    if novel_id in (None, ""):
        return select_paragraph(novel_id, number)
    if _has_unsaved(read, box_text) and read.get("novel_id") == int(novel_id):
        # Not an empty dict: Gradio refuses one ("didn't return enough output values").
        return {"para_read": read}
    return _editor_view(int(novel_id), paragraph_id=(read or {}).get("id"),
                        position=number if number not in (None, "") else None)


def _after(outcome, extra: dict | None = None) -> dict:
    view = _editor_view(outcome.novel_id, paragraph_id=outcome.paragraph_id, position=outcome.position)
    return {**view, "edit_status_md": outcome.message, **(extra or {})}


def _editor():
    return services.current().engine().editor


@handler
@returns(*EDITOR_ROLES, "edit_status_md")
def save_paragraph(novel_id, text, read) -> dict:
    """Save the editor's text over the paragraph, if nobody changed it since the page read it."""
    read = _require_read(read, require_novel(novel_id))
    text = _paragraph_text(text, f"Paragraph {read['position']}")
    if text == read["text"]:
        return {"edit_status_md": f"Paragraph {read['position']} is unchanged: nothing to save."}
    return _after(_editor().edit(read["id"], text, read["version"]))


@handler
@returns(*EDITOR_ROLES, "edit_status_md")
def delete_paragraph(novel_id, read, text=None) -> dict:
    read = _require_read(read, require_novel(novel_id))
    _unsaved(read, text)
    return _after(_editor().delete(read["id"], read["version"]))


@handler
@returns(*EDITOR_ROLES, "edit_status_md")
def move_up(novel_id, read, text=None) -> dict:
    read = _require_read(read, require_novel(novel_id))
    _unsaved(read, text)
    return _after(_editor().move(read["id"], read["version"], -1))


@handler
@returns(*EDITOR_ROLES, "edit_status_md")
def move_down(novel_id, read, text=None) -> dict:
    read = _require_read(read, require_novel(novel_id))
    _unsaved(read, text)
    return _after(_editor().move(read["id"], read["version"], +1))


def _unsaved(read, text) -> None:
    """Refuse an edit of the chosen paragraph as saved while the editor holds other typing (`text` None: not
    checked)."""
    if text is not None and read and (text or "").strip() != read.get("text", "").strip():
        raise InputError(f"Paragraph {read['position']} has changes that are not saved: Save them first.")


@handler
@returns(*EDITOR_ROLES, "edit_status_md")
def split_paragraph(novel_id, text, read) -> dict:
    """Cut the paragraph at its blank lines (as saved: unsaved typing is refused, Save first)."""
    read = _require_read(read, require_novel(novel_id))
    _unsaved(read, text)
    return _after(_editor().split(read["id"], read["version"]))


@handler
@returns(*EDITOR_ROLES, "edit_status_md")
def merge_paragraph(novel_id, text, read) -> dict:
    """Join the paragraph with the next one."""
    read = _require_read(read, require_novel(novel_id))
    _unsaved(read, text)
    return _after(_editor().merge(read["id"], read["version"]))


def _insert(novel_id, new_text, read, where: str, box_text=None) -> dict:
    """Add the writer's paragraph; the editor then shows it, unless it holds unsaved typing, which stays."""
    novel_id = require_novel(novel_id)
    text = _paragraph_text(new_text, "Your paragraph")
    anchor = {} if where == "end" else {f"{where}_id": _require_read(read, novel_id)["id"]}
    outcome = _editor().add(novel_id, text, **anchor)
    cleared = {"new_box": "", "new_words_md": ""}
    if _has_unsaved(read, box_text):
        return {"edit_status_md": f"{outcome.message} Your unsaved changes stay in the editor.", **cleared}
    return _after(outcome, cleared)


@handler
@returns(*EDITOR_ROLES, "edit_status_md", "new_box", "new_words_md")
def insert_before(novel_id, new_text, read, box_text=None) -> dict:
    """The writer's paragraph just before the chosen one."""
    return _insert(novel_id, new_text, read, "before", box_text)


@handler
@returns(*EDITOR_ROLES, "edit_status_md", "new_box", "new_words_md")
def insert_after(novel_id, new_text, read, box_text=None) -> dict:
    """The writer's paragraph just after the chosen one."""
    return _insert(novel_id, new_text, read, "after", box_text)


@handler
@returns(*EDITOR_ROLES, "edit_status_md", "new_box", "new_words_md")
def add_at_end(novel_id, new_text, read=None, box_text=None) -> dict:
    """The writer's paragraph at the end of the manuscript (the next step continues from it)."""
    return _insert(novel_id, new_text, read, "end", box_text)


# ---------------------------------------------------------------- layout


@dataclass
class EditorPanel:
    para_number: gr.Number
    para_box: gr.Textbox
    para_read: gr.State  # {id, version, position, text} as the page read them (for the version check)
    para_words_md: gr.Markdown
    save_btn: gr.Button
    delete_btn: gr.Button
    up_btn: gr.Button
    down_btn: gr.Button
    split_btn: gr.Button
    merge_btn: gr.Button
    discard_btn: gr.Button
    new_box: gr.Textbox
    new_words_md: gr.Markdown
    insert_before_btn: gr.Button
    insert_after_btn: gr.Button
    add_end_btn: gr.Button
    edit_status_md: gr.Markdown


def build() -> EditorPanel:
    with gr.Accordion("Edit the manuscript", open=True, elem_id="manuscript_editor"):
        with gr.Row():
            para_number = gr.Number(label="Paragraph", precision=0, minimum=1, value=None, scale=0, min_width=110,
                                    elem_id="para_number", info="or click it above")
            para_words_md = gr.Markdown("", elem_id="para_words_md")
        para_box = gr.Textbox(label="Paragraph", lines=5, max_lines=24, elem_id="para_box",
                              max_length=MAX_PARAGRAPH_CHARS)
        para_read = gr.State(None)
        with gr.Row():
            save_btn = gr.Button("Save", variant="primary", size="sm", elem_id="para_save_btn")
            up_btn = gr.Button("Up", size="sm", elem_id="para_up_btn")
            down_btn = gr.Button("Down", size="sm", elem_id="para_down_btn")
            split_btn = gr.Button("Split at blank lines", size="sm", elem_id="para_split_btn")
            merge_btn = gr.Button("Merge with next", size="sm", elem_id="para_merge_btn")
            discard_btn = gr.Button("Discard changes", size="sm", elem_id="para_discard_btn")
            delete_btn = gr.Button("Delete", variant="stop", size="sm", elem_id="para_delete_btn")
        new_box = gr.Textbox(label="Your own paragraph", lines=3, max_lines=24, elem_id="new_paragraph_box",
                             placeholder="Write a paragraph of your own; the next step continues from it.",
                             max_length=MAX_PARAGRAPH_CHARS)
        new_words_md = gr.Markdown("", elem_id="new_words_md")
        with gr.Row():
            add_end_btn = gr.Button("Add at end", variant="primary", size="sm", elem_id="add_end_btn")
            insert_before_btn = gr.Button("Insert before the chosen one", size="sm", elem_id="insert_before_btn")
            insert_after_btn = gr.Button("Insert after the chosen one", size="sm", elem_id="insert_after_btn")
        edit_status_md = gr.Markdown("", elem_id="edit_status")
    return EditorPanel(para_number=para_number, para_box=para_box, para_read=para_read, para_words_md=para_words_md,
                       save_btn=save_btn, delete_btn=delete_btn, up_btn=up_btn, down_btn=down_btn,
                       split_btn=split_btn, merge_btn=merge_btn, discard_btn=discard_btn, new_box=new_box,
                       new_words_md=new_words_md,
                       insert_before_btn=insert_before_btn, insert_after_btn=insert_after_btn,
                       add_end_btn=add_end_btn, edit_status_md=edit_status_md)


def reselect_event(panel: EditorPanel, novel_state: gr.State) -> dict:
    """`reselect` as an event's fn, inputs and outputs (the app chains it after every change of the novel)."""
    return {"inputs": [novel_state, panel.para_number, panel.para_box, panel.para_read],
            **bind(reselect, components(panel)), "queue": False}


def wire(panel: EditorPanel, novel_state: gr.State, on_novel_changed) -> None:
    roles = components(panel)
    # Queued: a warning (unsaved typing kept) reaches the page only from a queued event.
    panel.para_number.change(inputs=[novel_state, panel.para_number, panel.para_box, panel.para_read],
                             **bind(select_paragraph, roles), show_progress="hidden")
    panel.discard_btn.click(inputs=[novel_state, panel.para_read], **bind(discard_changes, roles), queue=False)
    panel.para_number.change(None, [panel.para_number], None, js=FOCUS_PARAGRAPH, queue=False)
    panel.para_box.change(words_line, [panel.para_box], [panel.para_words_md], **AS_YOU_TYPE)
    panel.new_box.change(words_line, [panel.new_box], [panel.new_words_md], **AS_YOU_TYPE)
    chosen = [novel_state, panel.para_read, panel.para_box]
    edits = [
        (panel.save_btn, save_paragraph, [novel_state, panel.para_box, panel.para_read]),
        (panel.delete_btn, delete_paragraph, chosen),
        (panel.up_btn, move_up, chosen),
        (panel.down_btn, move_down, chosen),
        (panel.split_btn, split_paragraph, [novel_state, panel.para_box, panel.para_read]),
        (panel.merge_btn, merge_paragraph, [novel_state, panel.para_box, panel.para_read]),
        (panel.insert_before_btn, insert_before, [novel_state, panel.new_box, panel.para_read, panel.para_box]),
        (panel.insert_after_btn, insert_after, [novel_state, panel.new_box, panel.para_read, panel.para_box]),
        (panel.add_end_btn, add_at_end, [novel_state, panel.new_box, panel.para_read, panel.para_box]),
    ]
    for button, fn, inputs in edits:
        on_novel_changed(button.click(inputs=inputs, **bind(fn, roles), concurrency_id="manuscript-edit"))
