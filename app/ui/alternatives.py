"""The Write tab's Versions panel: a paragraph's versions (the one in the manuscript and those kept beside it),
browsed, swapped in and dropped; "Another version" of the last step; a rewrite on request; and the pending
versions of steps the store refused, applied or dropped.

Included in the Write tab by app/ui/__init__.py (`build()` inside the tab, `wire()` with the others). Every change
is one revision (Undo in the Write tab undoes it) and goes through the engine (app/engine/versions.py), which
re-embeds the paragraph and drops stale state snapshots. A pick is version-checked: a page that read the paragraph
before another tab changed it gets the conflict message and changes nothing.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

import gradio as gr

from app.engine import Cancelled
from app.engine.events import StepProgress
from app.engine.versions import REWRITE_PRESETS
from app.ui import services
from app.ui.common import GENERATION, InputError, bind, clean_text, components, escape, handler, require_novel, returns
from memory import alternatives, store

IN_MANUSCRIPT = "manuscript"
SNIPPET_CHARS = 90
KIND_LABELS = {"candidate": "another version of the step", "retry": "a retry", "version": "another version",
               "rewrite": "rewrite", "swapped": "was in the manuscript"}


# ---------------------------------------------------------------- reading the store


def _snippet(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= SNIPPET_CHARS else flat[:SNIPPET_CHARS - 1] + "…"


def _label(row) -> str:
    how = KIND_LABELS.get(row.kind, row.kind)
    if row.kind == "rewrite" and row.instruction:
        how += f": {row.instruction}"
    return f"Kept ({how}): {_snippet(row.text)}"


def _value(alternative_id: int) -> str:
    return f"alt-{alternative_id}"


def _alternative_id(choice: str | None) -> int | None:
    if not choice or not str(choice).startswith("alt-"):
        return None
    return int(str(choice)[4:])


def _panel(novel_id: int, position: int | None) -> dict:
    """The versions of paragraph `position` (default: the last) and the pending versions, as plain values."""
    with services.current().session() as session:
        count = store.paragraph_count(session, novel_id)
        pending = [(f"For position {row.position}: {_snippet(row.text)}", _value(row.id))
                   for row in alternatives.pending(session, novel_id)]
        with_versions = sorted(p.position for p in store.paragraphs(session, novel_id)
                               if p.id in alternatives.counts(session, novel_id))
        if count == 0:
            return {"position": None, "read": None, "choices": [], "text": "", "pending": pending,
                    "with_versions": with_versions}
        position = count if position is None else min(max(int(position), 1), count)
        paragraph = store.paragraph_at(session, novel_id, position)
        choices = [(f"In the manuscript ({paragraph.origin}): {_snippet(paragraph.text)}", IN_MANUSCRIPT)]
        choices += [(_label(row), _value(row.id)) for row in alternatives.of_paragraph(session, paragraph.id)]
        return {"position": position, "choices": choices, "text": paragraph.text, "pending": pending,
                "read": {"paragraph_id": paragraph.id, "version": paragraph.version, "position": position},
                "with_versions": with_versions}


def _summary(panel: dict) -> str:
    if panel["position"] is None:
        return "No paragraphs yet."
    others = len(panel["choices"]) - 1
    line = (f"Paragraph {panel['position']}: {others} other version{'' if others == 1 else 's'} kept."
            if others else f"Paragraph {panel['position']} has no other versions yet.")
    if panel["with_versions"]:
        line += " Paragraphs with other versions: " + ", ".join(map(str, panel["with_versions"])) + "."
    return line


def _alternative_of(novel_id: int, choice: str | None, *, pending: bool):
    """The kept version `choice` names, if it is one of this novel's (a stale page may name a dropped one)."""
    alternative_id = _alternative_id(choice)
    if alternative_id is None:
        raise InputError("Choose a kept version first." if not pending else "Choose a pending version first.")
    with services.current().session() as session:
        row = alternatives.get(session, alternative_id)
        if row.novel_id != novel_id or (row.paragraph_id is None) != pending:
            raise InputError("That version is not in this list any more: the page is out of date, reopen the "
                             "Write tab.")
        return row


# ---------------------------------------------------------------- handlers


@returns("versions_position", "versions_radio", "version_text_md", "versions_read", "pending_radio",
         "versions_summary_md", "versions_at", "pending_buttons")
def _show(novel_id, position) -> dict:
    if novel_id in (None, ""):
        return {"versions_position": None, "versions_radio": gr.update(choices=[], value=None),
                "version_text_md": "", "versions_read": None,
                "pending_radio": gr.update(choices=[], value=None, visible=False),
                "versions_summary_md": "", "versions_at": None, "pending_buttons": gr.update(visible=False)}
    panel = _panel(int(novel_id), position)
    return {"pending_buttons": gr.update(visible=bool(panel["pending"])),
            "versions_position": panel["position"],
            "versions_radio": gr.update(choices=panel["choices"], value=IN_MANUSCRIPT if panel["choices"] else None),
            "version_text_md": escape(panel["text"]), "versions_read": panel["read"],
            "pending_radio": gr.update(choices=panel["pending"], value=None, visible=bool(panel["pending"]),
                                       label=f"Unsaved steps kept ({len(panel['pending'])}): apply or drop"),
            "versions_summary_md": _summary(panel), "versions_at": panel["position"]}


