"""End to end: a delete decided on what the client saw never removes a change made on
the server after that (an edit beats a delete, contract section 7). The other client's
write is made at the last moment, just before the client's Delete is sent; real server,
real client, real folders."""

import os
import shutil

import pytest_twisted

from quantum_sync.protocol import Create, Delete, FileMetadata
from clients import KEEP, converged, read, sha, tree
from support import wait_for


def before_deletes(client, change):
    """Run ``change()`` (another client's write) just before each of ``client``'s Deletes
    goes out; returns the list of ``(operation, result)`` sent."""
    sent = []
    server = client.engine.server
    real_sync = server.sync

    async def sync(operations):
        if any(isinstance(op, Delete) for op in operations):
            await change(operations)
        results = await real_sync(operations)
        sent.extend(zip(operations, results))
        return results

    server.sync = sync
    return sent


async def upload_as_other(http_url, path, data):
    import treq

    response = await treq.post(f"{http_url}/api/upload", params={"path": path}, data=data,
                               headers={"X-Client-Id": "other"})
    assert response.code == 200, await response.text()
    await response.content()


@pytest_twisted.ensureDeferred
async def test_a_file_edited_on_the_server_just_before_its_delete_comes_back(reactor, servers, clients):
    a, A = await clients.synced(servers[0], {"keep.txt": KEEP, "f.txt": b"seen by a"})

    async def edit(operations):
        await upload_as_other(servers[0].url, "f.txt", b"edited elsewhere, never seen by a")

    sent = before_deletes(a, edit)
    os.unlink(os.path.join(A, "f.txt"))
    await wait_for(reactor, lambda: sent, what="the Delete")
    assert read(servers[0].root, "f.txt") == b"edited elsewhere, never seen by a"
    (operation, result), = sent
    assert operation == Delete("f.txt", sha(b"seen by a"))
    assert (result["status"], result["code"]) == ("conflict", "PRECONDITION_FAILED")
    await wait_for(reactor, lambda: read(A, "f.txt") == b"edited elsewhere, never seen by a",
                   what="the edit back in a")
    await converged(reactor, A, servers[0].root)


@pytest_twisted.ensureDeferred
async def test_a_folder_deleted_keeps_the_files_uploaded_into_it_meanwhile(reactor, servers, clients):
    a, A = await clients.synced(servers[0], {"keep.txt": KEEP, "d/x.txt": b"x", "d/e/y.txt": b"y"})
    uploaded = []

    async def upload_new(operations):
        # just before the first directory Delete: its files' Deletes were sent, the decision made
        if not uploaded and any(op.path in ("d", "d/e") for op in operations if isinstance(op, Delete)):
            uploaded.append(True)
            await upload_as_other(servers[0].url, "d/e/new.bin", b"uploaded while a deleted d")

    sent = before_deletes(a, upload_new)
    shutil.rmtree(os.path.join(A, "d"))
    await wait_for(reactor, lambda: uploaded and any(isinstance(op, Delete) and op.path in ("d", "d/e") for op, _ in sent),
                   what="a directory's Delete")
    assert read(servers[0].root, "d/e/new.bin") == b"uploaded while a deleted d"
    final = await converged(reactor, A, servers[0].root)
    assert final == {"keep.txt": sha(KEEP), "d": None, "d/e": None,
                     "d/e/new.bin": sha(b"uploaded while a deleted d")}
    for operation, _ in [s for s in sent if isinstance(s[0], Delete)]:  # each said what a had seen
        assert operation.if_match == ("" if operation.path in ("d", "d/e") else sha(read_back(operation.path)))


def read_back(path):
    return {"d/x.txt": b"x", "d/e/y.txt": b"y"}[path]


@pytest_twisted.ensureDeferred
async def test_a_broadcast_heard_before_the_own_delete_does_not_bring_the_folder_back(reactor, servers, clients):
    a, A = await clients.synced(servers[0], {"keep.txt": KEEP}, dirs=["e"])
    stale = FileMetadata.directory("e", 0.0)

    async def heard_meanwhile(operations):
        # another client's (older) Create of e arrives while a's Delete is on its way
        a.engine.remote_operation(None, Create(stale))

    sent = before_deletes(a, heard_meanwhile)
    os.rmdir(os.path.join(A, "e"))
    await wait_for(reactor, lambda: sent, what="the Delete")
    await a.engine.idle()
    assert "e" not in tree(A) and "e" not in tree(servers[0].root)
