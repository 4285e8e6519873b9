"""Versions and trash through the REST API, against a real server on 127.0.0.1:
/api/versions after replaces, deletes and moves; /api/restore with and without
If-Match, to another path, with unknown ids and hostile paths; roles."""

import contextlib
import errno
import hashlib
import json
import os
import threading
import time

import pytest_twisted
from twisted.internet import defer, task
from twisted.internet.threads import deferToThread

from quantum_sync import passwords
from quantum_sync.server.versions import AREA_NAME, ORPHAN_AGE
from tests.support import start_server, wait_for


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def upload(http, server, path, data, client="c1", expect=200, **headers):
    headers = {k.replace("_", "-"): v for k, v in headers.items()}
    headers["X-Client-Id"] = client
    return (await http.json("POST", f"{server.url}/api/upload", expect=expect,
                            params={"path": path}, data=data, headers=headers))[1]


async def sync(http, server, *operations, client="c1"):
    _, body = await http.json("POST", f"{server.url}/api/sync",
                              json={"operations": list(operations), "client_id": client})
    assert [r["status"] for r in body["results"]] == ["applied"] * len(operations), body
    return body


async def versions(http, server, path, expect=200):
    return (await http.json("GET", f"{server.url}/api/versions", expect=expect,
                            params={"path": path}))[1]


async def restore(http, server, expect=200, headers=None, **body):
    return (await http.json("POST", f"{server.url}/api/restore", expect=expect,
                            json=body, headers=headers or {}))[1]


def area(server) -> str:
    return os.path.join(server.root, ".quantum-sync", AREA_NAME)


def read(server, path):
    with open(os.path.join(server.root, path), "rb") as f:
        return f.read()


async def changes(http, server, since=0):
    return (await http.json("GET", f"{server.url}/api/changes", params={"since": str(since)}))[1]


@pytest_twisted.ensureDeferred
async def test_a_replaced_file_is_kept_by_a_link_to_its_old_inode(server, http):
    await upload(http, server, "docs/a.txt", b"one", client="writer-1")
    old_inode = os.stat(os.path.join(server.root, "docs/a.txt")).st_ino
    await upload(http, server, "docs/a.txt", b"two", client="writer-2")
    found = (await versions(http, server, "docs/a.txt"))["versions"]
    assert len(found) == 1
    version = found[0]
    assert version["hash"] == sha(b"one") and version["size"] == 3
    assert version["deleted"] is False and version["path"] == "docs/a.txt"
    assert version["source_client"] == "writer-1"  # who wrote that content
    assert version["modified"].endswith("Z")
    kept = os.path.join(area(server), version["id"])
    assert os.stat(kept).st_ino == old_inode  # linked, not copied
    with open(kept, "rb") as f:
        assert f.read() == b"one"
    assert read(server, "docs/a.txt") == b"two"
    # the area is never listed or journalled
    _, listing = await http.json("GET", f"{server.url}/api/list")
    assert sorted(m["path"] for m in listing) == ["docs", "docs/a.txt"]
    journal = await changes(http, server)
    assert all(".quantum-sync" not in json.dumps(c) for c in journal["changes"])


@pytest_twisted.ensureDeferred
async def test_deletes_keep_files_and_folders_keep_everything_below(server, http):
    for path, data in [("d/x.txt", b"x"), ("d/e/y.txt", b"y"), ("d/e/f/z.txt", b"z"), ("keep.txt", b"k")]:
        await upload(http, server, path, data, client="author")
    await sync(http, server, {"Delete": {"path": "keep.txt"}}, {"Delete": {"path": "d"}}, client="remover")
    assert not os.path.exists(os.path.join(server.root, "d"))
    single = (await versions(http, server, "keep.txt"))["versions"]
    assert [(v["hash"], v["deleted"], v["source_client"]) for v in single] == [(sha(b"k"), True, "author")]
    below = (await versions(http, server, "d"))["versions"]
    assert sorted((v["path"], v["hash"]) for v in below) == sorted(
        [("d/x.txt", sha(b"x")), ("d/e/y.txt", sha(b"y")), ("d/e/f/z.txt", sha(b"z"))])
    assert all(v["deleted"] for v in below)
    assert [v["path"] for v in (await versions(http, server, "d/e"))["versions"]] != []
    everything = (await versions(http, server, ""))["versions"]  # the whole trash
    assert len(everything) == 4
    for version in everything:  # moved there whole: the bytes are all in the area
        with open(os.path.join(area(server), version["id"]), "rb") as f:
            assert sha(f.read()) == version["hash"]


