"""What ``quantum-sync-client status`` says of a folder: conflicts present, the server
unreachable with its last error, files and bytes waiting to go up (real clients and
servers in the test's reactor; the console script's own path is tests/test_e2e_control.py)."""

import json
import os

import pytest
import pytest_twisted
from twisted.internet.task import deferLater
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

from clients import as_other, converged, read, write
from quantum_sync.client.cli import describe
from quantum_sync.client.status import folder_status
from stallproxy import StallingProxy
from support import start_server, wait_for


@pytest.fixture
def info():
    """The log lines at the info level and above (what an admin reads by default)."""
    lines = []

    def observe(event):
        if event.get("log_level", LogLevel.debug) >= LogLevel.info:
            lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


async def through(proxy, srv):
    """What ``clients.start`` takes for a server: ``srv`` reached through ``proxy``."""
    port = await proxy.listen()

    class Through:
        url, root = f"http://127.0.0.1:{port}", srv.root
        config = getattr(srv, "config", None)

    return Through


@pytest_twisted.ensureDeferred
async def test_conflicts_and_an_unreachable_server_are_shown(reactor, servers, clients):
    a, b, A, B = await clients.pair(servers[0])
    write(A, "c.txt", b"first")
    await converged(reactor, A, B, servers[0].root)
    await clients.stop(a)
    write(B, "c.txt", b"edited on b")
    await wait_for(reactor, lambda: read(servers[0].root, "c.txt") == b"edited on b", what="b's edit")
    write(A, "c.txt", b"edited on a while it was off")
    a = await clients.start(servers[0], "a")
    await a.engine.idle()
    status = await folder_status("a", a, reactor)
    (copy,) = [p for p in os.listdir(A) if ".sync-conflict-" in p]
    assert status["conflicts"] == {"count": 1, "paths": [copy]}
    assert status["server"] == {"url": servers[0].url, "reachable": True, "last_error": None}
    assert f"  conflicts: 1: {copy}" in describe(status)

    await servers[0].stop()
    write(A, "while-down.txt", b"queued")  # its upload finds the server gone
    await wait_for(reactor, lambda: a.engine.online is False, what="the server found unreachable")
    status = await folder_status("a", a, reactor)
    assert status["server"]["reachable"] is False and status["server"]["last_error"]
    assert status["state"] == "offline" and not status["in_sync"]
    assert status["journal"]["head"] is None and status["journal"]["behind"] is None
    text = describe(status)
    assert f"  server: {servers[0].url} unreachable (last error: {status['server']['last_error']})" in text
    assert "(unknown)" in text


