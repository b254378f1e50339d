"""Reading and writing a novel: every function takes `session` first; the caller owns the transaction.

Use one transaction per user action, never held open while a model generates:

    with Session() as s, s.begin():
        store.edit_paragraph(s, paragraph_id, text, expected_version=3)

Every write is recorded as one `Revision` (exact before/after rows), so it can be undone and redone. Errors the
user can act on are `StoreError` subclasses with one-line messages: `ConflictError` (a stale view),
`NotFoundError`, `ValidationError`.

How every write is recorded (and undone) lives in memory.revisions, how vectors are stored in memory.embeddings;
the errors in memory.errors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from memory.embeddings import Vector, drop_embeddings, put_embedding
from memory.errors import ConflictError, NotFoundError, ValidationError
from memory.revisions import Changes, check_version, get_row, lock_novel, locked_row, record
from memory.schema import (
    MEMORY_ORIGINS,
    ORIGINS,
    Alternative,
    Chapter,
    ChapterSummary,
    LoreEntry,
    Novel,
    Paragraph,
    PlanSet,
    Revision,
    ShortTermMemory,
    utcnow,
)

MAX_TITLE_CHARS = 500
FIRST_CHAPTER_TITLE = "Chapter 1"


@dataclass(frozen=True)
class NovelSummary:
    id: int
    title: str
    words: int
    paragraphs: int
    last_edited: datetime
    chapters: int = 1


@dataclass(frozen=True)
class StepResult:
    paragraph: Paragraph
    memory: ShortTermMemory
    plan_set: PlanSet
    revision: Revision


# ---------------------------------------------------------------------------------------------------------------
# Validation helpers.

def _check_text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise ValidationError(f"{what} must be text, got {type(value).__name__}.")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValidationError(f"{what} holds invalid Unicode (a lone surrogate at character {exc.start}).") from None
    return value


def _check_title(title: Any) -> str:
    title = _check_text(title, "The title").strip()
    if not title:
        raise ValidationError("The title must not be empty.")
    if len(title) > MAX_TITLE_CHARS:
        raise ValidationError(f"The title is {len(title)} characters long; the limit is {MAX_TITLE_CHARS}.")
    return title


def _check_memory_origin(origin: str) -> str:
    if origin not in MEMORY_ORIGINS:
        raise ValidationError(f"Memory origin must be one of {', '.join(MEMORY_ORIGINS)}, got {origin!r}.")
    return origin


def _check_origin(origin: str) -> str:
    if origin not in ORIGINS:
        raise ValidationError(f"Paragraph origin must be one of {', '.join(ORIGINS)}, got {origin!r}.")
    return origin


def _word_count(text: str) -> int:
    return len(text.split())


# ---------------------------------------------------------------------------------------------------------------
# Novels.

def create_novel(session: Session, title: str, premise: str = "", style_notes: str = "",
                 settings: dict[str, Any] | None = None, memory_text: str = "") -> Novel:
    novel = Novel(title=_check_title(title), premise=_check_text(premise, "The premise"),
                  style_notes=_check_text(style_notes, "The style notes"), settings=dict(settings or {}))
    session.add(novel)
    session.flush()
    changes = Changes(session, novel.id)
    changes.insert(ShortTermMemory(novel_id=novel.id, version=1, text=_check_text(memory_text, "The memory"),
                                   origin="written"))
    changes.insert(Chapter(novel_id=novel.id, position=1, title=FIRST_CHAPTER_TITLE, closed=False,
                           summary_stale=False, version=1))
    record(session, changes, "novel.create", "created the novel")
    return novel


def get_novel(session: Session, novel_id: int) -> Novel:
    return get_row(session, Novel, novel_id, what="novel")


def list_novels(session: Session) -> list[NovelSummary]:
    """Every novel with its word, paragraph and chapter counts, most recently edited first."""
    counts = (select(Paragraph.novel_id, func.count(Paragraph.id).label("n"),
                     func.coalesce(func.sum(Paragraph.words), 0).label("w"))
              .group_by(Paragraph.novel_id).subquery())
    chapter_counts = (select(Chapter.novel_id, func.count(Chapter.id).label("c"))
                      .group_by(Chapter.novel_id).subquery())
    rows = session.execute(
        select(Novel.id, Novel.title, Novel.updated_at, counts.c.n, counts.c.w, chapter_counts.c.c)
        .outerjoin(counts, counts.c.novel_id == Novel.id)
        .outerjoin(chapter_counts, chapter_counts.c.novel_id == Novel.id)
        .order_by(Novel.updated_at.desc(), Novel.id.desc())
    ).all()
    return [NovelSummary(id=r.id, title=r.title, words=int(r.w or 0), paragraphs=int(r.n or 0),
                         last_edited=r.updated_at, chapters=int(r.c or 0)) for r in rows]


def rename_novel(session: Session, novel_id: int, title: str) -> Novel:
    novel = lock_novel(session, novel_id)
    changes = Changes(session, novel_id)
    changes.update(novel, title=_check_title(title))
    record(session, changes, "novel.rename", f"renamed the novel to {novel.title!r}")
    return novel


STORY_FIELDS = ("premise", "style_notes", "outline")


def story(novel: Novel) -> dict[str, str]:
    """What steers every step besides the memories: the premise, the style notes and the outline (kept in the
    settings, where the opening step writes it)."""
    return {"premise": novel.premise or "", "style_notes": novel.style_notes or "",
            "outline": str((novel.settings or {}).get("outline") or "")}


def edit_story(session: Session, novel_id: int, premise: str, style_notes: str, outline: str,
               read: dict[str, str]) -> Novel:
    """Save the premise, style notes and outline as one undoable change, if they are still what `read` (the
    `story()` the page showed) says; else raise ConflictError naming what changed elsewhere."""
    novel = lock_novel(session, novel_id)
    current = story(novel)
    stale = [name for name in STORY_FIELDS if current[name] != (read or {}).get(name, "")]
    if stale:
        raise ConflictError("The " + " and the ".join(name.replace("_", " ") for name in stale)
                            + " were changed elsewhere since you opened them; nothing was saved: reload and "
                              "apply your edit again.")
    new = {"premise": _check_text(premise, "The premise"), "style_notes": _check_text(style_notes, "The style notes"),
           "outline": _check_text(outline, "The outline")}
    if not new["premise"].strip():
        raise ValidationError("The premise cannot be empty: every step reads it.")
    changed = [name for name in STORY_FIELDS if new[name] != current[name]]
    if not changed:
        return novel
    changes = Changes(session, novel_id)
    changes.update(novel, premise=new["premise"], style_notes=new["style_notes"],
                   settings={**(novel.settings or {}), "outline": new["outline"]})
    record(session, changes, "novel.edit", "edited the " + " and the ".join(n.replace("_", " ") for n in changed))
    return novel


def update_novel_settings(session: Session, novel_id: int, settings: dict[str, Any], merge: bool = True) -> Novel:
    """Replace (or, with merge, update top-level keys of) the novel's settings JSON."""
    if not isinstance(settings, dict):
        raise ValidationError(f"Settings must be a mapping, got {type(settings).__name__}.")
    novel = lock_novel(session, novel_id)
    new_settings = {**(novel.settings or {}), **settings} if merge else dict(settings)
    changes = Changes(session, novel_id)
    changes.update(novel, settings=new_settings)
    record(session, changes, "novel.settings", "changed settings: " + (", ".join(sorted(settings)) or "none"))
    return novel