@pytest_twisted.ensureDeferred
async def test_a_move_keeps_the_history_with_the_new_path(server, http):
    await upload(http, server, "a/f.txt", b"v1")
    await upload(http, server, "a/f.txt", b"v2")
    await upload(http, server, "a/g.txt", b"g1")
    await sync(http, server, {"Delete": {"path": "a/g.txt"}})
    await sync(http, server, {"Move": {"from": "a", "to": "b/a"}})
    assert (await versions(http, server, "a/f.txt"))["versions"] == []
    moved = (await versions(http, server, "b/a/f.txt"))["versions"]
    assert [v["hash"] for v in moved] == [sha(b"v1")]
    assert [v["path"] for v in (await versions(http, server, "b"))["versions"]] == ["b/a/g.txt"]
    await sync(http, server, {"Move": {"from": "b/a/f.txt", "to": "f.txt"}})
    assert [v["hash"] for v in (await versions(http, server, "f.txt"))["versions"]] == [sha(b"v1")]


@pytest_twisted.ensureDeferred
async def test_restore_is_an_update_journalled_and_kept_in_turn(server, http):
    await upload(http, server, "a.txt", b"first")
    await upload(http, server, "a.txt", b"second")
    (old,) = (await versions(http, server, "a.txt"))["versions"]
    head = (await changes(http, server))["cursor"]
    restored = await restore(http, server, path="a.txt", id=old["id"],
                             headers={"X-Client-Id": "restorer"})
    assert restored["hash"] == sha(b"first") and restored["path"] == "a.txt" and restored["size"] == 5
    assert read(server, "a.txt") == b"first"
    journal = await changes(http, server, head)
    assert [(c["operation"], c["source_client"]) for c in journal["changes"]] == [
        ({"Update": {"metadata": restored}}, "restorer")]
    after = (await versions(http, server, "a.txt"))["versions"]
    assert [v["hash"] for v in after] == [sha(b"second"), sha(b"first")]  # newest first
    # the restored version is still kept: it can be restored again
    assert os.path.exists(os.path.join(area(server), old["id"]))


@pytest_twisted.ensureDeferred
async def test_restore_honours_if_match(server, http):
    await upload(http, server, "a.txt", b"first")
    await upload(http, server, "a.txt", b"second")
    (old,) = (await versions(http, server, "a.txt"))["versions"]
    refused = await restore(http, server, expect=412, path="a.txt", id=old["id"],
                            headers={"If-Match": f'"{sha(b"something else")}"'})
    assert refused["error"]["code"] == "PRECONDITION_FAILED"
    assert read(server, "a.txt") == b"second"
    assert len((await versions(http, server, "a.txt"))["versions"]) == 1
    assert len(os.listdir(server.service.store.temp_dir)) == 0
    done = await restore(http, server, path="a.txt", id=old["id"],
                         headers={"If-Match": f'"{sha(b"second")}"'})
    assert done["hash"] == sha(b"first")
    refused = await restore(http, server, expect=412, path="a.txt", id=old["id"],
                            headers={"If-None-Match": "*"})
    assert refused["error"]["code"] == "PRECONDITION_FAILED"


@pytest_twisted.ensureDeferred
async def test_restore_of_a_deleted_file_and_to_another_path(server, http):
    await upload(http, server, "d/gone.txt", b"bytes")
    await sync(http, server, {"Delete": {"path": "d"}})
    (gone,) = (await versions(http, server, "d"))["versions"]
    head = (await changes(http, server))["cursor"]
    copy = await restore(http, server, path="d/gone.txt", id=gone["id"], to="elsewhere/copy.txt")
    assert copy["path"] == "elsewhere/copy.txt" and read(server, "elsewhere/copy.txt") == b"bytes"
    back = await restore(http, server, path="d/gone.txt", id=gone["id"])
    assert back["path"] == "d/gone.txt" and read(server, "d/gone.txt") == b"bytes"
    journal = await changes(http, server, head)
    kinds = [next(iter(c["operation"])) for c in journal["changes"]]
    assert kinds == ["Create", "Create"]


