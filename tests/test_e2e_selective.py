"""End to end: selective sync with real clients on a real server.

An excluded directory never arrives and is never deleted on the server; widening the
selection brings it; narrowing removes the unchanged copies and keeps an edited one.
"""

import os
import shutil

import pytest_twisted

from quantum_sync.client.selection import Selection
from clients import read, write
from support import wait_for


@pytest_twisted.ensureDeferred
async def test_exclude_widen_and_narrow(reactor, servers, clients, log_lines):
    srv = servers[0]
    b = await clients.start(srv, "b")
    B = b.config.folder
    for rel in ("docs/a.txt", "videos/v1.bin", "videos/v2.bin"):
        write(B, rel, rel.encode())
    await wait_for(reactor, lambda: read(srv.root, "videos/v2.bin") and read(srv.root, "docs/a.txt"), what="b's upload")

    a = await clients.start(srv, "a", selection=Selection(exclude=["/videos/"]))
    A = a.config.folder
    await wait_for(reactor, lambda: read(A, "docs/a.txt") == b"docs/a.txt", what="the selected file")
    write(A, "videos/mine.txt", b"local, outside the selection")
    write(B, "videos/v3.bin", b"videos/v3.bin")
    write(B, "docs/after.txt", b"after v3")  # the journal is ordered: v3 was handled before this
    await wait_for(reactor, lambda: read(A, "docs/after.txt") == b"after v3", what="a later selected file")
    write(A, "docs/from-a.txt", b"after mine")
    await wait_for(reactor, lambda: read(srv.root, "docs/from-a.txt") == b"after mine", what="a's later upload")
    await a.engine.idle()
    assert not os.path.exists(os.path.join(A, "videos", "v1.bin")) and read(A, "videos/v3.bin") is None
    assert read(srv.root, "videos/mine.txt") is None  # left alone, not uploaded, and said so
    # (the directory it made, the outermost path outside the selection, is what is named)
    assert sum("left alone: videos is outside this client's selection" in line for line in log_lines) == 1
    assert read(srv.root, "videos/v1.bin") == b"videos/v1.bin"  # and nothing deleted there
    await clients.stop(a)

    a = await clients.start(srv, "a")  # widened: everything
    for rel in ("videos/v1.bin", "videos/v2.bin", "videos/v3.bin"):
        await wait_for(reactor, lambda rel=rel: read(A, rel) == rel.encode(), what=f"{rel} after widening")
    await wait_for(reactor, lambda: read(srv.root, "videos/mine.txt") == b"local, outside the selection",
                   what="the local file, now selected, uploaded")
    await a.engine.idle()
    await clients.stop(a)

    write(A, "videos/v1.bin", b"edited while outside")
    a = await clients.start(srv, "a", selection=Selection(exclude=["/videos/"]))
    assert read(A, "videos/v2.bin") is None and read(A, "videos/v3.bin") is None and read(A, "videos/mine.txt") is None
    assert read(A, "videos/v1.bin") == b"edited while outside"  # a local edit is never lost
    assert any("removed 3 local copies outside this client's selection" in line for line in log_lines)
    assert any("kept videos/v1.bin: outside this client's selection, but changed" in line for line in log_lines)
    write(B, "docs/last.txt", b"last")
    await wait_for(reactor, lambda: read(A, "docs/last.txt") == b"last", what="syncing goes on")
    await a.engine.idle()
    for rel in ("videos/v1.bin", "videos/v2.bin", "videos/v3.bin"):
        assert read(srv.root, rel) == rel.encode() and read(B, rel) == rel.encode()


@pytest_twisted.ensureDeferred
async def test_deleting_a_directory_keeps_what_is_outside_the_selection_on_the_server(reactor, servers, clients):
    srv = servers[0]
    b = await clients.start(srv, "b")
    B = b.config.folder
    write(B, "docs/a.txt", b"selected")
    write(B, "docs/private/secret.txt", b"not synced by a")
    await wait_for(reactor, lambda: read(srv.root, "docs/private/secret.txt"), what="b's upload")
    a = await clients.start(srv, "a", selection=Selection(exclude=["/docs/private/"]))
    A = a.config.folder
    await wait_for(reactor, lambda: read(A, "docs/a.txt") == b"selected", what="the selected file")
    assert not os.path.exists(os.path.join(A, "docs", "private"))
    shutil.rmtree(os.path.join(A, "docs"))
    await wait_for(reactor, lambda: read(B, "docs/a.txt") is None, what="the delete on the other client")
    await a.engine.idle()
    write(B, "marker.txt", b"after")  # the journal is ordered: whatever a did came before this
    await wait_for(reactor, lambda: read(A, "marker.txt") == b"after", what="a later change")
    await a.engine.idle()
    assert read(srv.root, "docs/private/secret.txt") == b"not synced by a"
    assert read(B, "docs/private/secret.txt") == b"not synced by a"
