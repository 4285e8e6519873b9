"""What ``quantum-sync-client status`` says of a folder: conflicts present, the server
unreachable with its last error, files and bytes waiting to go up (real clients and
servers in the test's reactor; the console script's own path is tests/test_e2e_control.py)."""

import os

import pytest_twisted

from clients import converged, read, write
from quantum_sync.client.cli import describe
from quantum_sync.client.status import folder_status
from stallproxy import StallingProxy
from support import wait_for


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
    port = await proxy.listen()

    class Through:
        url, root = f"http://127.0.0.1:{port}", srv.root
        config = getattr(srv, "config", None)

    try:
        a = await clients.start(Through, "a", wait=False, realtime=False, interval=3600)
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
