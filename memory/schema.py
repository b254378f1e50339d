"""The ORM schema of a novel: every table Longhand persists, as SQLAlchemy 2 `DeclarativeBase` + `Mapped[]` classes.

Owns table and column definitions only; reading and writing goes through `memory.store` (the history in
`memory.revisions`, vectors in `memory.embeddings`). Timestamps are naive UTC (`utcnow()`), so values round-trip
identically on SQLite and PostgreSQL. Text columns use `SafeText`, which keeps NUL characters on PostgreSQL (whose
`text` type refuses them) by a reversible escape.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

# Origins of a paragraph's current text.
ORIGINS = ("generated", "written", "edited", "imported")
# How a memory version was made: by the model, by the writer (or an import), or by the engine's extractive fallback
# (the old memory plus the new paragraph's most salient sentence) when the model's rewrites failed validation.
MEMORY_ORIGINS = ("generated", "written", "edited", "imported", "extractive")
# How an alternative version of a paragraph was made (memory/alternatives.py): one of several candidates of a step,
# the text a Retry replaced, an "Another version", a rewrite on request, or a version that was in the manuscript
# until another was picked ("swapped").
ALTERNATIVE_KINDS = ("candidate", "retry", "version", "rewrite", "swapped")

# Escape character for NUL on PostgreSQL: DLE (U+0010) doubles itself, NUL becomes DLE + "0".
_ESC = "\x10"


_ESCAPED = re.compile(re.escape(_ESC) + "(.)", re.DOTALL)


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def new_uid() -> str:
    return uuid.uuid4().hex


def escape_nul(text: str) -> str:
    if _ESC not in text and "\x00" not in text:
        return text
    return text.replace(_ESC, _ESC + _ESC).replace("\x00", _ESC + "0")


def unescape_nul(text: str) -> str:
    if _ESC not in text:
        return text
    return _ESCAPED.sub(lambda m: "\x00" if m.group(1) == "0" else m.group(1), text)


class SafeText(TypeDecorator):
    """Unlimited text that keeps every character, NUL included, on every backend."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect) -> str | None:
        if value is None or dialect.name != "postgresql":
            return value
        return escape_nul(value)

    def process_result_value(self, value: str | None, dialect) -> str | None:
        if value is None or dialect.name != "postgresql":
            return value
        return unescape_nul(value)


class SafeJSON(TypeDecorator):
    """JSON whose strings may hold NUL on PostgreSQL too (`json` keeps `\\u0000`; we escape anyway for `jsonb`)."""

    impl = JSON
    cache_ok = True

    def process_bind_param(self, value: Any, dialect) -> Any:
        if value is None or dialect.name != "postgresql":
            return value
        return _map_strings(value, escape_nul)

    def process_result_value(self, value: Any, dialect) -> Any:
        if value is None or dialect.name != "postgresql":
            return value
        return _map_strings(value, unescape_nul)


def _map_strings(value: Any, fn) -> Any:
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, list):
        return [_map_strings(v, fn) for v in value]
    if isinstance(value, dict):
        return {fn(k): _map_strings(v, fn) for k, v in value.items()}
    return value


intpk = Annotated[int, mapped_column(Integer, primary_key=True, autoincrement=True)]
novel_fk = Annotated[int, mapped_column(ForeignKey("novels.id", ondelete="CASCADE"), index=True)]
created = Annotated[datetime, mapped_column(DateTime, default=utcnow)]
updated = Annotated[datetime, mapped_column(DateTime, default=utcnow, onupdate=utcnow)]
text_col = Annotated[str, mapped_column(SafeText, default="")]

# Stable constraint names so migrations can refer to them on every backend.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


# SQLite AUTOINCREMENT on every table: an id, once used, is never reused, as with PostgreSQL's sequences. The
# history and the JSON import rely on it (a deleted row's id in a revision must never name a different row).
AUTOINCREMENT = {"sqlite_autoincrement": True}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {str: SafeText, dict[str, Any]: SafeJSON, list[str]: SafeJSON}


