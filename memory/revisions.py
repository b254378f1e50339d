"""The history of a novel: every store write recorded as one `Revision` with exact before/after rows, and undo and
redo replaying those rows backwards or forwards. Every function takes `session` first; the caller owns the
transaction.

A writer locks the novel (`lock_novel`), makes its changes through a `Changes` (which notes each row before and
after) and ends with `record`. Undo and redo refuse, with a `ConflictError`, a row that changed in a way the
history does not explain; they return a `HistoryStep` naming the paragraph positions they touched, so a caller can
drop what it cached from those positions on.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import DateTime, LargeBinary, func, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import flag_modified

from memory.errors import ConflictError, NotFoundError, ValidationError
from memory.schema import Base, Novel, Paragraph, Revision, utcnow

# A mapped row type, for the readers that return the row they were asked for.
RowT = TypeVar("RowT", bound=Base)
# Every mapped table by name, as `Revision.changes` names them.
MODELS: dict[str, type[Base]] = {mapper.class_.__tablename__: mapper.class_ for mapper in Base.registry.mappers}
# Fields that change as side effects and are not part of a row's user-visible state.
# Sentence vectors too: they are derived from the paragraph's text, and memory.retrieval.backfill_sentences fills
# them in place on rows that older versions saved without them, which must not make those rows' history conflict.
_VOLATILE = {"novels": {"uid", "embedding_epoch", "updated_at"}, "embeddings": {"sentence_vectors"}}
# Of those, never written back by undo/redo (they identify the row or track caches, not the story).
_KEEP_ON_RESTORE = {"uid", "embedding_epoch"}


@dataclass(frozen=True)
class HistoryStep:
    """What an undo or redo did: the revision, and the paragraph positions whose text or place it changed."""

    revision: Revision
    positions: tuple[int, ...]

    @property
    def first_position(self) -> int | None:
        return min(self.positions) if self.positions else None


# ---------------------------------------------------------------------------------------------------------------
# Rows as JSON-able dicts: exact, column by column (datetimes as ISO strings, bytes as base64).

def row_to_dict(obj: Base) -> dict[str, Any]:
    return {column.key: column_to_json(column, getattr(obj, column.key)) for column in obj.__table__.columns}


def column_to_json(column, value: Any) -> Any:
    """A column's value as JSON holds it: datetimes as ISO text, bytes as base64."""
    if value is not None and isinstance(column.type, DateTime):
        return value.isoformat()
    if value is not None and isinstance(column.type, LargeBinary):
        return base64.b64encode(value).decode("ascii")
    return value


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