def delete_novel(session: Session, novel_id: int) -> None:
    """Delete a novel and everything in it (not undoable: take a backup first, see memory.backup)."""
    lock_novel(session, novel_id)
    session.execute(delete(Novel).where(Novel.id == novel_id).execution_options(synchronize_session=False))
    for obj in list(session.identity_map.values()):
        if getattr(obj, "novel_id", None) == novel_id or (isinstance(obj, Novel) and obj.id == novel_id):
            session.expunge(obj)


# ---------------------------------------------------------------------------------------------------------------
# Paragraphs.

def paragraphs(session: Session, novel_id: int) -> list[Paragraph]:
    return list(session.scalars(select(Paragraph).where(Paragraph.novel_id == novel_id)
                                .order_by(Paragraph.position)))


def get_paragraph(session: Session, paragraph_id: int) -> Paragraph:
    return get_row(session, Paragraph, paragraph_id, what="paragraph")


def paragraph_at(session: Session, novel_id: int, position: int) -> Paragraph | None:
    return session.scalar(select(Paragraph).where(Paragraph.novel_id == novel_id, Paragraph.position == position))


def paragraph_count(session: Session, novel_id: int) -> int:
    return int(session.scalar(select(func.count(Paragraph.id)).where(Paragraph.novel_id == novel_id)) or 0)


