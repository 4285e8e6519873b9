"""FIFOs, sockets and devices in the folder are never synced, and nothing blocks on them:
not a scan, not the watcher, not hashing, not an upload's open (a FIFO's plain open
waits for a writer, forever)."""

import os
import socket

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from quantum_sync.client import localfs
from quantum_sync.client.localfs import LocalChanged, LocalStat
from quantum_sync.client.watcher import FolderWatcher
from clients import read, write
from support import wait_for

STUCK = 10  # seconds after which a call is taken to be blocked for good


def specials(folder):
    """A FIFO and a socket in ``folder``; the bound socket (close it afterwards)."""
    os.mkfifo(os.path.join(folder, "pipe"))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(os.path.join(folder, "sock"))
    return sock


def unblock(fifo):
    """Wake a reader stuck opening ``fifo`` (so a failing test does not hang the run)."""
    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass


@pytest_twisted.ensureDeferred
async def test_a_fifo_where_a_file_was_seen_is_never_opened_blocking(reactor, tmp_path):
    fifo = str(tmp_path / "pipe")
    os.mkfifo(fifo)
    # what a scan saw a moment ago: a small regular file, now a FIFO in its place
    seen = LocalStat(5, 1, False)
    calls = [lambda: localfs.version(fifo, keep=64, seen=seen),  # read with its hash
             lambda: localfs.version(fifo, seen=seen),  # hashed, not kept
             lambda: localfs.open_regular(fifo)]  # an upload's open
    try:
        for call in calls:
            with pytest.raises(LocalChanged):
                await deferToThread(call).addTimeout(STUCK, reactor)
    finally:
        unblock(fifo)


@pytest_twisted.ensureDeferred
async def test_scans_skip_special_files(reactor, tmp_path):
    sock = specials(str(tmp_path))
    try:
        write(str(tmp_path), "d/file.txt", b"a file")
        found = await deferToThread(localfs.scan, str(tmp_path), {}, lambda p, d: False).addTimeout(STUCK, reactor)
        assert set(found) == {"d", "d/file.txt"}
    finally:
        sock.close()
        unblock(str(tmp_path / "pipe"))


@pytest_twisted.ensureDeferred
async def test_the_watcher_drops_special_files(reactor, tmp_path):
    events = []
    os.makedirs(tmp_path / ".quantum-sync")
    watcher = FolderWatcher(reactor, str(tmp_path), lambda p, st: events.append(p), lambda a, b: events.append(b))
    watcher.startService()
    try:
        sock = specials(str(tmp_path))
        write(str(tmp_path), "after.txt", b"written after the special files")
        # inotify reports in order: once the later file is seen, the special ones were too
        await wait_for(reactor, lambda: "after.txt" in events, what="the regular file's event")
        os.rename(tmp_path / "pipe", tmp_path / "moved-pipe")  # a move inside the folder
        write(str(tmp_path), "after-move.txt", b"written after the move")
        await wait_for(reactor, lambda: "after-move.txt" in events, what="the next regular file's event")
        await wait_for(reactor, lambda: not watcher._timers, what="settled")
        assert set(events) == {"after.txt", "after-move.txt"}
        sock.close()
    finally:
        await watcher.stopService()


@pytest_twisted.ensureDeferred
async def test_a_client_with_special_files_in_its_folder_syncs_the_rest(reactor, tmp_path, server, clients):
    folder = tmp_path / "a"
    folder.mkdir()
    sock = specials(str(folder))
    try:
        write(str(folder), "regular.txt", b"synced")
        a = await clients.start(server, "a")
        await wait_for(reactor, lambda: read(server.root, "regular.txt") == b"synced", what="upload")
        os.mkfifo(folder / "later-pipe")
        write(str(folder), "later.txt", b"later")
        await wait_for(reactor, lambda: read(server.root, "later.txt") == b"later", what="a later upload")
        await a.engine.reconcile()
        assert sorted(n for n in os.listdir(server.root) if not n.startswith(".")) == ["later.txt", "regular.txt"]
    finally:
        sock.close()
        for name in ("pipe", "later-pipe"):
            unblock(str(folder / name))


@pytest_twisted.ensureDeferred
async def test_a_synced_file_replaced_by_a_special_file_is_left_alone(reactor, tmp_path, server, clients, log_lines):
    """A full reconcile that finds a FIFO where a synced file was, or a socket where a
    synced folder was, deletes nothing on the server and downloads nothing over them."""
    folder = tmp_path / "a"
    sock = None
    try:
        a = await clients.start(server, "a")
        write(str(folder), "file.txt", b"synced file")
        write(str(folder), "d/inner.txt", b"synced folder")
        await wait_for(reactor, lambda: read(server.root, "d/inner.txt") == b"synced folder"
                       and read(server.root, "file.txt") == b"synced file", what="uploads")
        await wait_for(reactor, lambda: {"file.txt", "d", "d/inner.txt"} <= set(a.state.bases), what="synced")
        await clients.stop(a)
        os.unlink(folder / "file.txt")
        os.mkfifo(folder / "file.txt")
        os.unlink(folder / "d" / "inner.txt")
        os.rmdir(folder / "d")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(folder / "d"))
        write(str(folder), "after.txt", b"made while stopped")
        a = await clients.start(server, "a")  # its first full reconcile
        await wait_for(reactor, lambda: read(server.root, "after.txt") == b"made while stopped", what="the upload")
        await a.engine.reconcile()
        assert read(server.root, "file.txt") == b"synced file"
        assert read(server.root, "d/inner.txt") == b"synced folder"
        assert os.path.exists(folder / "file.txt") and not os.path.isfile(folder / "file.txt")
        assert not os.path.isdir(folder / "d")
        said = [line for line in log_lines if "left alone" in line]
        assert len(said) == 2 and any("file.txt" in line for line in said), said
    finally:
        if sock is not None:
            sock.close()
        unblock(str(folder / "file.txt"))
