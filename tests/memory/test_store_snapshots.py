"""The file-backed SnapshotStore: put / latest_at_or_before / delete_after / delete / list, per model fingerprint,
crash leftovers swept, missing or short files skipped, and the models.snapshots.SnapshotStore protocol's names."""

from __future__ import annotations

import inspect

from memory import store
from memory.snapshots import FileSnapshotStore


def make(Session, tmp_path):
    with Session() as s, s.begin():
        novel_id = store.create_novel(s, "Snapshots").id
    return FileSnapshotStore(Session, tmp_path / "snapshots"), novel_id


def test_put_get_replace_and_delete(Session, tmp_path):
    snapshots, novel_id = make(Session, tmp_path)
    for position in (2, 5, 9):
        snapshots.put(novel_id, position, "mamba2-fp32", bytes([position]) * (100 * position), "fp32")
    snapshots.put(novel_id, 5, "other-model", b"x", "bf16")
    assert snapshots.list(novel_id, "mamba2-fp32") == [(2, 200), (5, 500), (9, 900)]
    assert snapshots.latest_at_or_before(novel_id, 1, "mamba2-fp32") is None
    assert snapshots.latest_at_or_before(novel_id, 7, "mamba2-fp32") == (5, bytes([5]) * 500)
    assert snapshots.latest_at_or_before(novel_id, 7, "other-model") == (5, b"x")
    snapshots.put(novel_id, 5, "mamba2-fp32", b"replaced", "fp32")
    assert snapshots.latest_at_or_before(novel_id, 5, "mamba2-fp32") == (5, b"replaced")
    snapshots.delete_after(novel_id, 4, "mamba2-fp32")
    assert snapshots.list(novel_id, "mamba2-fp32") == [(2, 200)]
    assert snapshots.list(novel_id, "other-model") == [(5, 1)]
    assert len(list(snapshots.root.rglob("*.state"))) == 2  # replaced and deleted files are gone
    snapshots.put(novel_id, 3, "m", b"abc", "fp32")
    snapshots.delete(novel_id, [3])
    assert snapshots.list(novel_id, "m") == []
    snapshots.delete_after(novel_id, 0)  # every fingerprint
    assert snapshots.list(novel_id, "other-model") == [] and snapshots.list(novel_id, "mamba2-fp32") == []
    assert list(snapshots.root.rglob("*.state")) == []


def test_damaged_files_are_skipped_and_orphans_swept(Session, tmp_path):
    snapshots, novel_id = make(Session, tmp_path)
    snapshots.put(novel_id, 1, "m", b"one", "fp32")
    snapshots.put(novel_id, 2, "m", b"two!", "fp32")
    [second] = [p for p in snapshots.root.rglob("2-*.state")]
    second.write_bytes(b"tw")  # cut short
    assert snapshots.latest_at_or_before(novel_id, 2, "m") == (1, b"one")
    assert snapshots.list(novel_id, "m") == [(1, 3)]
    assert not second.exists()  # the damaged file went with its row
    orphan = second.parent / "7-deadbeef.state"
    orphan.write_bytes(b"left by a crash")
    assert snapshots.sweep() == 1 and not orphan.exists()
    assert snapshots.latest_at_or_before(novel_id, 9, "m") == (1, b"one")


def test_deleting_the_novel_removes_its_snapshots(Session, tmp_path):
    snapshots, novel_id = make(Session, tmp_path)
    snapshots.put(novel_id, 1, "m", b"state", "fp32")
    with Session() as s, s.begin():
        store.delete_novel(s, novel_id)
    snapshots.delete_novel(novel_id)
    assert not (snapshots.root / str(novel_id)).exists()
    assert snapshots.total_bytes() == 0
    snapshots.put(novel_id, 1, "m", b"late write for a deleted novel", "fp32")
    assert snapshots.list(novel_id, "m") == [] and not list(snapshots.root.rglob("*.state"))


def test_has_the_snapshot_store_protocol_methods():
    expected = {"latest_at_or_before": ["novel_id", "position", "fingerprint"],
                "put": ["novel_id", "position", "fingerprint", "data", "dtype"],
                "delete_after": ["novel_id", "position", "fingerprint"], "delete": ["novel_id", "positions"],
                "list": ["novel_id", "fingerprint"]}
    for name, params in expected.items():
        assert list(inspect.signature(getattr(FileSnapshotStore, name)).parameters)[1:] == params