def _same_row(entity: str, a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    if a is None or b is None:
        return a is b
    skip = _VOLATILE.get(entity, set())
    return {k: v for k, v in a.items() if k not in skip} == {k: v for k, v in b.items() if k not in skip}


# ---------------------------------------------------------------------------------------------------------------
# Recording a write as one revision.

class Changes:
    """The rows one user action changes, noted before and after as it makes them."""

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
        if "updated_at" in values:
            # Written even when equal (a move keeps it), so the column's on-update default cannot replace it.
            flag_modified(obj, "updated_at")
        self.session.flush()
        self._note(obj.__tablename__, obj.id, before, row_to_dict(obj))

    def delete(self, obj: Base) -> None:
        before = row_to_dict(obj)
        self.session.delete(obj)
        self.session.flush()
        self._note(obj.__tablename__, before["id"], before, None)

    def shift(self, start: int, delta: int) -> None:
        shift_positions(self.session, self.novel_id, start, delta)
        self.items.append({"entity": "shift", "from": start, "delta": delta})

    def reposition(self, moves: dict[int, int]) -> None:
        """Give paragraphs new positions at once (`{paragraph id: new position}`), e.g. a chapter moved as a
        block; recorded as one `positions` change with every old and new position."""
        self.session.flush()
        before = {pid: pos for pid, pos in _positions_of(self.session, list(moves)).items() if moves[pid] != pos}
        if not before:
            return
        after = {pid: moves[pid] for pid in before}
        set_positions(self.session, self.novel_id, after)
        # JSON object keys are text; ids are kept as text on both sides so a round trip through JSON is exact.
        self.items.append({"entity": "positions", "before": {str(k): v for k, v in before.items()},
                           "after": {str(k): v for k, v in after.items()}})


def _positions_of(session: Session, paragraph_ids: list[int]) -> dict[int, int]:
    rows = session.execute(select(Paragraph.id, Paragraph.position).where(Paragraph.id.in_(paragraph_ids))).all()
    return {int(row.id): int(row.position) for row in rows}


def set_positions(session: Session, novel_id: int, positions: dict[int, int]) -> None:
    """Move paragraphs to the given positions without tripping UNIQUE(novel_id, position) midway (first to
    negative places, then to the final ones); like a shift, a move is not an edit (`updated_at` kept)."""
    session.flush()
    for paragraph_id, position in positions.items():
        session.execute(update(Paragraph).where(Paragraph.id == paragraph_id)
                        .values(position=-position, updated_at=Paragraph.updated_at)
                        .execution_options(synchronize_session=False))
    session.execute(update(Paragraph).where(Paragraph.novel_id == novel_id, Paragraph.position < 0)
                    .values(position=-Paragraph.position, updated_at=Paragraph.updated_at)
                    .execution_options(synchronize_session=False))
    for obj in list(session.identity_map.values()):
        if isinstance(obj, Paragraph) and obj.novel_id == novel_id:
            session.expire(obj, ["position"])


def shift_positions(session: Session, novel_id: int, start: int, delta: int) -> None:
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


def record(session: Session, changes: Changes, kind: str, cause: str) -> Revision:
    """End a write: save its changes as the newest revision (which ends the redo chain)."""
    novel_id = changes.novel_id
    session.execute(update(Revision).where(Revision.novel_id == novel_id, Revision.state == "undone")
                    .values(state="dropped").execution_options(synchronize_session=False))
    revision = Revision(novel_id=novel_id, seq=_next_seq(session, novel_id), kind=kind, cause=cause,
                        changes=changes.items, state="done")
    session.add(revision)
    touch_novel(session, novel_id, embeddings=changes.embeddings_changed)
    session.flush()
    return revision


def _next_seq(session: Session, novel_id: int) -> int:
    return (session.scalar(select(func.max(Revision.seq)).where(Revision.novel_id == novel_id)) or 0) + 1


def touch_novel(session: Session, novel_id: int, *, embeddings: bool = False) -> None:
    """Mark the novel edited now; `embeddings` also moves its embedding epoch (the retrieval cache's key)."""
    values: dict[str, Any] = {"updated_at": utcnow()}
    if embeddings:
        values["embedding_epoch"] = Novel.embedding_epoch + 1
    session.execute(update(Novel).where(Novel.id == novel_id).values(**values)
                    .execution_options(synchronize_session=False))
    novel = session.get(Novel, novel_id)
    if novel is not None:
        session.expire(novel, ["updated_at", "embedding_epoch"])


def lock_novel(session: Session, novel_id: int) -> Novel:
    """Load the novel for writing; on PostgreSQL this row lock serializes writers of one novel (SQLite's
    BEGIN IMMEDIATE already serializes all writers)."""
    novel = session.execute(select(Novel).where(Novel.id == novel_id).with_for_update()).scalar_one_or_none()
    if novel is None:
        raise NotFoundError(gone_message(what="novel", row_id=novel_id))
    return novel


def gone_message(*, what: str, row_id: int, verb: str = "deleted") -> str:
    """The one line every store read says when a row is missing: most often another tab removed it."""
    return f"No {what} with id {row_id}: it may have been {verb} in another tab."


def get_row(session: Session, model: type[RowT], row_id: int, *, what: str, verb: str = "deleted") -> RowT:
    """The `model` row with id `row_id`, or a NotFoundError naming `what` ("chapter", "paragraph", ...)."""
    row = session.get(model, row_id)
    if row is None:
        raise NotFoundError(gone_message(what=what, row_id=row_id, verb=verb))
    return row


def locked_row(session: Session, model: type[RowT], row_id: int, *, what: str, verb: str = "deleted") -> RowT:
    """`get_row` for writing: the row's novel locked (`lock_novel`), then the row re-read, since another writer
    may have changed it between the read and the lock."""
    row = get_row(session, model, row_id, what=what, verb=verb)
    lock_novel(session, row.novel_id)
    session.refresh(row)
    return row


# ---------------------------------------------------------------------------------------------------------------
# Reading the history, undo and redo.

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


def undo(session: Session, novel_id: int) -> HistoryStep | None:
    """Undo the newest action still in effect, restoring every row it touched exactly; None if nothing to undo."""
    return _move(session, novel_id, forward=False)


def redo(session: Session, novel_id: int) -> HistoryStep | None:
    """Redo the oldest undone action; None if there is nothing to redo."""
    return _move(session, novel_id, forward=True)


def _move(session: Session, novel_id: int, *, forward: bool) -> HistoryStep | None:
    lock_novel(session, novel_id)
    revision = (_first_undone if forward else _last_done)(session, novel_id)
    if revision is None:
        return None
    changes = list(revision.changes) if forward else list(reversed(revision.changes))
    embeddings = _apply(session, novel_id, changes, forward=forward, cause=revision.cause)
    revision.state = "done" if forward else "undone"
    touch_novel(session, novel_id, embeddings=embeddings)
    session.flush()
    return HistoryStep(revision=revision, positions=_positions(revision.changes))


def _positions(changes: list[dict[str, Any]]) -> tuple[int, ...]:
    """The paragraph positions a revision wrote or moved (a shift moves every position from its start on)."""
    positions = {int(row["position"]) for change in changes if change["entity"] == "paragraphs"
                 for row in (change["before"], change["after"]) if row and int(row["position"]) > 0}
    positions |= {int(change["from"]) for change in changes if change["entity"] == "shift"}
    positions |= {int(position) for change in changes if change["entity"] == "positions"
                  for side in ("before", "after") for position in change[side].values()}
    return tuple(sorted(positions))


def _apply(session: Session, novel_id: int, changes: list[dict[str, Any]], *, forward: bool, cause: str) -> bool:
    embeddings = False
    for change in changes:
        if change["entity"] == "shift":
            start, delta = change["from"], change["delta"]
            if forward:
                shift_positions(session, novel_id, start, delta)
            else:
                shift_positions(session, novel_id, start + delta, -delta)
            continue
        if change["entity"] == "positions":
            _apply_positions(session, novel_id, change, forward=forward, cause=cause)
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
            session.add(model(**row_values(model, target)))
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


def _apply_positions(session: Session, novel_id: int, change: dict[str, Any], *, forward: bool, cause: str) -> None:
    expect, target = (change["before"], change["after"]) if forward else (change["after"], change["before"])
    ids = [int(pid) for pid in expect]
    current = _positions_of(session, ids)
    if current != {int(pid): int(pos) for pid, pos in expect.items()}:
        verb = "redo" if forward else "undo"
        raise ConflictError(f"Cannot {verb} {cause!r}: the paragraphs it moved were moved again in a way the "
                            "history does not explain; nothing was changed.")
    set_positions(session, novel_id, {int(pid): int(pos) for pid, pos in target.items()})


def check_version(kind: str, obj: Any, expected_version: int | None) -> None:
    """Refuse an edit made from a stale copy: `expected_version` must be the row's saved version (a ConflictError
    naming both), and must be given (a ValidationError)."""
    if expected_version is None:
        raise ValidationError(f"Editing a {kind} needs the version you started from (expected_version).")
    if obj.version != expected_version:
        where = f" {obj.position}" if isinstance(obj, Paragraph) else ""
        raise ConflictError(
            f"{kind.capitalize()}{where} was changed elsewhere since you opened it (your copy is version "
            f"{expected_version}, the saved one is version {obj.version}); nothing was saved: reload it and "
            "apply your change again.", current_version=obj.version)
