"""Per-paragraph snapshots on tiny random Mamba2 and Bamba hybrid models: restoring a snapshot then generating
equals reading everything from scratch then generating (same seed, same tokens); editing paragraph q drops later
snapshots and re-reads from q only; the keep policy stays within its byte budget."""

from __future__ import annotations

import pytest

from models.generate import GenerationInfo, generate
from models.sampling import SamplingParams
from models.snapshots import SnapshotPolicy, invalidate_from, paragraph_ids, read_manuscript, save_snapshot
from tests.models.conftest import empty_snapshot

pytestmark = pytest.mark.usefixtures("no_deprecations")

PARAGRAPHS = [
    "The ferry left at dawn.",
    "Mara counted the gulls, then stopped counting.",
    "By noon the island was a grey thumbprint on the sea.",
    "Nobody on board spoke of the letter.",
    "At the harbour a boy sold oranges from a crate.",
    "She bought three and ate none of them.",
]
NOVEL = 1
SEED = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=5)
FP32_BUDGET = SnapshotPolicy(budget_bytes=10**9, dtype="fp32")


def _continue(backend, state, n=16):
    info = GenerationInfo()
    list(generate(backend, backend.encode("Then"), sampling=SEED, max_new_tokens=n, state=state, info=info))
    return info.new_token_ids


def _from_scratch(backend, paragraphs):
    state = backend.new_state()
    backend.prefill(state, [t for p in paragraphs for t in paragraph_ids(backend, p)])
    return state


def test_restored_snapshot_generates_what_reading_from_scratch_does(tiny_backend, snapshot_store):
    first = read_manuscript(tiny_backend, snapshot_store, NOVEL, PARAGRAPHS, upto=4, policy=FP32_BUDGET)
    assert first.restored_from == 0 and 4 in first.saved
    resumed = read_manuscript(tiny_backend, snapshot_store, NOVEL, PARAGRAPHS, policy=FP32_BUDGET)
    assert resumed.restored_from == 4
    assert resumed.tokens_read == sum(len(paragraph_ids(tiny_backend, p)) for p in PARAGRAPHS[4:])
    assert _continue(tiny_backend, resumed.state) == _continue(tiny_backend, _from_scratch(tiny_backend, PARAGRAPHS))


def test_editing_a_paragraph_invalidates_later_snapshots_and_rereads_from_it_only(tiny_backend, snapshot_store):
    read_manuscript(tiny_backend, snapshot_store, NOVEL, PARAGRAPHS, policy=FP32_BUDGET)
    assert [p for p, _ in snapshot_store.list(NOVEL, tiny_backend.fingerprint)] == [1, 2, 3, 4, 5, 6]

    edited = list(PARAGRAPHS)
    edited[2] = "By noon the island had gone, and the sea was all there was."  # paragraph 3 (1-based)
    invalidate_from(snapshot_store, NOVEL, 3)
    assert [p for p, _ in snapshot_store.list(NOVEL, tiny_backend.fingerprint)] == [1, 2]

    result = read_manuscript(tiny_backend, snapshot_store, NOVEL, edited, policy=FP32_BUDGET)
    assert result.restored_from == 2
    assert result.tokens_read == sum(len(paragraph_ids(tiny_backend, p)) for p in edited[2:])
    assert result.tokens_read < sum(len(paragraph_ids(tiny_backend, p)) for p in edited)
    assert _continue(tiny_backend, result.state) == _continue(tiny_backend, _from_scratch(tiny_backend, edited))


