"""End to end: a synced folder moved out of the client's folder is a delete of what was
inside it, even when the folder is back by the time its change is looked at (a download
into it, or the user, made it again): the files that went are deleted on the server, the
new one is kept. Real server, real client."""

import os

import pytest_twisted

from clients import KEEP, converged, sha, write


@pytest_twisted.ensureDeferred
async def test_a_folder_moved_out_and_made_again_deletes_what_went_with_it(reactor, tmp_path, servers, clients):
    server = servers[0]
    a, A = await clients.behind(server)
    write(A, "d/y.txt", b"y")
    await converged(reactor, A, server.root)
    await a.engine.idle()
    os.rename(os.path.join(A, "d"), str(tmp_path / "trash"))  # out of the folder: one event, for d
    write(A, "d/new.txt", b"made in a folder of the same name")
    await a.engine.local_changed("d", None)  # the watcher's stat, taken before d came back
    final = await converged(reactor, A, server.root)
    assert final == {"keep.txt": sha(KEEP), "d": None,
                     "d/new.txt": sha(b"made in a folder of the same name")}
