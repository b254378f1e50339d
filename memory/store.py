"""Reading and writing a novel: every function takes `session` first; the caller owns the transaction.

Use one transaction per user action, never held open while a model generates:

    with Session() as s, s.begin():
        store.edit_paragraph(s, paragraph_id, text, expected_version=3)

Every write is recorded as one `Revision` (exact before/after rows), so it can be undone and redone. Errors the
user can act on are `StoreError` subclasses with one-line messages: `ConflictError` (a stale view),
`NotFoundError`, `ValidationError`.

Public functions
- novels: create_novel(s, title, premise="", style_notes="", settings=None, memory_text="") -> Novel;
  list_novels(s) -> list[NovelSummary]; get_novel(s, novel_id) -> Novel; rename_novel(s, novel_id, title);
  update_novel(s, novel_id, *, premise=None, style_notes=None); edit_story(s, novel_id, premise, style_notes,
  outline, read) (compare-and-set against what the page read); update_novel_settings(s, novel_id, settings,
  merge=True); delete_novel(s, novel_id)
- paragraphs: paragraphs(s, novel_id) -> list[Paragraph]; get_paragraph(s, paragraph_id);
  paragraph_at(s, novel_id, position); add_paragraph(s, novel_id, text, origin="written", position=None,
  embedding=None) -> Paragraph; edit_paragraph(s, paragraph_id, text, expected_version, embedding=None,
  origin="edited") -> Paragraph; delete_paragraph(s, paragraph_id, expected_version); manuscript_text(s, novel_id)
- short-term memory: current_memory(s, novel_id) -> ShortTermMemory | None; memory_history(s, novel_id);
  set_memory(s, novel_id, text, expected_version, origin="written") -> ShortTermMemory
- plans: current_plans(s, novel_id) -> PlanSet | None; plan_sets(s, novel_id); set_plans(s, novel_id, plans)
  -> PlanSet; edit_plans(s, plan_set_id, plans) -> PlanSet
- lore: lore_entries(s, novel_id, enabled_only=False); get_lore(s, lore_id); add_lore(s, novel_id, name, keys,
  body, always_on=False, enabled=True, embedding=None); edit_lore(s, lore_id, expected_version, *, name=None,
  keys=None, body=None, always_on=None, enabled=None, embedding=None); delete_lore(s, lore_id)
- embeddings: Vector(embedder, values, sentences=None); set_paragraph_embedding(s, paragraph_id, vector);
  set_lore_embedding(s, lore_id, vector); paragraphs_missing_embedding(s, novel_id, embedder) -> list[Paragraph];
  set_sentence_vectors(s, embedding_id, sentences); embeddings_missing_sentences(s, novel_id, embedder)
  (memory.retrieval.embed_missing and backfill_sentences fill every gap with a real Embedder)
- a generation step: commit_step(s, novel_id, paragraph_text, memory_text, plans, chosen_plan, used_plan_text,
  embedding, origin="generated", expected_memory_version=None, expected_paragraph_count=None) -> StepResult
- history: revisions(s, novel_id, include_dropped=False) -> list[Revision]; undo(s, novel_id) -> Revision | None;
  redo(s, novel_id) -> Revision | None; can_undo(s, novel_id); can_redo(s, novel_id)
- rows as JSON-able dicts (used by exchange and history): row_to_dict(obj), row_from_dict(model, data)
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import DateTime, LargeBinary, delete, func, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import flag_modified

from memory.schema import (
    ORIGINS,
    Base,
    Embedding,
    LoreEntry,
    Novel,
    Paragraph,
    PlanSet,
    Revision,
    ShortTermMemory,
    utcnow,
)

MAX_TITLE_CHARS = 500


class StoreError(RuntimeError):
    """A store operation that cannot be done; `str()` is one line saying why."""


class NotFoundError(StoreError):
    pass


class ValidationError(StoreError):
    pass


class ConflictError(StoreError):
    """A write made from a stale view: nothing was written. `current_version` is what the store holds now."""

    def __init__(self, message: str, current_version: int | None = None):
        super().__init__(message)
        self.current_version = current_version


@dataclass(frozen=True)
class Vector:
    """An embedding ready to store: the embedder's name and a 1-D float vector (normalized by the store).

    For a paragraph, `sentences` may hold one vector per sentence of its text ([S, dim], in the order
    memory.retrieval.split_sentences gives), stored beside the paragraph vector as float16."""

    embedder: str
    values: np.ndarray
    sentences: np.ndarray | None = None

    @property
    def dim(self) -> int:
        return int(np.asarray(self.values).shape[-1])


@dataclass(frozen=True)
class NovelSummary:
    id: int
    title: str
    words: int
    paragraphs: int
    last_edited: datetime


@dataclass(frozen=True)
class StepResult:
    paragraph: Paragraph
    memory: ShortTermMemory
    plan_set: PlanSet
    revision: Revision


# ---------------------------------------------------------------------------------------------------------------
# Rows as JSON-able dicts: exact, column by column (datetimes as ISO strings, bytes as base64).

MODELS: dict[str, type[Base]] = {
    m.__tablename__: m for m in (Novel, Paragraph, ShortTermMemory, PlanSet, LoreEntry, Revision, Embedding)
}
# Fields that change as side effects and are not part of a row's user-visible state.
# Sentence vectors too: they are derived from the paragraph's text, and memory.retrieval.backfill_sentences fills
# them in place on rows that older versions saved without them, which must not make those rows' history conflict.
_VOLATILE = {"novels": {"uid", "embedding_epoch", "updated_at"}, "embeddings": {"sentence_vectors"}}
# Of those, never written back by undo/redo (they identify the row or track caches, not the story).
_KEEP_ON_RESTORE = {"uid", "embedding_epoch"}


def row_to_dict(obj: Base) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for column in obj.__table__.columns:
        value = getattr(obj, column.key)
        if value is not None and isinstance(column.type, DateTime):
            value = value.isoformat()
        elif value is not None and isinstance(column.type, LargeBinary):
            value = base64.b64encode(value).decode("ascii")
        out[column.key] = value
    return out


def row_values(model: type[Base], data: dict[str, Any]) -> dict[str, Any]:
    """Column values for `model` from a `row_to_dict` dict (types restored)."""
    values: dict[str, Any] = {}
    for column in model.__table__.columns:
        if column.key not in data:
            continue
        value = data[column.key]
        if value is not None and isinstance(column.type, DateTime):
            value = datetime.fromisoformat(value)
        elif value is not None and isinstance(column.type, LargeBinary):
            value = base64.b64decode(value)
        values[column.key] = value
    return values


def row_from_dict(model: type[Base], data: dict[str, Any]) -> Base:
    return model(**row_values(model, data))


def _same_row(entity: str, a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    if a is None or b is None:
        return a is b
    skip = _VOLATILE.get(entity, set())
    return {k: v for k, v in a.items() if k not in skip} == {k: v for k, v in b.items() if k not in skip}


# ---------------------------------------------------------------------------------------------------------------
# Recording changes as one revision.

class _Changes:
    def __init__(self, session: Session, novel_id: int):
        self.session = session
        self.novel_id = novel_id
        self.items: list[dict[str, Any]] = []
        self.embeddings_changed = False

    def _note(self, entity: str, row_id: int, before, after) -> None:
        self.items.append({"entity": entity, "id": row_id, "before": before, "after": after})
        if entity == "embeddings":
            self.embeddings_changed = True

    def insert(self, obj: Base) -> None:
        self.session.add(obj)
        self.session.flush()
        self._note(obj.__tablename__, obj.id, None, row_to_dict(obj))

    def update(self, obj: Base, **values: Any) -> None:
        before = row_to_dict(obj)
        for key, value in values.items():
            setattr(obj, key, value)
        self.session.flush()
        self._note(obj.__tablename__, obj.id, before, row_to_dict(obj))

    def delete(self, obj: Base) -> None:
        before = row_to_dict(obj)
        self.session.delete(obj)
        self.session.flush()
        self._note(obj.__tablename__, before["id"], before, None)

    def shift(self, start: int, delta: int) -> None:
        _shift_positions(self.session, self.novel_id, start, delta)
        self.items.append({"entity": "shift", "from": start, "delta": delta})


def _shift_positions(session: Session, novel_id: int, start: int, delta: int) -> None:
    """Add `delta` to every paragraph position >= start, without tripping UNIQUE(novel_id, position) midway.

    A move is not an edit: `updated_at` is set to itself so its on-update default does not fire."""
    session.flush()
    session.execute(update(Paragraph).where(Paragraph.novel_id == novel_id, Paragraph.position >= start)
                    .values(position=-Paragraph.position, updated_at=Paragraph.updated_at)
                    .execution_options(synchronize_session=False))
    session.execute(update(Paragraph).where(Paragraph.novel_id == novel_id, Paragraph.position < 0)
                    .values(position=-Paragraph.position + delta, updated_at=Paragraph.updated_at)
                    .execution_options(synchronize_session=False))
    # The ORM's copies of shifted rows are stale now.
    for obj in list(session.identity_map.values()):
        if isinstance(obj, Paragraph) and obj.novel_id == novel_id:
            session.expire(obj, ["position"])


def _record(session: Session, changes: _Changes, kind: str, cause: str) -> Revision:
    novel_id = changes.novel_id
    # A new action ends the redo chain.
    session.execute(update(Revision).where(Revision.novel_id == novel_id, Revision.state == "undone")
                    .values(state="dropped").execution_options(synchronize_session=False))
    revision = Revision(novel_id=novel_id, seq=_next_seq(session, novel_id), kind=kind, cause=cause,
                        changes=changes.items, state="done")
    session.add(revision)
    _touch_novel(session, novel_id, embeddings=changes.embeddings_changed)
    session.flush()
    return revision


def _next_seq(session: Session, novel_id: int) -> int:
    return (session.scalar(select(func.max(Revision.seq)).where(Revision.novel_id == novel_id)) or 0) + 1


def _touch_novel(session: Session, novel_id: int, *, embeddings: bool = False) -> None:
    values: dict[str, Any] = {"updated_at": utcnow()}
    if embeddings:
        values["embedding_epoch"] = Novel.embedding_epoch + 1
    session.execute(update(Novel).where(Novel.id == novel_id).values(**values)
                    .execution_options(synchronize_session=False))
    novel = session.get(Novel, novel_id)
    if novel is not None:
        session.expire(novel, ["updated_at", "embedding_epoch"])


def _lock_novel(session: Session, novel_id: int) -> Novel:
    """Load the novel for writing; on PostgreSQL this row lock serializes writers of one novel (SQLite's
    BEGIN IMMEDIATE already serializes all writers)."""
    novel = session.execute(select(Novel).where(Novel.id == novel_id).with_for_update()).scalar_one_or_none()
    if novel is None:
        raise NotFoundError(f"No novel with id {novel_id}: it may have been deleted in another tab.")
    return novel


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


def _check_origin(origin: str) -> str:
    if origin not in ORIGINS:
        raise ValidationError(f"Paragraph origin must be one of {', '.join(ORIGINS)}, got {origin!r}.")
    return origin


def _word_count(text: str) -> int:
    return len(text.split())


def _vector_bytes(vector: Vector) -> tuple[bytes, int]:
    values = np.asarray(vector.values, dtype=np.float32).reshape(-1)
    if values.size == 0 or not np.all(np.isfinite(values)):
        raise ValidationError("An embedding must be a non-empty vector of finite numbers.")
    norm = float(np.linalg.norm(values))
    if norm == 0.0:
        raise ValidationError("An embedding must not be all zeros.")
    values = (values / norm).astype("<f4")
    return values.tobytes(), int(values.size)


def sentence_bytes(sentences: np.ndarray | None, dim: int) -> bytes | None:
    """[S, dim] vectors as float16 bytes, each row unit-length; None stays None. float16 halves the storage and
    loses nothing retrieval can see (bench/results/recall.json compares the rankings with float32)."""
    if sentences is None:
        return None
    values = np.asarray(sentences, dtype=np.float32)
    if values.ndim != 2 or values.shape[0] == 0 or values.shape[1] != dim:
        raise ValidationError(f"Sentence vectors must be a [sentences, {dim}] matrix, got shape "
                              f"{list(values.shape)}.")
    norms = np.linalg.norm(values, axis=1, keepdims=True)
    if not np.all(np.isfinite(values)) or not np.all(norms > 0):
        raise ValidationError("Sentence vectors must be finite and non-zero.")
    return (values / norms).astype("<f2").tobytes()


# ---------------------------------------------------------------------------------------------------------------
# Novels.

def create_novel(session: Session, title: str, premise: str = "", style_notes: str = "",
                 settings: dict[str, Any] | None = None, memory_text: str = "") -> Novel:
    novel = Novel(title=_check_title(title), premise=_check_text(premise, "The premise"),
                  style_notes=_check_text(style_notes, "The style notes"), settings=dict(settings or {}))
    session.add(novel)
    session.flush()
    changes = _Changes(session, novel.id)
    changes.insert(ShortTermMemory(novel_id=novel.id, version=1, text=_check_text(memory_text, "The memory"),
                                   origin="written"))
    _record(session, changes, "novel.create", "created the novel")
    return novel


def get_novel(session: Session, novel_id: int) -> Novel:
    novel = session.get(Novel, novel_id)
    if novel is None:
        raise NotFoundError(f"No novel with id {novel_id}: it may have been deleted in another tab.")
    return novel


def list_novels(session: Session) -> list[NovelSummary]:
    """Every novel with its word and paragraph counts, most recently edited first."""
    counts = (select(Paragraph.novel_id, func.count(Paragraph.id).label("n"),
                     func.coalesce(func.sum(Paragraph.words), 0).label("w"))
              .group_by(Paragraph.novel_id).subquery())
    rows = session.execute(
        select(Novel.id, Novel.title, Novel.updated_at, counts.c.n, counts.c.w)
        .outerjoin(counts, counts.c.novel_id == Novel.id)
        .order_by(Novel.updated_at.desc(), Novel.id.desc())
    ).all()
    return [NovelSummary(id=r.id, title=r.title, words=int(r.w or 0), paragraphs=int(r.n or 0),
                         last_edited=r.updated_at) for r in rows]


def rename_novel(session: Session, novel_id: int, title: str) -> Novel:
    novel = _lock_novel(session, novel_id)
    changes = _Changes(session, novel_id)
    changes.update(novel, title=_check_title(title))
    _record(session, changes, "novel.rename", f"renamed the novel to {novel.title!r}")
    return novel


def update_novel(session: Session, novel_id: int, *, premise: str | None = None,
                 style_notes: str | None = None) -> Novel:
    novel = _lock_novel(session, novel_id)
    values: dict[str, Any] = {}
    if premise is not None:
        values["premise"] = _check_text(premise, "The premise")
    if style_notes is not None:
        values["style_notes"] = _check_text(style_notes, "The style notes")
    if values:
        changes = _Changes(session, novel_id)
        changes.update(novel, **values)
        _record(session, changes, "novel.edit", "edited " + " and ".join(k.replace("_", " ") for k in values))
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
    novel = _lock_novel(session, novel_id)
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
    changes = _Changes(session, novel_id)
    changes.update(novel, premise=new["premise"], style_notes=new["style_notes"],
                   settings={**(novel.settings or {}), "outline": new["outline"]})
    _record(session, changes, "novel.edit", "edited the " + " and the ".join(n.replace("_", " ") for n in changed))
    return novel


def update_novel_settings(session: Session, novel_id: int, settings: dict[str, Any], merge: bool = True) -> Novel:
    """Replace (or, with merge, update top-level keys of) the novel's settings JSON."""
    if not isinstance(settings, dict):
        raise ValidationError(f"Settings must be a mapping, got {type(settings).__name__}.")
    novel = _lock_novel(session, novel_id)
    new_settings = {**(novel.settings or {}), **settings} if merge else dict(settings)
    changes = _Changes(session, novel_id)
    changes.update(novel, settings=new_settings)
    _record(session, changes, "novel.settings", "changed settings: " + (", ".join(sorted(settings)) or "none"))
    return novel


