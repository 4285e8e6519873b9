"""End to end: a folder moved or deleted locally while an upload inside it is in flight
(its bytes read before) does not come back at its old path: the upload lands first, and
the move or delete covers it. Real server, real client, real folders."""

import os
import shutil

import pytest_twisted
from twisted.internet import task

from quantum_sync.protocol import Move
from clients import KEEP, HeldUpload, converged, sha, write
from support import wait_for


async def start_with_a_held_upload(reactor, server, clients):
    a, A = await clients.synced(server, {"keep.txt": KEEP}, dirs=["d"])
    held = HeldUpload("d/f.bin", client=a)
    write(A, "d/f.bin", b"read before the folder moved")
    await held.started
    return a, A, held


async def deleted_while_held(reactor, server, A, held):
    """Delete ``held``'s file while its upload is held, let the upload land once the
    watcher had time to report the delete: only keep.txt is left, here and on ``server``."""
    os.unlink(os.path.join(A, held.path))
    await task.deferLater(reactor, 0.5, lambda: None)  # time for the watcher to report the delete
    held.release()
    final = await converged(reactor, A, server.root)
    assert final == {"keep.txt": sha(KEEP)}


@pytest_twisted.ensureDeferred
async def test_a_folder_moved_while_an_upload_inside_is_in_flight(reactor, servers, clients):
    a, A, held = await start_with_a_held_upload(reactor, servers[0], clients)
    os.rename(os.path.join(A, "d"), os.path.join(A, "d2"))
    await task.deferLater(reactor, 0.5, lambda: None)  # time for the move to be reported (and sent, if it would be)
    held.release()
    final = await converged(reactor, A, servers[0].root)
    assert final == {"keep.txt": sha(KEEP), "d2": None,
                     "d2/f.bin": sha(b"read before the folder moved")}
    assert held.events[:2] == [("uploaded", "d/f.bin"), ("sent", Move("d", "d2"))]


@pytest_twisted.ensureDeferred
async def test_a_folder_deleted_while_an_upload_inside_is_in_flight(reactor, servers, clients):
    a, A, held = await start_with_a_held_upload(reactor, servers[0], clients)
    shutil.rmtree(os.path.join(A, "d"))
    await task.deferLater(reactor, 0.5, lambda: None)  # time for the delete to be reported (and sent, if it would be)
    held.release()
    final = await converged(reactor, A, servers[0].root)
    assert final == {"keep.txt": sha(KEEP)}
    assert held.events[0] == ("uploaded", "d/f.bin")


@pytest_twisted.ensureDeferred
async def test_a_file_deleted_while_the_start_up_reconcile_uploads_it(reactor, tmp_path, servers, clients, monkeypatch):
    A = str(tmp_path / "a")
    write(A, "keep.txt", KEEP)
    write(A, "f.bin", b"uploaded by the first reconcile")
    held = HeldUpload("f.bin", monkeypatch=monkeypatch)
    a = await clients.start(servers[0], "a", wait=False)
    await held.started
    await wait_for(reactor, lambda: a.engine.watched, what="the watcher")
    await deleted_while_held(reactor, servers[0], A, held)


@pytest_twisted.ensureDeferred
async def test_a_file_deleted_while_its_first_upload_is_in_flight(reactor, servers, clients):
    a, A = await clients.synced(servers[0], {"keep.txt": KEEP})
    held = HeldUpload("f.bin", client=a)
    write(A, "f.bin", b"deleted before its upload landed")
    await held.started
    await deleted_while_held(reactor, servers[0], A, held)


@pytest_twisted.ensureDeferred
async def test_a_folder_moved_while_the_server_was_unreachable_is_moved_not_deleted(reactor, servers, clients):
    from quantum_sync.client.transfer import ServerUnavailable

    a, A = await clients.behind(servers[0], {"d/x.bin": b"moved with its folder"})
    real_sync = a.engine.server.sync
    refused = []

    async def unreachable_once(operations):
        if not refused and any(isinstance(op, Move) for op in operations):
            refused.append(operations)
            raise ServerUnavailable("the server went away")
        return await real_sync(operations)

    a.engine.server.sync = unreachable_once
    os.rename(os.path.join(A, "d"), os.path.join(A, "d2"))
    await wait_for(reactor, lambda: a.engine.state.pending.get("d2") == "d", what="the Move queued")
    await a.engine.idle()
    a.engine.retry_pending()  # the server is back
    await a.engine.idle()  # waits for the Move sent again, not only for per-path jobs
    assert a.engine.state.pending == {}
    final = await converged(reactor, A, servers[0].root)
    assert final == {"keep.txt": sha(KEEP), "d2": None,
                     "d2/x.bin": sha(b"moved with its folder")}
    assert a.engine.state.pending == {}
