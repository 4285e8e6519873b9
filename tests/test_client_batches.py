"""Small files the client handles in batches and in memory: reads with the hash, uploads
of those bytes, in-memory downloads, batched installs, and watcher stats that spare a job."""

import hashlib
import os

import pytest
import pytest_twisted
from twisted.web import resource

from quantum_sync.client import localfs
from quantum_sync.client.batches import ThreadBatcher
from quantum_sync.client.engine import Engine
from quantum_sync.client.reconcile import Entry
from quantum_sync.client.state import Base, FolderState
from quantum_sync.client.transfer import DownloadCorrupt, ServerClient
from quantum_sync.diskio import Budget
from quantum_sync.errors import SyncError
from quantum_sync.threads import ThreadPoolService
from tests.support import client_of


def sha(data):
    return hashlib.sha256(data).hexdigest()


def test_a_small_file_is_read_with_its_hash_and_a_large_one_is_left_to_its_own_call(tmp_path):
    small, large = tmp_path / "small", tmp_path / "large"
    small.write_bytes(b"s" * 100)
    large.write_bytes(b"L" * 5000)
    v = localfs.version(str(small), None, keep=1000, hash_limit=4096)
    assert (v.data, v.entry.hash, v.entry.size) == (b"s" * 100, sha(b"s" * 100), 100)
    assert localfs.version(str(large), None, keep=1000, hash_limit=4096) is localfs.UNHASHED
    v = localfs.version(str(large), None, keep=1000)
    assert v.data is None and v.entry.hash == sha(b"L" * 5000)


def test_a_batch_of_versions_resolves_paths_and_keeps_each_failure_to_its_item(tmp_path):
    (tmp_path / "a").write_bytes(b"a")
    items = [("a", None, True), ("../out", None, True), ("gone", None, True), ("a", None, False)]
    results = localfs.versions(str(tmp_path), items, keep=10, hash_limit=10)
    assert results[0].data == b"a"
    assert isinstance(results[1], Exception)  # INVALID_PATH, never read
    assert results[2] is None
    assert results[3].data is None and results[3].entry.hash == sha(b"a")


def test_bytes_are_kept_only_within_the_budget(tmp_path):
    for name in "abc":
        (tmp_path / name).write_bytes(name.encode() * 40)
    budget = Budget(100)
    kept = [localfs.version(str(tmp_path / n), None, keep=64, budget=budget) for n in "abc"]
    assert [v.data is not None for v in kept] == [True, True, False]  # the third does not fit
    assert kept[2].entry.hash == sha(b"c" * 40) and budget.held == 80
    budget.give(40)
    assert localfs.version(str(tmp_path / "c"), None, keep=64, budget=budget).data == b"c" * 40


def test_install_many_installs_each_and_never_replaces_a_changed_file(tmp_path):
    folder = tmp_path / "f"
    staging = folder / ".quantum-sync" / "tmp"
    staging.mkdir(parents=True)
    (folder / "edited.txt").write_bytes(b"edited locally")
    seen = localfs.lstat(str(folder / "edited.txt"))
    os.utime(folder / "edited.txt", ns=(seen.mtime_ns + 10**9, seen.mtime_ns + 10**9))  # changed since
    installs = [
        localfs.Install("new/a.txt", b"A", None, 1_600_000_000.0),
        localfs.Install("edited.txt", b"server", seen, 1_600_000_000.0),
        localfs.Install("../b.txt", b"B", None, 1_600_000_000.0),
        localfs.Install("b.txt", b"B", None, 1_600_000_001.0),
    ]
    results = localfs.install_many(str(folder), str(staging), installs)
    assert (folder / "new" / "a.txt").read_bytes() == b"A"
    assert (folder / "b.txt").read_bytes() == b"B"
    assert results[0] == localfs.lstat(str(folder / "new" / "a.txt"))
    assert results[3].mtime_ns == 1_600_000_001 * 10**9
    assert isinstance(results[1], localfs.LocalChanged)
    assert isinstance(results[2], SyncError) and not (tmp_path / "b.txt").exists()
    assert (folder / "edited.txt").read_bytes() == b"edited locally"
    assert os.listdir(staging) == []