def delete_novel(session: Session, novel_id: int) -> None:
    """Delete a novel and everything in it (not undoable: take a backup first, see memory.backup)."""
    _lock_novel(session, novel_id)
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
    paragraph = session.get(Paragraph, paragraph_id)
    if paragraph is None:
        raise NotFoundError(f"No paragraph with id {paragraph_id}: it may have been deleted in another tab.")
    return paragraph


def paragraph_at(session: Session, novel_id: int, position: int) -> Paragraph | None:
    return session.scalar(select(Paragraph).where(Paragraph.novel_id == novel_id, Paragraph.position == position))


def paragraph_count(session: Session, novel_id: int) -> int:
    return int(session.scalar(select(func.count(Paragraph.id)).where(Paragraph.novel_id == novel_id)) or 0)


def manuscript_text(session: Session, novel_id: int, separator: str = "\n\n") -> str:
    return separator.join(p.text for p in paragraphs(session, novel_id))


def _put_embedding(changes: _Changes, novel_id: int, *, vector: Vector, paragraph_id: int | None = None,
                   lore_entry_id: int | None = None) -> None:
    data, dim = _vector_bytes(vector)
    session = changes.session
    owner = Embedding.paragraph_id == paragraph_id if paragraph_id is not None \
        else Embedding.lore_entry_id == lore_entry_id
    existing = session.scalar(select(Embedding).where(owner, Embedding.embedder == vector.embedder))
    # Vectors are never changed in place: a new one gets a new row id, so an id always names the same vector
    # (the retrieval cache relies on it).
    if existing is not None:
        changes.delete(existing)
    changes.insert(Embedding(novel_id=novel_id, paragraph_id=paragraph_id, lore_entry_id=lore_entry_id,
                             embedder=vector.embedder, dim=dim, vector=data,
                             sentence_vectors=sentence_bytes(vector.sentences, dim) if paragraph_id else None))


