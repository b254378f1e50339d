"""The Write tab: the numbered manuscript and its editor (app/ui/manuscript.py), the next paragraph streaming in, the
three plans, and the step buttons.

Next step (Ctrl+Enter in the instruction box), Retry, Undo, Redo, Auto-write N, Stop and Update memory now. Streaming handlers are generators that yield the growing
draft; the engine commits a step only when it is complete, so Stop (or closing the page) saves nothing half-written.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import gradio as gr

from app.config import ConfigError, check_model_allowed, is_loopback, model_host
from app.offline import DEFAULT_LM_NAME
from app.ui import manuscript, services
from app.engine import Cancelled
from app.engine.events import StepProgress
from app.ui.common import (
    GENERATION,
    InputError,
    bind,
    clean_text,
    components,
    escape,
    handler,
    require_novel,
    returns,
    word_count,
)
from app.ui.manuscript import EditorPanel, manuscript_html
from app.ui.settings import load_settings

CUSTOM_PLAN = "(my own instruction)"


# ---------------------------------------------------------------- reading the store


def _novel_view(novel_id: int) -> dict:
    """What the tab shows, read in one short transaction."""
    from memory import alternatives, revisions, store

    with services.current().session() as session:
        novel = store.get_novel(session, novel_id)
        rows = store.paragraphs(session, novel_id)
        paragraphs = [(p.position, p.text) for p in rows]
        written = {p.position for p in rows if p.origin == "written"}
        kept_by_id = alternatives.counts(session, novel_id)
        kept = {p.position: kept_by_id[p.id] for p in rows if p.id in kept_by_id}
        plans = pending_plans(session, novel_id)
        chapters = store.chapters(session, novel_id)
        open_chapter = chapters[-1] if chapters else None
        shown = ([(p.position, p.text) for p in rows if p.chapter_id == open_chapter.id]
                 if open_chapter is not None else paragraphs)
        return {"title": novel.title, "paragraphs": paragraphs, "written": written, "kept": kept, "plans": plans,
                "shown": shown, "chapter_title": open_chapter.title if open_chapter is not None else None,
                "chapters": len(chapters),
                "can_undo": revisions.can_undo(session, novel_id),
                "can_redo": revisions.can_redo(session, novel_id)}


def shown_title(view: dict) -> str:
    """The manuscript's heading: the novel, and with several chapters the open one (the Write tab shows the chapter
    steps write into, one chapter at a time; the Chapters panel shows the others)."""
    if view["chapters"] <= 1:
        return view["title"]
    return f"{view['title']} · {view['chapter_title']} (chapter {view['chapters']} of {view['chapters']})"


def pending_plans(session, novel_id: int) -> list[str]:
    """The plans proposed for the next step (a plan set already used by a paragraph is history, not a choice)."""
    from memory import store

    plan_set = store.current_plans(session, novel_id)
    if plan_set is None or plan_set.paragraph_id is not None:
        return []
    return list(plan_set.plans)


def receiver_line(model: str) -> str:
    """Which server receives the novel's text at each step: the local model's name, or the server's host."""
    try:
        host = model_host(model)
        check_model_allowed(model, services.current().config)
    except ConfigError as exc:
        return f"Text is sent nowhere: **steps are refused**. {escape(str(exc))}"
    if host is None:
        name = DEFAULT_LM_NAME if model.strip() in ("", "default") else Path(model.strip()).name
        return f"Text stays on this machine: model **{escape(name)}**."
    port = urlsplit(model.strip()).port
    where = "a server on this machine" if is_loopback(host) else "a server on another machine"
    return f"Text is sent to **{escape(host)}{f':{port}' if port else ''}** ({where})."


def counts_line(paragraphs: list[tuple[int, str]]) -> str:
    words = sum(word_count(text) for _, text in paragraphs)
    line = f"{len(paragraphs)} paragraph{'' if len(paragraphs) == 1 else 's'} · {words:,} words"
    generator = services.current().loaded_generator()
    if generator is not None:
        tokens = sum(generator.count_tokens(text) for _, text in paragraphs)
        line += f" · {tokens:,} tokens ({generator.name})"
    return line


