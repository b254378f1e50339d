"""Chapters and the two upper memory tiers: chapter summaries and the synopsis of the book so far.

Owns the chapter operations (new, rename, reorder, move a paragraph, merge, delete, close) and the versioned
summaries; every function takes `session` first, the caller owns the transaction, and every write is one revision
(memory.revisions), so undo and redo come from the same mechanism as every other edit. Imports memory.store, never
app/.

A chapter's paragraphs stay contiguous in the manuscript (see `memory.schema.Chapter`): a reorder moves the
chapter's paragraphs as a block, and moving a paragraph to another chapter puts it at that chapter's end.

Scenes: not modelled. A scene is one more level every operation, export and context section would have to carry,
and nothing we measure needs it; a scene break is a paragraph of its own ("* * *") inside a chapter.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from memory.embeddings import drop_embeddings
from memory.errors import ConflictError, NotFoundError, ValidationError
from memory.revisions import Changes, get_row, lock_novel, locked_row, record
from memory.schema import Chapter, ChapterSummary, Paragraph, PlanSet, Synopsis
from memory.store import (
    MAX_TITLE_CHARS,
    _check_text,
    chapters,
    last_chapter,
    mark_summary_stale,
)

__all__ = [
    "ChapterInfo", "add_chapter", "chapter_overview", "chapter_paragraphs", "chapters", "close_chapter",
    "current_summary", "current_synopsis", "delete_chapter", "get_chapter", "last_chapter", "merge_with_next",
    "move_chapter", "move_paragraph", "rename_chapter", "set_summary", "set_synopsis", "summary_history",
    "synopsis_history",
]


@dataclass(frozen=True)
class ChapterInfo:
    """A chapter as the chapter list shows it."""

    id: int
    position: int
    title: str
    closed: bool
    summary_stale: bool
    version: int
    paragraphs: int
    words: int
    summary_version: int  # 0 when no summary was written yet


def _check_chapter_title(title: object) -> str:
    title = _check_text(title, "The chapter title").strip()
    if not title:
        raise ValidationError("A chapter title must not be empty.")
    if len(title) > MAX_TITLE_CHARS:
        raise ValidationError(f"The chapter title is {len(title)} characters long; the limit is {MAX_TITLE_CHARS}.")
    return title


def get_chapter(session: Session, chapter_id: int) -> Chapter:
    return get_row(session, Chapter, chapter_id, what="chapter")


def _locked_chapter(session: Session, chapter_id: int) -> Chapter:
    return locked_row(session, Chapter, chapter_id, what="chapter")


def chapter_paragraphs(session: Session, chapter_id: int) -> list[Paragraph]:
    return list(session.scalars(select(Paragraph).where(Paragraph.chapter_id == chapter_id)
                                .order_by(Paragraph.position)))


def chapter_overview(session: Session, novel_id: int) -> list[ChapterInfo]:
    """Every chapter in book order with its paragraph and word counts and current summary version."""
    counts = dict((row.chapter_id, (int(row.n), int(row.w))) for row in session.execute(
        select(Paragraph.chapter_id, func.count(Paragraph.id).label("n"),
               func.coalesce(func.sum(Paragraph.words), 0).label("w"))
        .where(Paragraph.novel_id == novel_id).group_by(Paragraph.chapter_id)))
    versions = dict(session.execute(
        select(ChapterSummary.chapter_id, func.max(ChapterSummary.version))
        .where(ChapterSummary.novel_id == novel_id).group_by(ChapterSummary.chapter_id)).all())
    return [ChapterInfo(id=c.id, position=c.position, title=c.title, closed=c.closed, summary_stale=c.summary_stale,
                        version=c.version, paragraphs=counts.get(c.id, (0, 0))[0], words=counts.get(c.id, (0, 0))[1],
                        summary_version=int(versions.get(c.id) or 0))
            for c in chapters(session, novel_id)]


def _renumber_chapters(changes: Changes, ordered: list[Chapter]) -> None:
    for position, chapter in enumerate(ordered, start=1):
        if chapter.position != position:
            changes.update(chapter, position=position)


def _follow_chapter_order(changes: Changes, novel_id: int, *, to_end: frozenset[int] = frozenset()) -> None:
    """Renumber paragraphs so they read in chapter order (keeping their order inside a chapter; those in `to_end`
    go last in theirs)."""
    session = changes.session
    session.flush()
    order = {c.id: (c.position, c.id) for c in chapters(session, novel_id)}
    rows = session.execute(select(Paragraph.id, Paragraph.chapter_id, Paragraph.position)
                           .where(Paragraph.novel_id == novel_id)).all()
    ranked = sorted(rows, key=lambda r: (order[r.chapter_id], r.id in to_end, r.position))
    changes.reposition({int(row.id): position for position, row in enumerate(ranked, start=1)})


# ---------------------------------------------------------------------------------------------------------------
# Chapter operations, one revision each.

def add_chapter(session: Session, novel_id: int, title: str, *, after_chapter_id: int | None = None) -> Chapter:
    """A new, empty chapter at the end of the book (or right after `after_chapter_id`)."""
    title = _check_chapter_title(title)
    lock_novel(session, novel_id)
    existing = chapters(session, novel_id)
    changes = Changes(session, novel_id)
    index = len(existing)
    if after_chapter_id is not None:
        ids = [c.id for c in existing]
        if after_chapter_id not in ids:
            raise NotFoundError(f"No chapter with id {after_chapter_id} in this novel: it may have been deleted.")
        index = ids.index(after_chapter_id) + 1
    for chapter in existing[index:]:
        changes.update(chapter, position=chapter.position + 1)
    chapter = Chapter(novel_id=novel_id, position=index + 1, title=title, closed=False, summary_stale=False,
                      version=1)
    changes.insert(chapter)
    record(session, changes, "chapter.add", f"added chapter {title!r}")
    return chapter


def rename_chapter(session: Session, chapter_id: int, title: str, *, expected_version: int) -> Chapter:
    title = _check_chapter_title(title)
    chapter = _locked_chapter(session, chapter_id)
    if chapter.version != expected_version:
        raise ConflictError(f"Chapter {chapter.title!r} was changed elsewhere since you opened it; nothing was "
                            "saved: reload and rename it again.", current_version=chapter.version)
    old = chapter.title
    changes = Changes(session, chapter.novel_id)
    changes.update(chapter, title=title, version=chapter.version + 1)
    record(session, changes, "chapter.rename", f"renamed chapter {old!r} to {title!r}")
    return chapter


def move_chapter(session: Session, chapter_id: int, position: int) -> Chapter:
    """Move a chapter to `position` (1-based) in the book; its paragraphs move with it as a block."""
    chapter = _locked_chapter(session, chapter_id)
    ordered = chapters(session, chapter.novel_id)
    if not 1 <= position <= len(ordered):
        raise ValidationError(f"Chapter positions run from 1 to {len(ordered)}, got {position}.")
    if chapter.position == position:
        return chapter
    ordered.remove(chapter)
    ordered.insert(position - 1, chapter)
    changes = Changes(session, chapter.novel_id)
    _renumber_chapters(changes, ordered)
    _follow_chapter_order(changes, chapter.novel_id)
    record(session, changes, "chapter.move", f"moved chapter {chapter.title!r} to place {position}")
    return chapter


def move_paragraph(session: Session, paragraph_id: int, chapter_id: int) -> Paragraph:
    """Move a paragraph to the end of another chapter (both chapters' summaries go stale if they were closed)."""
    paragraph = locked_row(session, Paragraph, paragraph_id, what="paragraph")
    novel_id = paragraph.novel_id
    target = get_chapter(session, chapter_id)
    if target.novel_id != novel_id:
        raise ValidationError("A paragraph can only move to a chapter of its own novel.")
    if paragraph.chapter_id == target.id:
        return paragraph
    source_id = paragraph.chapter_id
    position = paragraph.position
    changes = Changes(session, novel_id)
    changes.update(paragraph, chapter_id=target.id, updated_at=paragraph.updated_at)
    _follow_chapter_order(changes, novel_id, to_end=frozenset({paragraph.id}))
    mark_summary_stale(changes, source_id)
    mark_summary_stale(changes, target.id)
    record(session, changes, "chapter.move_paragraph", f"moved paragraph {position} to chapter {target.title!r}")
    session.refresh(paragraph)
    return paragraph


def merge_with_next(session: Session, chapter_id: int) -> Chapter:
    """Append the next chapter's paragraphs to this chapter and remove the next one (its summaries with it); the
    merged chapter keeps this one's title, and its summary goes stale if it had one."""
    chapter = _locked_chapter(session, chapter_id)
    ordered = chapters(session, chapter.novel_id)
    index = [c.id for c in ordered].index(chapter.id)
    if index == len(ordered) - 1:
        raise ValidationError(f"Chapter {chapter.title!r} is the last one: there is no next chapter to merge in.")
    following = ordered[index + 1]
    changes = Changes(session, chapter.novel_id)
    for paragraph in chapter_paragraphs(session, following.id):
        changes.update(paragraph, chapter_id=chapter.id, updated_at=paragraph.updated_at)
    for summary in session.scalars(select(ChapterSummary).where(ChapterSummary.chapter_id == following.id)
                                   .order_by(ChapterSummary.version.desc())):
        changes.delete(summary)
    changes.delete(following)
    _renumber_chapters(changes, ordered[:index + 1] + ordered[index + 2:])
    if following.closed is False and chapter.closed:
        # An open chapter merged into a closed one: the result is still being written.
        changes.update(chapter, closed=False)
    mark_summary_stale(changes, chapter.id)
    record(session, changes, "chapter.merge", f"merged chapter {following.title!r} into {chapter.title!r}")
    return chapter


def delete_chapter(session: Session, chapter_id: int) -> None:
    """Delete a chapter with its paragraphs and summaries, as one undoable revision; the last chapter left in a
    novel cannot be deleted."""
    chapter = _locked_chapter(session, chapter_id)
    novel_id = chapter.novel_id
    ordered = chapters(session, novel_id)
    if len(ordered) == 1:
        raise ValidationError("A novel keeps at least one chapter: this is the only one.")
    title = chapter.title
    changes = Changes(session, novel_id)
    members = chapter_paragraphs(session, chapter.id)
    end = members[-1].position if members else 0
    for paragraph in members:
        for plan_set in session.scalars(select(PlanSet).where(PlanSet.paragraph_id == paragraph.id)):
            changes.update(plan_set, paragraph_id=None)
        drop_embeddings(changes, paragraph_id=paragraph.id)
        changes.delete(paragraph)
    if members:
        # The chapter's paragraphs were contiguous: close the gap they leave.
        changes.shift(end + 1, -len(members))
    for summary in session.scalars(select(ChapterSummary).where(ChapterSummary.chapter_id == chapter.id)
                                   .order_by(ChapterSummary.version.desc())):
        changes.delete(summary)
    changes.delete(chapter)
    _renumber_chapters(changes, [c for c in ordered if c.id != chapter_id])
    record(session, changes, "chapter.delete", f"deleted chapter {title!r} ({len(members)} paragraphs)")


def close_chapter(session: Session, chapter_id: int, *, next_title: str | None = None) -> Chapter:
    """Mark a chapter finished; when it is the last one, a new open chapter follows it (where the next steps
    go). Returns the chapter steps write into now. Its summary is written by the engine, in its own revision."""
    chapter = _locked_chapter(session, chapter_id)
    if chapter.closed:
        raise ValidationError(f"Chapter {chapter.title!r} is already closed.")
    novel_id = chapter.novel_id
    changes = Changes(session, novel_id)
    changes.update(chapter, closed=True)
    ordered = chapters(session, novel_id)
    following = chapter
    if ordered[-1].id == chapter.id:
        title = _check_chapter_title(next_title or f"Chapter {len(ordered) + 1}")
        following = Chapter(novel_id=novel_id, position=len(ordered) + 1, title=title, closed=False,
                            summary_stale=False, version=1)
        changes.insert(following)
    record(session, changes, "chapter.close", f"closed chapter {chapter.title!r}")
    return last_chapter(session, novel_id) if following is chapter else following


# ---------------------------------------------------------------------------------------------------------------
# Chapter summaries and the synopsis: versioned like the short-term memory.

def current_summary(session: Session, chapter_id: int) -> ChapterSummary | None:
    return session.scalar(select(ChapterSummary).where(ChapterSummary.chapter_id == chapter_id)
                          .order_by(ChapterSummary.version.desc()).limit(1))


def summary_history(session: Session, chapter_id: int) -> list[ChapterSummary]:
    return list(session.scalars(select(ChapterSummary).where(ChapterSummary.chapter_id == chapter_id)
                                .order_by(ChapterSummary.version)))


def set_summary(session: Session, chapter_id: int, text: str, *, expected_version: int,
                origin: str = "written") -> ChapterSummary:
    """Save a new version of a chapter's summary if the current one is still `expected_version` (0: none yet);
    a summary edited elsewhere meanwhile is never overwritten. Clears the stale mark."""
    text = _check_text(text, "The chapter summary")
    chapter = _locked_chapter(session, chapter_id)
    current = current_summary(session, chapter_id)
    version = current.version if current is not None else 0
    if version != expected_version:
        raise ConflictError(f"The summary of {chapter.title!r} was changed elsewhere (your copy is version "
                            f"{expected_version}, the saved one is version {version}); nothing was saved: reload it "
                            "and apply your change again.", current_version=version)
    changes = Changes(session, chapter.novel_id)
    summary = ChapterSummary(novel_id=chapter.novel_id, chapter_id=chapter.id, version=version + 1, text=text,
                             origin=origin)
    changes.insert(summary)
    if chapter.summary_stale:
        changes.update(chapter, summary_stale=False)
    verb = "wrote" if origin == "generated" else "edited"
    record(session, changes, "chapter.summary", f"{verb} the summary of {chapter.title!r}")
    return summary


def current_synopsis(session: Session, novel_id: int) -> Synopsis | None:
    return session.scalar(select(Synopsis).where(Synopsis.novel_id == novel_id)
                          .order_by(Synopsis.version.desc()).limit(1))


def synopsis_history(session: Session, novel_id: int) -> list[Synopsis]:
    return list(session.scalars(select(Synopsis).where(Synopsis.novel_id == novel_id).order_by(Synopsis.version)))


def set_synopsis(session: Session, novel_id: int, text: str, *, expected_version: int,
                 origin: str = "written") -> Synopsis:
    """Save a new version of the synopsis if the current one is still `expected_version` (0: none yet)."""
    text = _check_text(text, "The synopsis")
    lock_novel(session, novel_id)
    current = current_synopsis(session, novel_id)
    version = current.version if current is not None else 0
    if version != expected_version:
        raise ConflictError(f"The synopsis was changed elsewhere (your copy is version {expected_version}, the saved "
                            f"one is version {version}); nothing was saved: reload it and apply your change again.",
                            current_version=version)
    changes = Changes(session, novel_id)
    synopsis = Synopsis(novel_id=novel_id, version=version + 1, text=text, origin=origin)
    changes.insert(synopsis)
    record(session, changes, "synopsis.set", "rebuilt the synopsis" if origin == "generated" else "edited the synopsis")
    return synopsis