def add_paragraph(session: Session, novel_id: int, text: str, origin: str = "written", position: int | None = None,
                  embedding: Vector | None = None, chapter_id: int | None = None) -> Paragraph:
    """Append a paragraph, or insert it at `position` (1-based), moving later ones down; with `chapter_id`,
    append it to the end of that chapter."""
    lock_novel(session, novel_id)
    changes = Changes(session, novel_id)
    paragraph = place_paragraph(changes, novel_id=novel_id, text=_check_text(text, "A paragraph"),
                                origin=_check_origin(origin), position=position, chapter_id=chapter_id,
                                embedding=embedding)
    where = "at the end" if position is None else f"at position {paragraph.position}"
    record(session, changes, "paragraph.add", f"added a paragraph {where}")
    return paragraph


def place_paragraph(changes: Changes, *, novel_id: int, text: str, origin: str, position: int | None,
                    chapter_id: int | None = None, embedding: Vector | None = None) -> Paragraph:
    """Insert a paragraph, as part of `changes`, at `position` (None: the end) in the chapter the place falls in:
    appended, the last chapter; inserted before paragraph p, p's chapter. With `chapter_id` it goes into that
    chapter: at `position` (the caller's anchor, e.g. just after a paragraph of that chapter), or at the chapter's
    end. `embedding`, when given, is saved as its vector. The caller has checked `text` and `origin`."""
    session = changes.session
    count = paragraph_count(session, novel_id)
    if position is not None and position < 1:
        raise ValidationError(f"Paragraph positions start at 1, got {position}.")
    chapter = _chapter_of_novel(session, novel_id, chapter_id) if chapter_id is not None else None
    if chapter is not None and position is None:
        position = chapter_end(session, chapter) + 1
    if position is None or position > count:
        position = count + 1
        chapter = chapter if chapter is not None else last_chapter(session, novel_id)
    else:
        if chapter is None:
            chapter = paragraph_at(session, novel_id, position).chapter
        changes.shift(position, +1)
    paragraph = Paragraph(novel_id=novel_id, chapter_id=chapter.id, position=position, text=text,
                          words=_word_count(text), origin=origin, version=1)
    changes.insert(paragraph)
    if embedding is not None:
        put_embedding(changes, novel_id, vector=embedding, paragraph_id=paragraph.id)
    mark_summary_stale(changes, chapter.id)
    return paragraph


# ---------------------------------------------------------------------------------------------------------------
# Chapters as paragraphs see them (the chapter operations themselves are in memory.chapters).

def chapters(session: Session, novel_id: int) -> list[Chapter]:
    """A novel's chapters in book order."""
    return list(session.scalars(select(Chapter).where(Chapter.novel_id == novel_id)
                                .order_by(Chapter.position, Chapter.id)))


def last_chapter(session: Session, novel_id: int) -> Chapter:
    """The chapter new steps write into: the last one in book order."""
    chapter = session.scalar(select(Chapter).where(Chapter.novel_id == novel_id)
                             .order_by(Chapter.position.desc(), Chapter.id.desc()).limit(1))
    if chapter is None:
        raise NotFoundError(f"Novel {novel_id} has no chapter; every novel keeps at least one.")
    return chapter


