"""End to end: a client that catches up on two Moves in a row made by another client
(after a stalled link) ends with every file the server has at their end: a file moved
into a folder that then moved on, and a folder moved twice after this client's copy of it
was emptied, are not left out. Real server, real client; the catch-up is started by hand,
as a reconnect after a stall would start it."""

import pytest_twisted

from clients import KEEP, HeldUpload, as_other, converged, move, read, sha, write
from support import wait_for


@pytest_twisted.ensureDeferred
async def test_a_file_moved_into_a_folder_that_moved_on_is_not_deleted_here(reactor, servers, clients):
    server = servers[0]
    a, A = await clients.behind(server)
    await as_other(server, "POST", "/api/upload", params={"path": "f.bin"}, data=b"f")
    await a.engine.catch_up()  # a downloads f.bin, heard as a Create
    await converged(reactor, A, server.root)
    await move(server, "f.bin", "d/g.bin")
    await move(server, "d", "d2")
    await a.engine.catch_up()
    final = await converged(reactor, A, server.root)
    assert final == {"keep.txt": sha(KEEP), "d2": None, "d2/x.txt": sha(b"x"), "d2/g.bin": sha(b"f")}


@pytest_twisted.ensureDeferred
async def test_a_folder_moved_twice_after_this_client_emptied_it_arrives_whole(reactor, servers, clients):
    server = servers[0]
    a, A = await clients.behind(server)
    # an upload of a's own lands in d after the server moved d to d2 (re-creating d there):
    # applying that Move reconciles d2, which the server has meanwhile moved on to d3
    held = HeldUpload("d/late.bin", client=a)
    write(A, "d/late.bin", b"read before the folder moved on the server")
    await held.started
    await move(server, "d", "d2")
    await move(server, "d2", "d3")
    held.release()
    await wait_for(reactor, lambda: held.events, what="the late upload")
    await a.engine.catch_up()
    final = await converged(reactor, A, server.root)
    assert final["d3/x.txt"] == sha(b"x")
    assert final["d/late.bin"] == sha(b"read before the folder moved on the server")


@pytest_twisted.ensureDeferred
async def test_an_older_delete_heard_after_an_own_upload_of_the_path_is_not_applied(reactor, servers, clients):
    server = servers[0]
    a, A = await clients.behind(server)
    await a.engine.idle()
    body = await as_other(server, "POST", "/api/sync", json={
        "operations": [{"Delete": {"path": "d/x.txt", "hash": sha(b"x")}}], "client_id": "other"})
    assert body["results"][0]["status"] == "applied"
    write(A, "d/x.txt", b"edited after the delete landed")  # edit beats delete: uploaded again
    await wait_for(reactor, lambda: read(server.root, "d/x.txt") == b"edited after the delete landed",
                   what="the edit on the server")
    await a.engine.idle()
    await a.engine.catch_up()  # the other client's Delete, older than the upload, heard now
    final = await converged(reactor, A, server.root)
    assert final["d/x.txt"] == sha(b"edited after the delete landed")
