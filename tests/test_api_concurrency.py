"""Concurrency, restarts and other programs writing into the root, on a real server."""

import hashlib
import os

import pytest_twisted
from twisted.internet.defer import Deferred, gatherResults

from tests.support import start_server, wait_for


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def change_ops(http, server, since=0):
    _, answer = await http.json("GET", f"{server.url}/api/changes", params={"since": str(since)})
    return [(list(c["operation"])[0], c["operation"]) for c in answer["changes"]]


@pytest_twisted.ensureDeferred
async def test_twenty_concurrent_uploads(reactor, server, http):
    bodies = {f"many/file-{i:02d}.bin": os.urandom(50_000 + i) for i in range(20)}

    async def one(path, data):
        return await http.json("POST", f"{server.url}/api/upload", params={"path": path},
                               data=data, headers={"X-Content-SHA256": sha(data)})

    results = await gatherResults([Deferred.fromCoroutine(one(p, d)) for p, d in bodies.items()])
    assert {meta["path"]: meta["hash"] for _, meta in results} == \
        {p: sha(d) for p, d in bodies.items()}
    for path, data in bodies.items():
        with open(os.path.join(server.root, path), "rb") as f:
            assert f.read() == data
    ops = await change_ops(http, server)
    assert sorted(op["Create"]["metadata"]["path"] for kind, op in ops if kind == "Create") == \
        sorted(bodies)
    _, answer = await http.json("GET", f"{server.url}/api/changes")
    assert [c["seq"] for c in answer["changes"]] == list(range(1, 21))


@pytest_twisted.ensureDeferred
async def test_concurrent_uploads_to_one_path_leave_one_complete_version(reactor, server, http):
    versions = [bytes([i]) * (300_000 + i * 1000) for i in range(8)]

    async def one(data):
        return await http.json("PUT", f"{server.url}/api/upload", params={"path": "same.bin"},
                               data=data)

    await gatherResults([Deferred.fromCoroutine(one(v)) for v in versions])
    with open(os.path.join(server.root, "same.bin"), "rb") as f:
        final = f.read()
    assert final in versions
    _, meta = await http.json("GET", f"{server.url}/api/metadata", params={"path": "same.bin"})
    assert meta["hash"] == sha(final) and meta["size"] == len(final)
    kinds = [kind for kind, _ in await change_ops(http, server)]
    assert kinds == ["Create"] + ["Update"] * 7
    assert os.listdir(server.service.store.temp_dir) == []


