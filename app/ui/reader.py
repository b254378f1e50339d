"""The Reader tab: the story as interactive fiction, the three plans shown as choices (buttons); the reader's
choice becomes the next step's plan, and the new passage streams in below the story.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

import gradio as gr

from app.ui import services
from app.ui.common import GENERATION, bind, clean_text, components, handler, require_novel, returns

CHOICES = 3


def _view(novel_id: int) -> tuple[str, list[str]]:
    view = services.current().engine().reader_view(novel_id)
    body = "".join(f"<p>{html.escape(text)}</p>" for text in view.paragraphs) \
        or "<p><em>The story has not begun.</em></p>"
    return f"<div class='lh-reader'><h2>{html.escape(view.title)}</h2>{body}</div>", list(view.choices)


def _choice_updates(plans: list[str]) -> list:
    """One update per choice button, in button order (choice 1, 2, 3)."""
    updates = []
    for index in range(CHOICES):
        if index < len(plans):
            updates.append(gr.update(value=plans[index], visible=True))
        else:
            updates.append(gr.update(value="", visible=False))
    return updates


@handler
@returns("story_html", "choice_btns", "passage_box")
def refresh(novel_id):
    if novel_id in (None, ""):
        return {"story_html": "<p><em>Open a novel in the Library tab to read it here.</em></p>",
                "choice_btns": _choice_updates([]), "passage_box": ""}
    story, plans = _view(int(novel_id))
    return {"story_html": story, "choice_btns": _choice_updates(plans), "passage_box": ""}


@returns("passage_box", "status_md")
def _play(novel_id: int, make_events):
    """The Write tab's stream of a step, shown in the Reader's passage box."""
    from app.ui import write

    for frame in write._run(novel_id, make_events, "writing what happens"):
        yield {"passage_box": frame["draft_box"], "status_md": frame["status_md"]}


@handler
@returns("passage_box", "status_md")
def choose(novel_id, index: int):
    """The reader picked choice `index`: it becomes the next plan, written in the second person."""
    novel_id = require_novel(novel_id)
    yield from _play(novel_id, lambda engine, cancel: engine.choose(novel_id, int(index), cancel=cancel))


def _choice_handler(index: int):
    """The click handler of choice button `index` (a generator, so the passage streams)."""
    @returns("passage_box", "status_md")
    def choose_this(novel_id):
        yield from choose(novel_id, index)

    choose_this.__name__ = f"choose_{index}"
    return choose_this


@handler
@returns("passage_box", "status_md")
def own_choice(novel_id, text: str):
    """The reader wrote their own action: it is the next plan, written in the second person."""
    novel_id = require_novel(novel_id)
    action = clean_text(text, "What you do", required=True, max_chars=2000)
    yield from _play(novel_id, lambda engine, cancel: engine.step(novel_id, action, cancel=cancel,
                                                                  mode="interactive"))


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


def wire(tab: ReaderTab, novel_state: gr.State, on_novel_changed) -> None:
    roles = components(tab)
    for index, button in enumerate(tab.choice_btns):
        on_novel_changed(button.click(inputs=[novel_state], **bind(_choice_handler(index), roles), **GENERATION))
    on_novel_changed(tab.own_choice_btn.click(inputs=[novel_state, tab.own_choice_box], **bind(own_choice, roles),
                                              **GENERATION))