def _chapter_of_novel(session: Session, novel_id: int, chapter_id: int) -> Chapter:
    chapter = session.get(Chapter, chapter_id)
    if chapter is None or chapter.novel_id != novel_id:
        raise NotFoundError(f"No chapter with id {chapter_id} in this novel: it may have been deleted in another "
                            "tab.")
    return chapter


def chapter_end(session: Session, chapter: Chapter) -> int:
    """The position of the last paragraph in `chapter` or any chapter before it (0 when there is none), i.e.
    where a paragraph appended to `chapter` goes after."""
    before = select(Chapter.id).where(Chapter.novel_id == chapter.novel_id, Chapter.position <= chapter.position)
    return int(session.scalar(select(func.coalesce(func.max(Paragraph.position), 0))
                              .where(Paragraph.chapter_id.in_(before))) or 0)


def mark_summary_stale(changes: Changes, chapter_id: int | None) -> None:
    """A closed chapter whose text changed after its summary was written: mark the summary stale (part of the
    same revision, so undoing the edit undoes the mark)."""
    if chapter_id is None:
        return
    chapter = changes.session.get(Chapter, chapter_id)
    if chapter is None or not chapter.closed or chapter.summary_stale:
        return
    has_summary = changes.session.scalar(select(func.count(ChapterSummary.id))
                                         .where(ChapterSummary.chapter_id == chapter_id))
    if has_summary:
        changes.update(chapter, summary_stale=True)


def _edited_origin(paragraph: Paragraph, origin: str | None) -> str:
    """The origin of a paragraph's new text: as asked, else "edited" (a writer's own paragraph stays "written")."""
    if origin is not None:
        return _check_origin(origin)
    return "written" if paragraph.origin == "written" else "edited"


def _locked_paragraph(session: Session, paragraph_id: int, expected_version: int) -> Paragraph:
    """The paragraph, its novel locked and its row re-read, if it is still `expected_version`."""
    paragraph = locked_row(session, Paragraph, paragraph_id, what="paragraph")
    check_version("paragraph", paragraph, expected_version)
    return paragraph


def rewrite_paragraph(changes: Changes, paragraph: Paragraph, *, text: str, origin: str,
                      embedding: Vector | None) -> None:
    """A paragraph's new text as part of `changes`: version bumped, the vector of the old text replaced or removed,
    its chapter's summary stale. The caller has locked the novel and checked the version."""
    changes.update(paragraph, text=text, words=_word_count(text), origin=origin, version=paragraph.version + 1,
                   updated_at=utcnow())
    drop_embeddings(changes, paragraph_id=paragraph.id, keep=embedding.embedder if embedding else None)
    if embedding is not None:
        put_embedding(changes, paragraph.novel_id, vector=embedding, paragraph_id=paragraph.id)
    mark_summary_stale(changes, paragraph.chapter_id)


def edit_paragraph(session: Session, paragraph_id: int, text: str, expected_version: int,
                   embedding: Vector | None = None, origin: str | None = None) -> Paragraph:
    """Replace a paragraph's text if nobody changed it since `expected_version`; else raise ConflictError.

    The old embedding is removed unless a new one is given (retrieval never uses a vector of stale text). The
    origin becomes `origin`, by default "edited" (a writer's own paragraph stays "written").
    """
    text = _check_text(text, "A paragraph")
    paragraph = _locked_paragraph(session, paragraph_id, expected_version)
    changes = Changes(session, paragraph.novel_id)
    rewrite_paragraph(changes, paragraph, text=text, origin=_edited_origin(paragraph, origin), embedding=embedding)
    record(session, changes, "paragraph.edit", f"edited paragraph {paragraph.position}")
    return paragraph


def _remove(changes: Changes, paragraph: Paragraph) -> int:
    """Delete a paragraph (its vectors; plan sets written from it keep their plans) and close the gap; returns
    the position it had."""
    position = paragraph.position
    for plan_set in changes.session.scalars(select(PlanSet).where(PlanSet.paragraph_id == paragraph.id)):
        changes.update(plan_set, paragraph_id=None)
    # Its kept versions stay, pending where it was (memory/alternatives.py): nothing the writer had is lost.
    for alternative in changes.session.scalars(select(Alternative).where(Alternative.paragraph_id == paragraph.id)):
        changes.update(alternative, paragraph_id=None, position=position)
    drop_embeddings(changes, paragraph_id=paragraph.id)
    mark_summary_stale(changes, paragraph.chapter_id)
    changes.delete(paragraph)
    changes.shift(position + 1, -1)
    return position


