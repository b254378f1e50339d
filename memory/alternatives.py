"""Other versions of a paragraph: the candidates of a step, the text a Retry replaced, "Another version", rewrites
on request, and pending versions (a finished step the store refused). Every function takes `session` first; the
caller owns the transaction; every write is one revision (memory/revisions.py), so undo and redo cover picks too.

A paragraph's versions are its text in the manuscript plus its `Alternative` rows. Picking one swaps the two
texts: the picked row takes the manuscript's text (kind "swapped"), so nothing is ever discarded and picking it
again swaps back. The memory and the pending plans follow the text in the manuscript by one rule (`pick`): when the
picked version carries the memory and plans its step wrote, the paragraph is the last one, its plans are still the
pending ones and the current memory was written by the model (not edited by hand since), the memory and plans are
swapped with the text; otherwise only the text changes, and `Picked.memory_followed` says so.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import flag_modified

from memory import store
from memory.embeddings import Vector
from memory.errors import ValidationError
from memory.revisions import Changes, check_version, get_row, lock_novel, locked_row, record
from memory.schema import ALTERNATIVE_KINDS, ORIGINS, Alternative, Paragraph, Revision, ShortTermMemory


@dataclass(frozen=True)
class Version:
    """A text to keep as an alternative, and how it was made."""

    text: str
    kind: str  # one of ALTERNATIVE_KINDS
    instruction: str | None = None  # the plan it was written from, or the rewrite instruction
    memory: str | None = None  # the memory its step wrote with it (None: a rewrite, or unknown)
    plans: list[str] | None = None  # the plans its step proposed after it
    origin: str = "generated"


@dataclass(frozen=True)
class Picked:
    """What a pick did: the paragraph (its new text), whether the memory and plans followed, the revision."""

    paragraph: Paragraph
    memory_followed: bool
    revision: Revision


# ---------------------------------------------------------------------------------------------------------------
# Reading.

def get(session: Session, alternative_id: int) -> Alternative:
    return get_row(session, Alternative, alternative_id, what="kept version", verb="dropped")


def of_paragraph(session: Session, paragraph_id: int) -> list[Alternative]:
    """The kept versions beside one paragraph, oldest first."""
    return list(session.scalars(select(Alternative).where(Alternative.paragraph_id == paragraph_id)
                                .order_by(Alternative.id)))


def pending(session: Session, novel_id: int) -> list[Alternative]:
    """Versions waiting to be applied or dropped (not beside any paragraph), by position."""
    return list(session.scalars(select(Alternative).where(Alternative.novel_id == novel_id,
                                                          Alternative.paragraph_id.is_(None))
                                .order_by(Alternative.position, Alternative.id)))


def counts(session: Session, novel_id: int) -> dict[int, int]:
    """{paragraph id: number of kept versions} for the paragraphs that have any."""
    rows = session.execute(select(Alternative.paragraph_id, func.count(Alternative.id))
                           .where(Alternative.novel_id == novel_id, Alternative.paragraph_id.is_not(None))
                           .group_by(Alternative.paragraph_id)).all()
    return {int(paragraph_id): int(count) for paragraph_id, count in rows}


# ---------------------------------------------------------------------------------------------------------------
# Keeping versions.

def _check(version: Version) -> Version:
    if version.kind not in ALTERNATIVE_KINDS:
        raise ValidationError(f"A kept version's kind must be one of {', '.join(ALTERNATIVE_KINDS)}, "
                              f"got {version.kind!r}.")
    if version.origin not in ORIGINS:
        raise ValidationError(f"A kept version's origin must be one of {', '.join(ORIGINS)}, got {version.origin!r}.")
    if not isinstance(version.text, str) or not version.text.strip():
        raise ValidationError("A kept version cannot be empty.")
    if version.plans is not None and not all(isinstance(plan, str) for plan in version.plans):
        raise ValidationError("A kept version's plans must be a list of texts.")
    return version


def _insert(changes: Changes, version: Version, *, paragraph_id: int | None, position: int) -> Alternative:
    version = _check(version)
    row = Alternative(novel_id=changes.novel_id, paragraph_id=paragraph_id, position=position, text=version.text,
                      words=len(version.text.split()), kind=version.kind, origin=version.origin,
                      instruction=version.instruction, memory=version.memory,
                      plans=list(version.plans) if version.plans is not None else None)
    changes.insert(row)
    return row


def keep(session: Session, paragraph_id: int, version: Version) -> Alternative:
    """Keep `version` beside paragraph `paragraph_id` (the manuscript does not change)."""
    return keep_many(session, paragraph_id, [version])[0]


def keep_many(session: Session, paragraph_id: int, versions: list[Version]) -> list[Alternative]:
    """Keep `versions` beside paragraph `paragraph_id`, as one revision."""
    if not versions:
        raise ValidationError("There is no version to keep.")
    paragraph = store.get_paragraph(session, paragraph_id)
    lock_novel(session, paragraph.novel_id)
    changes = Changes(session, paragraph.novel_id)
    rows = [_insert(changes, version, paragraph_id=paragraph.id, position=paragraph.position) for version in versions]
    many = "another version" if len(rows) == 1 else f"{len(rows)} other versions"
    record(session, changes, "alternative.add", f"kept {many} of paragraph {paragraph.position}")
    return rows


def keep_pending(session: Session, novel_id: int, position: int, versions: list[Version]) -> list[Alternative]:
    """Keep finished versions the manuscript could not take (a refused step) as pending at `position`."""
    lock_novel(session, novel_id)
    changes = Changes(session, novel_id)
    rows = [_insert(changes, version, paragraph_id=None, position=position) for version in versions]
    record(session, changes, "alternative.pending", f"kept an unsaved step for position {position}")
    return rows


def attach_to_revision(session: Session, revision: Revision, paragraph: Paragraph,
                       versions: list[Version]) -> list[Alternative]:
    """Keep `versions` beside `paragraph` as part of `revision` (the step that wrote it, in this transaction), so
    undoing the step removes them with it and the step stays one undo."""
    changes = Changes(session, revision.novel_id)
    rows = [_insert(changes, version, paragraph_id=paragraph.id, position=paragraph.position) for version in versions]
    revision.changes = [*revision.changes, *changes.items]
    flag_modified(revision, "changes")
    session.flush()
    return rows


# ---------------------------------------------------------------------------------------------------------------
# Picking, applying and dropping.

def _memory_follows(session: Session, paragraph: Paragraph, alternative: Alternative) -> bool:
    """The rule in the module docstring: the memory and plans are swapped too only when they are still the ones
    the model wrote right after this paragraph."""
    if alternative.memory is None or alternative.plans is None:
        return False
    if paragraph.position != store.paragraph_count(session, paragraph.novel_id):
        return False
    memory = store.current_memory(session, paragraph.novel_id)
    plan_set = store.current_plans(session, paragraph.novel_id)
    return (memory is not None and memory.origin == "generated" and plan_set is not None
            and plan_set.paragraph_id is None and plan_set.position == paragraph.position)


def pick(session: Session, alternative_id: int, expected_version: int, embedding: Vector | None = None) -> Picked:
    """Swap kept version `alternative_id` into the manuscript, if its paragraph is still `expected_version` (else
    ConflictError); the text it replaces is kept in its place. `embedding` is the new text's vector (without one,
    the paragraph's vector is dropped: retrieval never uses a vector of another text)."""
    alternative = locked_row(session, Alternative, alternative_id, what="kept version", verb="dropped")
    if alternative.paragraph_id is None:
        raise ValidationError("This version is pending, not beside a paragraph: apply it to put it in the "
                              "manuscript.")
    paragraph = store.get_paragraph(session, alternative.paragraph_id)
    session.refresh(paragraph)
    check_version("paragraph", paragraph, expected_version)
    changes = Changes(session, paragraph.novel_id)
    follows = _memory_follows(session, paragraph, alternative)
    outgoing_memory = outgoing_plans = None
    if follows:
        memory = store.current_memory(session, paragraph.novel_id)
        plan_set = store.current_plans(session, paragraph.novel_id)
        outgoing_memory, outgoing_plans = memory.text, list(plan_set.plans)
        changes.insert(ShortTermMemory(novel_id=paragraph.novel_id, version=memory.version + 1,
                                       text=alternative.memory, origin="generated"))
        changes.update(plan_set, plans=list(alternative.plans))
    incoming_text, incoming_origin = alternative.text, alternative.origin
    changes.update(alternative, text=paragraph.text, words=paragraph.words, origin=paragraph.origin, kind="swapped",
                   instruction=None, memory=outgoing_memory, plans=outgoing_plans, position=paragraph.position)
    store.rewrite_paragraph(changes, paragraph, text=incoming_text, origin=incoming_origin, embedding=embedding)
    revision = record(session, changes, "alternative.pick", f"swapped in another version of paragraph "
                                                            f"{paragraph.position}")
    return Picked(paragraph=paragraph, memory_followed=follows, revision=revision)