@pytest_twisted.ensureDeferred
async def test_restart_reconciles_changes_made_while_down(reactor, tmp_path, http):
    server = await start_server(reactor, tmp_path)
    for name, data in (("keep.txt", b"k"), ("edit.txt", b"before"), ("gone.txt", b"g"),
                       ("olddir/inner.txt", b"i")):
        await http.json("POST", f"{server.url}/api/upload", params={"path": name}, data=data)
    await server.stop()
    root = server.root
    with open(os.path.join(root, "edit.txt"), "wb") as f:
        f.write(b"after, and longer")
    os.unlink(os.path.join(root, "gone.txt"))
    os.makedirs(os.path.join(root, "newdir"))
    with open(os.path.join(root, "newdir", "new.txt"), "wb") as f:
        f.write(b"new")
    os.unlink(os.path.join(root, "olddir", "inner.txt"))
    os.rmdir(os.path.join(root, "olddir"))
    with open(os.path.join(root, ".quantum-sync", "tmp", "upload-stale"), "wb") as f:
        f.write(b"left by a crash")
    server = await server.restart()
    try:
        ops = await change_ops(http, server, since=4)
        summary = sorted((kind, op[kind].get("path") or op[kind]["metadata"]["path"]) for kind, op in ops)
        assert summary == [("Create", "newdir"), ("Create", "newdir/new.txt"),
                           ("Delete", "gone.txt"), ("Delete", "olddir"), ("Update", "edit.txt")]
        _, meta = await http.json("GET", f"{server.url}/api/metadata", params={"path": "edit.txt"})
        assert meta["hash"] == sha(b"after, and longer")
        _, listing = await http.json("GET", f"{server.url}/api/list")
        assert sorted(e["path"] for e in listing) == ["edit.txt", "keep.txt", "newdir", "newdir/new.txt"]
        assert os.listdir(os.path.join(root, ".quantum-sync", "tmp")) == []
        # a second restart with nothing changed journals nothing
        server = await server.restart()
        assert await change_ops(http, server, since=9) == []
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_files_written_by_other_programs_are_journalled(reactor, server, http):
    await http.json("POST", f"{server.url}/api/upload", params={"path": "mine.txt"}, data=b"m")
    with open(os.path.join(server.root, "dropped.txt"), "wb") as f:
        f.write(b"from another program")
    os.makedirs(os.path.join(server.root, "sub", "deep"))
    with open(os.path.join(server.root, "sub", "deep", "x.txt"), "wb") as f:
        f.write(b"x")

    async def seen():
        paths = {op[kind]["metadata"]["path"] for kind, op in await change_ops(http, server)
                 if kind == "Create"}
        return {"dropped.txt", "sub", "sub/deep", "sub/deep/x.txt"} <= paths

    await wait_for(reactor, seen, 10.0, "the files written into the root journalled", step=0.05)
    os.unlink(os.path.join(server.root, "dropped.txt"))

    async def deleted():
        return ("Delete", {"Delete": {"path": "dropped.txt"}}) in await change_ops(http, server)

    await wait_for(reactor, deleted, 10.0, "the delete journalled", step=0.05)
    # the server's own upload was journalled once, not again by the watcher
    ops = await change_ops(http, server)
    mine = [kind for kind, op in ops if "mine.txt" in str(op)]
    assert mine == ["Create"]
    _, meta = await http.json("GET", f"{server.url}/api/metadata", params={"path": "sub/deep/x.txt"})
    assert meta["hash"] == sha(b"x")


@pytest_twisted.ensureDeferred
async def test_every_change_is_published_once_in_journal_order(reactor, server, http):
    """REST uploads, /api/sync operations and files from other programs all reach
    hub.publish exactly once each, in journal order."""
    published = []
    original = server.service.hub.publish

    def record(change):
        published.append(change.seq)
        original(change)

    server.service.hub.publish = record
    uploads = [Deferred.fromCoroutine(http.json("PUT", f"{server.url}/api/upload",
                                                params={"path": f"p{i}.txt"}, data=b"x" * i))
               for i in range(10)]
    await gatherResults(uploads)
    await http.json("POST", f"{server.url}/api/sync", json={"operations": [
        {"Move": {"from": "p1.txt", "to": "moved/p1.txt"}}, {"Delete": {"path": "p2.txt"}}]})
    with open(os.path.join(server.root, "outside-writer.txt"), "wb") as f:
        f.write(b"o")

    async def journalled():
        _, answer = await http.json("GET", f"{server.url}/api/changes")
        return answer["cursor"] >= 13 and answer

    answer = await wait_for(reactor, journalled, 10.0, "the file from another program journalled", step=0.05)
    assert published == [c["seq"] for c in answer["changes"]] == list(range(1, 14))


@pytest_twisted.ensureDeferred
async def test_three_hundred_simultaneous_uploads(reactor, server, http):
    """Hundreds of clients at once (a 2 MiB body each, so every spool runs its pipeline):
    all stored exactly, none reset (this found Twisted's accept queue of 50 too short)."""
    data = os.urandom(2 * 1024 * 1024 + 123)

    async def one(i):
        return await http.json("PUT", f"{server.url}/api/upload", params={"path": f"crowd/{i}.bin"},
                               data=data)

    results = await gatherResults([Deferred.fromCoroutine(one(i)) for i in range(300)])
    assert {meta["hash"] for _, meta in results} == {sha(data)}
    assert len(os.listdir(os.path.join(server.root, "crowd"))) == 300
    assert os.listdir(server.service.store.temp_dir) == []


