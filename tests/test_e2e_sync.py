"""End to end: a real server and real clients (the daemon's own service objects, in the
test reactor) on real folders, over real sockets on 127.0.0.1.

Every wait polls the disk with a deadline; nothing sleeps for a fixed time to pass.
"""

import hashlib
import os

import attrs
import pytest
import pytest_twisted
from twisted.internet import task

from clients import converged, read, tree, write
from support import sleep, wait_for
from quantum_sync.paths import STATE_DIR_NAME


# -- basic operations --------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_create_update_delete_propagate(reactor, servers, clients):
    a, b, A, B = await clients.pair(servers[0])
    write(A, "hello.txt", b"hello")
    await wait_for(reactor, lambda: read(B, "hello.txt") == b"hello", what="create")
    write(A, "hello.txt", b"hello again")
    await wait_for(reactor, lambda: read(B, "hello.txt") == b"hello again", what="update")
    write(B, "back.txt", b"from b")
    await wait_for(reactor, lambda: read(A, "back.txt") == b"from b", what="create b→a")
    os.unlink(os.path.join(A, "hello.txt"))
    await wait_for(reactor, lambda: not os.path.exists(os.path.join(B, "hello.txt")), what="delete")
    assert tree(A) == tree(B) == {"back.txt": hashlib.sha256(b"from b").hexdigest()}
    assert tree(servers[0].root) == tree(A)


@pytest_twisted.ensureDeferred
async def test_moves_and_empty_nested_directories(reactor, servers, clients):
    a, b, A, B = await clients.pair(servers[0])
    os.makedirs(os.path.join(A, "empty/deeper/deepest"))
    write(A, "docs/sub/report.txt", b"report")
    write(A, "single.txt", b"single")
    await converged(reactor, A, B)
    assert tree(B)["empty/deeper/deepest"] is None
    # a file move and a directory move
    os.rename(os.path.join(A, "single.txt"), os.path.join(A, "docs/renamed.txt"))
    os.rename(os.path.join(A, "docs/sub"), os.path.join(A, "moved-sub"))
    await wait_for(reactor, lambda: read(B, "moved-sub/report.txt") == b"report", what="dir move")
    await wait_for(reactor, lambda: read(B, "docs/renamed.txt") == b"single", what="file move")
    await converged(reactor, A, B, servers[0].root)
    assert "single.txt" not in tree(B) and "docs/sub" not in tree(B)
    # deleting a nested tree
    import shutil

    shutil.rmtree(os.path.join(A, "empty"))
    await wait_for(reactor, lambda: not os.path.exists(os.path.join(B, "empty")), what="tree delete")
    await converged(reactor, A, B, servers[0].root)


@pytest_twisted.ensureDeferred
async def test_two_hundred_files_at_once_and_a_20_mib_file(reactor, servers, clients):
    a, b, A, B = await clients.pair(servers[0])
    for i in range(200):
        write(A, f"many/f{i:03}.txt", os.urandom(100 + i))
    big = os.urandom(20 << 20)
    write(B, "big.bin", big)
    await converged(reactor, A, B, timeout=30)
    assert len(tree(A)) == 202
    assert read(A, "big.bin") == big
    # the downloader kept the server's mtime; nothing was staged outside .quantum-sync
    assert abs(os.path.getmtime(os.path.join(A, "big.bin")) - os.path.getmtime(os.path.join(servers[0].root, "big.bin"))) < 1
    assert os.listdir(os.path.join(A, STATE_DIR_NAME, "tmp")) == []


@pytest_twisted.ensureDeferred
async def test_a_directory_moved_in_from_outside_brings_what_is_inside_it(reactor, tmp_path, servers, clients):
    # inotify reports only the directory (its contents made no event in the folder): the
    # client looks inside the directory it created on the server, well before any rescan
    a, b, A, B = await clients.pair(servers[0], interval=3600)
    outside = tmp_path / "outside" / "album"
    for name, data in (("one.jpg", b"1" * 3000), ("sub/two.jpg", b"2" * 70000), ("sub/deeper/three", b"3")):
        write(str(outside), name, data)
    os.rename(outside, os.path.join(A, "album"))
    await wait_for(reactor, lambda: read(B, "album/sub/deeper/three") == b"3", what="the moved-in tree")
    await converged(reactor, A, B, servers[0].root)
    assert read(B, "album/sub/two.jpg") == b"2" * 70000


