"""Versions end to end: real clients on real folders, a real server: a restore after
``rm -rf`` of a folder brings every file back to every client; pruning by count as
versions are kept and by age on a Clock; a restore racing a new upload; a restore racing a pruning pass."""

import hashlib
import os
import shutil
import threading

import pytest_twisted
from twisted.internet import defer, task
from twisted.internet.threads import deferToThread

from quantum_sync.config import VersionsConfig
from quantum_sync.server.versions import AREA_NAME
from clients import converged, read, tree, write
from support import start_server, wait_for


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def listing(http, server, path):
    return (await http.json("GET", f"{server.url}/api/versions", params={"path": path}))[1]["versions"]


def area(server):
    return os.path.join(server.root, ".quantum-sync", AREA_NAME)


@pytest_twisted.ensureDeferred
async def test_a_restore_after_rm_rf_brings_every_file_back_to_every_client(reactor, servers, clients, http):
    running = servers[0]
    a, b, A, B = await clients.pair(running)
    files = {"project/readme.txt": b"read me", "project/src/main.py": b"print(1)\n",
             "project/src/lib/util.py": b"def f(): pass\n", "project/data.bin": os.urandom(300_000)}
    for path, data in files.items():
        write(A, path, data)
    write(A, "elsewhere.txt", b"stays")
    await converged(reactor, A, B, running.root)
    shutil.rmtree(os.path.join(A, "project"))
    await wait_for(reactor, lambda: not os.path.exists(os.path.join(B, "project")), what="rm -rf on b")
    await wait_for(reactor, lambda: not os.path.exists(os.path.join(running.root, "project")),
                   what="rm -rf on the server")
    trash = await listing(http, running, "project")
    assert sorted(v["path"] for v in trash if v["deleted"]) == sorted(files)
    for version in trash:
        await http.json("POST", f"{running.url}/api/restore",
                        json={"path": version["path"], "id": version["id"]})
    for folder in (A, B, running.root):
        await wait_for(reactor, lambda: all(read(folder, p) == d for p, d in files.items()),
                       what=f"every file back in {folder}")
    await converged(reactor, A, B, running.root)


@pytest_twisted.ensureDeferred
async def test_versions_are_pruned_by_count_and_by_age(reactor, tmp_path, http):
    clock = task.Clock()
    running = await start_server(reactor, tmp_path, service_options={"clock": clock},
                                 versions={"keep_days": 2, "keep_per_file": 2})
    try:
        for n in range(5):
            await http.json("POST", f"{running.url}/api/upload", params={"path": "a.txt"},
                            data=b"v%d" % n)
            clock.advance(1)  # distinct kept-at times, well within one pruning interval
        await http.json("POST", f"{running.url}/api/upload", params={"path": "b.txt"}, data=b"b")
        await http.json("POST", f"{running.url}/api/sync", json={"operations": [{"Delete": {"path": "b.txt"}}]})
        # by count as they are kept
        assert [v["hash"] for v in await listing(http, running, "a.txt")] == [sha(b"v3"), sha(b"v2")]
        await wait_for(reactor, lambda: len(os.listdir(area(running))) == 3, what="pruned by count")
        assert [v["path"] for v in await listing(http, running, "")] == ["b.txt"]
        clock.advance(2 * 86400 + 3600)  # then by age, at a pass: everything kept two days ago
        await wait_for(reactor, lambda: os.listdir(area(running)) == [], what="pruned by age")
        assert await listing(http, running, "a.txt") == [] and await listing(http, running, "") == []
        assert read(running.root, "a.txt") == b"v4"  # the current file is never a version
    finally:
        await running.stop()


@pytest_twisted.ensureDeferred
async def test_a_restore_racing_a_new_upload_loses_nothing(reactor, servers, clients, http):
    running = servers[0]
    a, b, A, B = await clients.pair(running)
    write(A, "doc.txt", b"one")
    await wait_for(reactor, lambda: read(B, "doc.txt") == b"one", what="one on b")
    write(A, "doc.txt", b"two")
    await wait_for(reactor, lambda: read(B, "doc.txt") == b"two", what="two on b")
    (old,) = await listing(http, running, "doc.txt")
    write(B, "doc.txt", b"three")  # b's upload and the restore race
    code, _ = await http.json("POST", f"{running.url}/api/restore", expect=None,
                              json={"path": "doc.txt", "id": old["id"]},
                              headers={"If-Match": f'"{sha(b"two")}"'})
    assert code in (200, 412)
    await converged(reactor, A, B, running.root)
    await wait_for(reactor, lambda: tree(A) == tree(running.root), what="settled")
    # every content written is still somewhere: a file, or a kept version
    held = set(tree(running.root).values())
    for name in os.listdir(area(running)):
        with open(os.path.join(area(running), name), "rb") as f:
            held.add(sha(f.read()))
    assert {sha(b"one"), sha(b"two"), sha(b"three")} <= held
    if code == 200:  # the restore came first: b's edit was based on "two" → kept as a conflict copy
        assert sha(b"one") in tree(running.root).values()


@pytest_twisted.ensureDeferred
async def test_pruning_never_takes_a_version_a_restore_is_reading(reactor, tmp_path, http):
    running = await start_server(reactor, tmp_path)
    try:
        await http.json("POST", f"{running.url}/api/upload", params={"path": "a.txt"}, data=b"old")
        await http.json("POST", f"{running.url}/api/upload", params={"path": "a.txt"}, data=b"new")
        (old,) = await listing(http, running, "a.txt")
        versions = running.service.versions
        copying, go_on = threading.Event(), threading.Event()
        copy_out = versions.area.copy_out

        def slow_copy(version):
            copying.set()
            assert go_on.wait(10)
            return copy_out(version)

        versions.area.copy_out = slow_copy
        restoring = defer.ensureDeferred(http.json("POST", f"{running.url}/api/restore", json={"path": "a.txt", "id": old["id"]}))
        assert await deferToThread(copying.wait, 10)
        versions.policy = VersionsConfig(keep_days=0)  # keep nothing: every version is due
        assert await versions.prune() == 0
        assert os.path.exists(os.path.join(area(running), old["id"]))
        go_on.set()
        await restoring
        assert read(running.root, "a.txt") == b"old"
        assert await versions.prune() == 2  # once read: both ("old" and the replaced "new")
        assert os.listdir(area(running)) == []
    finally:
        await running.stop()