class Novel(Base):
    __tablename__ = "novels"
    __table_args__ = AUTOINCREMENT

    id: Mapped[intpk]
    uid: Mapped[str] = mapped_column(String(32), default=new_uid, unique=True)
    title: Mapped[text_col]
    premise: Mapped[text_col]
    style_notes: Mapped[text_col]
    # {"model": ..., "sampling": {...}, "penalties": {...}, "retrieval": {...}, ...}: owned by app/.
    settings: Mapped[dict[str, Any]] = mapped_column(SafeJSON, default=dict)
    # Bumped whenever any embedding of this novel changes, so retrieval caches know when to reload.
    embedding_epoch: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[created]
    updated_at: Mapped[updated]

    chapters: Mapped[list[Chapter]] = relationship(
        back_populates="novel", order_by="Chapter.position", cascade="all, delete-orphan", passive_deletes=True)
    paragraphs: Mapped[list[Paragraph]] = relationship(
        back_populates="novel", order_by="Paragraph.position", cascade="all, delete-orphan", passive_deletes=True)
    memories: Mapped[list[ShortTermMemory]] = relationship(
        back_populates="novel", order_by="ShortTermMemory.version", cascade="all, delete-orphan",
        passive_deletes=True)
    plan_sets: Mapped[list[PlanSet]] = relationship(
        back_populates="novel", order_by="PlanSet.id", cascade="all, delete-orphan", passive_deletes=True)
    lore_entries: Mapped[list[LoreEntry]] = relationship(
        back_populates="novel", order_by="LoreEntry.id", cascade="all, delete-orphan", passive_deletes=True)
    revisions: Mapped[list[Revision]] = relationship(
        back_populates="novel", order_by="Revision.seq", cascade="all, delete-orphan", passive_deletes=True)
    snapshots: Mapped[list[StateSnapshot]] = relationship(
        back_populates="novel", cascade="all, delete-orphan", passive_deletes=True)


class Chapter(Base):
    """A chapter: a title, a place in the book, and whether the writer closed it (its summary is then written).

    Its paragraphs are contiguous in the manuscript: every paragraph of chapter k comes before every paragraph of
    chapter k+1 (memory.store keeps this when it moves or reorders), so `Paragraph.position` stays the one reading
    order the engine, retrieval and the recurrent-state snapshots use. `position` is not UNIQUE, so a reorder can
    be recorded (and undone) row by row. `summary_stale` is set when a paragraph of a closed chapter changes after
    its summary was written.
    """

    __tablename__ = "chapters"
    __table_args__ = (Index("ix_chapters_novel_position", "novel_id", "position"), AUTOINCREMENT)

    id: Mapped[intpk]
    novel_id: Mapped[novel_fk]
    position: Mapped[int]  # 1-based order in the book
    title: Mapped[text_col]
    closed: Mapped[bool] = mapped_column(Boolean, default=False)
    summary_stale: Mapped[bool] = mapped_column(Boolean, default=False)
    version: Mapped[int] = mapped_column(Integer, default=1)  # optimistic concurrency for renames
    created_at: Mapped[created]
    updated_at: Mapped[updated]

    novel: Mapped[Novel] = relationship(back_populates="chapters")
    paragraphs: Mapped[list[Paragraph]] = relationship(
        back_populates="chapter", order_by="Paragraph.position", passive_deletes=True)
    summaries: Mapped[list[ChapterSummary]] = relationship(
        back_populates="chapter", order_by="ChapterSummary.version", cascade="all, delete-orphan",
        passive_deletes=True)