def test_an_empty_snapshot_is_read_past_not_restored(tiny_backend, snapshot_store):
    # An empty snapshot file, as the backend wrote under transformers 5.24 before its port, holding nothing
    # although it claims 4 paragraphs.
    tokens = sum(len(paragraph_ids(tiny_backend, p)) for p in PARAGRAPHS[:4])
    snapshot_store.put(NOVEL, 4, tiny_backend.fingerprint, empty_snapshot(tiny_backend, tokens), "fp32")
    result = read_manuscript(tiny_backend, snapshot_store, NOVEL, PARAGRAPHS)
    assert result.restored_from == 0
    assert result.tokens_read == sum(len(paragraph_ids(tiny_backend, p)) for p in PARAGRAPHS)
    assert _continue(tiny_backend, result.state) == _continue(tiny_backend, _from_scratch(tiny_backend, PARAGRAPHS))


def test_snapshots_of_another_model_are_not_used(tiny_mamba2, tiny_hybrid, snapshot_store):
    read_manuscript(tiny_mamba2, snapshot_store, NOVEL, PARAGRAPHS, policy=FP32_BUDGET)
    other = read_manuscript(tiny_hybrid, snapshot_store, NOVEL, PARAGRAPHS)
    assert other.restored_from == 0


def test_policy_keeps_the_latest_and_every_kth_within_budget():
    policy = SnapshotPolicy(budget_bytes=5 * 100, dtype="bf16")  # room for 5 snapshots of 100 bytes
    assert policy.keep(3, 100) == {1, 2, 3}
    for count in range(1, 200):
        kept = policy.keep(count, 100)
        assert count in kept and len(kept) <= 5
        stride = policy.stride(count, 100)
        assert kept - {count} == set(range(stride, count + 1, stride)) - {count}
    assert policy.stride(100, 100) == 32 and policy.keep(100, 100) == {32, 64, 96, 100}
    assert SnapshotPolicy(budget_bytes=150).keep(10, 100) == {10}  # only the latest fits
    assert SnapshotPolicy(budget_bytes=50).keep(10, 100) == set()  # nothing fits
    with pytest.raises(ValueError):
        SnapshotPolicy(budget_bytes=100, dtype="fp8")


def test_saving_under_a_budget_deletes_snapshots_no_longer_needed(tiny_mamba2, snapshot_store):
    size = len(tiny_mamba2.state_to_bytes(_from_scratch(tiny_mamba2, PARAGRAPHS[:1]), "bf16"))
    state = tiny_mamba2.new_state()
    policy = SnapshotPolicy(budget_bytes=3 * size, dtype="bf16")  # the latest plus two strided ones
    for position, paragraph in enumerate(PARAGRAPHS * 2, start=1):
        tiny_mamba2.prefill(state, paragraph_ids(tiny_mamba2, paragraph))
        save_snapshot(tiny_mamba2, snapshot_store, NOVEL, position, state, policy)
        kept = snapshot_store.list(NOVEL, tiny_mamba2.fingerprint)
        assert sum(nbytes for _, nbytes in kept) <= policy.budget_bytes
        assert {p for p, _ in kept} == policy.keep(position, size)
    assert {p for p, _ in snapshot_store.list(NOVEL, tiny_mamba2.fingerprint)} == {4, 8, 12}


def test_round_trip_through_the_real_file_store(tiny_mamba2, tmp_path):
    from memory.db import init_db, make_engine, make_sessionmaker
    from memory.snapshots import FileSnapshotStore
    from memory.store import create_novel

    engine = make_engine(f"sqlite:///{tmp_path / 'longhand.db'}")
    init_db(engine)
    sessions = make_sessionmaker(engine)
    with sessions() as session, session.begin():
        novel_id = create_novel(session, "Ferry").id
    store = FileSnapshotStore(sessions, tmp_path / "snapshots")
    read_manuscript(tiny_mamba2, store, novel_id, PARAGRAPHS, upto=3, policy=FP32_BUDGET)
    resumed = read_manuscript(tiny_mamba2, store, novel_id, PARAGRAPHS, policy=FP32_BUDGET)
    assert resumed.restored_from == 3
    assert _continue(tiny_mamba2, resumed.state) == _continue(tiny_mamba2, _from_scratch(tiny_mamba2, PARAGRAPHS))
