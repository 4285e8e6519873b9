"""The SQLite index and journal (on adbapi's thread, driven by the real reactor)."""

import pytest
import pytest_twisted

from quantum_sync.errors import SyncError
from quantum_sync.protocol import Create, Delete, FileMetadata, Move, Update
from quantum_sync.server.index import LOOKUP_BATCH, Index


@pytest_twisted.async_yield_fixture
async def index(reactor, tmp_path):
    index = Index(str(tmp_path / "state"), retention=5, reactor=reactor)
    index.startService()
    index.start()
    await index.open()
    yield index
    index.stopService()


def meta(path, size=1, digest="a" * 64, directory=False):
    if directory:
        return FileMetadata.directory(path, 1.0), 1_000_000_000
    return FileMetadata(path, size, 2.0, digest, False), 2_000_000_000


@pytest_twisted.ensureDeferred
async def test_record_list_get(index):
    change = await index.record([meta("a", directory=True), meta("a/x")], [], Create(meta("a/x")[0]),
                                "c1", "2024-01-01T00:00:00Z")
    assert change.seq == 1 and change.source_client == "c1"
    assert [m.path for m, _ in await index.list_all()] == ["a", "a/x"]
    assert await index.get("a/x") == meta("a/x")
    assert await index.get("nope") is None
    assert await index.record([meta("b")], [], None, "", "") is None  # cache only
    assert await index.head() == 1


@pytest_twisted.ensureDeferred
async def test_removal_and_rename_cover_subtrees_only(index):
    rows = [meta("a", directory=True), meta("a/x"), meta("a/y"), meta("ab"), meta("a_b"), meta("A/x")]
    await index.record(rows, [], None, "", "")
    await index.rename("a", "z", Move("a", "z"), "c", "t")
    assert sorted(m.path for m, _ in await index.list_all()) == ["A/x", "a_b", "ab", "z", "z/x", "z/y"]
    await index.record([], ["z"], Delete("z"), "c", "t")
    assert sorted(m.path for m, _ in await index.list_all()) == ["A/x", "a_b", "ab"]
    assert [m.path for m, _ in await index.list_under("a_b")] == ["a_b"]


@pytest_twisted.ensureDeferred
async def test_changes_paging_and_retention(index):
    for i in range(8):
        await index.record([], [], Delete(f"f{i}"), "c", "t")
    changes, cursor, has_more = await index.changes(3, 2)
    assert [c.seq for c in changes] == [4, 5] and cursor == 5 and has_more
    changes, cursor, has_more = await index.changes(5, 100)
    assert [c.seq for c in changes] == [6, 7, 8] and cursor == 8 and not has_more
    assert changes[0].operation == Delete("f5")
    with pytest.raises(SyncError) as info:
        await index.changes(1, 10)
    assert info.value.code == "CURSOR_EXPIRED" and info.value.extra["cursor"] == 8
    assert await index.changes(8, 10) == ([], 8, False)
    with pytest.raises(SyncError) as info:  # beyond the head: a cursor of another journal
        await index.changes(100, 10)
    assert info.value.code == "CURSOR_EXPIRED"
    assert info.value.extra == {"cursor": 8, "journal_id": index.journal_id}


@pytest_twisted.ensureDeferred
async def test_sequence_survives_reopen(reactor, tmp_path):
    first = Index(str(tmp_path / "s"), retention=100, reactor=reactor)
    await first.open()
    await first.record([], [], Delete("a"), "c", "t")
    first.stopService()
    second = Index(str(tmp_path / "s"), retention=100, reactor=reactor)
    await second.open()
    try:
        change = await second.record([], [], Delete("b"), "c", "t")
        assert change.seq == 2
    finally:
        second.stopService()


@pytest_twisted.ensureDeferred
async def test_record_many_is_one_ordered_batch(index):
    items = [([meta("a")], [], Create(meta("a")[0])), ([meta("b")], [], None),
             ([], ["a"], Delete("a"))]
    changes = await index.record_many(items, "server", "t")
    assert [(c.seq, c.operation.kind) for c in changes] == [(1, "Create"), (2, "Delete")]
    assert [m.path for m, _ in await index.list_all()] == ["b"]


@pytest_twisted.ensureDeferred
async def test_get_many_reads_beyond_one_query(index):
    names = [f"d/f{i:04d}" for i in range(LOOKUP_BATCH + 7)]
    await index.record([meta(n) for n in names], [], None, "", "")
    found = await index.get_many(names + ["missing", "d/f"])
    assert sorted(found) == sorted(names)
    assert found["d/f0003"][0] == meta("d/f0003")[0] and found["d/f0003"][1] == meta("d/f0003")[1]
    assert await index.get_many([]) == {}


@pytest_twisted.ensureDeferred
async def test_record_each_keeps_each_source_client(index):
    items = [([meta("a")], [], Create(meta("a")[0]), "c1"), ([meta("b")], [], None, "c2"),
             ([meta("b", size=2)], [], Update(meta("b", size=2)[0]), "c3")]
    changes = await index.record_each(items, "t")
    assert [(c.seq, c.operation.kind, c.source_client) for c in changes] == \
        [(1, "Create", "c1"), (2, "Update", "c3")]
    stored, _, _ = await index.changes(0, 10)
    assert [c.source_client for c in stored] == ["c1", "c3"]


@pytest_twisted.ensureDeferred
async def test_a_call_after_stop_is_a_clean_503(reactor, tmp_path):
    index = Index(str(tmp_path / "state"), retention=5, reactor=reactor)
    index.startService()
    await index.open()
    index.stopService()
    with pytest.raises(SyncError) as refused:
        await index.get("a")
    assert refused.value.code == "SERVICE_UNAVAILABLE" and refused.value.status == 503
