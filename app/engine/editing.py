"""The writer's own edits of the manuscript: edit, add (at the end, before or after a paragraph), delete, move,
split and merge, each one undoable revision (memory.store) in one short transaction.

Each edit embeds the text it saves before its transaction opens (sentence vectors included; the full-text index
follows the paragraph rows by itself) and then drops the model-state snapshots that read the manuscript from the
first position it changed. Versions are checked by the store, so an edit made from a stale view is refused with
a `ConflictError` and nothing is overwritten.
"""

from __future__ import annotations

from dataclasses import dataclass

from memory import store

from app.engine.errors import EngineError
from app.engine.reading import StoreReader


@dataclass(frozen=True)
class EditOutcome:
    """What an edit did: the paragraph to show next (None when the manuscript is empty) and one line saying it."""

    novel_id: int
    paragraph_id: int | None
    position: int | None
    message: str


def _required(text: str) -> str:
    if not isinstance(text, str) or not text.strip():
        raise EngineError("A paragraph cannot be empty: write something first (to remove a paragraph, use Delete).")
    return text.strip()


@dataclass
class ManuscriptEditor:
    """The edits over one store (session factory), one embedder (through `reader`) and the snapshot store."""

    session_factory: object
    reader: StoreReader
    snapshot_store: object | None = None

    def _invalidate(self, novel_id: int, position: int) -> None:
        """Drop every state snapshot that has read paragraph `position` (they no longer match the text)."""
        if self.snapshot_store is not None:
            self.snapshot_store.delete_after(novel_id, position - 1)

    def _done(self, novel_id: int, paragraph_id: int | None, position: int | None, changed_from: int,
              message: str) -> EditOutcome:
        self._invalidate(novel_id, changed_from)
        return EditOutcome(novel_id=novel_id, paragraph_id=paragraph_id, position=position, message=message)

    def edit(self, paragraph_id: int, text: str, expected_version: int) -> EditOutcome:
        """Replace a paragraph's text (refused with ConflictError if it changed since `expected_version`)."""
        text = _required(text)
        embedding = self.reader.passage_vector(text)
        with self.session_factory() as session, session.begin():
            paragraph = store.edit_paragraph(session, paragraph_id, text, expected_version, embedding=embedding)
            novel_id, position = paragraph.novel_id, paragraph.position
        return self._done(novel_id, paragraph_id, position, position, f"Saved paragraph {position}.")

    def add(self, novel_id: int, text: str, *, before_id: int | None = None,
            after_id: int | None = None) -> EditOutcome:
        """The writer's own paragraph (origin `written`) at the end, or just before or after another one."""
        text = _required(text)
        embedding = self.reader.passage_vector(text)
        with self.session_factory() as session, session.begin():
            paragraph = store.insert_paragraph(session, novel_id, text, before_id=before_id, after_id=after_id,
                                               origin="written", embedding=embedding)
            paragraph_id, position = paragraph.id, paragraph.position
            last = store.paragraph_count(session, novel_id) == position
        where = "at the end" if last else f"as paragraph {position}"
        return self._done(novel_id, paragraph_id, position, position, f"Added your paragraph {where}.")

    def delete(self, paragraph_id: int, expected_version: int) -> EditOutcome:
        with self.session_factory() as session, session.begin():
            paragraph = store.get_paragraph(session, paragraph_id)
            novel_id, position = paragraph.novel_id, paragraph.position
            store.delete_paragraph(session, paragraph_id, expected_version)
            shown = store.paragraph_at(session, novel_id, position) or store.paragraph_at(session, novel_id,
                                                                                            position - 1)
            shown_id, shown_position = (shown.id, shown.position) if shown is not None else (None, None)
        return self._done(novel_id, shown_id, shown_position, position,
                          f"Deleted paragraph {position} (Undo brings it back).")

    def move(self, paragraph_id: int, expected_version: int, offset: int) -> EditOutcome:
        """Move a paragraph one place up (offset -1) or down (+1)."""
        with self.session_factory() as session, session.begin():
            paragraph = store.move_paragraph(session, paragraph_id, expected_version, offset)
            novel_id, position = paragraph.novel_id, paragraph.position
        old = position - offset
        return self._done(novel_id, paragraph_id, position, min(old, position),
                          f"Moved paragraph {old} {'up' if offset < 0 else 'down'}: it is paragraph {position} now.")

    def split(self, paragraph_id: int, expected_version: int) -> EditOutcome:
        """Cut a paragraph at its blank lines into several; each part gets its own vectors."""
        with self.session_factory() as session:
            text = store.get_paragraph(session, paragraph_id).text
        parts = store.split_parts(text)
        vectors = [self.reader.passage_vector(part) for part in parts] if len(parts) > 1 else None
        with self.session_factory() as session, session.begin():
            made = store.split_paragraph(session, paragraph_id, expected_version, embeddings=vectors)
            novel_id, position = made[0].novel_id, made[0].position
        return self._done(novel_id, paragraph_id, position, position,
                          f"Split paragraph {position} into {len(made)} (paragraphs {position} to "
                          f"{position + len(made) - 1}).")

    def merge(self, paragraph_id: int, expected_version: int) -> EditOutcome:
        """Join a paragraph with the next one (the next as it is now: its version is checked again when saving)."""
        with self.session_factory() as session:
            paragraph = store.get_paragraph(session, paragraph_id)
            following = store.paragraph_at(session, paragraph.novel_id, paragraph.position + 1)
            if following is None:
                raise EngineError(f"Paragraph {paragraph.position} is the last one: there is nothing to merge it "
                                  "with.")
            joined = store.merged_text(paragraph.text, following.text)
            next_version = following.version
        embedding = self.reader.passage_vector(joined)
        with self.session_factory() as session, session.begin():
            merged = store.merge_paragraphs(session, paragraph_id, expected_version, next_version,
                                            embedding=embedding)
            novel_id, position = merged.novel_id, merged.position
        return self._done(novel_id, paragraph_id, position, position,
                          f"Merged paragraphs {position} and {position + 1}.")