@pytest_twisted.ensureDeferred
async def test_a_thread_batcher_takes_everything_waiting_in_one_call(reactor):
    calls = []

    def work(items):
        calls.append(list(items))
        return [ValueError(i) if i == "bad" else i.upper() for i in items]

    threads = ThreadPoolService(reactor, 1, "test-batcher")
    threads.startService()
    try:
        batcher = ThreadBatcher(reactor, threads, work)
        results = [batcher.submit(i) for i in ("a", "b", "bad")]
        later = results[0].addCallback(lambda r: [r, batcher.submit("d"), batcher.submit("e")])
        results.append(batcher.submit("c"))
        first, d, e = await later
        assert first == "A" and await results[1] == "B" and await results[3] == "C"
        assert (await d, await e) == ("D", "E")
        with pytest.raises(ValueError):
            await results[2]
        # what one reactor turn submitted went together, and so did everything submitted
        # while it ran (even from its callbacks)
        assert calls == [["a", "b", "bad", "c"], ["d", "e"]]
    finally:
        threads.stopService()


@pytest_twisted.ensureDeferred
async def test_an_upload_from_memory_stores_those_bytes(reactor, server):  # noqa: F811
    client = ServerClient(reactor, server.url, "mem")
    data = b"held in memory" * 10
    try:
        meta = await client.upload("dir/m e+m.txt", None, sha(data), None, data=data)
        assert (meta.path, meta.hash, meta.size) == ("dir/m e+m.txt", sha(data), len(data))
        with open(os.path.join(server.root, "dir", "m e+m.txt"), "rb") as f:
            assert f.read() == data
        assert await client.download_bytes("dir/m e+m.txt", sha(data), len(data)) == data
    finally:
        await client.close()


class _Liar(resource.Resource):
    isLeaf = True
    body = b"x" * 1000

    def render_GET(self, request):
        return self.body


@pytest_twisted.ensureDeferred
async def test_an_in_memory_download_longer_than_announced_or_wrong_is_refused(reactor):
    async with client_of(reactor, _Liar()) as client:
        with pytest.raises(DownloadCorrupt, match="longer than"):
            await client.download_bytes("f", sha(_Liar.body), 10)
        with pytest.raises(DownloadCorrupt, match="SHA-256"):
            await client.download_bytes("f", sha(b"other"), 1000)
        assert await client.download_bytes("f", sha(_Liar.body), 1000) == _Liar.body


@pytest_twisted.ensureDeferred
async def test_a_watcher_stat_of_the_synced_version_starts_no_job(reactor, tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "a.txt").write_bytes(b"synced")
    state = await FolderState(reactor, str(folder)).open()
    try:
        engine = Engine(reactor, str(folder), state, server=None, client_id="c")
        st = localfs.lstat(str(folder / "a.txt"))
        state.set_base("a.txt", Base(Entry(sha(b"synced"), 6, False), 0.0, st.size, st.mtime_ns))
        done = engine.local_changed("a.txt", st)
        assert done.called and "a.txt" not in engine.paths
        assert engine.local_changed("never-there.txt", None).called
        # a stat that differs starts a job (it finds the file unchanged by content, so no upload)
        (folder / "a.txt").write_bytes(b"synced")
        os.utime(folder / "a.txt", ns=(st.mtime_ns + 10**9, st.mtime_ns + 10**9))
        job = engine.local_changed("a.txt", localfs.lstat(str(folder / "a.txt")))
        assert not job.called
        await job
        assert state.base("a.txt").local_mtime_ns == st.mtime_ns + 10**9  # re-read and recorded
    finally:
        await state.close()


