"""End to end: the data-safety guards (contract section 7, reliability field notes)."""

import os
import shutil

import pytest
import pytest_twisted

from clients import converged, read, tree, write
from quantum_sync.client.status import folder_status
from support import start_server, wait_for


@pytest_twisted.ensureDeferred
async def test_mass_delete_is_held_until_allowed(reactor, servers, clients, log_lines):
    a, b, A, B = await clients.pair(servers[0])
    for i in range(30):
        write(A, f"f{i:02}.txt", b"x%d" % i)
    await converged(reactor, A, B)
    await clients.stop(a)
    for i in range(20):  # 20 of 30 vanish while the client is off (an unmounted disk, a bad script)
        os.unlink(os.path.join(A, f"f{i:02}.txt"))
    a = await clients.start(servers[0], "a")
    held = [line for line in log_lines if "mass delete" in line]
    assert held and "20" in held[0]
    await a.engine.reconcile()  # a later reconcile holds it too
    assert len([line for line in log_lines if "mass delete" in line]) > len(held)
    assert len(tree(servers[0].root)) == 30 and len(tree(B)) == 30
    status = await folder_status("a", a, reactor)
    assert [(g["guard"], g["what"], g["files"], g["synced"]) for g in status["guards"]] == [
        ("mass delete", "reconcile", 20, 30)]
    assert "--allow-mass-delete" in status["guards"][0]["release"] and not status["in_sync"]
    await clients.stop(a)
    a = await clients.start(servers[0], "a", allow_mass_delete=True)
    await converged(reactor, A, B, servers[0].root)
    assert len(tree(B)) == 10


@pytest_twisted.ensureDeferred
async def test_a_folder_that_lost_its_state_deletes_nothing(reactor, servers, clients):
    a, A = await clients.synced(servers[0], {"one.txt": b"1", "two/three.txt": b"3"})
    await clients.stop(a)
    shutil.rmtree(A)  # the disk is gone; an empty mount point is all that is left
    os.mkdir(A)
    a = await clients.start(servers[0], "a")
    await converged(reactor, A, servers[0].root)
    assert read(A, "one.txt") == b"1" and read(A, "two/three.txt") == b"3"


@pytest_twisted.ensureDeferred
async def test_a_zero_byte_file_with_an_old_mtime_is_not_uploaded(reactor, servers, clients, log_lines):
    a = await clients.start(servers[0], "a")
    A = a.config.folder
    write(A, "precious.txt", b"precious content")
    await wait_for(reactor, lambda: read(servers[0].root, "precious.txt") == b"precious content")
    await a.engine.idle()  # the upload's answer recorded (a stop aborts what is in flight)
    await clients.stop(a)
    path = os.path.join(A, "precious.txt")
    mtime = os.stat(path).st_mtime
    open(path, "wb").close()  # power loss: truncated, old mtime put back
    os.utime(path, (mtime, mtime))
    a = await clients.start(servers[0], "a")
    await wait_for(reactor, lambda: any("suspect" in line for line in log_lines), what="the suspect warning")
    assert read(servers[0].root, "precious.txt") == b"precious content"


@pytest_twisted.ensureDeferred
async def test_an_empty_listing_is_not_everything_deleted(reactor, servers, clients, log_lines):
    a, A = await clients.synced(servers[0], {"a.txt": b"a.txt", "b.txt": b"b.txt"})
    await clients.stop(a)
    await servers[0].stop()
    shutil.rmtree(servers[0].root)  # the server comes back with an empty root
    os.mkdir(servers[0].root)
    shutil.rmtree(servers[0].state_dir, ignore_errors=True)
    servers[0] = await start_server(reactor, servers[0].tmp_path)
    a = await clients.start(servers[0], "a")
    # the server's journal started over (a new journal_id): what it lost is sent back to it
    await wait_for(reactor, lambda: read(servers[0].root, "a.txt") == b"a.txt"
                   and read(servers[0].root, "b.txt") == b"b.txt", what="the files uploaded again")
    assert read(A, "a.txt") == b"a.txt" and read(A, "b.txt") == b"b.txt"


async def pair_holding(reactor, server, clients, directory, others, count=30):
    """Clients a and b with ``count`` files in ``directory`` and the files ``others`` synced."""
    a, b, A, B = await clients.pair(server)
    for i in range(count):
        write(A, f"{directory}/f{i:02}.txt", b"x%d" % i)
    for rel in others:
        write(A, rel, rel[0].encode())
    await converged(reactor, A, B, server.root)
    return a, b, A, B


@pytest_twisted.ensureDeferred
async def test_files_deleted_while_the_client_runs_are_held_as_a_mass_delete(reactor, servers, clients, log_lines):
    a, b, A, B = await pair_holding(reactor, servers[0], clients, "d", ["keep.txt"])
    for i in range(25):  # a script empties most of the folder while the client watches
        os.unlink(os.path.join(A, "d", f"f{i:02}.txt"))
    await wait_for(reactor, lambda: any("mass delete" in line for line in log_lines), what="the mass delete warning")
    # the marker's upload follows every delete event into the engine, where each waits on
    # the guard's verdict; once the engine is idle, every verdict has been acted on
    write(A, "marker.txt", b"m")
    await wait_for(reactor, lambda: read(servers[0].root, "marker.txt") == b"m", what="the marker")
    await a.engine.idle()
    # the first ten went at once (ten is never a mass delete), the rest is held
    assert len([p for p in tree(servers[0].root) if p.startswith("d/f")]) == 20
    os.unlink(os.path.join(A, "keep.txt"))  # a delete alone, later, goes at once while the rest is held
    await wait_for(reactor, lambda: read(B, "keep.txt") is None, what="the single delete on the other client")
    await a.engine.idle()
    assert len([p for p in tree(servers[0].root) if p.startswith("d/f")]) == 20
    assert len([p for p in tree(B) if p.startswith("d/f")]) == 20
    status = await folder_status("a", a, reactor)
    assert [(g["what"], g["synced"]) for g in status["guards"]] == [("local deletes", 31)]
    assert status["state"] == "held" and "restore the files" in status["guards"][0]["release"]


