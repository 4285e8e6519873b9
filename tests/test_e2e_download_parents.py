"""End to end: a folder the client makes as the parent of a download is a synced folder,
not a new local one: it is not sent back to the server as a Create, so a delete of it by
another client that lands meanwhile is applied here, and not undone. Real server, real
client; the catch-up is started by hand."""

import os

import pytest_twisted
from twisted.internet import defer

from quantum_sync.protocol import Create
from clients import KEEP, as_other, converged, sha
from support import wait_for


@pytest_twisted.ensureDeferred
async def test_a_folder_made_for_a_download_is_synced_and_its_remote_delete_applied(reactor, servers, clients):
    server = servers[0]
    a, A = await clients.behind(server)
    gate, creates = defer.Deferred(), []
    real_sync = a.engine.server.sync

    async def held_sync(operations):
        if any(isinstance(op, Create) and op.metadata.path == "e" for op in operations):
            creates.append(operations)
            await gate  # a Create of a folder from here waits until the other client deleted it
        return await real_sync(operations)

    await a.engine.idle()
    a.engine.server.sync = held_sync
    # the server makes e/ for the upload (listed, not journalled as a Create of its own)
    await as_other(server, "POST", "/api/upload", params={"path": "e/f.bin"}, data=b"f")
    await a.engine.catch_up()
    assert os.path.isfile(os.path.join(A, "e", "f.bin"))
    await wait_for(reactor, lambda: a.engine.state.base("e") is not None, what="e synced")
    body = await as_other(server, "POST", "/api/sync", json={
        "operations": [{"Delete": {"path": "e"}}], "client_id": "other"})
    assert body["results"][0]["status"] == "applied"
    gate.callback(None)
    await a.engine.catch_up()
    final = await converged(reactor, A, server.root)
    assert final == {"keep.txt": sha(KEEP), "d": None, "d/x.txt": sha(b"x")}
    assert creates == []
