"""The upper memory tiers written by the model: a chapter's summary (prompts/chapter_summary.txt) when the writer
closes the chapter or asks for one, and the synopsis of the book so far (prompts/synopsis.txt), rebuilt from the
chapter summaries.

Reads in one short transaction, generates outside any transaction, then saves with the version it read, so a
summary the writer edited meanwhile (another tab) is never overwritten. A generation that fails (no usable answer
in the allowed tries, a model error, a summary that only copies the chapter) keeps the old text and says so in the
outcome's notice; nothing fails silently.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from memory import chapters, store

from app.engine.parsing import copies_text, parse_memory
from app.engine.prompts import PromptLibrary
from app.engine.reading import NovelView, StoreReader
from app.engine.text import sentences

SUMMARY_WORDS = 100
SYNOPSIS_WORDS = 160
# New tokens for an answer of SUMMARY_WORDS / SYNOPSIS_WORDS English words (about 1.4 tokens a word, plus room).
SUMMARY_TOKENS = 200
SYNOPSIS_TOKENS = 300
# The longest chapter text a summary prompt holds; a longer chapter keeps its first and last paragraphs whole and
# drops from the middle (what opens and closes a chapter says most about it).
MAX_CHAPTER_WORDS = 1200


@dataclass
class SummaryOutcome:
    """What one generation did: `saved` (a new version was written) and the text now current, or why not."""

    what: str  # "the summary of 'Chapter 1'" or "the synopsis"
    saved: bool
    text: str
    version: int
    notice: str = ""


def fit_chapter_text(paragraphs: list[str], max_words: int = MAX_CHAPTER_WORDS) -> str:
    """The chapter's paragraphs joined, with middle paragraphs left out (and marked) until it fits `max_words`."""
    kept = list(paragraphs)
    dropped = False
    while len(kept) > 2 and sum(len(p.split()) for p in kept) > max_words:
        kept.pop(len(kept) // 2)
        dropped = True
    if dropped:
        middle = len(kept) // 2
        kept.insert(middle, "[…]")
    text = "\n\n".join(kept)
    words = text.split()
    return " ".join(words[:max_words]) if len(words) > max_words else text


@dataclass
class Summarizer:
    """Chapter summaries and the synopsis over one store, one model (TextGenerator) and one prompt library."""

    session_factory: object
    generator: object
    prompts: PromptLibrary
    reader: StoreReader
    max_chapter_words: int = MAX_CHAPTER_WORDS

    def _generate(self, view: NovelView, rendered, max_new_tokens: int, cancel, attempt: int) -> str:
        prompt = self.generator.render_chat(rendered.messages) + rendered.answer_prefix
        params = view.config.sampling_params()
        if params.seed is not None:
            params.seed = params.seed + attempt
        # A summary wants the likeliest words, not variety.
        params.temperature = min(params.temperature, 0.5)
        pieces = self.generator.stream(prompt, sampling=params, max_new_tokens=max_new_tokens, cancel=cancel)
        return rendered.answer_prefix + "".join(pieces)

    def _attempts(self, view: NovelView) -> int:
        return max(1, int(view.setting("max_attempts")))

    def _write(self, view: NovelView, rendered, source: str, max_words: int, max_new_tokens: int,
               cancel) -> tuple[str | None, str]:
        """(summary, "") or (None, why not) after the allowed tries."""
        problem = ""
        for attempt in range(self._attempts(view)):
            try:
                raw = self._generate(view, rendered, max_new_tokens, cancel, attempt)
            except Exception as exc:  # a model failure must keep the old summary, and say so
                return None, f"the model failed: {exc}"
            parsed = parse_memory(raw, max_words)
            if not parsed.ok:
                problem = parsed.problem
                continue
            if _mostly_copied(parsed.value, source):
                problem = "the answer copied the text instead of summarizing it"
                continue
            return parsed.value, ""
        return None, f"{problem} in {self._attempts(view)} tries"

    def summarize_chapter(self, novel_id: int, chapter_id: int, *,
                          cancel: threading.Event | None = None) -> SummaryOutcome:
        """Write a new version of the chapter's summary from its paragraphs (the open chapter: its summary so
        far)."""
        view = self.reader.read(novel_id)
        with self.session_factory() as session:
            chapter = chapters.get_chapter(session, chapter_id)
            title = chapter.title
            texts = [p.text for p in chapters.chapter_paragraphs(session, chapter_id)]
            current = chapters.current_summary(session, chapter_id)
            old_text, old_version = (current.text, current.version) if current is not None else ("", 0)
        what = f"the summary of {title!r}"
        if not texts:
            return SummaryOutcome(what, False, old_text, old_version,
                                  f"{what.capitalize()} was not written: the chapter has no paragraphs yet.")
        source = fit_chapter_text(texts, self.max_chapter_words)
        rendered = self.prompts.render("chapter_summary", title=title, text=source, max_words=SUMMARY_WORDS)
        text, problem = self._write(view, rendered, "\n\n".join(texts), SUMMARY_WORDS, SUMMARY_TOKENS, cancel)
        if text is None:
            return SummaryOutcome(what, False, old_text, old_version, _kept(what, problem, old_version))
        try:
            with self.session_factory() as session, session.begin():
                saved = chapters.set_summary(session, chapter_id, text, expected_version=old_version,
                                             origin="generated")
                return SummaryOutcome(what, True, saved.text, saved.version)
        except store.ConflictError as exc:
            return SummaryOutcome(what, False, old_text, old_version, f"{exc} The new summary was not saved.")

    def rebuild_synopsis(self, novel_id: int, *, cancel: threading.Event | None = None) -> SummaryOutcome:
        """Write a new version of the synopsis from the current chapter summaries, in book order."""
        view = self.reader.read(novel_id)
        lines = [f"- {c.title}: {c.summary}" for c in view.chapters if c.summary.strip()]
        what = "the synopsis"
        if not lines:
            return SummaryOutcome(what, False, view.synopsis, view.synopsis_version,
                                  "The synopsis was not rebuilt: no chapter has a summary yet.")
        rendered = self.prompts.render("synopsis", chapters="\n".join(lines), max_words=SYNOPSIS_WORDS)
        text, problem = self._write(view, rendered, "", SYNOPSIS_WORDS, SYNOPSIS_TOKENS, cancel)
        if text is None:
            return SummaryOutcome(what, False, view.synopsis, view.synopsis_version,
                                  _kept(what, problem, view.synopsis_version))
        try:
            with self.session_factory() as session, session.begin():
                saved = chapters.set_synopsis(session, novel_id, text, expected_version=view.synopsis_version,
                                              origin="generated")
                return SummaryOutcome(what, True, saved.text, saved.version)
        except store.ConflictError as exc:
            return SummaryOutcome(what, False, view.synopsis, view.synopsis_version,
                                  f"{exc} The new synopsis was not saved.")

    def close_chapter(self, novel_id: int, chapter_id: int, *,
                      cancel: threading.Event | None = None) -> list[SummaryOutcome]:
        """Close the chapter (a new one opens after the last), then write its summary and rebuild the synopsis.
        The close is saved first, on its own: a failed summary does not undo it."""
        with self.session_factory() as session, session.begin():
            chapters.close_chapter(session, chapter_id)
        summary = self.summarize_chapter(novel_id, chapter_id, cancel=cancel)
        return [summary, self.rebuild_synopsis(novel_id, cancel=cancel)]


def _mostly_copied(summary: str, source: str) -> bool:
    """True when most of the summary's sentences are sentences of the source copied out."""
    if not source.strip():
        return False
    parts = sentences(summary)
    copied = sum(1 for part in parts if copies_text(part, source))
    return bool(parts) and copied * 2 > len(parts)


def _kept(what: str, problem: str, old_version: int) -> str:
    kept = "the old one is kept" if old_version else "there is none yet"
    return f"No new {what.removeprefix('the ')} was written ({problem}); {kept}."
