"""Files written into the root by other programs: hashed outside the operations lock
(uploads go on meanwhile), once quiet, and a hash taken while the file changed is never
journalled; an upload onto a large file another program changed waits for its hash
outside the lock too. Real Store and Index; the hashing is gated to hold it open."""

import contextlib
import hashlib
import os
import threading
import time

import pytest_twisted
from twisted.internet.defer import Deferred

from quantum_sync.server.index import Index
from quantum_sync.server.operations import FileOperations
from quantum_sync.server.spools import UploadSpool
from quantum_sync.server.store import Store
from test_group_commit import RecordingHub
from support import wait_for

WITHIN = 10
BIG = 2 * 1024 * 1024  # past FileOperations.quiet_size


class GatedStore(Store):
    """A Store whose hashing waits for :attr:`release` (and tells :attr:`entered`)."""

    def __init__(self, root):
        super().__init__(root)
        self.entered, self.release = threading.Event(), threading.Event()
        self.release.set()

    def _gate(self):
        self.entered.set()
        assert self.release.wait(WITHIN), "the test never released the hashing"

    def hash(self, path):
        self._gate()
        return super().hash(path)

    def hash_if_unchanged(self, entry):
        self._gate()
        return super().hash_if_unchanged(entry)


class GrowingStore(Store):
    """A Store in which another program appends to each file as it is hashed."""

    def _grow(self, path):
        with open(self.resolve(path), "ab") as f:
            f.write(b" and more")

    def hash(self, path):
        self._grow(path)
        return super().hash(path)

    def hash_if_unchanged(self, entry):
        self._grow(entry.path)
        return super().hash_if_unchanged(entry)


@contextlib.asynccontextmanager
async def operations_on(reactor, store):
    """FileOperations on ``store`` (prepared here) with a real Index, closed afterwards."""
    store.prepare()
    index = Index(store.state_dir, retention=1000, reactor=reactor)
    index.startService()
    await index.open()
    operations = FileOperations(store, index, RecordingHub(), reactor, enable_upload=True)
    try:
        yield operations
    finally:
        if isinstance(store, GatedStore):
            store.release.set()
        operations.close()
        index.stopService()


def _write(store, path, data, age=60.0):
    """``data`` at ``path`` as another program leaves it, last written ``age`` s ago."""
    name = os.path.join(store.root, path)
    with open(name, "wb") as f:
        f.write(data)
    past = time.time() - age
    os.utime(name, (past, past))


async def _upload(operations, path, data, **conditions):
    spool = UploadSpool(operations.store.temp_dir)
    spool.write(data)
    spool.finish()
    try:
        return await operations.upload(path, spool, spool.sha256, spool.size, "c1", **conditions)
    finally:
        spool.close()


@pytest_twisted.ensureDeferred
async def test_a_large_new_file_is_hashed_while_uploads_go_on(reactor, tmp_path):
    store = GatedStore(str(tmp_path / "root"))
    async with operations_on(reactor, store) as operations:
        big = os.urandom(BIG)
        _write(store, "big.bin", big)
        store.release.clear()
        refreshing = Deferred.fromCoroutine(operations.refresh(None))
        await wait_for(reactor, store.entered.is_set, WITHIN)
        metadata, _ = await Deferred.fromCoroutine(_upload(operations, "small.txt", b"small")).addTimeout(
            WITHIN, reactor)  # never waits for the hashing
        assert metadata.path == "small.txt" and not refreshing.called
        store.release.set()
        changes = await refreshing
        assert [(c.operation.kind, c.operation.metadata.hash) for c in changes] == [
            ("Create", hashlib.sha256(big).hexdigest())]


@pytest_twisted.ensureDeferred
async def test_an_upload_onto_a_large_file_changed_by_another_program(reactor, tmp_path):
    store = GatedStore(str(tmp_path / "root"))
    async with operations_on(reactor, store) as operations:
        _write(store, "t.bin", b"a" * BIG)
        await operations.refresh(None)
        _write(store, "t.bin", b"b" * BIG, age=30)  # unknown to the index
        store.entered.clear()
        store.release.clear()
        onto = Deferred.fromCoroutine(_upload(operations, "t.bin", b"mine",
                                              if_match=hashlib.sha256(b"a" * BIG).hexdigest()))
        onto.addErrback(lambda failure: failure.value)
        await wait_for(reactor, store.entered.is_set, WITHIN)
        await Deferred.fromCoroutine(_upload(operations, "other.txt", b"x")).addTimeout(WITHIN, reactor)
        assert not onto.called
        store.release.set()
        refused = await onto.addTimeout(WITHIN, reactor)
        # the other program's write came first and is journalled; the upload was based
        # on the version before it: refused, nothing overwritten
        assert refused.code == "PRECONDITION_FAILED"
        kinds = [(c.operation.kind, getattr(c.operation, "metadata", None) and c.operation.metadata.path)
                 for c in operations.hub.published]
        assert kinds == [("Create", "t.bin"), ("Create", "other.txt"), ("Update", "t.bin")]
        assert operations.hub.published[-1].operation.metadata.hash == hashlib.sha256(b"b" * BIG).hexdigest()
        with open(os.path.join(store.root, "t.bin"), "rb") as f:
            assert f.read(1) == b"b"


@pytest_twisted.ensureDeferred
async def test_a_file_that_changes_while_hashed_is_not_journalled_with_that_hash(reactor, tmp_path):
    store = GrowingStore(str(tmp_path / "root"))
    async with operations_on(reactor, store) as operations:
        _write(store, "log.txt", b"first line")
        assert await operations.refresh(None) == []
        assert await operations.index.list_all() == []


@pytest_twisted.ensureDeferred
async def test_a_large_file_being_written_is_journalled_once_quiet(reactor, tmp_path):
    store = Store(str(tmp_path / "root"))
    async with operations_on(reactor, store) as operations:
        operations.quiet_seconds = 0.3
        data = os.urandom(BIG)
        _write(store, "fresh.bin", data, age=0)
        assert await operations.refresh(None) == []  # written just now: it may still grow
        await wait_for(reactor, lambda: operations.hub.published, WITHIN)
        [change] = operations.hub.published
        assert (change.operation.kind, change.operation.metadata.hash) == ("Create", hashlib.sha256(data).hexdigest())