@pytest_twisted.ensureDeferred
async def test_a_growing_hash_naming_the_synced_version_is_not_used(reactor, tmp_path):
    """A hash taken while written that is the synced version's, for a file whose stat
    moved since: taken on trust, the change would be taken for none (nothing uploaded,
    so nothing for the server to check). Any other such hash is a claim the server checks."""
    folder = tmp_path / "f"
    folder.mkdir()
    path = folder / "big"
    path.write_bytes(b"old" * 2000)
    seen = localfs.lstat(str(path))
    base = Base(Entry(sha(b"old" * 2000), 6000, False), 1.0, seen.size, seen.mtime_ns)
    path.write_bytes(b"new" * 2000)
    os.utime(path, ns=(seen.mtime_ns + 10**9, seen.mtime_ns + 10**9))
    state = await FolderState(reactor, str(folder)).open()
    try:
        engine = Engine(reactor, str(folder), state, server=None, client_id="c")
        claims = [base.entry.hash, sha(b"a claim the server checks")]
        engine.growing.take = lambda path, size: claims.pop(0)
        assert localfs.version(str(path), base, prehashed=engine.prehashed("big", str(path), base)).entry.hash \
            == sha(b"new" * 2000)
        assert localfs.version(str(path), base, prehashed=engine.prehashed("big", str(path), base)).entry.hash \
            == sha(b"a claim the server checks")
    finally:
        await state.close()


@pytest_twisted.ensureDeferred
async def test_a_delete_seen_while_the_path_is_in_flight_is_never_taken_as_synced(reactor, tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    state = await FolderState(reactor, str(folder)).open()
    try:
        engine = Engine(reactor, str(folder), state, server=None, client_id="c")
        assert engine.is_synced("new.bin", None)  # nothing there, nothing synced
        # a reconcile uploading new.bin holds its lock; its base comes when the upload lands
        taken = await engine.locks.acquire(["new.bin"])
        assert not engine.is_synced("new.bin", None)
        engine.locks.release(taken)
        assert engine.is_synced("new.bin", None)
    finally:
        await state.close()


@pytest.mark.parametrize("edit", ["rewritten", "touched"])
@pytest_twisted.ensureDeferred
async def test_a_remote_change_onto_a_local_file_changed_since_is_decided_on_what_is_there(reactor, tmp_path, server, edit):  # noqa: F811
    """The download that skips looking at the local file first still never replaces a
    changed one: rewritten → both versions kept; only touched → the remote one lands."""
    folder = tmp_path / "f"
    folder.mkdir()
    other = ServerClient(reactor, server.url, "other")
    mine = ServerClient(reactor, server.url, "mine")
    state = await FolderState(reactor, str(folder)).open()
    try:
        v1, v2 = b"version 1", b"version 2 from elsewhere"
        m1 = await other.upload("a.txt", None, sha(v1), None, data=v1)
        (folder / "a.txt").write_bytes(v1)
        st = localfs.lstat(str(folder / "a.txt"))
        state.set_base("a.txt", Base(Entry(m1.hash, m1.size, False), m1.modified, st.size, st.mtime_ns))
        m2 = await other.upload("a.txt", None, sha(v2), m1.hash, data=v2)
        if edit == "rewritten":
            (folder / "a.txt").write_bytes(b"local edit")
        os.utime(folder / "a.txt", ns=(st.mtime_ns + 10**9, st.mtime_ns + 10**9))
        engine = Engine(reactor, str(folder), state, mine, "mine")
        await engine.request("a.txt", m2)
        await engine.idle()
        assert (folder / "a.txt").read_bytes() == v2
        copies = [n for n in os.listdir(folder) if "sync-conflict" in n]
        if edit == "rewritten":
            assert [(folder / n).read_bytes() for n in copies] == [b"local edit"]
        else:
            assert copies == []
        assert state.base("a.txt").entry.hash == sha(v2)
    finally:
        await other.close()
        await mine.close()
        await state.close()