@pytest_twisted.ensureDeferred
async def test_conflict_keeps_both_versions_in_both_folders(reactor, servers, clients):
    a, b, A, B = await clients.pair(servers[0])
    write(A, "notes.txt", b"original")
    write(A, "gone-here.txt", b"will be deleted by b, edited by a")
    write(A, "edited-there.txt", b"will be edited by b, deleted by a")
    await converged(reactor, A, B)
    await clients.stop(b)
    # both sides change things while b is stopped
    write(A, "notes.txt", b"version of a")
    write(A, "gone-here.txt", b"a's edit")
    os.unlink(os.path.join(A, "edited-there.txt"))
    write(A, "new-on-a.txt", b"a")
    await wait_for(reactor, lambda: read(servers[0].root, "notes.txt") == b"version of a", what="a's edit on the server")
    await wait_for(reactor, lambda: read(servers[0].root, "gone-here.txt") == b"a's edit",
                   what="a's other edit on the server")  # else b's delete, based on the original, wins
    await wait_for(reactor, lambda: not os.path.exists(os.path.join(servers[0].root, "edited-there.txt")), what="a's delete")
    write(B, "notes.txt", b"version of b")
    os.unlink(os.path.join(B, "gone-here.txt"))
    write(B, "edited-there.txt", b"b's edit")
    write(B, "new-on-b.txt", b"b")
    await clients.start(servers[0], "b")
    final = await converged(reactor, A, B, servers[0].root)
    contents = {read(A, p) for p in final if p.startswith("notes")}
    assert contents == {b"version of a", b"version of b"}
    copies = [p for p in final if ".sync-conflict-" in p]
    assert len(copies) == 1 and copies[0].startswith("notes.sync-conflict-") and copies[0].endswith("-b.txt")
    assert read(A, "notes.txt") == b"version of a" and read(A, copies[0]) == b"version of b"
    # edits beat deletes, whichever side made which
    assert read(B, "gone-here.txt") == b"a's edit"
    assert read(A, "edited-there.txt") == b"b's edit"
    assert read(A, "new-on-b.txt") == b"b" and read(B, "new-on-a.txt") == b"a"


@pytest_twisted.ensureDeferred
async def test_server_restart_in_the_middle(reactor, tmp_path, servers, clients):
    a, b, A, B = await clients.pair(servers[0])
    write(A, "before.txt", b"before")
    await converged(reactor, A, B)
    port = servers[0].port
    for i in range(100):  # the server goes down in the middle of these transfers
        write(A, f"batch/{i:03}.bin", os.urandom(2000))
    await wait_for(reactor, lambda: len(tree(B)) > 3, what="some of the batch in b")
    await servers[0].stop()
    # changes while the server is down are queued, then sent
    write(A, "during.txt", b"during")
    write(B, "before.txt", b"changed during the outage")
    await wait_for(reactor, lambda: "during.txt" in a.state.pending and "before.txt" in b.state.pending,
                   what="both changes queued while the server is down")
    servers[0] = await servers[0].restart(listen=f"tcp:{port}:interface=127.0.0.1")
    final = await converged(reactor, A, B, servers[0].root, timeout=20)
    assert read(A, "during.txt") == b"during"
    assert read(A, "before.txt") == b"changed during the outage"
    assert not [p for p in final if "sync-conflict" in p]


@pytest_twisted.ensureDeferred
async def test_a_slowly_written_file_is_never_seen_half_written(reactor, servers, clients):
    # the writer pauses 50 ms between chunks; a pause longer than the settle time would
    # rightly be taken for the end of the write, so the settle time stays far above any
    # lateness of a loaded machine
    a, b, A, B = await clients.pair(servers[0], settle=2.0)
    chunks = [os.urandom(8192) for _ in range(12)]
    whole = b"".join(chunks)
    seen = []

    def look():
        data = read(B, "slow.bin")
        if data is not None:
            seen.append(data)

    watcher = task.LoopingCall(look)
    watcher.clock = reactor
    watcher.start(0.005)
    try:
        with open(os.path.join(A, "slow.bin"), "wb") as f:
            for chunk in chunks:
                f.write(chunk)
                f.flush()
                await sleep(reactor, 0.05)
        await wait_for(reactor, lambda: read(B, "slow.bin") == whole, what="the whole file")
        look()
    finally:
        watcher.stop()
    assert seen and all(data == whole for data in seen)
    assert read(servers[0].root, "slow.bin") == whole