def _drop_embeddings(changes: _Changes, *, paragraph_id: int | None = None, lore_entry_id: int | None = None,
                     keep: str | None = None) -> None:
    owner = Embedding.paragraph_id == paragraph_id if paragraph_id is not None \
        else Embedding.lore_entry_id == lore_entry_id
    for embedding in list(changes.session.scalars(select(Embedding).where(owner).order_by(Embedding.id))):
        if embedding.embedder != keep:
            changes.delete(embedding)


def add_paragraph(session: Session, novel_id: int, text: str, origin: str = "written", position: int | None = None,
                  embedding: Vector | None = None) -> Paragraph:
    """Append a paragraph, or insert it at `position` (1-based), moving later ones down."""
    _lock_novel(session, novel_id)
    changes = _Changes(session, novel_id)
    paragraph = _add_paragraph(changes, novel_id, _check_text(text, "A paragraph"), _check_origin(origin), position)
    if embedding is not None:
        _put_embedding(changes, novel_id, vector=embedding, paragraph_id=paragraph.id)
    where = "at the end" if position is None else f"at position {paragraph.position}"
    _record(session, changes, "paragraph.add", f"added a paragraph {where}")
    return paragraph


def _add_paragraph(changes: _Changes, novel_id: int, text: str, origin: str, position: int | None) -> Paragraph:
    count = paragraph_count(changes.session, novel_id)
    if position is None or position > count:
        position = count + 1
    elif position < 1:
        raise ValidationError(f"Paragraph positions start at 1, got {position}.")
    else:
        changes.shift(position, +1)
    paragraph = Paragraph(novel_id=novel_id, position=position, text=text, words=_word_count(text), origin=origin,
                          version=1)
    changes.insert(paragraph)
    return paragraph