@handler
@returns(*_show.roles)
def refresh(novel_id):
    """The last paragraph's versions and the pending ones (after a step, an undo, another novel opened)."""
    return _show(novel_id, None)


@handler
@returns(*_show.roles)
def show(novel_id, position):
    """The versions of paragraph `position` (kept where it is after a pick or a rewrite redrew the page)."""
    require_novel(novel_id)
    if position in (None, ""):
        return _show(novel_id, None)
    try:
        position = int(position)
    except (TypeError, ValueError):
        raise InputError("The paragraph number must be a whole number.") from None
    return _show(novel_id, position)


@handler
def select_version(novel_id, read: dict | None, choice: str | None) -> str:
    """The full text of the version chosen in the list."""
    novel_id = require_novel(novel_id)
    if choice == IN_MANUSCRIPT or choice is None:
        if not read:
            return ""
        with services.current().session() as session:
            return escape(store.get_paragraph(session, read["paragraph_id"]).text)
    return escape(_alternative_of(novel_id, choice, pending=False).text)


@handler
@returns("versions_status_md", "versions_at")
def use_version(novel_id, read: dict | None, choice: str | None):
    """Swap the chosen version into the manuscript (undoable); the text it replaces is kept beside it."""
    novel_id = require_novel(novel_id)
    if choice == IN_MANUSCRIPT:
        raise InputError("That version is the one in the manuscript already.")
    row = _alternative_of(novel_id, choice, pending=False)
    if not read or row.paragraph_id != read["paragraph_id"]:
        raise InputError("That version belongs to another paragraph: the page is out of date, show the paragraph "
                         "again.")
    outcome = services.current().engine().pick_version(row.id, int(read["version"]))
    line = f"Paragraph {outcome.position} now reads the chosen version; the one it replaced is kept beside it."
    line += (" The memory and plans follow it." if outcome.memory_followed else
             " The memory and plans were left as they are.")
    return {"versions_status_md": line, "versions_at": outcome.position}


@handler
@returns("versions_status_md", "versions_at")
def drop_version(novel_id, read: dict | None, choice: str | None):
    """Drop the chosen kept version (undoable)."""
    novel_id = require_novel(novel_id)
    if choice == IN_MANUSCRIPT:
        raise InputError("The version in the manuscript cannot be dropped here: pick another one first, or delete "
                         "the paragraph.")
    row = _alternative_of(novel_id, choice, pending=False)
    services.current().engine().drop_version(row.id)
    return {"versions_status_md": "Dropped that version (Undo brings it back).",
            "versions_at": (read or {}).get("position")}


@handler
@returns("versions_status_md", "versions_at")
def apply_pending(novel_id, choice: str | None):
    """Put the chosen pending version in the manuscript at its position (undoable)."""
    novel_id = require_novel(novel_id)
    row = _alternative_of(novel_id, choice, pending=True)
    outcome = services.current().engine().apply_pending(row.id)
    return {"versions_status_md": f"Applied as paragraph {outcome.position}. The memory was not updated from it.",
            "versions_at": outcome.position}


@handler
@returns("versions_status_md", "versions_at")
def drop_pending(novel_id, choice: str | None):
    """Drop the chosen pending version (undoable)."""
    novel_id = require_novel(novel_id)
    row = _alternative_of(novel_id, choice, pending=True)
    services.current().engine().drop_version(row.id)
    return {"versions_status_md": "Dropped the pending version (Undo brings it back).", "versions_at": None}


@returns("versions_draft", "versions_status_md")
def _run(novel_id: int, make_events, what: str):
    """Stream one engine generator into the panel's draft box; Stop (the Write tab's) cancels it, saving nothing."""
    svc = services.current()
    key = f"novel-{novel_id}"
    cancel = svc.cancel_event(key)
    progress = StepProgress(status=f"{what.capitalize()}…")
    try:
        yield {"versions_draft": "", "versions_status_md": progress.status}
        for event in make_events(svc.engine(), cancel):
            progress.add(event)
            if event.kind == "notice":
                gr.Warning(html.escape(event.text))
            yield {"versions_draft": progress.draft, "versions_status_md": progress.status}
    except Cancelled:
        yield {"versions_draft": progress.draft,
               "versions_status_md": "Stopped. Nothing of the unfinished version was kept."}
    finally:
        svc.finished(key, cancel)


@handler
@returns("versions_draft", "versions_status_md")
def another_version(novel_id):
    """One more version of the last step's paragraph, kept beside it (the manuscript does not change)."""
    novel_id = require_novel(novel_id)
    yield from _run(novel_id, lambda engine, cancel: engine.another_version(novel_id, cancel=cancel),
                    "writing another version of the last paragraph")


