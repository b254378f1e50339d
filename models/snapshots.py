"""Per-paragraph state snapshots: which ones to keep under a disk budget, and continuing a manuscript from one.

A snapshot at *position* p is the state of the model having read paragraphs 1..p (positions are 1-based, as in the
store), each paragraph read as its own text plus `PARAGRAPH_SEPARATOR`, so reading paragraphs one by one or all at
once gives the same tokens. Editing paragraph q keeps positions < q and invalidates every position >= q.
The store itself lives in memory/ (it implements `SnapshotStore`); this module never imports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

from models.backend import STATE_DTYPES, Backend, State

PARAGRAPH_SEPARATOR = "\n\n"


class SnapshotStore(Protocol):
    def latest_at_or_before(self, novel_id: int, position: int, fingerprint: str) -> tuple[int, bytes] | None: ...

    def put(self, novel_id: int, position: int, fingerprint: str, data: bytes, dtype: str) -> None: ...

    def delete_after(self, novel_id: int, position: int, fingerprint: str | None = None) -> None: ...

    def delete(self, novel_id: int, positions: Sequence[int]) -> None: ...

    def list(self, novel_id: int, fingerprint: str) -> list[tuple[int, int]]: ...


@dataclass(frozen=True)
class SnapshotPolicy:
    """Keep the latest snapshot plus one every `stride` paragraphs, all within `budget_bytes` on disk.

    The stride is a power of two, so when the manuscript grows past what the budget holds it doubles and exactly
    every other kept snapshot becomes unneeded (the kept set thins out instead of moving).
    """

    budget_bytes: int
    dtype: str = "bf16"

    def __post_init__(self) -> None:
        if self.dtype not in STATE_DTYPES:
            raise ValueError(f"snapshot dtype must be one of {STATE_DTYPES}, got {self.dtype!r}")
        if self.budget_bytes < 0:
            raise ValueError(f"snapshot budget must be >= 0 bytes, got {self.budget_bytes}")

    def capacity(self, snapshot_bytes: int) -> int:
        return self.budget_bytes // max(1, snapshot_bytes)

    def stride(self, count: int, snapshot_bytes: int) -> int:
        """K: the gap between kept snapshots for a manuscript of `count` paragraphs (0 when only the latest fits)."""
        strided_slots = self.capacity(snapshot_bytes) - 1  # one slot is the latest's
        if strided_slots <= 0:
            return 0
        stride = 1
        # Multiples of the stride below `count` (at `count` itself the latest is also a strided one).
        while (count - 1) // stride > strided_slots:
            stride *= 2
        return stride

    def keep(self, count: int, snapshot_bytes: int) -> set[int]:
        """Positions (1..count) worth keeping for a manuscript of `count` paragraphs."""
        if count <= 0 or self.capacity(snapshot_bytes) < 1:
            return set()
        stride = self.stride(count, snapshot_bytes)
        kept = {count}
        if stride:
            kept.update(range(stride, count + 1, stride))
        return kept


def paragraph_ids(backend: Backend, text: str) -> list[int]:
    """The tokens one paragraph adds to the manuscript state."""
    return backend.encode(text + PARAGRAPH_SEPARATOR)


@dataclass
class ReadResult:
    state: State
    tokens_read: int  # tokens read by this call (what restoring a snapshot saves)
    restored_from: int  # position of the snapshot it started from; 0 when it read from the beginning
    saved: list[int]  # positions this call stored


def save_snapshot(
    backend: Backend, store: SnapshotStore, novel_id: int, position: int, state: State, policy: SnapshotPolicy,
) -> bool:
    """Store `state` as position `position` if the policy keeps it, then delete stored ones no longer needed.

    Returns whether it stored the state.
    """
    data = backend.state_to_bytes(state, dtype=policy.dtype)
    keep = policy.keep(position, len(data))
    stored = position in keep
    if stored:
        store.put(novel_id, position, backend.fingerprint, data, policy.dtype)
    unneeded = [p for p, _nbytes in store.list(novel_id, backend.fingerprint) if p not in keep]
    if unneeded:
        store.delete(novel_id, unneeded)
    return stored


def _stored_bytes(backend: Backend, state: State, policy: SnapshotPolicy) -> int:
    # An estimate that avoids serializing: bf16 halves fp32 states (the usual in-memory dtype on CPU).
    nbytes = backend.state_nbytes(state)
    return nbytes // 2 if policy.dtype == "bf16" else nbytes


def invalidate_from(store: SnapshotStore, novel_id: int, edited_position: int) -> None:
    """Paragraph `edited_position` (1-based, as the store counts) changed: every state that read it is stale."""
    store.delete_after(novel_id, edited_position - 1)


def read_manuscript(
    backend: Backend,
    store: SnapshotStore | None,
    novel_id: int,
    paragraphs: Sequence[str],
    upto: int | None = None,
    policy: SnapshotPolicy | None = None,
) -> ReadResult:
    """The state after the first `upto` paragraphs (default: all), from the nearest stored snapshot at or before.

    Only the paragraphs after that snapshot are read. With a policy, the states passed on the way that the policy
    keeps are stored, and stored ones it no longer needs are deleted.
    """
    upto = len(paragraphs) if upto is None else upto
    if not 0 <= upto <= len(paragraphs):
        raise ValueError(f"upto must be within 0..{len(paragraphs)}, got {upto}")
    state, start = None, 0
    if store is not None and upto > 0:
        found = store.latest_at_or_before(novel_id, upto, backend.fingerprint)
        if found is not None:
            position, data = found
            try:
                state, start = backend.state_from_bytes(data), position
            except ValueError:
                # A snapshot from another model build or a damaged one: read from the start instead.
                state, start = None, 0
    if state is None:
        state = backend.new_state()
    tokens_read = 0
    saved: list[int] = []
    for index in range(start, upto):
        ids = paragraph_ids(backend, paragraphs[index])
        if ids:
            backend.prefill(state, ids)
        tokens_read += len(ids)
        position = index + 1
        if store is not None and policy is not None:
            wanted = position == upto or position in policy.keep(upto, _stored_bytes(backend, state, policy))
            if wanted and save_snapshot(backend, store, novel_id, position, state, policy):
                saved.append(position)
    return ReadResult(state, tokens_read, start, saved)