def _check_version(kind: str, obj: Any, expected_version: int | None) -> None:
    if expected_version is None:
        raise ValidationError(f"Editing a {kind} needs the version you started from (expected_version).")
    if obj.version != expected_version:
        where = f" {obj.position}" if isinstance(obj, Paragraph) else ""
        raise ConflictError(
            f"{kind.capitalize()}{where} was changed elsewhere since you opened it (your copy is version "
            f"{expected_version}, the saved one is version {obj.version}); nothing was saved: reload it and "
            "apply your change again.", current_version=obj.version)


def edit_paragraph(session: Session, paragraph_id: int, text: str, expected_version: int,
                   embedding: Vector | None = None, origin: str = "edited") -> Paragraph:
    """Replace a paragraph's text if nobody changed it since `expected_version`; else raise ConflictError.

    The old embedding is removed unless a new one is given (retrieval never uses a vector of stale text).
    """
    text = _check_text(text, "A paragraph")
    paragraph = get_paragraph(session, paragraph_id)
    _lock_novel(session, paragraph.novel_id)
    session.refresh(paragraph)
    _check_version("paragraph", paragraph, expected_version)
    changes = _Changes(session, paragraph.novel_id)
    changes.update(paragraph, text=text, words=_word_count(text), origin=_check_origin(origin),
                   version=paragraph.version + 1, updated_at=utcnow())
    _drop_embeddings(changes, paragraph_id=paragraph.id, keep=embedding.embedder if embedding else None)
    if embedding is not None:
        _put_embedding(changes, paragraph.novel_id, vector=embedding, paragraph_id=paragraph.id)
    _record(session, changes, "paragraph.edit", f"edited paragraph {paragraph.position}")
    return paragraph