@pytest_twisted.ensureDeferred
async def test_unknown_ids_and_bad_bodies(server, http):
    await upload(http, server, "a.txt", b"1")
    await upload(http, server, "a.txt", b"2")
    await upload(http, server, "b.txt", b"3")
    (old,) = (await versions(http, server, "a.txt"))["versions"]
    for body in [{"path": "a.txt", "id": "0" * 24}, {"path": "a.txt", "id": "not-an-id"},
                 {"path": "b.txt", "id": old["id"]},  # a version of another path
                 {"path": "a.txt", "id": "../../index.sqlite3"}]:
        refused = await restore(http, server, expect=404, **body)
        assert refused["error"]["code"] == "NOT_FOUND"
    for body in [[], {"path": "a.txt"}, {"path": 1, "id": old["id"]}, {"path": "a.txt", "id": 5},
                 {"path": "a.txt", "id": old["id"], "to": None},
                 {"path": "a.txt", "id": old["id"], "extra": 1}]:
        _, refused = await http.json("POST", f"{server.url}/api/restore", expect=400, json=body)
        assert refused["error"]["code"] == "INVALID_REQUEST"
    _, refused = await http.json("POST", f"{server.url}/api/restore", expect=400, data=b"{not json")
    assert refused["error"]["code"] == "INVALID_REQUEST"
    _, refused = await http.json("GET", f"{server.url}/api/versions", expect=400)
    assert refused["error"]["code"] == "INVALID_REQUEST"
    assert read(server, "a.txt") == b"2" and read(server, "b.txt") == b"3"


@pytest_twisted.ensureDeferred
async def test_hostile_paths_are_refused_and_touch_nothing(server, http):
    await upload(http, server, "a.txt", b"1")
    await upload(http, server, "a.txt", b"2")
    (old,) = (await versions(http, server, "a.txt"))["versions"]
    outside = server.tmp_path / "outside.txt"
    os.symlink(str(server.tmp_path), os.path.join(server.root, "link-out"))
    for hostile in ["../outside.txt", "/etc/passwd", ".quantum-sync/versions", "a/../../x",
                    "link-out/outside.txt", "a\x00b", "\u202eevil"]:
        refused = await versions(http, server, hostile, expect=400)
        assert refused["error"]["code"] == "INVALID_PATH", hostile
        refused = await restore(http, server, expect=400, path=hostile, id=old["id"])
        assert refused["error"]["code"] == "INVALID_PATH", hostile
        refused = await restore(http, server, expect=400, path="a.txt", id=old["id"], to=hostile)
        assert refused["error"]["code"] == "INVALID_PATH", hostile
    assert not outside.exists()
    assert read(server, "a.txt") == b"2"


@pytest_twisted.ensureDeferred
async def test_uploads_disabled_and_keeping_off(reactor, tmp_path, http):
    running = await start_server(reactor, tmp_path, enable_upload=False)
    try:
        refused = await restore(http, running, expect=403, path="a.txt", id="0" * 24)
        assert refused["error"]["code"] == "UPLOAD_DISABLED"
        assert (await versions(http, running, "a.txt"))["versions"] == []
    finally:
        await running.stop()
    running = await start_server(reactor, tmp_path, versions={"keep_days": 0})
    try:
        await upload(http, running, "a.txt", b"1")
        await upload(http, running, "a.txt", b"2")
        await sync(http, running, {"Delete": {"path": "a.txt"}})
        assert (await versions(http, running, "a.txt"))["versions"] == []
        assert os.listdir(area(running)) == []
    finally:
        await running.stop()


