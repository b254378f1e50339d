"""The Reader tab: the story as interactive fiction, the three plans shown as choices (buttons); the reader's
choice becomes the next step's plan, and the new passage streams in below the story.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

import gradio as gr

from app.ui import services
from app.ui.common import InputError, clean_text, handler, require_novel

CHOICES = 3


def _view(novel_id: int) -> tuple[str, list[str]]:
    from memory import store

    with services.current().session() as session:
        novel = store.get_novel(session, novel_id)
        passages = [p.text for p in store.paragraphs(session, novel_id)]
        plan_set = store.current_plans(session, novel_id)
        plans = list(plan_set.plans) if plan_set is not None else []
        title = novel.title
    body = "".join(f"<p>{html.escape(text)}</p>" for text in passages) or "<p><em>The story has not begun.</em></p>"
    return f"<div class='lh-reader'><h2>{html.escape(title)}</h2>{body}</div>", plans


def _choice_updates(plans: list[str]) -> list:
    updates = []
    for index in range(CHOICES):
        if index < len(plans):
            updates.append(gr.update(value=plans[index], visible=True))
        else:
            updates.append(gr.update(value="", visible=False))
    return updates


@handler
def refresh(novel_id):
    if novel_id in (None, ""):
        return ("<p><em>Open a novel in the Library tab to read it here.</em></p>", *_choice_updates([]), "")
    story, plans = _view(int(novel_id))
    return (story, *_choice_updates(plans), "")


@handler
def choose(novel_id, choice: str):
    """Follow the reader's choice: it is the next step's plan; the passage streams into the draft box."""
    from app.ui import write

    novel_id = require_novel(novel_id)
    choice = clean_text(choice, "Your choice", required=True)
    for draft, status in write.next_step(novel_id, choice):
        yield draft, status


@handler
def own_choice(novel_id, text: str):
    novel_id = require_novel(novel_id)
    if not (text or "").strip():
        raise InputError("Write what you do first, or pick one of the choices.")
    yield from choose(novel_id, text)


@dataclass
class ReaderTab:
    story_html: gr.HTML
    choice_btns: list
    own_choice_box: gr.Textbox
    own_choice_btn: gr.Button
    passage_box: gr.Textbox
    status_md: gr.Markdown


def build() -> ReaderTab:
    story_html = gr.HTML("", elem_id="reader_story")
    passage_box = gr.Textbox(label="What happens next", lines=4, interactive=False, elem_id="reader_passage")
    status_md = gr.Markdown("", elem_id="reader_status")
    choice_btns = [gr.Button("", visible=False, elem_id=f"choice_btn_{index}") for index in range(CHOICES)]
    with gr.Row():
        own_choice_box = gr.Textbox(label="Or do something else", scale=4, elem_id="own_choice_box")
        own_choice_btn = gr.Button("Go", scale=1, elem_id="own_choice_btn")
    return ReaderTab(story_html, choice_btns, own_choice_box, own_choice_btn, passage_box, status_md)


def refresh_outputs(tab: ReaderTab) -> list:
    return [tab.story_html, *tab.choice_btns, tab.passage_box]


def wire(tab: ReaderTab, novel_state: gr.State, on_novel_changed) -> None:
    outputs = [tab.passage_box, tab.status_md]
    for button in tab.choice_btns:
        # A button passes its own label (the choice's text) as the input value.
        on_novel_changed(button.click(choose, [novel_state, button], outputs, concurrency_id="generation",
                                      show_progress="hidden"))
    on_novel_changed(tab.own_choice_btn.click(own_choice, [novel_state, tab.own_choice_box], outputs,
                                              concurrency_id="generation", show_progress="hidden"))