def delete_paragraph(session: Session, paragraph_id: int, expected_version: int) -> None:
    paragraph = _locked_paragraph(session, paragraph_id, expected_version)
    changes = Changes(session, paragraph.novel_id)
    position = _remove(changes, paragraph)
    record(session, changes, "paragraph.delete", f"deleted paragraph {position}")


def insert_paragraph(session: Session, novel_id: int, text: str, *, before_id: int | None = None,
                     after_id: int | None = None, origin: str = "written",
                     embedding: Vector | None = None) -> Paragraph:
    """Insert a paragraph just before or just after another one, found by id (so a view whose positions moved
    meanwhile still inserts where the writer meant), or at the end when neither is given."""
    if before_id is not None and after_id is not None:
        raise ValidationError("Insert a paragraph before one paragraph or after one, not both.")
    anchor_id = before_id if before_id is not None else after_id
    position, chapter_id = None, None
    if anchor_id is not None:
        anchor = get_paragraph(session, anchor_id)
        if anchor.novel_id != novel_id:
            raise ValidationError(f"Paragraph {anchor_id} belongs to another novel.")
        position = anchor.position if before_id is not None else anchor.position + 1
        # The new paragraph joins the anchor's chapter (after a chapter's last paragraph is still that chapter).
        chapter_id = anchor.chapter_id
    return add_paragraph(session, novel_id, text, origin=origin, position=position, embedding=embedding,
                         chapter_id=chapter_id)


def move_paragraph(session: Session, paragraph_id: int, expected_version: int, offset: int) -> Paragraph:
    """Swap a paragraph with the one above (offset -1) or below (+1). A move is not an edit: texts, versions and
    edit times stay as they were."""
    if offset not in (-1, 1):
        raise ValidationError(f"A paragraph moves one place up (-1) or down (+1), not {offset}.")
    paragraph = _locked_paragraph(session, paragraph_id, expected_version)
    position = paragraph.position
    neighbour = paragraph_at(session, paragraph.novel_id, position + offset)
    if neighbour is None:
        where = "first" if offset < 0 else "last"
        raise ValidationError(f"Paragraph {position} is the {where} one: it cannot move further "
                              f"{'up' if offset < 0 else 'down'}.")
    changes = Changes(session, paragraph.novel_id)
    if neighbour.chapter_id != paragraph.chapter_id:
        # A chapter's paragraphs stay together: across a chapter boundary the paragraph keeps its place in the
        # manuscript and changes chapter (down from a chapter's end: the next chapter's first paragraph).
        mark_summary_stale(changes, paragraph.chapter_id)
        mark_summary_stale(changes, neighbour.chapter_id)
        changes.update(paragraph, chapter_id=neighbour.chapter_id, updated_at=paragraph.updated_at)
        record(session, changes, "paragraph.move",
               f"moved paragraph {position} into the chapter {neighbour.chapter.title!r}")
        return paragraph
    # Through a free position: UNIQUE(novel_id, position) holds after every statement.
    changes.update(paragraph, position=-position, updated_at=paragraph.updated_at)
    changes.update(neighbour, position=position, updated_at=neighbour.updated_at)
    changes.update(paragraph, position=position + offset, updated_at=paragraph.updated_at)
    record(session, changes, "paragraph.move", f"moved paragraph {position} {'up' if offset < 0 else 'down'}")
    return paragraph


BLANK_LINE = re.compile(r"\n[ \t]*\n\s*")


def split_parts(text: str) -> list[str]:
    """A paragraph's text cut at its blank lines, each part stripped, empty parts left out."""
    return [part.strip() for part in BLANK_LINE.split(text) if part.strip()]


