"""The PostgreSQL index against a real PostgreSQL: the SQLite index's answers, the
schema's version, and a journal whose seqs become visible in order under concurrent
writers."""

import psycopg
import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, gatherResults

from quantum_sync.errors import SyncError
from quantum_sync.protocol import Create, Delete, FileMetadata, Move
from quantum_sync.server.cluster import pgindex
from quantum_sync.server.cluster.fence import ClusterFence, _LockedRows
from quantum_sync.server.cluster.pgindex import PgIndex, SchemaError, create_schema


@pytest_twisted.async_yield_fixture
async def open_index(reactor, pg_schema):
    """``await open_index(retention=1000)``: an open PgIndex on ``pg_schema``; each one
    is stopped afterwards (a test may stop one itself first)."""
    opened = []

    async def start(retention=1000):
        index = PgIndex(pg_schema, retention=retention, reactor=reactor)
        opened.append(index)
        await index.open()
        return index

    yield start
    for index in opened:
        await index.stopService()


def _file(path, digest="a" * 64, size=3):
    return FileMetadata(path, size, 1.0, digest, False), 1_000_000_000


@pytest_twisted.ensureDeferred
async def test_record_read_rename_and_changes(open_index):
    index = await open_index()
    assert len(index.journal_id) == 32 and await index.head() == 0
    first = await index.record([_file("d/a_b")], [], Create(_file("d/a_b")[0]), "c1", "t1")
    assert first.seq == 1
    await index.record([_file("d/a%b")], [], None, "", "")
    assert (await index.get("d/a_b"))[0].hash == "a" * 64
    assert set(await index.get_many(["d/a_b", "d/a%b", "none"])) == {"d/a_b", "d/a%b"}
    assert [m.path for m, _ in await index.list_under("d/a_b")] == ["d/a_b"]
    moved = await index.rename("d", "e", Move("d", "e"), "c2", "t2")
    assert moved.seq == 2
    assert [m.path for m, _ in await index.list_all()] == ["e/a%b", "e/a_b"]
    changes = await index.record_each(
        [([], ["e"], Delete("e"), "c3"), ([_file("x")], [], Create(_file("x")[0]), "c4")], "t3")
    assert [c.seq for c in changes] == [3, 4]
    listed, cursor, more = await index.changes(1, 2)
    assert [c.seq for c in listed] == [2, 3] and cursor == 3 and more
    assert listed[0].operation == Move("d", "e") and listed[0].source_client == "c2"
    with pytest.raises(SyncError) as beyond:
        await index.changes(9, 10)
    assert beyond.value.code == "CURSOR_EXPIRED" and beyond.value.extra["cursor"] == 4
    await index.stopService()
    again = await open_index()
    assert again.journal_id == index.journal_id and await again.head() == 4


@pytest_twisted.ensureDeferred
async def test_retention_prunes_and_expires_old_cursors(open_index):
    index = await open_index(retention=10)
    for start in range(0, 300, 50):
        await index.record_each([([], [], Delete(f"p{n}"), "c") for n in range(start, start + 50)], "t")
    with pytest.raises(SyncError) as expired:
        await index.changes(0, 10)
    assert expired.value.code == "CURSOR_EXPIRED"
    listed, cursor, _ = await index.changes(295, 10)
    assert [c.seq for c in listed] == [296, 297, 298, 299, 300]


def test_newer_schema_refused(pg_schema):
    with psycopg.connect(pg_schema) as connection:
        with connection.cursor() as cursor:
            create_schema(cursor)
            cursor.execute("UPDATE schema_version SET version = %s", (pgindex.SCHEMA_VERSION + 1,))
    with psycopg.connect(pg_schema) as connection:
        with connection.cursor() as cursor, pytest.raises(SchemaError, match="upgrade the server"):
            create_schema(cursor)


@pytest_twisted.ensureDeferred
async def test_concurrent_writers_become_visible_in_seq_order(open_index):
    """Four writers (two indexes, two pool threads each) append while a reader follows
    the journal: the reader's cursor never jumps over a seq that appears later."""
    writers = [await open_index(retention=10**6) for _ in range(2)]
    reader = await open_index(retention=10**6)
    seen, done = [], []

    async def write(index, name):
        for n in range(40):
            await index.record_each([([], [], Delete(f"{name}{n}-{k}"), name) for k in range(3)], "t")
        done.append(name)

    async def follow():
        cursor = 0
        while len(done) < 4 or cursor < await reader.head():
            changes, cursor, _ = await reader.changes(cursor, 1000)
            seen.extend(change.seq for change in changes)

    await gatherResults([
        Deferred.fromCoroutine(write(writers[0], "a")),
        Deferred.fromCoroutine(write(writers[0], "b")),
        Deferred.fromCoroutine(write(writers[1], "c")),
        Deferred.fromCoroutine(write(writers[1], "d")),
        Deferred.fromCoroutine(follow()),
    ])
    assert seen == list(range(1, 4 * 40 * 3 + 1))