class Paragraph(Base):
    __tablename__ = "paragraphs"
    __table_args__ = (
        UniqueConstraint("novel_id", "position"),
        CheckConstraint("version >= 1", name="version_positive"),
        AUTOINCREMENT,
    )

    id: Mapped[intpk]
    novel_id: Mapped[novel_fk]
    # Nullable, and without ON DELETE, only because SQLite cannot add a NOT NULL foreign key to an existing table
    # without rebuilding it (which would cascade-delete its embeddings), and SQLAlchemy does not read back the
    # options of a key added by ALTER TABLE. memory.store sets it on every paragraph it writes and deletes a
    # chapter's paragraphs itself; a novel's delete cascades to both through novel_id.
    chapter_id: Mapped[int | None] = mapped_column(ForeignKey("chapters.id"), nullable=True, index=True)
    position: Mapped[int]  # 1-based order in the manuscript
    text: Mapped[text_col]
    words: Mapped[int] = mapped_column(Integer, default=0)  # len(text.split()), kept for the library's totals
    origin: Mapped[str] = mapped_column(String(16), default="written")  # one of ORIGINS
    version: Mapped[int] = mapped_column(Integer, default=1)  # optimistic concurrency: bumped on every edit
    created_at: Mapped[created]
    updated_at: Mapped[updated]

    novel: Mapped[Novel] = relationship(back_populates="paragraphs")
    chapter: Mapped[Chapter | None] = relationship(back_populates="paragraphs")
    embeddings: Mapped[list[Embedding]] = relationship(
        back_populates="paragraph", cascade="all, delete-orphan", passive_deletes=True)


class Alternative(Base):
    """Another version of a paragraph, kept beside it (memory/alternatives.py): the writer can swap it in.

    `paragraph_id` None: a pending version (a finished step the store refused, or one whose paragraph was deleted),
    waiting at `position` to be applied or dropped. `memory` and `plans`, when set, are what the step that wrote
    this text proposed with it; they follow the text into the manuscript when it is picked (see
    memory.alternatives.pick for when).
    """

    __tablename__ = "alternatives"
    __table_args__ = (Index("ix_alternatives_novel_paragraph", "novel_id", "paragraph_id"), AUTOINCREMENT)

    id: Mapped[intpk]
    novel_id: Mapped[int] = mapped_column(ForeignKey("novels.id", ondelete="CASCADE"))
    paragraph_id: Mapped[int | None] = mapped_column(
        ForeignKey("paragraphs.id", ondelete="SET NULL"), nullable=True, index=True)
    position: Mapped[int]  # where a pending version would go; else the paragraph's position when it was made
    text: Mapped[text_col]
    words: Mapped[int] = mapped_column(Integer, default=0)
    kind: Mapped[str] = mapped_column(String(16))  # one of ALTERNATIVE_KINDS
    origin: Mapped[str] = mapped_column(String(16), default="generated")  # one of ORIGINS, as a paragraph's
    instruction: Mapped[str | None] = mapped_column(SafeText, nullable=True)  # the plan or rewrite instruction
    memory: Mapped[str | None] = mapped_column(SafeText, nullable=True)
    plans: Mapped[list[str] | None] = mapped_column(SafeJSON, nullable=True)
    created_at: Mapped[created]


class ShortTermMemory(Base):
    """One version of a novel's running summary; the highest version is the current one."""

    __tablename__ = "short_term_memories"
    __table_args__ = (UniqueConstraint("novel_id", "version"), AUTOINCREMENT)

    id: Mapped[intpk]
    novel_id: Mapped[novel_fk]
    version: Mapped[int]
    text: Mapped[text_col]
    origin: Mapped[str] = mapped_column(String(16), default="written")
    created_at: Mapped[created]

    novel: Mapped[Novel] = relationship(back_populates="memories")


