"""Group commit of uploads: waiting uploads are installed and journalled together, each
still checked against the ones before it (real Store, real Index, real server)."""

import contextlib
import hashlib
import os

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, DeferredList, gatherResults

from quantum_sync.client.transfer import SMALL_TRANSFER, ServerClient
from quantum_sync.errors import SyncError
from quantum_sync.server.index import Index
from quantum_sync.server.operations import FileOperations
from quantum_sync.server.spools import UploadSpool
from quantum_sync.server.store import Store
from tests.support import wait_for


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class RecordingHub:
    """Keeps what FileOperations publishes, in order."""

    def __init__(self):
        self.published = []

    def publish(self, change):
        self.published.append(change)

    def burst(self):
        return contextlib.nullcontext()

    def alert(self, kind, data):
        pass


@pytest_twisted.async_yield_fixture
async def operations(reactor, tmp_path):
    store = Store(str(tmp_path / "root"))
    store.prepare()
    index = Index(store.state_dir, retention=1000, reactor=reactor)
    index.startService()
    await index.open()
    yield FileOperations(store, index, RecordingHub(), reactor, enable_upload=True)
    index.stopService()


def spooled(store, data: bytes) -> UploadSpool:
    spool = UploadSpool(store.temp_dir)
    spool.write(data)
    spool.finish()
    return spool


async def one_batch(operations, uploads) -> list:
    """Start every ``(path, data, if_match, if_none_match)`` upload while the lock is held,
    so they are installed as one batch; returns their (success, result) pairs in order."""
    await operations._lock.acquire()
    started, spools = [], []
    for path, data, if_match, if_none_match in uploads:
        spool = spooled(operations.store, data)
        spools.append(spool)
        started.append(Deferred.fromCoroutine(operations.upload(
            path, spool, spool.sha256, spool.size, "c1", if_match=if_match,
            if_none_match=if_none_match)))
    assert len(operations._uploads) == len(uploads)
    operations._lock.release()
    results = await DeferredList(started, consumeErrors=True)
    for spool in spools:  # as the API does: the refused ones' temp files go
        spool.close()
    return results


def error_code(result) -> str:
    return result.value.code if hasattr(result, "value") and isinstance(result.value, SyncError) else ""


@pytest_twisted.ensureDeferred
async def test_a_batch_sees_its_own_earlier_uploads(operations):
    results = await one_batch(operations, [
        ("a.txt", b"one", None, "*"),
        ("a.txt", b"two", None, "*"),           # a.txt exists now: 412
        ("a.txt", b"three", f'"{sha(b"one")}"', None),  # replaces "one"
        ("a.txt", b"four", f'"{sha(b"one")}"', None),   # "one" is gone: 412
        ("d/x.txt", b"x", None, None),
        ("d/x.txt/y", b"y", None, None),         # d/x.txt is a file: CONFLICT
        ("d", b"z", None, None),                 # d is a directory now: CONFLICT
    ])
    assert [ok for ok, _ in results] == [True, False, True, False, True, False, False]
    assert [error_code(r) for ok, r in results if not ok] == \
        ["PRECONDITION_FAILED", "PRECONDITION_FAILED", "CONFLICT", "CONFLICT"]
    root = operations.store.root
    with open(os.path.join(root, "a.txt"), "rb") as f:
        assert f.read() == b"three"
    changes = operations.hub.published
    assert [c.seq for c in changes] == [1, 2, 3]
    assert [(type(c.operation).__name__, c.operation.metadata.path, c.operation.metadata.hash)
            for c in changes] == [("Create", "a.txt", sha(b"one")), ("Update", "a.txt", sha(b"three")),
                                  ("Create", "d/x.txt", sha(b"x"))]
    assert [(c.seq, c) for c in changes] == \
        [(r[1].seq, r[1]) for ok, r in results if ok]
    journal, _, _ = await operations.index.changes(0, 100)
    assert [(c.seq, c.operation.metadata.path, c.operation.metadata.hash) for c in journal] == \
        [(c.seq, c.operation.metadata.path, c.operation.metadata.hash) for c in changes]
    rows = await operations.index.get_many(["a.txt", "d", "d/x.txt", "nothing"])
    assert sorted(rows) == ["a.txt", "d", "d/x.txt"] and rows["d"][0].is_directory
    assert rows["a.txt"][0].hash == sha(b"three")
    assert os.listdir(operations.store.temp_dir) == []