@pytest_twisted.ensureDeferred
async def test_one_group_writing_one_path_twice_keeps_the_last(open_index):
    index = await open_index()
    first, second = _file("same", "1" * 64), _file("same", "2" * 64, size=9)
    await index.get_many_intending(["same"])
    assert await index.intents() == ["same"]
    changes = await index.record_each(
        [([first], [], Create(first[0]), "a"), ([second], [], Create(second[0]), "b")], "t",
        done_intents=["same"])
    assert [(c.seq, c.source_client) for c in changes] == [(1, "a"), (2, "b")]
    row = await index.get("same")
    assert (row[0].hash, row[0].size) == ("2" * 64, 9)
    assert await index.intents() == []
    listed, _, _ = await index.changes(0, 10)
    assert [c.operation.metadata.hash for c in listed] == ["1" * 64, "2" * 64]


@pytest_twisted.ensureDeferred
async def test_every_connection_gives_up_on_a_silent_database_in_seconds(open_index):
    index = await open_index()
    parameters = await index._run(lambda txn: txn.connection.info.get_parameters())
    assert (parameters["tcp_user_timeout"], parameters["keepalives_idle"], parameters["connect_timeout"]) == (
        "15000", "10", "5")


async def _fenced_index(reactor, pg_schema, open_index) -> tuple:
    """``(index, fence)``: an open index whose upload groups commit on the fence."""
    index = await open_index()
    index.fence = ClusterFence(pg_schema, lambda: index.namespace, reactor)
    return index, index.fence


@pytest_twisted.ensureDeferred
async def test_an_upload_group_locks_at_its_first_look_and_unlocks_with_its_commit(reactor, pg_schema, open_index):
    index, fence = await _fenced_index(reactor, pg_schema, open_index)
    other = psycopg.connect(pg_schema, autocommit=True)
    key = pgindex.lock_key(index.namespace, "path:a.txt")

    def free() -> bool:
        """True when another session can take the path's lock (it lets it go again)."""
        taken = other.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0]
        if taken:
            other.execute("SELECT pg_advisory_unlock(%s)", (key,))
        return taken

    try:
        async with fence.held(["a.txt"], intending=True) as rows:
            assert free()  # nothing taken before the install looks
            assert rows.get("a.txt") is None  # (blocking here: the install's thread does it)
            assert not free()
            assert await index.intents() == ["a.txt"]
            changes = await index.record_each([([_file("a.txt")], [], Create(_file("a.txt")[0]), "c")], "t",
                                              done_intents=["a.txt"])
            assert [c.seq for c in changes] == [1]
            assert free()  # released with the commit, before the hold ends
        assert await index.intents() == []
        assert (await index.get("a.txt"))[0].hash == "a" * 64
    finally:
        other.close()
        fence.close()


def test_locked_rows_take_once_and_raise_a_failure_again():
    calls = []

    def take():
        calls.append(1)
        raise SyncError("SERVICE_UNAVAILABLE", "away")

    rows = _LockedRows(take)
    for _ in range(3):
        with pytest.raises(SyncError):
            rows.get("a")
    assert len(calls) == 1
    assert dict(_LockedRows(lambda: {"a": 1})) == {"a": 1}


@pytest_twisted.ensureDeferred
async def test_a_failed_group_commit_leaves_no_transaction_for_the_next_group(reactor, pg_schema, open_index):
    index, fence = await _fenced_index(reactor, pg_schema, open_index)

    def broken(txn):
        raise ValueError("a bug in a recorder")

    try:
        async with fence.held(["a.txt"], intending=True) as rows:
            rows.get("a.txt")
            with pytest.raises(ValueError):
                await index.record_each([([_file("a.txt")], [], Create(_file("a.txt")[0]), "c")], "t",
                                        also=broken, done_intents=["a.txt"])
        async with fence.held(["b.txt"], intending=True) as rows:
            rows.get("b.txt")
            # recorded for every node to see (committed), not inside a leftover transaction
            assert await index.intents() == ["a.txt", "b.txt"]
    finally:
        fence.close()