def split_paragraph(session: Session, paragraph_id: int, expected_version: int,
                    embeddings: list[Vector] | None = None) -> list[Paragraph]:
    """Cut a paragraph at its blank lines: the first part stays in its place (an edit), each further part becomes
    a new paragraph after it. `embeddings`, if given, holds one vector per part of `split_parts(text)`."""
    paragraph = _locked_paragraph(session, paragraph_id, expected_version)
    parts = split_parts(paragraph.text)
    if len(parts) < 2:
        raise ValidationError(f"Paragraph {paragraph.position} has no blank line to split at: put an empty line "
                              "where it should be cut, save, then split.")
    if embeddings is not None and len(embeddings) != len(parts):
        raise ValidationError(f"Splitting paragraph {paragraph.position} needs {len(parts)} vectors, "
                              f"got {len(embeddings)}.")
    vectors = list(embeddings) if embeddings is not None else [None] * len(parts)
    origin = _edited_origin(paragraph, None)
    changes = Changes(session, paragraph.novel_id)
    rewrite_paragraph(changes, paragraph, text=parts[0], origin=origin, embedding=vectors[0])
    made = [paragraph]
    for offset, (part, vector) in enumerate(zip(parts[1:], vectors[1:]), start=1):
        added = place_paragraph(changes, novel_id=paragraph.novel_id, text=part, origin=origin,
                                position=paragraph.position + offset, chapter_id=paragraph.chapter_id,
                                embedding=vector)
        made.append(added)
    record(session, changes, "paragraph.split", f"split paragraph {paragraph.position} in {len(parts)}")
    return made


def merged_text(first: str, second: str) -> str:
    """Two paragraphs as one: the second follows the first after a space."""
    return f"{first.rstrip()} {second.lstrip()}"


def merge_paragraphs(session: Session, paragraph_id: int, expected_version: int, next_expected_version: int,
                     embedding: Vector | None = None) -> Paragraph:
    """Join a paragraph with the one after it (both still at the versions the writer saw): the first gets the
    joined text (`merged_text`), the second is removed. `embedding` is the vector of the joined text."""
    paragraph = _locked_paragraph(session, paragraph_id, expected_version)
    following = paragraph_at(session, paragraph.novel_id, paragraph.position + 1)
    if following is None:
        raise ValidationError(f"Paragraph {paragraph.position} is the last one: there is nothing to merge it with.")
    session.refresh(following)
    check_version("paragraph", following, next_expected_version)
    text = merged_text(paragraph.text, following.text)
    changes = Changes(session, paragraph.novel_id)
    _remove(changes, following)
    rewrite_paragraph(changes, paragraph, text=text, origin=_edited_origin(paragraph, None), embedding=embedding)
    record(session, changes, "paragraph.merge", f"merged paragraphs {paragraph.position} and "
                                                f"{paragraph.position + 1}")
    return paragraph


def paragraphs_changed_since(session: Session, novel_id: int, since: datetime | None) -> list[Paragraph]:
    """The paragraphs written or edited after `since` (every paragraph when it is None), in manuscript order. A
    move keeps a paragraph's edit time; an undo restores it."""
    query = select(Paragraph).where(Paragraph.novel_id == novel_id)
    if since is not None:
        query = query.where(Paragraph.updated_at > since)
    return list(session.scalars(query.order_by(Paragraph.position)))


# ---------------------------------------------------------------------------------------------------------------
# Short-term memory.

def current_memory(session: Session, novel_id: int) -> ShortTermMemory | None:
    return session.scalar(select(ShortTermMemory).where(ShortTermMemory.novel_id == novel_id)
                          .order_by(ShortTermMemory.version.desc()).limit(1))


def memory_history(session: Session, novel_id: int) -> list[ShortTermMemory]:
    return list(session.scalars(select(ShortTermMemory).where(ShortTermMemory.novel_id == novel_id)
                                .order_by(ShortTermMemory.version)))


def _memory_version(session: Session, novel_id: int) -> int:
    memory = current_memory(session, novel_id)
    return memory.version if memory is not None else 0


