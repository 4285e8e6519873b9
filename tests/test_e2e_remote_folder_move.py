"""End to end: a client that catches up (after a stalled link) on a folder another client
moved applies the move together with the changes made around it: a file created in the
folder just before the move ends up moved with it, one created at the new place after it
lands there, and an upload of its own that landed in the old folder after the move does
not leave the folders apart. Real server, real client; the catch-up is started by hand
(no WebSocket, no periodic reconcile), as a reconnect after a stall would start it."""

import os

import pytest_twisted

from clients import KEEP, HeldUpload, as_other, converged, move, sha, write
from support import wait_for


@pytest_twisted.ensureDeferred
async def test_catching_up_on_a_folder_move_with_changes_around_it(reactor, servers, clients):
    a, A = await clients.behind(servers[0])
    await as_other(servers[0], "POST", "/api/upload", params={"path": "d/new.bin"}, data=b"made before the move")
    await move(servers[0], "d", "d2")
    await as_other(servers[0], "POST", "/api/upload", params={"path": "d2/after.bin"}, data=b"made after the move")
    await a.engine.catch_up()
    final = await converged(reactor, A, servers[0].root)
    assert final == {"keep.txt": sha(KEEP), "d2": None, "d2/x.txt": sha(b"x"),
                     "d2/new.bin": sha(b"made before the move"), "d2/after.bin": sha(b"made after the move")}


@pytest_twisted.ensureDeferred
async def test_an_own_upload_into_the_old_folder_after_the_move_converges(reactor, servers, clients):
    a, A = await clients.behind(servers[0])
    held = HeldUpload("d/late.bin", client=a)
    write(A, "d/late.bin", b"read before the folder moved on the server")
    await held.started
    await move(servers[0], "d", "d2")
    held.release()
    await wait_for(reactor, lambda: held.events, what="the late upload")
    await a.engine.catch_up()
    final = await converged(reactor, A, servers[0].root)
    assert sha(b"read before the folder moved on the server") in final.values()
    assert final["d2/x.txt"] == sha(b"x")


@pytest_twisted.ensureDeferred
async def test_a_folder_delete_heard_after_an_own_upload_into_it_landed(reactor, servers, clients):
    a, A = await clients.behind(servers[0])
    body = await as_other(servers[0], "POST", "/api/sync", json={
        "operations": [{"Delete": {"path": "d"}}], "client_id": "other"})
    assert body["results"][0]["status"] == "applied"
    write(A, "d/new.bin", b"made while the folder was deleted elsewhere")  # uploaded at once: re-creates d
    await wait_for(reactor, lambda: os.path.exists(os.path.join(servers[0].root, "d", "new.bin")), what="the upload")
    await a.engine.idle()
    await a.engine.catch_up()  # now a hears the older Delete of d
    final = await converged(reactor, A, servers[0].root)
    assert final == {"keep.txt": sha(KEEP), "d": None,
                     "d/new.bin": sha(b"made while the folder was deleted elsewhere")}


@pytest_twisted.ensureDeferred
async def test_a_folder_made_remotely_inside_a_folder_moved_here_does_not_bring_it_back(reactor, servers, clients):
    from twisted.internet import defer

    from quantum_sync.protocol import Create, FileMetadata, Move

    a, A = await clients.behind(servers[0], {}, dirs=["d"])
    body = await as_other(servers[0], "POST", "/api/sync", json={"client_id": "other", "operations": [
        {"Create": {"metadata": {"path": "d/sub", "size": 0, "modified": "2026-01-01T00:00:00Z", "hash": "",
                                 "is_directory": True}}}]})
    seq = body["results"][0]["seq"]
    gate, moving = defer.Deferred(), defer.Deferred()
    real_sync = a.engine.server.sync

    async def held_sync(operations):
        if any(isinstance(op, Move) for op in operations):
            moving.callback(None)
            await gate  # the Move is on its way while the other client's Create arrives
        return await real_sync(operations)

    a.engine.server.sync = held_sync
    os.rename(os.path.join(A, "d"), os.path.join(A, "d2"))
    await moving
    await a.engine.remote_operation(seq, Create(FileMetadata.directory("d/sub", 0.0)))
    gate.callback(None)
    await wait_for(reactor, lambda: os.path.isdir(os.path.join(A, "d2", "sub")), what="d2/sub here")
    final = await converged(reactor, A, servers[0].root)
    assert final == {"keep.txt": sha(KEEP), "d2": None, "d2/sub": None}
