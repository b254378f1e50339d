"""Stored vectors of paragraphs and lore: how a vector is checked and packed, and the one way an embedding row is
written. Every function takes `session` first; the caller owns the transaction.

A vector saved with a user's write (`put_embedding`, inside a `memory.revisions.Changes`) is part of that write's
revision; one filled in later for text already saved (`set_paragraph_embedding`, `set_lore_embedding`,
`set_sentence_vectors`, used by memory.retrieval's backfills) is not an undoable action. Vectors are never changed
in place: a new one gets a new row id, so an id always names the same vector (the retrieval cache relies on it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from memory.errors import ValidationError
from memory.revisions import Changes, get_row, touch_novel
from memory.schema import Embedding, LoreEntry, Paragraph


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


def vector_bytes(vector: Vector) -> tuple[bytes, int]:
    """The unit-length float32 bytes of `vector.values` and their dimension."""
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
# Writing: one row builder, one owner lookup, for the undoable and the backfill paths alike.

def _owner(paragraph_id: int | None, lore_entry_id: int | None):
    return Embedding.paragraph_id == paragraph_id if paragraph_id is not None \
        else Embedding.lore_entry_id == lore_entry_id


def _embedding_row(novel_id: int, vector: Vector, *, paragraph_id: int | None = None,
                   lore_entry_id: int | None = None) -> Embedding:
    """A new row for `vector`; sentence vectors are kept for paragraphs only."""
    data, dim = vector_bytes(vector)
    return Embedding(novel_id=novel_id, paragraph_id=paragraph_id, lore_entry_id=lore_entry_id,
                     embedder=vector.embedder, dim=dim, vector=data,
                     sentence_vectors=sentence_bytes(vector.sentences, dim) if paragraph_id is not None else None)


def _existing(session: Session, vector: Vector, paragraph_id: int | None, lore_entry_id: int | None):
    return session.scalar(select(Embedding).where(_owner(paragraph_id, lore_entry_id),
                                                  Embedding.embedder == vector.embedder))


def put_embedding(changes: Changes, novel_id: int, *, vector: Vector, paragraph_id: int | None = None,
                  lore_entry_id: int | None = None) -> None:
    """Save (or replace) the vector of a paragraph or lore entry as part of the write `changes` records."""
    row = _embedding_row(novel_id, vector, paragraph_id=paragraph_id, lore_entry_id=lore_entry_id)
    existing = _existing(changes.session, vector, paragraph_id, lore_entry_id)
    if existing is not None:
        changes.delete(existing)
    changes.insert(row)


def drop_embeddings(changes: Changes, *, paragraph_id: int | None = None, lore_entry_id: int | None = None,
                    keep: str | None = None) -> None:
    """Delete the vectors of a paragraph or lore entry (all, or all but the embedder `keep`'s)."""
    query = select(Embedding).where(_owner(paragraph_id, lore_entry_id)).order_by(Embedding.id)
    for embedding in list(changes.session.scalars(query)):
        if embedding.embedder != keep:
            changes.delete(embedding)


def _replace(session: Session, row: Embedding, vector: Vector) -> None:
    existing = _existing(session, vector, row.paragraph_id, row.lore_entry_id)
    if existing is not None:
        session.delete(existing)
        session.flush()
    session.add(row)
    session.flush()


def set_paragraph_embedding(session: Session, paragraph_id: int, vector: Vector) -> None:
    """Store (or replace) a paragraph's vector for `vector.embedder`; not an undoable user action."""
    paragraph = get_row(session, Paragraph, paragraph_id, what="paragraph")
    _replace(session, _embedding_row(paragraph.novel_id, vector, paragraph_id=paragraph_id), vector)
    touch_novel(session, paragraph.novel_id, embeddings=True)


def set_lore_embedding(session: Session, lore_id: int, vector: Vector) -> None:
    """Store (or replace) a lore entry's vector for `vector.embedder`; not an undoable user action."""
    entry = get_row(session, LoreEntry, lore_id, what="lore entry")
    _replace(session, _embedding_row(entry.novel_id, vector, lore_entry_id=lore_id), vector)


def set_sentence_vectors(session: Session, embedding_id: int, sentences: np.ndarray) -> bool:
    """Fill in the sentence vectors of a paragraph vector saved without them (in place, not an undoable action:
    they are derived from the text the row already belongs to). False when the row is gone or already has them
    (an edit or another backfill got there first: the vectors made for it are not needed)."""
    embedding = session.get(Embedding, embedding_id)
    if embedding is None or embedding.paragraph_id is None or embedding.sentence_vectors is not None:
        return False
    embedding.sentence_vectors = sentence_bytes(sentences, embedding.dim)
    session.flush()
    touch_novel(session, embedding.novel_id, embeddings=True)
    return True


# ---------------------------------------------------------------------------------------------------------------
# Finding the gaps the backfills fill.

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
