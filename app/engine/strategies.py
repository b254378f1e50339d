"""The manuscript-state context strategy, for models whose state has a fixed size (Mamba2 family).

The model's state after reading the manuscript up to paragraph k is kept as a snapshot (memory.snapshots); a step
restores the newest snapshot at or before the last paragraph, reads only the paragraphs after it, and then reads
just the control block (bible, memory, plan). After the step commits, the state after the new paragraph is saved.
Snapshots are kept by a simple policy: the latest one, plus one every `keep_every` paragraphs.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

PARAGRAPH_SEPARATOR = "\n\n"


@dataclass
class ManuscriptState:
    state: object  # the backend's state after reading the manuscript (not advanced by the step's prompt)
    position: int  # the last paragraph it has read
    restored_from: int  # the snapshot position it started from (0: from scratch)
    tokens_read: int  # manuscript tokens read now, beyond the snapshot


def _fingerprint(generator) -> str:
    return str(generator.backend.fingerprint)


def _prune(store, novel_id: int, fingerprint: str, latest: int, keep_every: int) -> None:
    """Keep the latest snapshot and every `keep_every`-th one; delete the rest."""
    stale = [position for position, _ in store.list(novel_id, fingerprint)
             if position != latest and (keep_every <= 0 or position % keep_every != 0)]
    if stale:
        store.delete(novel_id, stale)


def restore_manuscript_state(generator, store, novel_id: int, paragraphs: list[tuple[int, str]], *,
                             cancel: threading.Event | None = None, keep_every: int = 8,
                             dtype: str = "fp32") -> ManuscriptState:
    """The state after reading `paragraphs` (position, text): the newest usable snapshot plus what follows it."""
    backend = generator.backend
    fingerprint = _fingerprint(generator)
    last = paragraphs[-1][0] if paragraphs else 0
    found = store.latest_at_or_before(novel_id, last, fingerprint) if paragraphs else None
    if found is not None:
        start, data = found
        state = backend.state_from_bytes(data)
    else:
        start, state = 0, backend.new_state()
    tokens = 0
    for position, text in paragraphs:
        if position <= start:
            continue
        if cancel is not None and cancel.is_set():
            from models.errors import Cancelled

            raise Cancelled("stopped")
        tokens += generator.read(state, text + PARAGRAPH_SEPARATOR)
    if tokens and last > start:
        # Reading is the expensive part: keep what was read for the next step.
        store.put(novel_id, last, fingerprint, backend.state_to_bytes(state, dtype), dtype)
        _prune(store, novel_id, fingerprint, last, keep_every)
    return ManuscriptState(state=state, position=last, restored_from=start, tokens_read=tokens)


def save_after_paragraph(generator, store, novel_id: int, manuscript: ManuscriptState, paragraph: str,
                         position: int, *, keep_every: int = 8, dtype: str = "fp32") -> None:
    """Store the state after the newly committed paragraph at `position`."""
    backend = generator.backend
    state = backend.clone_state(manuscript.state)
    generator.read(state, paragraph + PARAGRAPH_SEPARATOR)
    fingerprint = _fingerprint(generator)
    store.put(novel_id, position, fingerprint, backend.state_to_bytes(state, dtype), dtype)
    _prune(store, novel_id, fingerprint, position, keep_every)