@pytest_twisted.ensureDeferred
async def test_read_role_lists_and_write_role_restores(reactor, tmp_path, http):
    fast = {"ln": 10, "r": 8, "p": 1}
    users = {name: {"password_hash": passwords.hash_password(name + "-pw", **fast), "role": role}
             for name, role in [("rita", "read"), ("wendy", "write")]}
    running = await start_server(reactor, tmp_path, auth={
        "users": users, "secret_file": str(tmp_path / "secret")})
    try:
        tokens = {}
        for name in users:
            _, answer = await http.json("POST", running.url + "/api/v1/auth/login",
                                        json={"username": name, "password": name + "-pw"})
            tokens[name] = {"Authorization": "Bearer " + answer["data"]["token"]}
        for data in (b"1", b"2"):
            await http.json("POST", f"{running.url}/api/upload", params={"path": "a.txt"},
                            data=data, headers=tokens["wendy"])
        refused = await http.json("GET", f"{running.url}/api/versions", expect=401,
                                  params={"path": "a.txt"})
        assert refused[1]["error"]["code"] == "AUTH_REQUIRED"
        _, listed = await http.json("GET", f"{running.url}/api/versions", params={"path": "a.txt"},
                                    headers=tokens["rita"])
        (old,) = listed["versions"]
        body = {"path": "a.txt", "id": old["id"]}
        _, refused = await http.json("POST", f"{running.url}/api/restore", expect=403, json=body,
                                     headers=tokens["rita"])
        assert refused["error"]["code"] == "PERMISSION_DENIED"
        assert read(running, "a.txt") == b"2"
        await http.json("POST", f"{running.url}/api/restore", json=body, headers=tokens["wendy"])
        assert read(running, "a.txt") == b"1"
    finally:
        await running.stop()


def test_version_json_has_the_contract_fields():
    from quantum_sync.server.versions import Version
    shown = Version("ab" * 12, "a.txt", 1_700_000_000_000_000_000, 3, sha(b"abc"), "c", True, 1.5).to_json()
    assert {"id", "modified", "size", "hash", "source_client", "deleted"} <= set(shown)
    assert shown["modified"] == "2023-11-14T22:13:20Z" and shown["deleted"] is True


@pytest_twisted.ensureDeferred
async def test_websocket_deletes_keep_versions_and_restores_are_broadcast(reactor, server, http):
    from test_ws_support import connect

    await upload(http, server, "w/a.txt", b"ws")
    watcher = await connect(reactor, server.ws_url)
    try:
        await watcher.request({"type": "Subscribe", "client_id": "watcher"})
        deleter = await connect(reactor, server.ws_url)
        try:
            ack = await deleter.request({"type": "FileOperation", "id": "d1", "source_client": "deleter",
                                         "operation": {"Delete": {"path": "w"}}})
            assert ack["type"] == "Ack"
        finally:
            deleter.transport.loseConnection()
        assert (await watcher.expect("FileOperation"))["operation"] == {"Delete": {"path": "w"}}
        (gone,) = (await versions(http, server, "w"))["versions"]
        restored = await restore(http, server, path="w/a.txt", id=gone["id"])
        broadcast = await watcher.expect("FileOperation")
        assert broadcast["operation"] == {"Create": {"metadata": restored}}
        assert read(server, "w/a.txt") == b"ws"
    finally:
        watcher.transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_a_delete_that_fails_halfway_keeps_what_it_moved(server, http, monkeypatch):
    from quantum_sync.server.store import Store

    await upload(http, server, "d/a.txt", b"a")
    await upload(http, server, "d/b.txt", b"b")

    def refuse(self, path):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Store, "remove", refuse)
    _, body = await http.json("POST", f"{server.url}/api/sync",
                              json={"operations": [{"Delete": {"path": "d"}}]})
    assert body["results"][0]["status"] == "error"
    monkeypatch.undo()
    kept = (await versions(http, server, "d"))["versions"]
    assert sorted(v["path"] for v in kept) == ["d/a.txt", "d/b.txt"]  # moved out: never lost
    for version in kept:
        await restore(http, server, path=version["path"], id=version["id"])
    assert read(server, "d/a.txt") == b"a" and read(server, "d/b.txt") == b"b"


def wall_clock():
    """A Clock at the time of day: the area's ctimes are compared with it."""
    clock = task.Clock()
    clock.advance(time.time())
    return clock