@pytest_twisted.ensureDeferred
async def test_a_vanished_temp_file_fails_alone(operations):
    """One upload of a batch failing on the disk leaves the others installed."""
    await operations._lock.acquire()
    spools = [spooled(operations.store, bytes([i]) * 10) for i in range(3)]
    started = [Deferred.fromCoroutine(operations.upload(f"f{i}", s, s.sha256, s.size, "c1"))
               for i, s in enumerate(spools)]
    spools[1].close()  # e.g. the request went away: its temp file is removed
    operations._lock.release()
    results = await DeferredList(started, consumeErrors=True)
    assert [ok for ok, _ in results] == [True, False, True]
    assert error_code(results[1][1]) == "INTERNAL_ERROR"
    assert sorted(os.listdir(operations.store.root)) == [".quantum-sync", "f0", "f2"]
    assert [c.operation.metadata.path for c in operations.hub.published] == ["f0", "f2"]


@pytest_twisted.ensureDeferred
async def test_uploads_arriving_during_a_batch_form_the_next(operations):
    spools = [spooled(operations.store, b"%d" % i) for i in range(30)]
    started = [Deferred.fromCoroutine(operations.upload(f"n/{i:02d}", s, s.sha256, s.size, "c1"))
               for i, s in enumerate(spools)]
    results = await gatherResults(started)
    assert [change.seq for _, change in results] == list(range(1, 31))
    assert [m.path for m, _ in results] == [f"n/{i:02d}" for i in range(30)]
    assert operations.head == 30 and not operations._uploads
    await operations.idle()
    later = spooled(operations.store, b"later")
    metadata, change = await operations.upload("n/later", later, later.sha256, later.size, "c1")
    assert change.seq == 31 and metadata.hash == sha(b"later")


@pytest_twisted.ensureDeferred
async def test_racing_conditional_uploads_over_http_one_wins(reactor, server, http):
    base = b"base"
    await http.json("PUT", f"{server.url}/api/upload", params={"path": "race.txt"}, data=base)
    versions = [b"version %d" % i for i in range(24)]

    async def one(data):
        return await http.json("PUT", f"{server.url}/api/upload", params={"path": "race.txt"},
                               data=data, expect=None,
                               headers={"If-Match": f'"{sha(base)}"', "X-Content-SHA256": sha(data)})

    answers = await gatherResults([Deferred.fromCoroutine(one(v)) for v in versions])
    statuses = sorted(status for status, _ in answers)
    assert statuses == [200] + [412] * 23
    winner = next(body for status, body in answers if status == 200)
    with open(os.path.join(server.root, "race.txt"), "rb") as f:
        assert sha(f.read()) == winner["hash"]
    _, answer = await http.json("GET", f"{server.url}/api/changes")
    assert [list(c["operation"]) for c in answer["changes"]] == [["Create"], ["Update"]]


@pytest_twisted.ensureDeferred
async def test_a_client_sends_small_files_side_by_side(reactor, server, tmp_path):
    """With ``concurrency=1`` a client still has many small uploads in flight (so the
    server can commit them together), while large ones go one at a time."""
    client = ServerClient(reactor, server.url, "lanes", concurrency=1)
    operations = server.service.operations
    sources = {}
    for i in range(6):
        sources[f"small/{i}"] = os.urandom(4096)
    for i in range(2):
        sources[f"large/{i}"] = os.urandom(SMALL_TRANSFER + 1)
    for name, data in sources.items():
        (tmp_path / name.replace("/", "-")).write_bytes(data)
    await operations._lock.acquire()
    try:
        started = [client.upload(name, str(tmp_path / name.replace("/", "-")), sha(data), None, len(data))
                   for name, data in sources.items()]
        # the second large upload waits in the client for the first: it is never sent
        await wait_for(reactor, lambda: len(operations._uploads) == 7 and client._transfers.waiting,
                       what="six small uploads and one large on the server, the other large one queued")
        assert sorted(w.path for w in operations._uploads) == \
            ["large/0"] + [f"small/{i}" for i in range(6)]
    finally:
        operations._lock.release()
    try:
        stored = await gatherResults(started)
        assert {m.path: m.hash for m in stored} == {name: sha(data) for name, data in sources.items()}
    finally:
        await client.close()


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__])