class ChapterSummary(Base):
    """One version of a chapter's summary; the highest version is the current one (history and restore as for
    the short-term memory)."""

    __tablename__ = "chapter_summaries"
    __table_args__ = (UniqueConstraint("chapter_id", "version"), AUTOINCREMENT)

    id: Mapped[intpk]
    novel_id: Mapped[novel_fk]
    chapter_id: Mapped[int] = mapped_column(ForeignKey("chapters.id", ondelete="CASCADE"), index=True)
    version: Mapped[int]
    text: Mapped[text_col]
    origin: Mapped[str] = mapped_column(String(16), default="written")
    created_at: Mapped[created]

    chapter: Mapped[Chapter] = relationship(back_populates="summaries")


class Synopsis(Base):
    """One version of the synopsis of the whole book so far, rebuilt from the chapter summaries or written by hand;
    the highest version is the current one."""

    __tablename__ = "synopses"
    __table_args__ = (UniqueConstraint("novel_id", "version"), AUTOINCREMENT)

    id: Mapped[intpk]
    novel_id: Mapped[novel_fk]
    version: Mapped[int]
    text: Mapped[text_col]
    origin: Mapped[str] = mapped_column(String(16), default="written")
    created_at: Mapped[created]


class PlanSet(Base):
    """The plans proposed after paragraph `position` (0 = before the first), which one was chosen, what was used."""

    __tablename__ = "plan_sets"
    __table_args__ = AUTOINCREMENT

    id: Mapped[intpk]
    novel_id: Mapped[novel_fk]
    position: Mapped[int]
    plans: Mapped[list[str]] = mapped_column(SafeJSON, default=list)
    chosen_index: Mapped[int | None] = mapped_column(Integer, nullable=True)
    used_text: Mapped[str | None] = mapped_column(SafeText, nullable=True)
    # The paragraph written from this plan set, once one was.
    paragraph_id: Mapped[int | None] = mapped_column(
        ForeignKey("paragraphs.id", ondelete="SET NULL"), nullable=True, index=True)
    created_at: Mapped[created]

    novel: Mapped[Novel] = relationship(back_populates="plan_sets")


class LoreEntry(Base):
    """A story-bible entry: injected when always on, or when a key appears as a whole word, or by similarity."""

    __tablename__ = "lore_entries"
    __table_args__ = AUTOINCREMENT

    id: Mapped[intpk]
    novel_id: Mapped[novel_fk]
    name: Mapped[text_col]
    keys: Mapped[list[str]] = mapped_column(SafeJSON, default=list)
    body: Mapped[text_col]
    always_on: Mapped[bool] = mapped_column(Boolean, default=False)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[created]
    updated_at: Mapped[updated]

    novel: Mapped[Novel] = relationship(back_populates="lore_entries")
    embeddings: Mapped[list[Embedding]] = relationship(
        back_populates="lore_entry", cascade="all, delete-orphan", passive_deletes=True)


class Revision(Base):
    """One user-visible action: an ordered list of row changes (before/after), undoable and redoable as a unit.

    `changes` holds `{"entity": table, "id": pk, "before": row|None, "after": row|None}`,
    `{"entity": "shift", "from": position, "delta": ±n}` and `{"entity": "positions", "before": {paragraph id:
    position}, "after": {...}}` (paragraphs moved at once, e.g. a chapter reordered) entries. `state` is "done",
    "undone" (redoable) or "dropped" (undone, then superseded by a new action).
    """

    __tablename__ = "revisions"
    __table_args__ = (
        UniqueConstraint("novel_id", "seq"),
        # Undo and redo look for the newest "done" / oldest "undone" revision of a novel.
        Index("ix_revisions_novel_state_seq", "novel_id", "state", "seq"),
        AUTOINCREMENT,
    )

    id: Mapped[intpk]
    novel_id: Mapped[novel_fk]
    seq: Mapped[int]
    kind: Mapped[str] = mapped_column(String(32))  # e.g. "paragraph.edit", "step", "lore.add"
    cause: Mapped[text_col]  # what the user did, in words
    changes: Mapped[list[dict[str, Any]]] = mapped_column(SafeJSON, default=list)
    state: Mapped[str] = mapped_column(String(8), default="done")
    created_at: Mapped[created]

    novel: Mapped[Novel] = relationship(back_populates="revisions")


