"""The Story chart tab: words, repetition and continuity per paragraph, as bar charts, so the writer sees where the
story broke.

The repetition score of a paragraph is the share of its word trigrams that already occurred earlier in the
manuscript (0 = all new, 1 = every three-word phrase seen before): loops show up as a bar near the top. Continuity
(app/engine/continuity.py, the measures bench/continuity.py reports): carry-over is the number of characters and
places a paragraph names from the paragraph before (0 after the first: the thread was dropped there), and voice is 1
when the paragraph is in the person and tense the novel's mode asks for, 0 when not.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import gradio as gr
import pandas as pd

from app.engine.continuity import MODE_VOICES, Voice, entities, voice_problem
from app.engine.settings import NovelSettings
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


def carried_names(paragraphs: list[str]) -> list[int]:
    """For each paragraph, how many characters and places it names from the paragraph before (0 for the first)."""
    if not paragraphs:
        return []
    return [0] + [len(entities(text) & entities(before)) for before, text in zip(paragraphs, paragraphs[1:])]


def continuity_frames(paragraphs: list[str], voice: Voice) -> tuple[pd.DataFrame, pd.DataFrame]:
    numbers = [str(n) for n in range(1, len(paragraphs) + 1)]
    carry = pd.DataFrame({"paragraph": numbers, "names carried over": carried_names(paragraphs)})
    in_voice = pd.DataFrame({"paragraph": numbers,
                             "in voice": [0 if voice_problem(text, voice) else 1 for text in paragraphs]})
    return carry, in_voice


def continuity_summary(paragraphs: list[str], voice: Voice) -> str:
    """The paragraphs where the thread or the voice broke, in words ("" when none did)."""
    dropped = [str(n) for n, count in enumerate(carried_names(paragraphs), 1) if n > 1 and count == 0]
    off = [f"{n} ({problem})" for n, problem in ((n, voice_problem(t, voice)) for n, t in enumerate(paragraphs, 1))
           if problem]
    parts = []
    if dropped:
        parts.append(f"paragraph(s) {', '.join(dropped)} name no one and nowhere of the paragraph before")
    if off:
        parts.append(f"not in {voice.describe()}: paragraph(s) {'; '.join(off)}")
    return " ".join(f"{part[0].upper()}{part[1:]}." for part in parts)


def novel_texts(novel_id: int) -> tuple[list[str], Voice]:
    """The paragraphs and the voice the novel's mode asks for."""
    from memory import store

    with services.current().session() as session:
        settings, _ = NovelSettings.repaired(store.get_novel(session, novel_id).settings)
        return [p.text for p in store.paragraphs(session, novel_id)], MODE_VOICES[settings.mode]


def paragraph_texts(novel_id: int) -> list[str]:
    return novel_texts(novel_id)[0]


@handler
@returns("words_plot", "repetition_plot", "carry_plot", "voice_plot", "chart_summary_md")
def refresh(novel_id):
    texts, voice = novel_texts(int(novel_id)) if novel_id not in (None, "") else ([], MODE_VOICES["write"])
    words, repetition = chart_frames(texts)
    carry, in_voice = continuity_frames(texts, voice)
    loops = sum(1 for score in repetition["repetition"] if score >= 0.5)
    summary = (f"{len(texts)} paragraphs, {int(words['words'].sum()) if texts else 0} words; "
               f"{loops} paragraph(s) repeat half or more of their phrases. " + continuity_summary(texts, voice)
               if texts else "No paragraphs yet.")
    order = list(words["paragraph"])
    return {"words_plot": gr.BarPlot(words, sort=order), "repetition_plot": gr.BarPlot(repetition, sort=order),
            "carry_plot": gr.BarPlot(carry, sort=order), "voice_plot": gr.BarPlot(in_voice, sort=order),
            "chart_summary_md": summary.strip()}


@dataclass
class StoryChartTab:
    words_plot: gr.BarPlot
    repetition_plot: gr.BarPlot
    carry_plot: gr.BarPlot
    voice_plot: gr.BarPlot
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
    empty_carry, empty_voice = continuity_frames([], MODE_VOICES["write"])
    carry_plot = gr.BarPlot(empty_carry, x="paragraph", y="names carried over", y_lim=[0, None],
                            title="Carry-over per paragraph (characters and places named from the paragraph before)",
                            x_title="paragraph", y_title="names", height=220, elem_id="carry_plot")
    voice_plot = gr.BarPlot(empty_voice, x="paragraph", y="in voice", y_lim=[0, 1],
                            title="Voice per paragraph (1 = in the person and tense the mode asks for)",
                            x_title="paragraph", y_title="in voice", height=180, elem_id="voice_plot")
    refresh_chart_btn = gr.Button("Refresh chart", elem_id="refresh_chart_btn")
    return StoryChartTab(words_plot=words_plot, repetition_plot=repetition_plot, carry_plot=carry_plot,
                         voice_plot=voice_plot, chart_summary_md=chart_summary_md,
                         refresh_chart_btn=refresh_chart_btn)


def wire(tab: StoryChartTab, tab_block: gr.Tab, novel_state: gr.State) -> None:
    """Drawn when the tab is opened and by its Refresh button (not after every edit: the figures cost the most of
    any tab's redraw)."""
    tab.refresh_chart_btn.click(inputs=[novel_state], **bind(refresh, components(tab)))
    tab_block.select(inputs=[novel_state], **bind(refresh, components(tab)))