def set_memory(session: Session, novel_id: int, text: str, expected_version: int,
               origin: str = "written", cause: str = "edited the short-term memory") -> ShortTermMemory:
    """Save a new version of the running summary if the current one is still `expected_version`."""
    lock_novel(session, novel_id)
    current = _memory_version(session, novel_id)
    if expected_version != current:
        raise ConflictError(
            f"The short-term memory was changed elsewhere (your copy is version {expected_version}, the saved one "
            f"is version {current}); nothing was saved: reload it and apply your change again.",
            current_version=current)
    changes = Changes(session, novel_id)
    memory = ShortTermMemory(novel_id=novel_id, version=current + 1, text=_check_text(text, "The memory"),
                             origin=origin)
    changes.insert(memory)
    record(session, changes, "memory.set", cause)
    return memory


# ---------------------------------------------------------------------------------------------------------------
# Plans.

def current_plans(session: Session, novel_id: int) -> PlanSet | None:
    return session.scalar(select(PlanSet).where(PlanSet.novel_id == novel_id).order_by(PlanSet.id.desc()).limit(1))


def plan_sets(session: Session, novel_id: int) -> list[PlanSet]:
    return list(session.scalars(select(PlanSet).where(PlanSet.novel_id == novel_id).order_by(PlanSet.id)))


def _check_plans(plans: Any) -> list[str]:
    if not isinstance(plans, (list, tuple)) or not all(isinstance(p, str) for p in plans):
        raise ValidationError("Plans must be a list of texts.")
    return list(plans)


def set_plans(session: Session, novel_id: int, plans: list[str]) -> PlanSet:
    """Record a new set of proposed plans after the current last paragraph (e.g. from the start stage)."""
    lock_novel(session, novel_id)
    changes = Changes(session, novel_id)
    plan_set = PlanSet(novel_id=novel_id, position=paragraph_count(session, novel_id), plans=_check_plans(plans))
    changes.insert(plan_set)
    record(session, changes, "plans.set", "proposed new plans")
    return plan_set


# ---------------------------------------------------------------------------------------------------------------
# Lore.

def _check_keys(keys: Any) -> list[str]:
    if isinstance(keys, str):
        keys = [k for k in (part.strip() for part in keys.split(",")) if k]
    if not isinstance(keys, (list, tuple)) or not all(isinstance(k, str) for k in keys):
        raise ValidationError("Lore keys must be a list of words or phrases.")
    return [k.strip() for k in keys if k.strip()]


def lore_entries(session: Session, novel_id: int, enabled_only: bool = False) -> list[LoreEntry]:
    query = select(LoreEntry).where(LoreEntry.novel_id == novel_id)
    if enabled_only:
        query = query.where(LoreEntry.enabled.is_(True))
    return list(session.scalars(query.order_by(LoreEntry.id)))


def get_lore(session: Session, lore_id: int) -> LoreEntry:
    return get_row(session, LoreEntry, lore_id, what="lore entry")


def add_lore(session: Session, novel_id: int, name: str, keys: list[str] | str, body: str, always_on: bool = False,
             enabled: bool = True, embedding: Vector | None = None) -> LoreEntry:
    lock_novel(session, novel_id)
    changes = Changes(session, novel_id)
    entry = LoreEntry(novel_id=novel_id, name=_check_text(name, "A lore name"), keys=_check_keys(keys),
                      body=_check_text(body, "A lore body"), always_on=bool(always_on), enabled=bool(enabled),
                      version=1)
    changes.insert(entry)
    if embedding is not None:
        put_embedding(changes, novel_id, vector=embedding, lore_entry_id=entry.id)
    record(session, changes, "lore.add", f"added lore entry {entry.name!r}")
    return entry


