"""Recurrent-state snapshots on disk: implements models.snapshots.SnapshotStore (same method names; memory/ cannot
import models/) over the `state_snapshots` table, with the bytes in files under `<data dir>/snapshots/`.

Why files and not blobs: a state is megabytes (a Mamba2 state is layers x heads x head_dim x d_state floats), one
per paragraph; as blobs they would bloat every write-ahead-log checkpoint, every backup and every JSON export with a
cache that can always be recomputed by re-reading the manuscript. The table keeps what is queried (novel, position,
fingerprint, dtype, size); the file is written and fsynced under a fresh name *before* its row commits, and
unlinked only *after* the row is gone, so a crash leaves at worst an orphan file (`sweep()` removes them), never a
row pointing at a half-written file. A row whose file is missing or of the wrong size is dropped and skipped.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from memory.connection import run_in_transaction
from memory.private import write_private_atomic
from memory.schema import Novel, StateSnapshot

SUFFIX = ".state"


class FileSnapshotStore:
    """`SnapshotStore` for one database: rows in `state_snapshots`, bytes under `root`."""

    def __init__(self, session_factory: sessionmaker[Session], root: str | Path):
        self.session_factory = session_factory
        self.root = Path(root)

    # -- SnapshotStore protocol ---------------------------------------------------------------------------------

    def put(self, novel_id: int, position: int, fingerprint: str, data: bytes, dtype: str) -> None:
        """Store the state after paragraph `position`, replacing any for the same (position, fingerprint)."""
        relative = self._write_file(novel_id, fingerprint, position, data)

        def save(session: Session) -> str | None:
            if session.get(Novel, novel_id) is None:
                return relative  # the novel is gone: drop the file again
            old = session.scalar(self._query(novel_id, fingerprint).where(StateSnapshot.position == position))
            old_path = None
            if old is not None:
                old_path = old.path
                session.delete(old)
                session.flush()
            session.add(StateSnapshot(novel_id=novel_id, position=position, fingerprint=fingerprint, dtype=dtype,
                                      nbytes=len(data), path=relative))
            return old_path

        try:
            stale = run_in_transaction(self.session_factory, save)
        except BaseException:
            self._unlink(relative)
            raise
        if stale is not None:
            self._unlink(stale)

    def latest_at_or_before(self, novel_id: int, position: int, fingerprint: str) -> tuple[int, bytes] | None:
        """The newest usable snapshot at or before `position`, as (its position, its bytes)."""
        with self.session_factory() as session:
            rows = [(r.id, r.position, r.path, r.nbytes) for r in session.scalars(
                self._query(novel_id, fingerprint).where(StateSnapshot.position <= position)
                .order_by(StateSnapshot.position.desc()))]
        broken = []
        result = None
        for row_id, row_position, relative, nbytes in rows:
            data = self._read_file(relative)
            if data is not None and len(data) == nbytes:
                result = (row_position, data)
                break
            broken.append(row_id)
        if broken:
            self._delete_rows(broken)
        return result

    def delete_after(self, novel_id: int, position: int, fingerprint: str | None = None) -> None:
        """Drop snapshots after `position` (they describe text that changed)."""
        def pick(session: Session) -> list[StateSnapshot]:
            query = select(StateSnapshot).where(StateSnapshot.novel_id == novel_id, StateSnapshot.position > position)
            if fingerprint is not None:
                query = query.where(StateSnapshot.fingerprint == fingerprint)
            return list(session.scalars(query))

        self._delete_where(pick)

    def delete(self, novel_id: int, positions: Iterable[int]) -> None:
        positions = list(positions)

        def pick(session: Session) -> list[StateSnapshot]:
            return list(session.scalars(select(StateSnapshot).where(StateSnapshot.novel_id == novel_id,
                                                                    StateSnapshot.position.in_(positions))))

        if positions:
            self._delete_where(pick)

    def list(self, novel_id: int, fingerprint: str) -> list[tuple[int, int]]:
        with self.session_factory() as session:
            return [(r.position, r.nbytes) for r in session.scalars(
                self._query(novel_id, fingerprint).order_by(StateSnapshot.position))]

    # -- housekeeping -------------------------------------------------------------------------------------------

    def total_bytes(self, novel_id: int | None = None) -> int:
        with self.session_factory() as session:
            query = select(StateSnapshot.nbytes)
            if novel_id is not None:
                query = query.where(StateSnapshot.novel_id == novel_id)
            return int(sum(session.scalars(query)))

    def delete_novel(self, novel_id: int) -> None:
        """Remove every snapshot of a novel (call after deleting the novel; rows go with it by cascade)."""
        self._delete_where(lambda s: list(s.scalars(select(StateSnapshot)
                                                    .where(StateSnapshot.novel_id == novel_id))))
        folder = self.root / str(novel_id)
        if folder.is_dir():
            for path in sorted(folder.rglob("*"), reverse=True):
                path.unlink() if path.is_file() else path.rmdir()
            folder.rmdir()

    def sweep(self) -> int:
        """Delete files no row refers to (left by a crash between writing a file and committing its row)."""
        if not self.root.is_dir():
            return 0
        with self.session_factory() as session:
            known = set(session.scalars(select(StateSnapshot.path)))
        removed = 0
        for path in self.root.rglob("*"):
            if path.is_file() and path.relative_to(self.root).as_posix() not in known:
                path.unlink()
                removed += 1
        return removed

    # -- internals ----------------------------------------------------------------------------------------------

    @staticmethod
    def _query(novel_id: int, fingerprint: str):
        return select(StateSnapshot).where(StateSnapshot.novel_id == novel_id,
                                           StateSnapshot.fingerprint == fingerprint)

    def _write_file(self, novel_id: int, fingerprint: str, position: int, data: bytes) -> str:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"snapshot data must be bytes, got {type(data).__name__}")
        # The fingerprint is hashed for the folder name: it may hold any characters.
        folder = Path(str(novel_id)) / hashlib.sha256(fingerprint.encode("utf-8")).hexdigest()[:16]
        relative = (folder / f"{position}-{uuid.uuid4().hex[:12]}{SUFFIX}").as_posix()
        target = self.root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        write_private_atomic(target, bytes(data))
        return relative

    def _read_file(self, relative: str) -> bytes | None:
        try:
            return (self.root / relative).read_bytes()
        except FileNotFoundError:
            return None

    def _unlink(self, relative: str) -> None:
        try:
            (self.root / relative).unlink()
        except FileNotFoundError:
            pass

    def _delete_rows(self, row_ids: list[int]) -> None:
        self._delete_where(lambda s: list(s.scalars(select(StateSnapshot).where(StateSnapshot.id.in_(row_ids)))))

    def _delete_where(self, pick) -> None:
        def remove(session: Session) -> list[str]:
            rows = pick(session)
            paths = [r.path for r in rows]
            for row in rows:
                session.delete(row)
            return paths

        for relative in run_in_transaction(self.session_factory, remove):
            self._unlink(relative)