def delete_paragraph(session: Session, paragraph_id: int, expected_version: int) -> None:
    paragraph = get_paragraph(session, paragraph_id)
    novel_id = paragraph.novel_id
    _lock_novel(session, novel_id)
    session.refresh(paragraph)
    _check_version("paragraph", paragraph, expected_version)
    position = paragraph.position
    changes = _Changes(session, novel_id)
    for plan_set in session.scalars(select(PlanSet).where(PlanSet.paragraph_id == paragraph.id)):
        changes.update(plan_set, paragraph_id=None)
    _drop_embeddings(changes, paragraph_id=paragraph.id)
    changes.delete(paragraph)
    changes.shift(position + 1, -1)
    _record(session, changes, "paragraph.delete", f"deleted paragraph {position}")


def set_paragraph_embedding(session: Session, paragraph_id: int, vector: Vector) -> None:
    """Store (or replace) a paragraph's vector for `vector.embedder`; not an undoable user action."""
    paragraph = get_paragraph(session, paragraph_id)
    data, dim = _vector_bytes(vector)
    existing = session.scalar(select(Embedding).where(Embedding.paragraph_id == paragraph_id,
                                                      Embedding.embedder == vector.embedder))
    if existing is not None:
        session.delete(existing)
        session.flush()
    session.add(Embedding(novel_id=paragraph.novel_id, paragraph_id=paragraph_id, embedder=vector.embedder,
                          dim=dim, vector=data, sentence_vectors=sentence_bytes(vector.sentences, dim)))
    session.flush()
    _touch_novel(session, paragraph.novel_id, embeddings=True)