def apply_pending(session: Session, alternative_id: int, embedding: Vector | None = None) -> Paragraph:
    """Put a pending version in the manuscript at its position (at the end when the novel is shorter now); the
    memory and plans are not changed (they were written from a memory that has changed since)."""
    alternative = locked_row(session, Alternative, alternative_id, what="kept version", verb="dropped")
    if alternative.paragraph_id is not None:
        raise ValidationError("This version is beside a paragraph already: pick it to use it.")
    changes = Changes(session, alternative.novel_id)
    paragraph = store.place_paragraph(changes, novel_id=alternative.novel_id, text=alternative.text,
                                      origin=alternative.origin, position=alternative.position, embedding=embedding)
    changes.delete(alternative)
    record(session, changes, "alternative.apply", f"applied a kept version as paragraph {paragraph.position}")
    return paragraph


def drop(session: Session, alternative_id: int) -> None:
    """Delete a kept or pending version (undoable, like every write)."""
    alternative = get(session, alternative_id)
    lock_novel(session, alternative.novel_id)
    where = "a pending version" if alternative.paragraph_id is None else \
        f"a version of paragraph {alternative.position}"
    changes = Changes(session, alternative.novel_id)
    changes.delete(alternative)
    record(session, changes, "alternative.drop", f"dropped {where}")
