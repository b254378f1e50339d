"""The Story chart tab: words per paragraph and a repetition score per paragraph, as two bar charts.

The repetition score of a paragraph is the share of its word trigrams that already occurred earlier in the
manuscript (0 = all new, 1 = every three-word phrase seen before): loops show up as a bar near the top.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import gradio as gr
import pandas as pd

from app.ui import services
from app.ui.common import bind, components, handler, returns

_WORD = re.compile(r"[\w']+")


def _words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


def repetition_scores(paragraphs: list[str], n: int = 3) -> list[float]:
    """For each paragraph, the share of its word n-grams already seen in an earlier paragraph or earlier in itself."""
    seen: set[tuple[str, ...]] = set()
    scores = []
    for text in paragraphs:
        words = _words(text)
        grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
        repeated = 0
        for gram in grams:
            if gram in seen:
                repeated += 1
            seen.add(gram)
        scores.append(round(repeated / len(grams), 3) if grams else 0.0)
    return scores


def chart_frames(paragraphs: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    # Paragraph numbers as category labels (one bar each, in order) rather than a numeric axis with fractions.
    numbers = [str(n) for n in range(1, len(paragraphs) + 1)]
    words = pd.DataFrame({"paragraph": numbers, "words": [len(p.split()) for p in paragraphs]})
    repetition = pd.DataFrame({"paragraph": numbers, "repetition": repetition_scores(paragraphs)})
    return words, repetition


def paragraph_texts(novel_id: int) -> list[str]:
    from memory import store

    with services.current().session() as session:
        return [p.text for p in store.paragraphs(session, novel_id)]


@handler
@returns("words_plot", "repetition_plot", "chart_summary_md")
def refresh(novel_id):
    texts = paragraph_texts(int(novel_id)) if novel_id not in (None, "") else []
    words, repetition = chart_frames(texts)
    loops = sum(1 for score in repetition["repetition"] if score >= 0.5)
    summary = (f"{len(texts)} paragraphs, {int(words['words'].sum()) if texts else 0} words; "
               f"{loops} paragraph(s) repeat half or more of their phrases." if texts else "No paragraphs yet.")
    order = list(words["paragraph"])
    return {"words_plot": gr.BarPlot(words, sort=order), "repetition_plot": gr.BarPlot(repetition, sort=order),
            "chart_summary_md": summary}


@dataclass
class StoryChartTab:
    words_plot: gr.BarPlot
    repetition_plot: gr.BarPlot
    chart_summary_md: gr.Markdown
    refresh_chart_btn: gr.Button


def build() -> StoryChartTab:
    empty_words, empty_repetition = chart_frames([])
    chart_summary_md = gr.Markdown("No paragraphs yet.", elem_id="chart_summary")
    words_plot = gr.BarPlot(empty_words, x="paragraph", y="words", y_lim=[0, None], title="Words per paragraph",
                            x_title="paragraph", y_title="words", height=260, elem_id="words_plot")
    repetition_plot = gr.BarPlot(empty_repetition, x="paragraph", y="repetition", y_lim=[0, 1],
                                 title="Repetition per paragraph (share of 3-word phrases seen before)",
                                 x_title="paragraph", y_title="repetition", height=260, elem_id="repetition_plot")
    refresh_chart_btn = gr.Button("Refresh chart", elem_id="refresh_chart_btn")
    return StoryChartTab(words_plot, repetition_plot, chart_summary_md, refresh_chart_btn)


def wire(tab: StoryChartTab, novel_state: gr.State) -> None:
    tab.refresh_chart_btn.click(inputs=[novel_state], **bind(refresh, components(tab)))