def set_sentence_vectors(session: Session, embedding_id: int, sentences: np.ndarray) -> bool:
    """Fill in the sentence vectors of a paragraph vector saved without them (in place, not an undoable action:
    they are derived from the text the row already belongs to). False when the row is gone or already has them
    (an edit or another backfill got there first: the vectors made for it are not needed)."""
    embedding = session.get(Embedding, embedding_id)
    if embedding is None or embedding.paragraph_id is None or embedding.sentence_vectors is not None:
        return False
    embedding.sentence_vectors = sentence_bytes(sentences, embedding.dim)
    session.flush()
    _touch_novel(session, embedding.novel_id, embeddings=True)
    return True


def embeddings_missing_sentences(session: Session, novel_id: int, embedder: str) -> list[tuple[Embedding, Paragraph]]:
    """Paragraph vectors of this embedder that have no sentence vectors yet, with their paragraphs, in order."""
    return [(e, p) for e, p in session.execute(
        select(Embedding, Paragraph).join(Paragraph, Paragraph.id == Embedding.paragraph_id)
        .where(Embedding.novel_id == novel_id, Embedding.embedder == embedder,
               Embedding.sentence_vectors.is_(None)).order_by(Paragraph.position)).tuples()]


def paragraphs_missing_embedding(session: Session, novel_id: int, embedder: str) -> list[Paragraph]:
    have = select(Embedding.paragraph_id).where(Embedding.novel_id == novel_id, Embedding.embedder == embedder,
                                                Embedding.paragraph_id.is_not(None))
    return list(session.scalars(select(Paragraph).where(Paragraph.novel_id == novel_id, Paragraph.id.not_in(have))
                                .order_by(Paragraph.position)))


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
               origin: str = "written") -> ShortTermMemory:
    """Save a new version of the running summary if the current one is still `expected_version`."""
    _lock_novel(session, novel_id)
    current = _memory_version(session, novel_id)
    if expected_version != current:
        raise ConflictError(
            f"The short-term memory was changed elsewhere (your copy is version {expected_version}, the saved one "
            f"is version {current}); nothing was saved: reload it and apply your change again.",
            current_version=current)
    changes = _Changes(session, novel_id)
    memory = ShortTermMemory(novel_id=novel_id, version=current + 1, text=_check_text(text, "The memory"),
                             origin=origin)
    changes.insert(memory)
    _record(session, changes, "memory.set", "edited the short-term memory")
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
    _lock_novel(session, novel_id)
    changes = _Changes(session, novel_id)
    plan_set = PlanSet(novel_id=novel_id, position=paragraph_count(session, novel_id), plans=_check_plans(plans))
    changes.insert(plan_set)
    _record(session, changes, "plans.set", "proposed new plans")
    return plan_set


