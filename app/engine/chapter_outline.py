"""The outline by chapter: the start stage's proposal of what happens in each chapter (prompts/chapter_outline.txt),
kept as the novel's outline ("Chapter 1: ..." one line each), which every step reads and `Engine.write_chapters`
takes the first plan of each chapter from.

Generates outside any transaction; saves through `memory.store.edit_story` with the story the proposal was made
from, so an outline edited meanwhile is never overwritten.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from memory import store

from app.engine.errors import EngineError
from app.engine.prompts import PromptLibrary
from app.engine.reading import StoreReader
from app.engine.text import limit_words

_LINE = re.compile(r"^\s*(?:chapter\s*)?(\d{1,3})\s*[.:)\-]\s*(\S.*)$", re.IGNORECASE)
OUTLINE_TOKENS_PER_CHAPTER = 40
LINE_WORDS = 30


def parse_chapter_outline(raw: str, chapters: int) -> list[str]:
    """What happens in chapters 1..n, from lines "Chapter k: ..." (the first number may be implied by the answer
    prefix); stops at the first gap or repeat. Returns fewer than `chapters` lines when the model gave fewer."""
    found: dict[int, str] = {}
    for line in raw.splitlines():
        match = _LINE.match(line)
        if match is None:
            continue
        number, text = int(match.group(1)), limit_words(match.group(2).strip(), LINE_WORDS)
        if number == len(found) + 1 and number <= chapters and text:
            found[number] = text
    return [found[n] for n in sorted(found)]


def outline_text(lines: list[str]) -> str:
    return "\n".join(f"Chapter {number}: {line}" for number, line in enumerate(lines, start=1))


def chapter_plan(outline: str, position: int) -> str | None:
    """The outline's line for chapter `position`, if the outline is by chapter."""
    for line in outline.splitlines():
        match = _LINE.match(line)
        if match is not None and int(match.group(1)) == position:
            return match.group(2).strip()
    return None


def outline_chapters(outline: str) -> int:
    """How many chapters the outline by chapter plans (lines "Chapter 1: ...", "Chapter 2: ..." without a gap);
    0 when the outline is not by chapter."""
    count = 0
    while chapter_plan(outline, count + 1) is not None:
        count += 1
    return count


@dataclass
class ChapterOutliner:
    session_factory: object
    generator: object
    prompts: PromptLibrary
    reader: StoreReader

    def propose(self, novel_id: int, chapters: int, *, cancel=None) -> list[str]:
        """Ask the model for a `chapters`-line outline and save it as the novel's outline (one undoable edit);
        EngineError when no usable outline came back in the allowed tries (the old outline is kept)."""
        if not 1 <= chapters <= 100:
            raise EngineError(f"An outline by chapter has 1 to 100 chapters, not {chapters}.")
        view = self.reader.read(novel_id)
        outline = str(view.settings.get("outline") or "")
        rendered = self.prompts.render("chapter_outline", premise=view.premise, style=view.style,
                                       outline=outline, chapters=chapters)
        chat = self.generator.render_chat(rendered.messages)
        best: list[str] = []
        for attempt in range(max(1, int(view.setting("max_attempts")))):
            params = view.config.sampling_params()
            if params.seed is not None:
                params.seed += attempt
            raw = rendered.answer_prefix + "".join(self.generator.stream(
                chat + rendered.answer_prefix, sampling=params, max_new_tokens=OUTLINE_TOKENS_PER_CHAPTER * chapters,
                cancel=cancel))
            lines = parse_chapter_outline(raw, chapters)
            if 0 < len(lines) < chapters:
                lines = self._continue_lines(chat, lines, chapters, params=params, cancel=cancel)
            best = lines if len(lines) > len(best) else best
            if len(best) == chapters:
                break
        if len(best) < 2:
            raise EngineError(f"The model gave no usable outline by chapter ({len(best)} line(s) of {chapters}); "
                              "the outline was not changed.")
        with self.session_factory() as session, session.begin():
            novel = store.get_novel(session, novel_id)
            read = store.story(novel)
            if read["outline"] != outline:
                raise EngineError("The outline was edited while the new one was written; it was not replaced.")
            store.edit_story(session, novel_id, read["premise"], read["style_notes"], outline_text(best), read)
        return best

    def _continue_lines(self, chat: str, lines: list[str], chapters: int, *, params, cancel) -> list[str]:
        """The missing lines asked for one at a time, the answer so far ending "Chapter k:": a small model often
        stops after its first line, though it writes the next one when its number is given. A line that repeats
        an earlier one ends the outline there (a copy is no plan)."""
        while len(lines) < chapters:
            head = outline_text(lines) + f"\nChapter {len(lines) + 1}:"
            got = "".join(self.generator.stream(chat + head, sampling=params, max_new_tokens=OUTLINE_TOKENS_PER_CHAPTER,
                                                stop=["\n"], cancel=cancel))
            more = parse_chapter_outline(head + got, chapters)  # `stop` ends it at the line's end
            if len(more) <= len(lines) or more[-1].strip().lower() in {line.strip().lower() for line in lines}:
                break
            lines = more
        return lines