# ---------------------------------------------------------------- handlers


@handler
@returns("manuscript_html", "plan_radio", "plans_shown", "counts_md", "draft_box", "undo_btn", "redo_btn",
         "receiver_md")
def refresh(novel_id):
    """Manuscript, plans, counts and button states for the open novel. The instruction box is not redrawn here:
    `plans_shown` changes only when the novel or its plans did, and only then is the box refilled with the first
    plan (`first_plan`), so an edit elsewhere in the tab keeps what the writer was typing there."""
    if novel_id in (None, ""):
        return {"manuscript_html": manuscript_html("No novel open", []),
                "plan_radio": gr.update(choices=[], value=None), "plans_shown": _plans_key(None, []),
                "counts_md": "Create or open a novel in the Library tab.", "draft_box": "",
                "undo_btn": gr.update(interactive=False), "redo_btn": gr.update(interactive=False),
                "receiver_md": ""}
    view = _novel_view(int(novel_id))
    plans = view["plans"]
    settings, _ = load_settings(int(novel_id))
    return {
        "manuscript_html": manuscript_html(shown_title(view), view["shown"], view["written"], view["kept"]),
        "plan_radio": gr.update(choices=[(plan, plan) for plan in plans], value=plans[0] if plans else None),
        "plans_shown": _plans_key(int(novel_id), plans),
        "counts_md": counts_line(view["paragraphs"]),
        "draft_box": "",
        "undo_btn": gr.update(interactive=view["can_undo"]),
        "redo_btn": gr.update(interactive=view["can_redo"]),
        "receiver_md": receiver_line(settings.model),
    }


def _plans_key(novel_id: int | None, plans: list[str]) -> str:
    return json.dumps({"novel": novel_id, "plans": list(plans)})


def first_plan(plans_shown: str | None) -> str:
    """What the instruction box holds once new plans are shown: the first of them (empty when there is none)."""
    plans = json.loads(plans_shown)["plans"] if plans_shown else []
    return plans[0] if plans else ""


def choose_plan(plan: str | None) -> str:
    """Picking a plan puts its text in the instruction box, where the writer may rewrite it."""
    return plan or ""


def _frame(progress: StepProgress) -> dict:
    return {"draft_box": progress.draft, "status_md": progress.status}


@returns("draft_box", "status_md")
def _run(novel_id: int, make_events, what: str, *, said_when_done: bool = False):
    """Drive one engine generator, yielding the draft and the status line as the paragraph grows.

    `make_events(engine, cancel)` starts the engine's generator; the model loads (once per process) after the
    first status line is on screen; the last line says "Saved." (with `said_when_done`, what the engine's last
    event said: "the memory is up to date" saves nothing). Stop sets the cancel flag; the engine then stops
    between tokens and commits nothing of the unfinished step.
    """
    svc = services.current()
    key = f"novel-{novel_id}"
    cancel = svc.cancel_event(key)
    progress = StepProgress(status=f"{what.capitalize()}…")
    try:
        loading = svc.loaded_generator() is None
        yield {"draft_box": "",
               "status_md": "Loading the model (the first time takes a while)…" if loading else progress.status}
        engine = svc.engine()
        for event in make_events(engine, cancel):
            progress.add(event)
            if event.kind == "notice":
                gr.Warning(html.escape(event.text))
            yield _frame(progress)
        done = progress.status if said_when_done else "Saved."
        progress.status = done + "".join(f" Note: {notice}" for notice in progress.notices)
        yield _frame(progress)
    except Cancelled:
        progress.status = "Stopped. Nothing of the unfinished paragraph was saved."
        yield _frame(progress)
    finally:
        svc.finished(key, cancel)