@contextlib.asynccontextmanager
async def clocked_server(reactor, tmp_path, clock, **handler):
    """A server whose versions' times and pruning passes go by ``clock``."""
    running = await start_server(reactor, tmp_path, service_options={"clock": clock}, **handler)
    try:
        yield running
    finally:
        await running.stop()


@pytest_twisted.ensureDeferred
async def test_pruning_removes_files_no_row_names_once_they_are_an_hour_old(reactor, tmp_path, http):
    clock = wall_clock()
    async with clocked_server(reactor, tmp_path, clock) as running:
        versions_service = running.service.versions
        await upload(http, running, "a.txt", b"1")
        await upload(http, running, "a.txt", b"2")
        stray = os.path.join(area(running), "ab" * 12)  # left by a crash before its row
        with open(stray, "wb") as f:
            f.write(b"orphan")
        pending = versions_service.area._new_id()  # linked, its transaction not yet run
        with open(versions_service.area.name_of(pending), "wb") as f:
            f.write(b"pending")
        clock.advance(ORPHAN_AGE - 60)
        assert await versions_service.prune() == 0
        assert os.path.exists(stray) and os.path.exists(versions_service.area.name_of(pending))
        clock.advance(120)  # an hour old, and the pending id never recorded: both go
        assert await versions_service.prune() == 0
        assert not os.path.exists(stray) and not os.path.exists(versions_service.area.name_of(pending))
        (kept,) = (await versions(http, running, "a.txt"))["versions"]  # the real one stays
        assert os.listdir(area(running)) == [kept["id"]]


@pytest_twisted.ensureDeferred
async def test_an_upload_whose_directory_fsync_failed_leaves_no_file_for_keep_days(
        reactor, tmp_path, http, monkeypatch):
    from quantum_sync.server import operations

    clock = wall_clock()
    async with clocked_server(reactor, tmp_path, clock) as running:
        await upload(http, running, "a.txt", b"one")
        await upload(http, running, "a.txt", b"two")
        (kept,) = (await versions(http, running, "a.txt"))["versions"]
        real = operations.fsync_directory

        def failing(directory):
            if directory == running.root:
                raise OSError(errno.EIO, "Input/output error")
            return real(directory)

        monkeypatch.setattr(operations, "fsync_directory", failing)
        answer = await upload(http, running, "a.txt", b"three", expect=None)
        assert answer["error"]["code"] in ("INSUFFICIENT_STORAGE", "INTERNAL_ERROR"), answer
        monkeypatch.undo()
        unlisted = set(os.listdir(area(running))) - {kept["id"]}
        assert len(unlisted) == 1  # "two", linked before the rename, its row never written
        clock.advance(ORPHAN_AGE + 1)  # the hourly pass (keep_days is 30)
        await wait_for(reactor, lambda: os.listdir(area(running)) == [kept["id"]],
                       what="the unlisted file swept")


@pytest_twisted.ensureDeferred
async def test_keep_per_file_holds_as_versions_are_kept(reactor, tmp_path, http):
    clock = task.Clock()  # no pass but the first at start
    async with clocked_server(reactor, tmp_path, clock, versions={"keep_per_file": 2}) as running:
        for n in range(6):
            await upload(http, running, "a.txt", b"v%d" % n)
            clock.advance(1)
        await sync(http, running, {"Delete": {"path": "a.txt"}})
        listed = (await versions(http, running, "a.txt"))["versions"]
        assert [v["hash"] for v in listed] == [sha(b"v5"), sha(b"v4")]  # the deleted file, the one before
        await wait_for(reactor, lambda: sorted(os.listdir(area(running))) == sorted(v["id"] for v in listed),
                       what="only the two newest files in the area")


