"""Versions of a paragraph on request: a rewrite following the writer's instruction (streamed, with the context a
step gets, prompts/rewrite.txt), and picking, applying and dropping kept versions (memory/alternatives.py).

`VersionsMixin` is part of `app.engine.core.Engine`. Like a step, a rewrite reads in one short transaction,
generates with none open and saves in one: the new text is kept beside the paragraph, then swapped in (two
revisions, so Undo puts the original back and the rewrite stays kept). A rewrite stopped mid-stream saves nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

from sqlalchemy import select

from memory import alternatives
from memory.alternatives import Version
from memory.schema import Paragraph, PlanSet
from models.errors import Cancelled

from app.engine.context import PROMPT_ONLY, build_context
from app.engine.errors import EngineError
from app.engine.events import Event
from app.engine.reading import NovelView

# The instructions the Write tab offers; any other text is fine too.
REWRITE_PRESETS = ("tenser", "from another character's point of view", "half as long", "more dialogue",
                   "plainer words")
MAX_INSTRUCTION_CHARS = 500


@dataclass(frozen=True)
class Target:
    """The paragraph a rewrite starts from, as read (plain values)."""

    paragraph_id: int
    position: int
    text: str
    version: int
    plan: str  # the plan it was written from, or ""


@dataclass
class VersionOutcome:
    """What a rewrite or a pick did."""

    novel_id: int
    paragraph_id: int | None
    position: int
    paragraph: str  # the new text
    swapped: bool  # the new text is in the manuscript now
    memory_followed: bool = False
    notices: list[str] = field(default_factory=list)


class VersionsMixin:
    """Rewrites and picks; mixed into `Engine`, whose reader, stages, prompts and snapshots it uses."""

    def rewrite(self, novel_id: int, paragraph_id: int, instruction: str, *, cancel: threading.Event | None = None,
                mode: str | None = None) -> Iterator[Event]:
        """Rewrite paragraph `paragraph_id` following `instruction`, streamed; the result is kept beside it and
        swapped in (the original is kept beside it, one pick away). Returns a VersionOutcome."""
        instruction = " ".join((instruction or "").split())
        if not instruction:
            raise EngineError("The rewrite instruction is empty: say how to rewrite the paragraph (\"tenser\", "
                              "\"half as long\", ...).")
        if len(instruction) > MAX_INSTRUCTION_CHARS:
            raise EngineError(f"The rewrite instruction is {len(instruction)} characters long; the limit is "
                              f"{MAX_INSTRUCTION_CHARS}.")
        view = self._read(novel_id)
        target = self._target(novel_id, paragraph_id)
        engine = self._for_novel(view)
        return (yield from engine._rewrite(view, target, instruction, cancel, engine._mode(view, mode)))

    def _target(self, novel_id: int, paragraph_id: int) -> Target:
        with self.session_factory() as session, session.begin():
            paragraph = session.get(Paragraph, paragraph_id)
            if paragraph is None or paragraph.novel_id != novel_id:
                raise EngineError(f"There is no paragraph {paragraph_id} in this novel: it may have been deleted "
                                  "in another tab.")
            used = session.scalar(select(PlanSet.used_text).where(PlanSet.paragraph_id == paragraph.id))
            return Target(paragraph_id=paragraph.id, position=paragraph.position, text=paragraph.text,
                          version=paragraph.version, plan=used or "")

    def rewrite_context(self, novel_id: int, paragraph_id: int, instruction: str, *, mode: str | None = None):
        """The exact prompt a rewrite would send (a ContextPreview); generates nothing."""
        view = self._read(novel_id)
        engine = self._for_novel(view)
        return engine._rewrite_preview(view, self._target(novel_id, paragraph_id), instruction,
                                       engine._mode(view, mode))

    def _rewrite_preview(self, view: NovelView, target: Target, instruction: str, mode: str):
        before = replace(view, paragraphs=[(p, text) for p, text in view.paragraphs if p < target.position])
        # Retrieval and lore look for what the paragraph itself is about; the paragraph before it is the last one.
        inputs = self.reader.step_inputs(before, target.text, mode, PROMPT_ONLY)
        inputs = replace(inputs, plan=target.plan, paragraph=target.text, instruction=instruction)
        return before, build_context(self.prompts, self.generator, inputs, self._budget(view), stage="rewrite",
                                     strategy=PROMPT_ONLY)

    def _rewrite(self, view: NovelView, target: Target, instruction: str, cancel, mode: str) -> Iterator[Event]:
        notices: list[str] = list(view.notices)
        yield from self.reader.backfill_sentences(view)
        yield Event("progress", f"Rewriting paragraph {target.position} ({instruction})…")
        before, preview = self._rewrite_preview(view, target, instruction, mode)
        if preview.dropped:
            notices.append("To fit the context budget, left out: " + ", ".join(preview.dropped) + ".")
        # Not lengthened: a rewrite's length is the writer's instruction's ("half as long").
        text = yield from self._stream_paragraph(before, preview, cancel, notices, mode=mode, lengthen=False)
        for notice in notices:
            yield Event("notice", notice)
        if cancel is not None and cancel.is_set():
            raise Cancelled("stopped")
        embedding = self.reader.passage_vector(text)
        shown = len(notices)
        outcome = self._commit_rewrite(view, target, text, instruction, embedding, notices)
        for notice in notices[shown:]:
            yield Event("notice", notice)
        if outcome.swapped:
            self._invalidate_snapshots(view.novel_id, outcome.position)
        line = (f"Rewrote paragraph {outcome.position}; the original is kept beside it." if outcome.swapped
                else f"Kept the rewrite beside paragraph {outcome.position}.")
        yield Event("done", line)
        return outcome

    def _commit_rewrite(self, view: NovelView, target: Target, text: str, instruction: str, embedding,
                        notices: list[str]) -> VersionOutcome:
        version = Version(text=text, kind="rewrite", instruction=instruction)
        with self.session_factory() as session, session.begin():
            paragraph = session.get(Paragraph, target.paragraph_id)
            if paragraph is None:
                alternatives.keep_pending(session, view.novel_id, target.position, [version])
                notices.append(f"Paragraph {target.position} was deleted during the rewrite: the rewrite is kept "
                               "pending; apply or drop it under Versions.")
                return VersionOutcome(view.novel_id, None, target.position, text, swapped=False, notices=notices)
            (row,) = alternatives.keep_many(session, paragraph.id, [version])
            if paragraph.version != target.version:
                notices.append(f"Paragraph {paragraph.position} was edited during the rewrite: the rewrite is kept "
                               "beside it, not swapped in.")
                return VersionOutcome(view.novel_id, paragraph.id, paragraph.position, text, swapped=False,
                                      notices=notices)
            picked = alternatives.pick(session, row.id, paragraph.version, embedding)
            return VersionOutcome(view.novel_id, paragraph.id, paragraph.position, text, swapped=True,
                                  memory_followed=picked.memory_followed, notices=notices)

    # ----------------------------------------------------------------------------------------------- picking

    def pick_version(self, alternative_id: int, expected_version: int) -> VersionOutcome:
        """Swap kept version `alternative_id` into the manuscript (ConflictError if its paragraph is no longer
        `expected_version`); re-embedded, and the state snapshots from it on dropped."""
        with self.session_factory() as session, session.begin():
            text = alternatives.get(session, alternative_id).text
        embedding = self.reader.passage_vector(text)
        with self.session_factory() as session, session.begin():
            picked = alternatives.pick(session, alternative_id, expected_version, embedding)
            outcome = VersionOutcome(picked.paragraph.novel_id, picked.paragraph.id, picked.paragraph.position,
                                     picked.paragraph.text, swapped=True, memory_followed=picked.memory_followed)
        self._invalidate_snapshots(outcome.novel_id, outcome.position)
        return outcome

    def apply_pending(self, alternative_id: int) -> VersionOutcome:
        """Put a pending version in the manuscript at its position (memory and plans unchanged)."""
        with self.session_factory() as session, session.begin():
            text = alternatives.get(session, alternative_id).text
        embedding = self.reader.passage_vector(text)
        with self.session_factory() as session, session.begin():
            paragraph = alternatives.apply_pending(session, alternative_id, embedding)
            outcome = VersionOutcome(paragraph.novel_id, paragraph.id, paragraph.position, paragraph.text,
                                     swapped=True)
        self._invalidate_snapshots(outcome.novel_id, outcome.position)
        return outcome

    def drop_version(self, alternative_id: int) -> None:
        """Drop a kept or pending version (undoable)."""
        with self.session_factory() as session, session.begin():
            alternatives.drop(session, alternative_id)

