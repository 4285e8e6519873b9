"""A server whose journal starts over (its state folder lost) is noticed by running
clients: real server, real clients, real folders."""

import os
import shutil

import pytest_twisted

from clients import converged, read, write
from support import HttpClient, start_server
from support import wait_for


async def _journal(reactor, url):
    http = HttpClient(reactor)
    try:
        _, changes = await http.json("GET", url + "/api/changes?since=0&limit=1")
        _, metrics = await http.json("GET", url + "/ws/metrics")
    finally:
        await http.close()
    return changes.get("journal_id"), metrics["journal_head"]


@pytest_twisted.ensureDeferred
async def test_clients_follow_a_server_whose_state_folder_was_lost(reactor, tmp_path, servers, clients):
    a, b, A, B = await clients.pair(servers[0])
    write(A, "kept.txt", b"stays")
    for i in range(15):  # a journal longer than the one the server makes anew from its files
        write(A, "edited.txt", b"edit %d" % i)
        await wait_for(reactor, lambda: read(servers[0].root, "edited.txt") == b"edit %d" % i, what=f"edit {i} sent")
    await converged(reactor, A, B, servers[0].root)
    await a.engine.idle()
    await b.engine.idle()
    old_id, old_head = await _journal(reactor, servers[0].url)

    port = servers[0].port
    await servers[0].stop()
    shutil.rmtree(servers[0].state_dir)  # the index and its journal are gone; the files stay
    servers[0] = await start_server(reactor, tmp_path, listen=f"tcp:{port}:interface=127.0.0.1")
    new_id, new_head = await _journal(reactor, servers[0].url)
    assert new_id is not None and new_id != old_id and new_head < old_head  # the deaf case: every new seq is below the old cursor
    await wait_for(reactor, lambda: a.link.connected and b.link.connected, timeout=45, what="both reconnected")

    write(A, "after.txt", b"written once the server started over")
    await wait_for(reactor, lambda: read(B, "after.txt") == b"written once the server started over",
                   what="a change after the restart reaching the other client")
    final = await converged(reactor, A, B, servers[0].root)
    assert set(final) == {"kept.txt", "edited.txt", "after.txt"}
    assert b.state.journal_id == new_id and a.state.journal_id == new_id


@pytest_twisted.ensureDeferred
async def test_a_move_of_the_old_journal_is_not_followed_in_the_new_one(reactor, tmp_path, servers, clients):
    a, b, A, B = await clients.pair(servers[0])
    write(B, "x/first.txt", b"first")
    await converged(reactor, A, B, servers[0].root)
    for i in range(15):  # the Move gets a seq that the new journal's first changes stay below
        write(B, "edited.txt", b"edit %d" % i)
        await wait_for(reactor, lambda: read(servers[0].root, "edited.txt") == b"edit %d" % i, what=f"edit {i} sent")
    os.rename(os.path.join(B, "x"), os.path.join(B, "y"))
    await wait_for(reactor, lambda: read(A, "y/first.txt") == b"first", what="the move reaching a")
    await converged(reactor, A, B, servers[0].root)
    await a.engine.idle()
    await b.engine.idle()

    port = servers[0].port
    await servers[0].stop()
    shutil.rmtree(servers[0].state_dir)
    servers[0] = await start_server(reactor, tmp_path, listen=f"tcp:{port}:interface=127.0.0.1")
    new_id, _ = await _journal(reactor, servers[0].url)
    await wait_for(reactor, lambda: a.state.journal_id == new_id and b.state.journal_id == new_id
                   and a.link.connected and b.link.connected, timeout=45, what="both following the new journal")

    # a new folder x: its Create's seq in the new journal is below the old Move's, which
    # must not carry it to y
    write(B, "x/new.txt", b"made once the server started over")
    await wait_for(reactor, lambda: read(A, "x/new.txt") == b"made once the server started over",
                   what="a new file in x reaching a, in x")
    final = await converged(reactor, A, B, servers[0].root)
    assert set(final) == {"y", "y/first.txt", "edited.txt", "x", "x/new.txt"}