def edit_lore(session: Session, lore_id: int, expected_version: int, *, name: str | None = None,
              keys: list[str] | str | None = None, body: str | None = None, always_on: bool | None = None,
              enabled: bool | None = None, embedding: Vector | None = None) -> LoreEntry:
    entry = locked_row(session, LoreEntry, lore_id, what="lore entry")
    check_version("lore entry", entry, expected_version)
    values: dict[str, Any] = {}
    if name is not None:
        values["name"] = _check_text(name, "A lore name")
    if keys is not None:
        values["keys"] = _check_keys(keys)
    if body is not None:
        values["body"] = _check_text(body, "A lore body")
    if always_on is not None:
        values["always_on"] = bool(always_on)
    if enabled is not None:
        values["enabled"] = bool(enabled)
    changes = Changes(session, entry.novel_id)
    changes.update(entry, **values, version=entry.version + 1, updated_at=utcnow())
    if "name" in values or "body" in values or embedding is not None:
        drop_embeddings(changes, lore_entry_id=entry.id, keep=embedding.embedder if embedding else None)
        if embedding is not None:
            put_embedding(changes, entry.novel_id, vector=embedding, lore_entry_id=entry.id)
    record(session, changes, "lore.edit", f"edited lore entry {entry.name!r}")
    return entry


def delete_lore(session: Session, lore_id: int) -> None:
    entry = get_lore(session, lore_id)
    novel_id = entry.novel_id
    lock_novel(session, novel_id)
    changes = Changes(session, novel_id)
    name = entry.name
    drop_embeddings(changes, lore_entry_id=entry.id)
    changes.delete(entry)
    record(session, changes, "lore.delete", f"deleted lore entry {name!r}")


# ---------------------------------------------------------------------------------------------------------------
# One generation step, atomically.

def commit_step(session: Session, novel_id: int, paragraph_text: str, memory_text: str, plans: list[str],
                chosen_plan: int | None, used_plan_text: str | None, embedding: Vector | None,
                origin: str = "generated", *, expected_memory_version: int | None = None,
                expected_paragraph_count: int | None = None, memory_origin: str = "generated") -> StepResult:
    """Save a step's results together: the new paragraph (+ its vector), the new memory version, the choice made
    from the pending plan set, and the next three plans. All or nothing: it runs in the caller's transaction.

    `chosen_plan` is the index in the current plan set (None when the writer typed their own instruction);
    `used_plan_text` is the instruction actually used. The expected_* checks refuse a step generated from a view
    that changed meanwhile (another tab wrote a paragraph or edited the memory). `memory_origin` says how the
    memory was made ("generated" by the model, "extractive" when the engine's fallback assembled it).
    """
    lock_novel(session, novel_id)
    text = _check_text(paragraph_text, "The paragraph")
    count = paragraph_count(session, novel_id)
    if expected_paragraph_count is not None and count != expected_paragraph_count:
        raise ConflictError(f"The novel changed while this step was generated (it now has {count} paragraphs, "
                            f"not {expected_paragraph_count}); the step was not saved.")
    memory_version = _memory_version(session, novel_id)
    if expected_memory_version is not None and memory_version != expected_memory_version:
        raise ConflictError(f"The short-term memory was edited while this step was generated (version "
                            f"{memory_version}, not {expected_memory_version}); the step was not saved.",
                            current_version=memory_version)
    changes = Changes(session, novel_id)
    paragraph = place_paragraph(changes, novel_id=novel_id, text=text, origin=_check_origin(origin), position=None,
                                embedding=embedding)
    memory = ShortTermMemory(novel_id=novel_id, version=memory_version + 1,
                             text=_check_text(memory_text, "The memory"), origin=_check_memory_origin(memory_origin))
    changes.insert(memory)
    pending = current_plans(session, novel_id)
    if pending is not None and pending.paragraph_id is None:
        if chosen_plan is not None and not 0 <= chosen_plan < len(pending.plans):
            raise ValidationError(f"Plan {chosen_plan} does not exist (there are {len(pending.plans)} plans).")
        changes.update(pending, chosen_index=chosen_plan, used_text=used_plan_text, paragraph_id=paragraph.id)
    plan_set = PlanSet(novel_id=novel_id, position=paragraph.position, plans=_check_plans(plans))
    changes.insert(plan_set)
    revision = record(session, changes, "step", f"wrote paragraph {paragraph.position}")
    return StepResult(paragraph=paragraph, memory=memory, plan_set=plan_set, revision=revision)