def edit_plans(session: Session, plan_set_id: int, plans: list[str]) -> PlanSet:
    plan_set = session.get(PlanSet, plan_set_id)
    if plan_set is None:
        raise NotFoundError(f"No plan set with id {plan_set_id}.")
    _lock_novel(session, plan_set.novel_id)
    changes = _Changes(session, plan_set.novel_id)
    changes.update(plan_set, plans=_check_plans(plans))
    _record(session, changes, "plans.edit", "edited the plans")
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
    entry = session.get(LoreEntry, lore_id)
    if entry is None:
        raise NotFoundError(f"No lore entry with id {lore_id}: it may have been deleted in another tab.")
    return entry


def add_lore(session: Session, novel_id: int, name: str, keys: list[str] | str, body: str, always_on: bool = False,
             enabled: bool = True, embedding: Vector | None = None) -> LoreEntry:
    _lock_novel(session, novel_id)
    changes = _Changes(session, novel_id)
    entry = LoreEntry(novel_id=novel_id, name=_check_text(name, "A lore name"), keys=_check_keys(keys),
                      body=_check_text(body, "A lore body"), always_on=bool(always_on), enabled=bool(enabled),
                      version=1)
    changes.insert(entry)
    if embedding is not None:
        _put_embedding(changes, novel_id, vector=embedding, lore_entry_id=entry.id)
    _record(session, changes, "lore.add", f"added lore entry {entry.name!r}")
    return entry


def edit_lore(session: Session, lore_id: int, expected_version: int, *, name: str | None = None,
              keys: list[str] | str | None = None, body: str | None = None, always_on: bool | None = None,
              enabled: bool | None = None, embedding: Vector | None = None) -> LoreEntry:
    entry = get_lore(session, lore_id)
    _lock_novel(session, entry.novel_id)
    session.refresh(entry)
    _check_version("lore entry", entry, expected_version)
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
    changes = _Changes(session, entry.novel_id)
    changes.update(entry, **values, version=entry.version + 1, updated_at=utcnow())
    if "name" in values or "body" in values or embedding is not None:
        _drop_embeddings(changes, lore_entry_id=entry.id, keep=embedding.embedder if embedding else None)
        if embedding is not None:
            _put_embedding(changes, entry.novel_id, vector=embedding, lore_entry_id=entry.id)
    _record(session, changes, "lore.edit", f"edited lore entry {entry.name!r}")
    return entry


def delete_lore(session: Session, lore_id: int) -> None:
    entry = get_lore(session, lore_id)
    novel_id = entry.novel_id
    _lock_novel(session, novel_id)
    changes = _Changes(session, novel_id)
    name = entry.name
    _drop_embeddings(changes, lore_entry_id=entry.id)
    changes.delete(entry)
    _record(session, changes, "lore.delete", f"deleted lore entry {name!r}")


def set_lore_embedding(session: Session, lore_id: int, vector: Vector) -> None:
    entry = get_lore(session, lore_id)
    data, dim = _vector_bytes(vector)
    existing = session.scalar(select(Embedding).where(Embedding.lore_entry_id == lore_id,
                                                      Embedding.embedder == vector.embedder))
    if existing is not None:
        session.delete(existing)
        session.flush()
    session.add(Embedding(novel_id=entry.novel_id, lore_entry_id=lore_id, embedder=vector.embedder, dim=dim,
                          vector=data))
    session.flush()


# ---------------------------------------------------------------------------------------------------------------
# One generation step, atomically.

def commit_step(session: Session, novel_id: int, paragraph_text: str, memory_text: str, plans: list[str],
                chosen_plan: int | None, used_plan_text: str | None, embedding: Vector | None,
                origin: str = "generated", *, expected_memory_version: int | None = None,
                expected_paragraph_count: int | None = None) -> StepResult:
    """Save a step's results together: the new paragraph (+ its vector), the new memory version, the choice made
    from the pending plan set, and the next three plans. All or nothing: it runs in the caller's transaction.

    `chosen_plan` is the index in the current plan set (None when the writer typed their own instruction);
    `used_plan_text` is the instruction actually used. The expected_* checks refuse a step generated from a view
    that changed meanwhile (another tab wrote a paragraph or edited the memory).
    """
    _lock_novel(session, novel_id)
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
    changes = _Changes(session, novel_id)
    paragraph = _add_paragraph(changes, novel_id, text, _check_origin(origin), None)
    if embedding is not None:
        _put_embedding(changes, novel_id, vector=embedding, paragraph_id=paragraph.id)
    memory = ShortTermMemory(novel_id=novel_id, version=memory_version + 1,
                             text=_check_text(memory_text, "The memory"), origin="generated")
    changes.insert(memory)
    pending = current_plans(session, novel_id)
    if pending is not None and pending.paragraph_id is None:
        if chosen_plan is not None and not 0 <= chosen_plan < len(pending.plans):
            raise ValidationError(f"Plan {chosen_plan} does not exist (there are {len(pending.plans)} plans).")
        changes.update(pending, chosen_index=chosen_plan, used_text=used_plan_text, paragraph_id=paragraph.id)
    plan_set = PlanSet(novel_id=novel_id, position=paragraph.position, plans=_check_plans(plans))
    changes.insert(plan_set)
    revision = _record(session, changes, "step", f"wrote paragraph {paragraph.position}")
    return StepResult(paragraph=paragraph, memory=memory, plan_set=plan_set, revision=revision)