@handler
@returns("draft_box", "status_md")
def start_story(novel_id):
    """Write the opening of a new novel (title, first paragraph, memory, plans), streaming the paragraph."""
    novel_id = require_novel(novel_id)
    yield from _run(novel_id, lambda engine, cancel: engine.start(novel_id, cancel=cancel), "writing the opening")


@handler
@returns("draft_box", "status_md")
def next_step(novel_id, instruction: str):
    """Write the next paragraph following the instruction (a chosen plan, maybe rewritten), streaming it. One
    engine call: it reads the novel, resolves its model and, for a novel whose opening was stopped or undone,
    writes the opening from the premise instead (the instruction may then be empty)."""
    novel_id = require_novel(novel_id)
    plan = clean_text(instruction, "The instruction")
    yield from _run(novel_id, lambda engine, cancel: engine.step(novel_id, plan, cancel=cancel),
                    "writing the next paragraph")


@handler
@returns("draft_box", "status_md")
def retry(novel_id):
    """Regenerate the last step from the same inputs; the new version replaces the paragraph and the old one is kept
    beside it (Versions; Undo swaps back)."""
    novel_id = require_novel(novel_id)
    yield from _run(novel_id, lambda engine, cancel: engine.retry(novel_id, cancel=cancel),
                    "rewriting the last paragraph")


@handler
@returns("draft_box", "status_md")
def auto_write(novel_id, steps, progress=gr.Progress()):
    """Write N steps, the model choosing each plan; each finished step is saved, Stop ends after the current token."""
    novel_id = require_novel(novel_id)
    try:
        steps = int(steps)
    except (TypeError, ValueError):
        raise InputError("Auto-write needs a number of steps.") from None
    if not 1 <= steps <= 100:
        raise InputError("Auto-write takes between 1 and 100 steps.")

    def events(engine, cancel):
        for event in engine.auto_write(novel_id, steps, cancel=cancel):
            if event.kind == "progress":
                progress((event.done, steps), desc=f"step {event.done + 1} of {steps}")
            yield event

    yield from _run(novel_id, events, f"auto-writing {steps} steps")


@handler
@returns("draft_box", "status_md")
def update_memory(novel_id):
    """Fold every paragraph written or changed since the memory's last update into it, streaming the new memory
    into the draft box; one undoable change (Undo restores the memory before it)."""
    novel_id = require_novel(novel_id)
    yield from _run(novel_id, lambda engine, cancel: engine.update_memory(novel_id, cancel=cancel),
                    "updating the memory", said_when_done=True)


@handler
def stop(novel_id) -> str:
    novel_id = require_novel(novel_id)
    if services.current().cancel(f"novel-{novel_id}"):
        return "Stopping after the current token…"
    return "Nothing is running."


@handler
def undo(novel_id) -> str:
    novel_id = require_novel(novel_id)
    if not services.current().engine().undo(novel_id):
        return "Nothing to undo."
    return "Undone: the paragraph, memory and plans are as they were before the last change."


@handler
def redo(novel_id) -> str:
    novel_id = require_novel(novel_id)
    if not services.current().engine().redo(novel_id):
        return "Nothing to redo."
    return "Redone."


# ---------------------------------------------------------------- layout


@dataclass
class WriteTab:
    manuscript_html: gr.HTML
    counts_md: gr.Markdown
    receiver_md: gr.Markdown  # which server receives the text
    draft_box: gr.Textbox
    status_md: gr.Markdown
    plan_radio: gr.Radio
    # The novel and plans the instruction box was last filled from (JSON). A hidden component, not a gr.State: its
    # change event fires in the browser for every redraw that changes it, queued or not.
    plans_shown: gr.Textbox
    instruction_box: gr.Textbox
    next_step_btn: gr.Button
    retry_btn: gr.Button
    undo_btn: gr.Button
    redo_btn: gr.Button
    auto_steps: gr.Number
    auto_write_btn: gr.Button
    stop_btn: gr.Button
    update_memory_btn: gr.Button
    editor: EditorPanel  # the manuscript editor (app/ui/manuscript.py), its own roles