@pytest_twisted.ensureDeferred
async def test_files_and_bytes_waiting_to_go_up(reactor, tmp_path, servers, clients):
    srv = servers[0]
    folder = str(tmp_path / "a")
    for i in range(100):
        write(folder, f"d/f{i:03}.txt", b"%03d" % i * 100)  # 300 bytes each
    # the client's first sync goes through a forwarder that forwards nothing once a few
    # KB have gone up: the uploads stay waiting for as long as the test looks
    proxy = StallingProxy(reactor, srv.port)
    proxy.stall(4096, "up")
    try:
        a = await clients.start(await through(proxy, srv), "a", wait=False, realtime=False, interval=3600)
        await wait_for(reactor, lambda: a.engine is not None and a.engine.fullsync.progress is not None
                       and not proxy.forwarding, what="the first sync under way and stalled")
        status = await folder_status("a", a, reactor)
        p, up = status["progress"], status["waiting"]["up"]
        assert p["files_total"] == 101 and p["bytes_total"] == 100 * 300  # 100 files and d/
        assert up["files"] == 100 - max(p["files_done"] - 1, 0) and up["bytes"] == 100 * 300 - p["bytes_done"]
        assert up["files"] > 0 and status["waiting"]["down"] == {"files": 0, "bytes": 0}
        assert status["state"] in ("syncing", "offline") and not status["in_sync"]
        assert f"  waiting: up {up['files']} files" in describe(status)
    finally:
        proxy.resume()
        await clients.stop_all()
        await proxy.port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_large_first_sync_logs_progress_not_a_line_per_file(reactor, tmp_path, clients, monkeypatch, info):
    from quantum_sync.client import fullsync

    monkeypatch.setattr(fullsync, "PROGRESS_EVERY", 0.05)
    root = tmp_path / "root"
    for i in range(100):
        write(str(root), f"f{i:03}.txt", b"%03d" % i * 100)  # 300 bytes each
    srv = await start_server(reactor, tmp_path, root=str(root))
    proxy = StallingProxy(reactor, srv.port)
    listing = await as_other(srv, "GET", "/api/list")
    proxy.stall(len(json.dumps(listing)) + 1000 + 100 * 300 // 2, "down")  # the listing, then about half the files
    try:
        await clients.start(await through(proxy, srv), "a", wait=False, realtime=False, interval=3600)
        await wait_for(reactor, lambda: [line for line in info if line.startswith("sync progress: ")] and
                       not proxy.forwarding, what="a progress line while the first sync is held")
        line = [line for line in info if line.startswith("sync progress: ")][-1]
        assert "/100 files, " in line and "/30000 bytes, " in line and " MB/s, " in line, line
        proxy.resume()
        await wait_for(reactor, lambda: any(line.startswith("sync finished: 100/100 files, 30000/30000 bytes")
                                            for line in info), what="the last progress line")
        assert not [line for line in info if line.startswith("downloaded")]  # no line per file or per batch
        write(str(tmp_path / "a"), "after.txt", b"after the first sync")  # a single upload has its line again
        await wait_for(reactor, lambda: "uploaded after.txt (20 bytes)" in info, what="the upload's line")
    finally:
        proxy.resume()
        await clients.stop_all()
        await proxy.port.stopListening()
        await srv.stop()
    assert read(str(tmp_path / "a"), "f099.txt") == b"099" * 100


@pytest_twisted.ensureDeferred
async def test_a_long_catch_up_logs_progress_and_status_shows_it(reactor, servers, clients, monkeypatch, info):
    from quantum_sync.client import fullsync

    monkeypatch.setattr(fullsync, "PROGRESS_EVERY", 0.05)
    srv = servers[0]
    proxy = StallingProxy(reactor, srv.port)
    a = await clients.start(await through(proxy, srv), "a", realtime=False, interval=3600)  # hears nothing itself
    b = await clients.start(srv, "b")
    for i in range(120):
        write(b.config.folder, f"f{i:03}.txt", b"%03d" % i * 100)  # 300 bytes each
    deadline = reactor.seconds() + 30
    while True:  # every upload journalled (a file is in the root a moment before its entry is)
        page = await as_other(srv, "GET", f"/api/changes?since={a.engine.remote.journal.heard}&limit=1000")
        if len(page["changes"]) == 120:
            break
        assert reactor.seconds() < deadline, f"{len(page['changes'])} of b's 120 uploads journalled"
        await deferLater(reactor, 0.05, lambda: None)
    # the catch-up stalls once the journal page (and its headers) and about half the files have come
    proxy.stall(len(json.dumps(page)) + 1000 + 120 * 300 // 2, "down")
    try:
        caught_up = a.engine.catch_up_soon()
        try:
            await wait_for(reactor, lambda: not proxy.forwarding and any(line.startswith("catch-up progress: ")
                                                                         for line in info))
        except AssertionError:  # say where it stood
            raise AssertionError(f"no held catch-up: forwarded {proxy.counted} bytes of a page of about "
                                 f"{len(json.dumps(page))}, progress {a.engine.progress}, log {info[-5:]}") from None
        status = await folder_status("a", a, reactor)
        p, down = status["progress"], status["waiting"]["down"]
        assert (p["files_total"], p["bytes_total"]) == (120, 36000) and p["files_done"] < 120, p
        assert (down["files"], down["bytes"]) == (120 - p["files_done"], 36000 - p["bytes_done"])
        assert "/120 files, " in describe(status) and not status["in_sync"]
        proxy.resume()
        await caught_up
        assert any(line.startswith("catch-up finished: 120/120 files, 36000/36000 bytes") for line in info), info
        assert not [line for line in info if line.startswith("downloaded")]  # no line per file or batch
        assert a.engine.progress is None and (await folder_status("a", a, reactor))["progress"] is None
    finally:
        proxy.resume()
        await clients.stop_all()
        await proxy.port.stopListening()
    assert read(a.config.folder, "f119.txt") == b"119" * 100


def waiting_of(status) -> tuple:
    """``((files, bytes) up, (files, bytes) down)`` of a status."""
    up, down = status["waiting"]["up"], status["waiting"]["down"]
    return (up["files"], up["bytes"]), (down["files"], down["bytes"])


@pytest_twisted.ensureDeferred
async def test_changes_one_by_one_wait_up_and_down_while_paused(reactor, servers, clients):
    srv = servers[0]
    a, b, A, B = await clients.pair(srv)
    write(A, "keep.txt", b"kept")
    write(A, "old.txt", b"deleted by b while a is paused")
    write(A, ".syncignore", b"*.tmp\n")
    await converged(reactor, A, B, srv.root)
    await wait_for(reactor, lambda: "*.tmp" in a.engine.rules.text, what="a's rules read")
    await wait_for(reactor, lambda: not a.engine.paths and not b.engine.paths, what="both idle")
    assert waiting_of(await folder_status("a", a, reactor)) == ((0, 0), (0, 0))
    a.engine.pause_transfers()

    for name, size in (("up1.txt", 100), ("d/up2.txt", 200), ("up3.txt", 300)):
        write(A, name, b"u" * size)  # taken in by the watcher, held by the pause
    write(A, "scratch.tmp", b"never sent")  # ignored: waits for nothing
    for name, size in (("down1.txt", 50), ("down2.txt", 70)):
        write(B, name, b"d" * size)  # uploaded by b, heard by a over the WebSocket
    os.remove(os.path.join(B, "old.txt"))
    await wait_for(reactor, lambda: read(srv.root, "down2.txt") and read(srv.root, "old.txt") is None,
                   what="b's changes on the server")

    async def held():
        return waiting_of(await folder_status("a", a, reactor)) == ((3, 600), (3, 120))

    try:
        await wait_for(reactor, held, what="3 files (600 bytes) waiting up and 3 (120) down")
    except AssertionError:
        raise AssertionError(f"waiting: {(await folder_status('a', a, reactor))['waiting']}") from None
    status = await folder_status("a", a, reactor)
    assert status["state"] == "paused" and status["waiting"]["held_while_paused"] >= 3
    assert read(srv.root, "up1.txt") is None and read(A, "down1.txt") is None
    assert "  waiting: up 3 files (600 B), down 3 files (120 B)" in describe(status)

    os.remove(os.path.join(A, "scratch.tmp"))  # (so that the folders are alike)
    a.engine.resume()
    await converged(reactor, A, B, srv.root)

    async def synced():
        return (await folder_status("a", a, reactor))["in_sync"]

    await wait_for(reactor, synced, what="a in sync after the resume")
    status = await folder_status("a", a, reactor)
    assert waiting_of(status) == ((0, 0), (0, 0)) and status["waiting"]["held_while_paused"] == 0
    assert read(A, "old.txt") is None and read(srv.root, "d/up2.txt") == b"u" * 200


@pytest_twisted.ensureDeferred
async def test_changes_wait_up_and_down_until_their_jobs_end(reactor, servers, clients):
    srv = servers[0]
    a, b, A, B = await clients.pair(srv)
    write(A, "keep.txt", b"kept")
    await converged(reactor, A, B, srv.root)
    await wait_for(reactor, lambda: not a.engine.paths, what="a idle")
    # the paths' locks held (as a job or a reconcile working on them would): their jobs wait
    taken = await a.engine.locks.acquire(["up.txt", "down1.txt", "down2.txt"])
    try:
        write(A, "up.txt", b"u" * 500)
        write(B, "down1.txt", b"d" * 50)
        write(B, "down2.txt", b"d" * 70)
        await wait_for(reactor, lambda: len(a.engine.paths) == 3, what="a's three jobs waiting")
        status = await folder_status("a", a, reactor)
        assert waiting_of(status) == ((1, 500), (2, 120)) and status["progress"] is None, status["waiting"]
        assert status["state"] == "syncing" and status["transfers"]["count"] == 3
    finally:
        a.engine.locks.release(taken)
    await converged(reactor, A, B, srv.root)
    await wait_for(reactor, lambda: not a.engine.paths, what="a's jobs done")
    assert waiting_of(await folder_status("a", a, reactor)) == ((0, 0), (0, 0))


@pytest_twisted.ensureDeferred
async def test_uploads_count_as_waiting_until_a_stalled_server_takes_them(reactor, servers, clients):
    srv = servers[0]
    proxy = StallingProxy(reactor, srv.port)
    try:
        a = await clients.start(await through(proxy, srv), "a", realtime=False, interval=1)
        A = a.config.folder
        write(A, "keep.txt", b"kept")
        await converged(reactor, A, srv.root)
        await wait_for(reactor, lambda: not a.engine.paths, what="a idle")
        proxy.stall(0, "up")  # nothing more reaches the server
        for name, size in (("up1.txt", 1000), ("up2.txt", 2000), ("up3.txt", 3000)):
            write(A, name, b"u" * size)
        await wait_for(reactor, lambda: not proxy.forwarding and len(a.engine.paths) == 3,
                       what="the uploads under way and stalled")
        status = await folder_status("a", a, reactor)
        assert waiting_of(status) == ((3, 6000), (0, 0)), status["waiting"]
        assert not status["in_sync"] and read(srv.root, "up1.txt") is None
        proxy.resume()
        await converged(reactor, A, srv.root)

        async def synced():
            return (await folder_status("a", a, reactor))["in_sync"]

        await wait_for(reactor, synced, what="a in sync once the server took the uploads")
        assert waiting_of(await folder_status("a", a, reactor)) == ((0, 0), (0, 0))
    finally:
        proxy.resume()
        await clients.stop_all()
        await proxy.port.stopListening()
