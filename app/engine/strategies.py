"""The manuscript-state context strategy, for models whose state has a fixed size (Mamba2 family) and hybrids
run by llama.cpp.

Which strategy each family gets (Engine.strategy):
  attention-only (SmolLM2, Llama, Qwen...), any backend           prompt-only (llama.cpp reuses the prompts' shared
                                                                   KV prefix within a step instead)
  recurrent (Mamba2, RWKV): transformers, native or llama.cpp     manuscript-state, fixed-size snapshots
  hybrid (Bamba, Granite-4.0-H, Jamba...): llama.cpp GGUF         manuscript-state; the snapshots' KV part grows with
                                                                   the manuscript, so SnapshotPolicy's byte budget
                                                                   thins out which are kept
  hybrid: transformers or native folder                           prompt-only (as before)

The model's state after reading the manuscript up to paragraph k is kept as a snapshot (memory.snapshots stores
them; models.snapshots decides which to keep under a disk budget and reads from the nearest one). A step restores
the newest snapshot at or before the last paragraph, reads only the paragraphs after it, then reads just the control
block (bible, memory, plan). After the step commits, the state after the new paragraph is saved.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from models.errors import Cancelled
from models.snapshots import SnapshotPolicy, paragraph_ids, read_manuscript, save_snapshot


@dataclass
class ManuscriptState:
    state: object  # the backend's state after reading the manuscript (never advanced by a step's prompt)
    position: int  # the last paragraph it has read
    restored_from: int  # the snapshot position it started from (0: from the beginning)
    tokens_read: int  # manuscript tokens read now, beyond the snapshot


def policy(budget_bytes: int, dtype: str) -> SnapshotPolicy:
    return SnapshotPolicy(budget_bytes=budget_bytes, dtype=dtype)


def restore_manuscript_state(generator, store, novel_id: int, paragraphs: list[tuple[int, str]], *,
                             cancel: threading.Event | None, snapshot_policy: SnapshotPolicy) -> ManuscriptState:
    """The state after reading `paragraphs` ((position, text), positions 1..n): the newest usable snapshot plus
    what follows it; states the policy keeps are stored on the way."""
    if cancel is not None and cancel.is_set():
        raise Cancelled("stopped")
    texts = [text for _, text in paragraphs]
    result = read_manuscript(generator.backend, store, novel_id, texts, policy=snapshot_policy)
    return ManuscriptState(state=result.state, position=len(texts), restored_from=result.restored_from,
                           tokens_read=result.tokens_read)


def save_after_paragraph(generator, store, novel_id: int, manuscript: ManuscriptState, paragraph: str,
                         position: int, *, snapshot_policy: SnapshotPolicy) -> None:
    """Store the state after the newly committed paragraph at `position` (the policy prunes older ones)."""
    backend = generator.backend
    state = backend.clone_state(manuscript.state)
    ids = paragraph_ids(backend, paragraph)
    if ids:
        backend.prefill(state, ids)
    save_snapshot(backend, store, novel_id, position, state, snapshot_policy)