@handler
@returns("versions_draft", "versions_status_md")
def rewrite(novel_id, read: dict | None, instruction: str | None):
    """Rewrite the paragraph shown following the instruction, streamed; swapped in, the original kept beside it."""
    novel_id = require_novel(novel_id)
    instruction = clean_text(instruction, "The rewrite instruction", required=True, max_chars=500)
    if not read:
        raise InputError("There is no paragraph to rewrite yet.")
    paragraph_id, position = int(read["paragraph_id"]), read["position"]
    yield from _run(novel_id, lambda engine, cancel: engine.rewrite(novel_id, paragraph_id, instruction,
                                                                     cancel=cancel),
                    f"rewriting paragraph {position} ({instruction})")


# ---------------------------------------------------------------- layout


@dataclass
class VersionsTab:
    versions_position: gr.Number
    versions_summary_md: gr.Markdown
    versions_radio: gr.Radio
    version_text_md: gr.Markdown
    use_version_btn: gr.Button
    drop_version_btn: gr.Button
    another_version_btn: gr.Button
    rewrite_instruction: gr.Dropdown
    rewrite_btn: gr.Button
    versions_draft: gr.Textbox
    versions_status_md: gr.Markdown
    pending_radio: gr.Radio
    pending_buttons: gr.Row  # shown only when there are pending versions
    apply_pending_btn: gr.Button
    drop_pending_btn: gr.Button
    versions_read: gr.State  # {"paragraph_id", "version", "position"} of the paragraph shown (the pick's check)
    versions_at: gr.State  # the paragraph to show again after the page is redrawn


def build() -> VersionsTab:
    with gr.Accordion("Versions of a paragraph", open=True, elem_id="versions_panel"):
        with gr.Row():
            versions_position = gr.Number(None, precision=0, minimum=1, label="Paragraph", scale=1,
                                          elem_id="versions_position")
            versions_summary_md = gr.Markdown("", elem_id="versions_summary")
        versions_radio = gr.Radio([], label="Its versions", elem_id="versions_radio",
                                  info="choose one to read it; Use this version swaps it into the manuscript")
        version_text_md = gr.Markdown("", elem_id="version_text")
        with gr.Row():
            use_version_btn = gr.Button("Use this version", variant="primary", elem_id="use_version_btn")
            drop_version_btn = gr.Button("Drop this version", elem_id="drop_version_btn")
            another_version_btn = gr.Button("Another version", elem_id="another_version_btn")
        with gr.Row():
            rewrite_instruction = gr.Dropdown(list(REWRITE_PRESETS), value=None, allow_custom_value=True,
                                              label="Rewrite this paragraph", scale=3, elem_id="rewrite_instruction",
                                              info="choose or type an instruction")
            rewrite_btn = gr.Button("Rewrite", elem_id="rewrite_btn", scale=1)
        versions_draft = gr.Textbox(label="New version (streaming)", lines=4, max_lines=12, interactive=False,
                                    elem_id="versions_draft", autoscroll=True)
        versions_status_md = gr.Markdown("", elem_id="versions_status")
        pending_radio = gr.Radio([], label="Unsaved steps kept", visible=False, elem_id="pending_radio")
        with gr.Row(visible=False) as pending_buttons:
            apply_pending_btn = gr.Button("Apply pending version", elem_id="apply_pending_btn")
            drop_pending_btn = gr.Button("Drop pending version", elem_id="drop_pending_btn")
    return VersionsTab(versions_position, versions_summary_md, versions_radio, version_text_md, use_version_btn,
                       drop_version_btn, another_version_btn, rewrite_instruction, rewrite_btn, versions_draft,
                       versions_status_md, pending_radio, pending_buttons, apply_pending_btn, drop_pending_btn, gr.State(None),
                       gr.State(None))


def wire(tab: VersionsTab, novel_state: gr.State, on_novel_changed) -> None:
    roles = components(tab)
    shown = bind(show, roles)

    def then_show_again(dependency) -> None:
        """Redraw every tab, then show the same paragraph's versions again (the redraw shows the last one)."""
        on_novel_changed(dependency).then(shown["fn"], [novel_state, tab.versions_at], shown["outputs"])

    tab.versions_position.submit(inputs=[novel_state, tab.versions_position], **shown)
    tab.versions_radio.input(select_version, [novel_state, tab.versions_read, tab.versions_radio],
                             [tab.version_text_md])
    then_show_again(tab.use_version_btn.click(inputs=[novel_state, tab.versions_read, tab.versions_radio],
                                              **bind(use_version, roles)))
    then_show_again(tab.drop_version_btn.click(inputs=[novel_state, tab.versions_read, tab.versions_radio],
                                               **bind(drop_version, roles)))
    then_show_again(tab.apply_pending_btn.click(inputs=[novel_state, tab.pending_radio],
                                                **bind(apply_pending, roles)))
    then_show_again(tab.drop_pending_btn.click(inputs=[novel_state, tab.pending_radio], **bind(drop_pending, roles)))
    on_novel_changed(tab.another_version_btn.click(inputs=[novel_state], **bind(another_version, roles),
                                                   **GENERATION))
    then_show_again(tab.rewrite_btn.click(inputs=[novel_state, tab.versions_read, tab.rewrite_instruction],
                                          **bind(rewrite, roles), **GENERATION))