@pytest_twisted.ensureDeferred
async def test_a_few_files_deleted_while_the_client_runs_are_deleted_on_the_server(reactor, servers, clients, log_lines):
    a, b, A, B = await clients.pair(servers[0])
    for i in range(30):
        write(A, f"f{i:02}.txt", b"x%d" % i)
    await converged(reactor, A, B, servers[0].root)
    for i in range(3):
        os.unlink(os.path.join(A, f"f{i:02}.txt"))
    await converged(reactor, A, B, servers[0].root)
    assert len(tree(B)) == 27
    assert not any("mass delete" in line for line in log_lines)


@pytest_twisted.ensureDeferred
async def test_a_folder_copied_with_its_state_syncs_as_a_client_of_its_own(reactor, servers, clients, log_lines):
    a = await clients.start(servers[0], "a", client_id=None)
    write(a.config.folder, "before.txt", b"synced before the copy")
    await wait_for(reactor, lambda: read(servers[0].root, "before.txt") is not None, what="upload")
    await clients.stop(a)
    shutil.copytree(a.config.folder, clients.tmp_path / "copy")  # .quantum-sync/ included
    a = await clients.start(servers[0], "a", client_id=None)
    copy = await clients.start(servers[0], "copy", client_id=None)
    assert copy.engine.client_id != a.engine.client_id
    assert sum("was made for" in line and "taking a new client id" in line for line in log_lines) == 1
    # each sees the other's changes (sharing one id, each skipped the other's)
    write(a.config.folder, "from-a.txt", b"a")
    write(copy.config.folder, "from-copy.txt", b"copy")
    await converged(reactor, a.config.folder, copy.config.folder)


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("count", [30, 15])
async def test_a_delete_goes_through_while_rm_rf_of_a_synced_folder_is_held(reactor, servers, clients, log_lines, count):
    """The first ten files go at once, the rest is held; with 15 files the rest (5) is no
    mass delete by itself, yet stays held: neither the reconcile of the removed directory
    nor a full reconcile sends it."""
    a, b, A, B = await pair_holding(reactor, servers[0], clients, "d/e", ["keep.txt", "other.txt"], count)
    shutil.rmtree(os.path.join(A, "d"))  # rm -rf: files, then their directories
    await wait_for(reactor, lambda: any("mass delete held" in line and "are gone from the folder" in line
                                        for line in log_lines), what="the burst held")
    os.unlink(os.path.join(A, "keep.txt"))  # later, alone: goes at once, the rest staying held
    await wait_for(reactor, lambda: read(B, "keep.txt") is None, what="the single delete on the other client")
    write(A, "marker.txt", b"m")  # every event before it has been acted on once it is up
    await wait_for(reactor, lambda: read(servers[0].root, "marker.txt") == b"m", what="the marker")
    await a.engine.idle()
    await a.engine.reconcile()
    await a.engine.idle()
    assert len([p for p in tree(servers[0].root) if p.startswith("d/e/f")]) == count - 10  # ten went at once
    assert len([p for p in tree(B) if p.startswith("d/e/f")]) == count - 10 and read(B, "other.txt") == b"o"
    status = await folder_status("a", a, reactor)
    assert ("local deletes", count) in [(g["what"], g["files"]) for g in status["guards"]], status["guards"]
    assert status["state"] == "held"


@pytest_twisted.ensureDeferred
async def test_a_held_rm_rf_stays_held_across_a_restart(reactor, servers, clients, log_lines):
    """After the ten that went at once, the 5 files held of an rm -rf of 15 would be no
    mass delete for the next start's reconcile (5 of 7 synced): the hold is kept in the
    folder's state, and only a start with --allow-mass-delete sends them."""
    a, b, A, B = await pair_holding(reactor, servers[0], clients, "d/e", ["keep.txt", "other.txt"], 15)
    shutil.rmtree(os.path.join(A, "d"))
    await wait_for(reactor, lambda: any("are gone from the folder" in line for line in log_lines), what="the hold")
    write(A, "marker.txt", b"m")
    await wait_for(reactor, lambda: read(servers[0].root, "marker.txt") == b"m", what="the marker")
    await a.engine.idle()
    await clients.stop(a)
    a = await clients.start(servers[0], "a")
    await a.engine.idle()
    assert len([p for p in tree(servers[0].root) if p.startswith("d/e/f")]) == 5
    assert any("mass delete still held: 5 files" in line for line in log_lines)
    status = await folder_status("a", a, reactor)
    assert ("local deletes", 5) in [(g["what"], g["files"]) for g in status["guards"]], status["guards"]
    await clients.stop(a)
    a = await clients.start(servers[0], "a", allow_mass_delete=True)
    await wait_for(reactor, lambda: not [p for p in tree(B) if p.startswith("d/")], what="the delete confirmed")
    assert a.state.held_deletes == frozenset()
    await clients.stop(a)
    a = await clients.start(servers[0], "a")  # nothing held any more
    assert not (await folder_status("a", a, reactor))["guards"]