class StateSnapshot(Base):
    """A recurrent model's state after reading the manuscript up to paragraph `position`; the bytes live in a file."""

    __tablename__ = "state_snapshots"
    __table_args__ = (UniqueConstraint("novel_id", "position", "fingerprint"), AUTOINCREMENT)

    id: Mapped[intpk]
    novel_id: Mapped[novel_fk]
    position: Mapped[int]
    fingerprint: Mapped[str] = mapped_column(String(200))
    dtype: Mapped[str] = mapped_column(String(16))
    nbytes: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(String(500))  # relative to the snapshot store's root
    created_at: Mapped[created]

    novel: Mapped[Novel] = relationship(back_populates="snapshots")


class Embedding(Base):
    """A unit vector (float32 bytes) for a paragraph or a lore entry, tagged with the embedder that made it.

    A paragraph's row also holds one unit vector per sentence (`memory.retrieval.split_sentences` of the text, in
    order) as float16 `[S, dim]`: they live and die with the paragraph vector, so every revision that drops or
    restores one drops or restores the other, and no sentence vector can outlive the text it was made from.
    """

    __tablename__ = "embeddings"
    __table_args__ = (
        CheckConstraint("(paragraph_id IS NULL) <> (lore_entry_id IS NULL)", name="one_owner"),
        UniqueConstraint("paragraph_id", "embedder"),
        UniqueConstraint("lore_entry_id", "embedder"),
        Index("ix_embeddings_novel_embedder", "novel_id", "embedder"),
        AUTOINCREMENT,
    )

    id: Mapped[intpk]
    novel_id: Mapped[int] = mapped_column(ForeignKey("novels.id", ondelete="CASCADE"))
    paragraph_id: Mapped[int | None] = mapped_column(
        ForeignKey("paragraphs.id", ondelete="CASCADE"), nullable=True)
    lore_entry_id: Mapped[int | None] = mapped_column(
        ForeignKey("lore_entries.id", ondelete="CASCADE"), nullable=True)
    embedder: Mapped[str] = mapped_column(String(200))
    dim: Mapped[int]
    vector: Mapped[bytes] = mapped_column(LargeBinary)  # little-endian float32, L2-normalized
    # [S, dim] little-endian float16, each row L2-normalized; None until made (a lore entry, or an older row that
    # memory.retrieval.backfill_sentences has not reached yet).
    sentence_vectors: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    created_at: Mapped[created]

    paragraph: Mapped[Paragraph | None] = relationship(back_populates="embeddings")
    lore_entry: Mapped[LoreEntry | None] = relationship(back_populates="embeddings")


TABLES_IN_ORDER = (Novel, Chapter, Paragraph, ChapterSummary, Synopsis, ShortTermMemory, PlanSet, LoreEntry,
                   Revision, StateSnapshot, Embedding, Alternative)


# Full-text indexes over paragraph text, made by migration 0003 (they are not ORM tables). SQLite: an FTS5 table
# with external content (`paragraphs`), kept in step by triggers on every insert, text update and delete, so
# undo, redo, imports and cascaded deletes move it too. PostgreSQL: a GIN index on to_tsvector(TSVECTOR_CONFIG,
# text), which the database keeps exact by itself.
PARAGRAPH_FTS_TABLE = "paragraphs_fts"
TSVECTOR_CONFIG = "english"
TSVECTOR_INDEX = "ix_paragraphs_text_tsvector"


def is_schema_object(name: str | None, type_: str, parent_names: dict) -> bool:
    """Alembic's `include_name` hook: False for the full-text objects above (FTS5's shadow tables, the GIN
    index), which autogenerate cannot describe and must neither drop nor compare."""
    return not (name or "").startswith((PARAGRAPH_FTS_TABLE, TSVECTOR_INDEX))
