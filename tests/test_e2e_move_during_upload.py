"""End to end: a folder moved or deleted locally while an upload inside it is in flight
(its bytes read before) does not come back at its old path: the upload lands first, and
the move or delete covers it. Real server, real client, real folders."""

import hashlib
import os
import shutil

import pytest_twisted
from twisted.internet import defer, task

from quantum_sync.client.transfer import ServerClient
from quantum_sync.protocol import Delete, Move
from clients import converged, write
from support import wait_for


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class HeldUpload:
    """Holds the client's upload of ``path`` until :meth:`release`, and records the
    order in which uploads end and Moves/Deletes go out (``monkeypatch``: on every
    ServerClient, for a client not started yet)."""

    def __init__(self, path, client=None, monkeypatch=None):
        self.path, self.events = path, []
        self.started, self.gate = defer.Deferred(), defer.Deferred()
        real_upload, real_sync = ServerClient.upload, ServerClient.sync

        async def upload(server, path, *args):
            if path == self.path and not self.started.called:
                self.started.callback(None)
                await self.gate
            meta = await real_upload(server, path, *args)
            self.events.append(("uploaded", path))
            return meta

        async def sync(server, operations):
            for op in operations:
                if isinstance(op, (Move, Delete)):
                    self.events.append(("sent", op))
                    self.release()  # if sent while the upload was in flight: let that land after
            return await real_sync(server, operations)

        def held_upload(server, path, *args):
            return defer.ensureDeferred(upload(server, path, *args))

        if monkeypatch is not None:
            monkeypatch.setattr(ServerClient, "upload", held_upload)
            monkeypatch.setattr(ServerClient, "sync", sync)
        else:
            server = client.engine.server
            server.upload = lambda path, *args: held_upload(server, path, *args)
            server.sync = lambda operations: sync(server, operations)

    def release(self):
        if not self.gate.called:
            self.gate.callback(None)


async def start_with_a_held_upload(reactor, server, clients):
    a = await clients.start(server, "a")
    A = a.config.folder
    write(A, "keep.txt", b"so that the folder is not emptied")
    os.makedirs(os.path.join(A, "d"))
    await converged(reactor, A, server.root)
    held = HeldUpload("d/f.bin", client=a)
    write(A, "d/f.bin", b"read before the folder moved")
    await held.started
    return a, A, held


@pytest_twisted.ensureDeferred
async def test_a_folder_moved_while_an_upload_inside_is_in_flight(reactor, servers, clients):
    a, A, held = await start_with_a_held_upload(reactor, servers[0], clients)
    os.rename(os.path.join(A, "d"), os.path.join(A, "d2"))
    await task.deferLater(reactor, 0.5, lambda: None)  # time for the move to be reported (and sent, if it would be)
    held.release()
    final = await converged(reactor, A, servers[0].root)
    assert final == {"keep.txt": sha(b"so that the folder is not emptied"), "d2": None,
                     "d2/f.bin": sha(b"read before the folder moved")}
    assert held.events[:2] == [("uploaded", "d/f.bin"), ("sent", Move("d", "d2"))]


@pytest_twisted.ensureDeferred
async def test_a_folder_deleted_while_an_upload_inside_is_in_flight(reactor, servers, clients):
    a, A, held = await start_with_a_held_upload(reactor, servers[0], clients)
    shutil.rmtree(os.path.join(A, "d"))
    await task.deferLater(reactor, 0.5, lambda: None)  # time for the delete to be reported (and sent, if it would be)
    held.release()
    final = await converged(reactor, A, servers[0].root)
    assert final == {"keep.txt": sha(b"so that the folder is not emptied")}
    assert held.events[0] == ("uploaded", "d/f.bin")


@pytest_twisted.ensureDeferred
async def test_a_file_deleted_while_the_start_up_reconcile_uploads_it(reactor, tmp_path, servers, clients, monkeypatch):
    A = str(tmp_path / "a")
    write(A, "keep.txt", b"so that the folder is not emptied")
    write(A, "f.bin", b"uploaded by the first reconcile")
    held = HeldUpload("f.bin", monkeypatch=monkeypatch)
    a = await clients.start(servers[0], "a", wait=False)
    await held.started
    await wait_for(reactor, lambda: a.engine.watched, what="the watcher")
    os.unlink(os.path.join(A, "f.bin"))
    await task.deferLater(reactor, 0.5, lambda: None)  # time for the watcher to report the delete
    held.release()
    final = await converged(reactor, A, servers[0].root)
    assert final == {"keep.txt": sha(b"so that the folder is not emptied")}


@pytest_twisted.ensureDeferred
async def test_a_file_deleted_while_its_first_upload_is_in_flight(reactor, servers, clients):
    a = await clients.start(servers[0], "a")
    A = a.config.folder
    write(A, "keep.txt", b"so that the folder is not emptied")
    await converged(reactor, A, servers[0].root)
    held = HeldUpload("f.bin", client=a)
    write(A, "f.bin", b"deleted before its upload landed")
    await held.started
    os.unlink(os.path.join(A, "f.bin"))
    await task.deferLater(reactor, 0.5, lambda: None)  # time for the watcher to report the delete
    held.release()
    final = await converged(reactor, A, servers[0].root)
    assert final == {"keep.txt": sha(b"so that the folder is not emptied")}


@pytest_twisted.ensureDeferred
async def test_a_folder_moved_while_the_server_was_unreachable_is_moved_not_deleted(reactor, servers, clients):
    from quantum_sync.client.transfer import ServerUnavailable

    a = await clients.start(servers[0], "a", realtime=False, interval=3600)
    A = a.config.folder
    write(A, "keep.txt", b"so that the folder is not emptied")
    write(A, "d/x.bin", b"moved with its folder")
    await converged(reactor, A, servers[0].root)
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
    assert final == {"keep.txt": sha(b"so that the folder is not emptied"), "d2": None,
                     "d2/x.bin": sha(b"moved with its folder")}
    assert a.engine.state.pending == {}