@pytest_twisted.ensureDeferred
async def test_syncignore_and_the_state_folder(reactor, servers, clients):
    a, b, A, B = await clients.pair(servers[0])
    write(A, ".syncignore", b"*.log\nbuild/\n")
    await wait_for(reactor, lambda: read(B, ".syncignore") == b"*.log\nbuild/\n", what=".syncignore")
    await wait_for(reactor, lambda: b.engine.rules.is_ignored("x.log"), what="b reloads the rules")
    write(A, "x.log", b"log")
    write(A, "build/out.o", b"obj")
    write(B, "y.log", b"log")
    write(A, "keep.txt", b"keep")
    await wait_for(reactor, lambda: read(B, "keep.txt") == b"keep", what="keep.txt")
    # markers written after the ignored files: once each has reached the other side, each
    # client's watcher has passed the ignored files to it, and once it is idle any upload
    # they had started would have finished
    write(A, "after-a.txt", b"a")
    write(B, "after-b.txt", b"b")
    await wait_for(reactor, lambda: read(B, "after-a.txt") == b"a" and read(A, "after-b.txt") == b"b",
                   what="the markers")
    await a.engine.idle()
    await b.engine.idle()
    listed = tree(servers[0].root)
    assert set(listed) == {".syncignore", "keep.txt", "after-a.txt", "after-b.txt"}
    assert read(B, "x.log") is None and read(A, "y.log") is None and not os.path.exists(os.path.join(B, "build"))
    # the state folders stay private: never uploaded, never listed
    assert os.path.exists(os.path.join(A, STATE_DIR_NAME, "state.db"))
    from support import HttpClient

    http = HttpClient(reactor)
    try:
        _, listing = await http.json("GET", servers[0].url + "/api/list")
    finally:
        await http.close()
    assert sorted(m["path"] for m in listing) == [".syncignore", "after-a.txt", "after-b.txt", "keep.txt"]


@pytest_twisted.ensureDeferred
async def test_initial_sync_pulls_first_then_sends_local_files(reactor, servers, clients):
    a = await clients.start(servers[0], "a")
    for i in range(60):
        write(a.config.folder, f"server-side/{i}.txt", b"%d" % i)
    await wait_for(reactor, lambda: len(tree(servers[0].root)) == 61, what="a's files on the server")
    write(str(clients.tmp_path / "c"), "local-only.txt", b"mine")
    c = await clients.start(servers[0], "c", initial_sync=True)
    await converged(reactor, a.config.folder, c.config.folder, servers[0].root)
    assert read(a.config.folder, "local-only.txt") == b"mine"


@pytest.mark.parametrize("strategy,winner", [("keep-server", b"version of a"), ("keep-client", b"version of b")])
@pytest_twisted.ensureDeferred
async def test_keep_server_and_keep_client_strategies(reactor, servers, clients, strategy, winner):
    a, b, A, B = await clients.pair(servers[0])
    write(A, "n.txt", b"original")
    await converged(reactor, A, B)
    await clients.stop(b)
    write(A, "n.txt", b"version of a")
    await wait_for(reactor, lambda: read(servers[0].root, "n.txt") == b"version of a", what="a's edit on the server")
    write(B, "n.txt", b"version of b")
    await clients.start(servers[0], "b", strategy=strategy)
    final = await converged(reactor, A, B, servers[0].root)
    assert read(A, "n.txt") == winner and list(final) == ["n.txt"]