def build() -> WriteTab:
    with gr.Row():
        with gr.Column(scale=3):
            counts_md = gr.Markdown("", elem_id="counts_md")
            receiver_md = gr.Markdown("", elem_id="receiver_md")
            manuscript_box = gr.HTML(manuscript_html("No novel open", []), elem_id="manuscript")
            draft_box = gr.Textbox(label="Next paragraph (streaming)", lines=6, max_lines=20, interactive=False,
                                   elem_id="draft_box", autoscroll=True)
            status_md = gr.Markdown("", elem_id="write_status")
            editor = manuscript.build()
        with gr.Column(scale=2):
            plan_radio = gr.Radio([], label="Plans for the next paragraph", elem_id="plan_radio",
                                  info="pick one; it is copied below, where you may rewrite it")
            plans_shown = gr.Textbox(_plans_key(None, []), visible="hidden", elem_id="plans_shown")
            instruction_box = gr.Textbox(label="Instruction for the next paragraph", lines=4, elem_id="instruction_box",
                                         info="Ctrl+Enter runs Next step")
            with gr.Row():
                next_step_btn = gr.Button("Next step", variant="primary", elem_id="next_step_btn")
                stop_btn = gr.Button("Stop", variant="stop", elem_id="stop_btn")
            with gr.Row():
                retry_btn = gr.Button("Retry", elem_id="retry_btn")
                undo_btn = gr.Button("Undo", elem_id="undo_btn", interactive=False)
                redo_btn = gr.Button("Redo", elem_id="redo_btn", interactive=False)
            with gr.Row():
                auto_steps = gr.Number(value=3, precision=0, minimum=1, maximum=100, label="Auto-write steps",
                                       elem_id="auto_steps")
                auto_write_btn = gr.Button("Auto-write N", elem_id="auto_write_btn")
            update_memory_btn = gr.Button("Update memory now", elem_id="update_memory_btn")
    return WriteTab(manuscript_html=manuscript_box, counts_md=counts_md, receiver_md=receiver_md, draft_box=draft_box,
                    status_md=status_md, plan_radio=plan_radio, plans_shown=plans_shown,
                    instruction_box=instruction_box,
                    next_step_btn=next_step_btn, retry_btn=retry_btn, undo_btn=undo_btn, redo_btn=redo_btn,
                    auto_steps=auto_steps, auto_write_btn=auto_write_btn, stop_btn=stop_btn,
                    update_memory_btn=update_memory_btn, editor=editor)


def wire(tab: WriteTab, novel_state: gr.State, on_novel_changed) -> None:
    roles = components(tab)
    tab.plan_radio.input(choose_plan, [tab.plan_radio], [tab.instruction_box], queue=False)
    tab.plans_shown.change(first_plan, [tab.plans_shown], [tab.instruction_box], queue=False)
    running = [
        tab.next_step_btn.click(inputs=[novel_state, tab.instruction_box], **bind(next_step, roles), **GENERATION),
        tab.retry_btn.click(inputs=[novel_state], **bind(retry, roles), **GENERATION),
        tab.auto_write_btn.click(inputs=[novel_state, tab.auto_steps], **bind(auto_write, roles),
                                 **{**GENERATION, "show_progress": "minimal"}, show_progress_on=[tab.status_md]),
        tab.update_memory_btn.click(inputs=[novel_state], **bind(update_memory, roles), **GENERATION),
    ]
    for dependency in running:
        on_novel_changed(dependency)
    on_novel_changed(tab.undo_btn.click(undo, [novel_state], [tab.status_md]))
    on_novel_changed(tab.redo_btn.click(redo, [novel_state], [tab.status_md]))
    tab.stop_btn.click(stop, [novel_state], [tab.status_md], queue=False)
    manuscript.wire(tab.editor, novel_state, on_novel_changed)