@pytest_twisted.ensureDeferred
async def test_watcher_falls_back_to_polling(reactor, tmp_path, http, monkeypatch):
    """When inotify refuses (its watch limit), the root is polled instead."""
    import errno

    from quantum_sync.adapters import watchdog as observers
    from quantum_sync.server import rootwatch

    inotify_observer = observers.observer

    def refusing(**options):
        observer = inotify_observer(**options)

        def start():
            raise OSError(errno.ENOSPC, "inotify watch limit reached")

        observer.start = start
        return observer

    monkeypatch.setattr(observers, "observer", refusing)
    server = await start_server(reactor, tmp_path)
    try:
        assert isinstance(server.service.watcher.observer, rootwatch.PollingObserver)
        with open(os.path.join(server.root, "polled.txt"), "wb") as f:
            f.write(b"p")

        async def seen():
            return ("Create", "polled.txt") in [
                (kind, op[kind]["metadata"]["path"]) for kind, op in await change_ops(http, server)
                if kind == "Create"]

        await wait_for(reactor, seen, 10.0, "the polled file journalled", step=0.05)
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_downloads_during_replacements_match_their_etag(reactor, server, http):
    """While a file is replaced again and again, every download's bytes hash to the ETag
    sent with them (the opened file is what gets hashed and served)."""
    versions = [os.urandom(200_000 + i * 7919) for i in range(12)]
    await http.json("PUT", f"{server.url}/api/upload", params={"path": "hot.bin"}, data=versions[0])

    async def replace_all():
        for data in versions[1:]:
            await http.json("PUT", f"{server.url}/api/upload", params={"path": "hot.bin"}, data=data)

    async def download_many():
        checked = 0
        for _ in range(25):
            response = await http.get(f"{server.url}/api/download", params={"path": "hot.bin"})
            body = await response.content()
            if response.code == 409:  # kept changing under three attempts: allowed
                continue
            assert response.code == 200
            etag = response.headers.getRawHeaders("ETag")[0].strip('"')
            assert sha(body) == etag and body in versions
            checked += 1
        return checked

    results = await gatherResults([Deferred.fromCoroutine(replace_all()),
                                   Deferred.fromCoroutine(download_many()),
                                   Deferred.fromCoroutine(download_many())])
    assert results[1] + results[2] > 0


@pytest_twisted.ensureDeferred
async def test_the_watcher_skips_the_servers_own_uploads_not_other_writers(reactor, server, http):
    """Uploads (small bodies: in memory, written by the group commit) never reach a
    refresh through the root watcher, but a file another program writes over one of
    them right away still is journalled."""
    os.mkdir(os.path.join(server.root, "own"))  # its own event is journalled first

    async def directory_seen():
        return ("Create", "own") in [(kind, op[kind]["metadata"]["path"])
                                     for kind, op in await change_ops(http, server)]

    await wait_for(reactor, directory_seen, 10.0, "the directory journalled", step=0.05)
    refreshed = []
    original = server.service.operations.refresh

    async def record(tops=None):
        refreshed.append(tops)
        return await original(tops)

    server.service.operations.refresh = record
    await gatherResults([Deferred.fromCoroutine(http.json(
        "PUT", f"{server.url}/api/upload", params={"path": f"own/f{i}.bin"}, data=b"%d" % i))
        for i in range(20)])
    with open(os.path.join(server.root, "own", "f3.bin"), "wb") as f:
        f.write(b"rewritten by another program")

    async def journalled():
        ops = await change_ops(http, server)
        return [op for kind, op in ops if kind == "Update"]

    updates = await wait_for(reactor, journalled, 10.0, "the rewrite journalled", step=0.05)
    assert [u["Update"]["metadata"]["hash"] for u in updates] == [sha(b"rewritten by another program")]
    assert refreshed and all(call == ["own/f3.bin"] for call in refreshed), refreshed