@pytest_twisted.ensureDeferred
async def test_a_deleted_directory_keeps_what_was_edited_inside_it_elsewhere(reactor, servers, clients):
    a, b, A, B = await clients.pair(servers[0])
    write(A, "d/x.txt", b"x")
    write(A, "d/y.txt", b"y")
    write(A, "d/e/z.txt", b"z")
    write(A, "elsewhere.txt", b"so that the server's listing is not empty")
    await converged(reactor, A, B)
    await clients.stop(b)
    import shutil

    shutil.rmtree(os.path.join(A, "d"))
    await wait_for(reactor, lambda: not os.path.exists(os.path.join(servers[0].root, "d")), what="the delete on the server")
    write(B, "d/x.txt", b"edited while a deleted the folder")
    await clients.start(servers[0], "b")
    final = await converged(reactor, A, B, servers[0].root)
    del final["elsewhere.txt"]
    assert final == {"d": None, "d/x.txt": hashlib.sha256(b"edited while a deleted the folder").hexdigest()}


@pytest_twisted.ensureDeferred
async def test_a_download_that_failed_while_the_server_was_down_is_retried(reactor, tmp_path, servers, clients):
    """A remote change whose download failed for want of a server is remembered nowhere
    but in the offline queue (no local file, no base, the cursor moved on): the retry
    asks the server instead of deciding on local knowledge alone."""
    from quantum_sync.client.engine import UNKNOWN
    from quantum_sync.protocol import parse_metadata

    a = await clients.start(servers[0], "a")
    b = await clients.start(servers[0], "b", interval=3600)  # no periodic reconcile to mend it
    await b.link.stop()  # b hears of the change only through the announcement below
    write(a.config.folder, "late.txt", b"sent while b was not listening")
    await wait_for(reactor, lambda: read(servers[0].root, "late.txt") is not None, what="late.txt on the server")
    from support import HttpClient

    http = HttpClient(reactor)
    try:
        _, announced = await http.json("GET", servers[0].url + "/api/metadata?path=late.txt")
    finally:
        await http.close()
    port = servers[0].port
    await servers[0].stop()
    await b.engine.request("late.txt", parse_metadata(announced))  # the download fails: queued
    assert "late.txt" in b.state.pending and read(b.config.folder, "late.txt") is None
    assert b.engine.paths.hint("late.txt") is UNKNOWN
    servers[0] = await servers[0].restart(listen=f"tcp:{port}:interface=127.0.0.1")
    b.engine.retry_pending()  # what the realtime link does once it is subscribed again
    await wait_for(reactor, lambda: read(b.config.folder, "late.txt") == b"sent while b was not listening",
                   what="the failed download retried")


@pytest_twisted.ensureDeferred
async def test_catching_up_never_replays_the_clients_own_changes(reactor, servers, clients, monkeypatch):
    """The journal holds the client's own changes too (the WebSocket never sends them).
    A page read before the server journalled the client's Move of a directory still holds
    its old Create: replaying it brought the directory back in the folder (with a base, so
    it was never sent), where neither the server nor the other client has it."""
    from quantum_sync.protocol import Move

    a, b, A, B = await clients.pair(servers[0])
    os.makedirs(os.path.join(A, "was-here"))
    await wait_for(reactor, lambda: os.path.isdir(os.path.join(B, "was-here")), what="directory synced")
    os.rename(os.path.join(A, "was-here"), os.path.join(A, "now-here"))
    await wait_for(reactor, lambda: os.path.isdir(os.path.join(B, "now-here")) and not os.path.exists(
        os.path.join(B, "was-here")), what="directory moved")
    await a.engine.idle()
    journal = a.engine.server.changes

    async def read_before_the_move(since, journal_id=None):
        page = await journal(since, journal_id)
        kept = [c for c in page.changes if not isinstance(c.operation, Move)]
        return attrs.evolve(page, changes=kept, cursor=kept[-1].seq if kept else since, has_more=False)

    monkeypatch.setattr(a.engine.server, "changes", read_before_the_move)
    cursor = a.engine.remote.journal
    cursor.start_over(0, cursor.journal_id)  # read the whole journal again
    await a.engine.catch_up()
    await a.engine.idle()
    assert not os.path.exists(os.path.join(A, "was-here"))
    await converged(reactor, A, B, servers[0].root)