@pytest_twisted.ensureDeferred
async def test_max_bytes_holds_as_versions_are_kept_by_the_tracked_total(reactor, tmp_path, http):
    clock = task.Clock()
    limits = {"max_bytes": 2500, "keep_per_file": None}
    async with clocked_server(reactor, tmp_path, clock, versions=limits) as running:
        for n in range(4):
            for path in ("a.bin", "b.bin"):
                await upload(http, running, path, bytes([n]) * 1000)
                clock.advance(1)
        listed = (await versions(http, running, "a.bin"))["versions"] + \
            (await versions(http, running, "b.bin"))["versions"]
        assert sorted((v["path"], v["hash"]) for v in listed) == [
            ("a.bin", sha(bytes([2]) * 1000)), ("b.bin", sha(bytes([2]) * 1000))]
        index = running.service.index
        total = await index.interaction(lambda txn: txn.execute("SELECT total FROM versions_space").fetchone())
        assert total == (2000,)
        await wait_for(reactor, lambda: len(os.listdir(area(running))) == 2, what="the oldest files gone")


@pytest_twisted.ensureDeferred
async def test_limits_applied_at_keep_time_never_take_a_version_being_restored(reactor, tmp_path, http):
    clock = task.Clock()
    async with clocked_server(reactor, tmp_path, clock, versions={"keep_per_file": 1}) as running:
        await upload(http, running, "a.txt", b"old")
        clock.advance(1)
        await upload(http, running, "a.txt", b"new")
        clock.advance(1)
        (old,) = (await versions(http, running, "a.txt"))["versions"]
        area_ = running.service.versions.area
        copying, go_on = threading.Event(), threading.Event()
        copy_out = area_.copy_out

        def slow_copy(version):
            copying.set()
            assert go_on.wait(10)
            return copy_out(version)

        area_.copy_out = slow_copy
        restoring = defer.ensureDeferred(restore(http, running, path="a.txt", id=old["id"]))
        assert await deferToThread(copying.wait, 10)
        await upload(http, running, "a.txt", b"newer")  # past keep_per_file: "old" is being read
        kept = {v["hash"] for v in (await versions(http, running, "a.txt"))["versions"]}
        assert kept == {sha(b"old"), sha(b"new")}
        assert os.path.exists(area_.name_of(old["id"]))
        go_on.set()
        await restoring
        assert read(running, "a.txt") == b"old"


@pytest_twisted.ensureDeferred
async def test_a_version_never_shares_its_inode_with_a_file_in_the_root(server, http):
    await upload(http, server, "a.txt", b"shared")
    await upload(http, server, "b.txt", b"shared too")
    os.link(os.path.join(server.root, "a.txt"), os.path.join(server.root, "a-link.txt"))
    os.link(os.path.join(server.root, "b.txt"), os.path.join(server.root, "b-link.txt"))
    await upload(http, server, "a.txt", b"replaced")
    await sync(http, server, {"Delete": {"path": "b.txt"}})
    for path in ("a-link.txt", "b-link.txt"):  # written in place by another program
        with open(os.path.join(server.root, path), "r+b") as f:
            f.write(b"XXXXXX")
    for path, data in (("a.txt", b"shared"), ("b.txt", b"shared too")):
        (version,) = (await versions(http, server, path))["versions"]
        with open(os.path.join(area(server), version["id"]), "rb") as f:
            assert f.read() == data
        assert version["hash"] == sha(data)


@pytest_twisted.ensureDeferred
async def test_a_restore_and_an_upload_on_the_same_base_one_wins(server, http):
    from twisted.internet import defer

    await upload(http, server, "a.txt", b"one")
    await upload(http, server, "a.txt", b"two")
    (old,) = (await versions(http, server, "a.txt"))["versions"]
    base = {"If-Match": f'"{sha(b"two")}"'}
    racing = [defer.ensureDeferred(restore(http, server, expect=None, path="a.txt", id=old["id"], headers=base)),
              defer.ensureDeferred(upload(http, server, "a.txt", b"three", expect=None, **{"If_Match": base["If-Match"]}))]
    answers = await defer.gatherResults(racing)
    codes = sorted("error" in answer for answer in answers)
    assert codes == [False, True]  # exactly one applied, the other 412
    refused = next(answer for answer in answers if "error" in answer)
    assert refused["error"]["code"] == "PRECONDITION_FAILED"
    winner = next(answer for answer in answers if "error" not in answer)
    assert sha(read(server, "a.txt")) == winner["hash"]
    kept = {v["hash"] for v in (await versions(http, server, "a.txt"))["versions"]}
    assert kept | {winner["hash"]} >= {sha(b"one"), sha(b"two")}