# ---------------------------------------------------------------------------------------------------------------
# History: undo and redo.

def revisions(session: Session, novel_id: int, include_dropped: bool = False) -> list[Revision]:
    query = select(Revision).where(Revision.novel_id == novel_id)
    if not include_dropped:
        query = query.where(Revision.state != "dropped")
    return list(session.scalars(query.order_by(Revision.seq)))


def _last_done(session: Session, novel_id: int) -> Revision | None:
    return session.scalar(select(Revision).where(Revision.novel_id == novel_id, Revision.state == "done",
                                                 Revision.kind != "novel.create")
                          .order_by(Revision.seq.desc()).limit(1))


def _first_undone(session: Session, novel_id: int) -> Revision | None:
    return session.scalar(select(Revision).where(Revision.novel_id == novel_id, Revision.state == "undone")
                          .order_by(Revision.seq).limit(1))


def can_undo(session: Session, novel_id: int) -> bool:
    return _last_done(session, novel_id) is not None


def can_redo(session: Session, novel_id: int) -> bool:
    return _first_undone(session, novel_id) is not None


def undo(session: Session, novel_id: int) -> Revision | None:
    """Undo the newest action still in effect, restoring every row it touched exactly; None if nothing to undo."""
    _lock_novel(session, novel_id)
    revision = _last_done(session, novel_id)
    if revision is None:
        return None
    embeddings = _apply(session, novel_id, list(reversed(revision.changes)), forward=False, cause=revision.cause)
    revision.state = "undone"
    _touch_novel(session, novel_id, embeddings=embeddings)
    session.flush()
    return revision


def redo(session: Session, novel_id: int) -> Revision | None:
    """Redo the oldest undone action; None if there is nothing to redo."""
    _lock_novel(session, novel_id)
    revision = _first_undone(session, novel_id)
    if revision is None:
        return None
    embeddings = _apply(session, novel_id, list(revision.changes), forward=True, cause=revision.cause)
    revision.state = "done"
    _touch_novel(session, novel_id, embeddings=embeddings)
    session.flush()
    return revision


def _apply(session: Session, novel_id: int, changes: list[dict[str, Any]], *, forward: bool, cause: str) -> bool:
    embeddings = False
    for change in changes:
        if change["entity"] == "shift":
            start, delta = change["from"], change["delta"]
            if forward:
                _shift_positions(session, novel_id, start, delta)
            else:
                _shift_positions(session, novel_id, start + delta, -delta)
            continue
        entity = change["entity"]
        model = MODELS[entity]
        expect, target = (change["before"], change["after"]) if forward else (change["after"], change["before"])
        session.flush()
        obj = session.get(model, change["id"], populate_existing=True)
        current = row_to_dict(obj) if obj is not None else None
        if not _same_row(entity, current, expect):
            verb = "redo" if forward else "undo"
            raise ConflictError(f"Cannot {verb} {cause!r}: what it changed was changed again in a way the history "
                                "does not explain; nothing was changed.")
        if target is None:
            session.delete(obj)
        elif obj is None:
            session.add(row_from_dict(model, target))
        else:
            for key, value in row_values(model, target).items():
                if key in _KEEP_ON_RESTORE:
                    continue
                setattr(obj, key, value)
            if "updated_at" in target:
                # Written even when equal, so the column's on-update default cannot replace the restored value.
                flag_modified(obj, "updated_at")
        session.flush()
        embeddings = embeddings or entity == "embeddings"
    return embeddings
