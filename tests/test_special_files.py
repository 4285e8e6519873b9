"""Only regular files and directories are listed, served, hashed or synced: a FIFO, a
socket or a device in the root is skipped, and nothing ever blocks on one (contract
section 8, special files)."""

import errno
import os
import socket
import threading

import pytest
import pytest_twisted
from twisted.internet import defer

from quantum_sync import diskio
from quantum_sync.server.store import Store
from tests.support import start_server

#: A request that does not answer within this many seconds is stuck on a special file.
ANSWER_WITHIN = 10


def _release_fifo(name: str) -> None:
    """Open ``name`` for writing without blocking, so a reader stuck opening it (the
    behaviour under test, when it is wrong) goes on and the test can end."""
    try:
        os.close(os.open(name, os.O_WRONLY | os.O_NONBLOCK))
    except OSError as error:
        assert error.errno in (errno.ENXIO, errno.ENOENT)  # no reader waits: nothing to release


def _special_files(root: str) -> list:
    """A FIFO and a listening Unix socket in ``root``; their names."""
    fifo = os.path.join(root, "pipe")
    os.mkfifo(fifo)
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(os.path.join(root, "sock"))
    sock.close()
    return [fifo, os.path.join(root, "sock")]


def _bounded(function, fifo: str):
    """``function()``'s outcome (result or exception) from a thread; fails the test when
    it is still blocked after :data:`ANSWER_WITHIN` seconds (the FIFO is then released)."""
    outcome = []

    def run():
        try:
            outcome.append(function())
        except Exception as error:
            outcome.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(ANSWER_WITHIN)
    if thread.is_alive():
        _release_fifo(fifo)
        thread.join(ANSWER_WITHIN)
        pytest.fail(f"blocked on the FIFO {fifo}")
    return outcome[0]


def test_hashing_refuses_a_fifo_without_blocking(tmp_path):
    fifo = str(tmp_path / "pipe")
    os.mkfifo(fifo)
    refused = _bounded(lambda: diskio.sha256_file(fifo), fifo)
    assert isinstance(refused, OSError) and refused.errno == errno.EINVAL


def test_store_scans_and_hashes_only_regular_files(tmp_path):
    store = Store(str(tmp_path / "root"))
    store.prepare()
    _special_files(store.root)
    with open(os.path.join(store.root, "plain.txt"), "wb") as f:
        f.write(b"x")
    assert [entry.path for entry in store.scan()] == ["plain.txt"]
    fifo = os.path.join(store.root, "pipe")
    assert isinstance(_bounded(lambda: store.hash("pipe"), fifo), OSError)


async def _within(awaitable, reactor):
    """``awaitable``'s result, failing the test if it takes over :data:`ANSWER_WITHIN` s."""
    return await defer.ensureDeferred(awaitable).addTimeout(ANSWER_WITHIN, reactor)


@pytest_twisted.ensureDeferred
async def test_special_files_are_never_listed_or_served(reactor, tmp_path, http):
    root = tmp_path / "root"
    root.mkdir()
    specials = _special_files(str(root))
    (root / "plain.txt").write_bytes(b"plain")
    running = await start_server(reactor, tmp_path)
    try:
        _, listing = await http.json("GET", f"{running.url}/api/list")
        assert [entry["path"] for entry in listing] == ["plain.txt"]
        for name in ("pipe", "sock"):
            response = await _within(http.get(f"{running.url}/api/download", params={"path": name}), reactor)
            assert response.code == 404, await response.content()
            body = await response.content()
            assert b'"NOT_FOUND"' in body
            code, _ = await _within(http.json("GET", f"{running.url}/api/metadata", expect=None,
                                              params={"path": name}), reactor)
            assert code == 404
        response = await _within(http.post(
            f"{running.url}/api/batch/download", json={"paths": ["pipe", "plain.txt"]}), reactor)
        assert response.code == 200
        # the index thread is free: a metadata request and an upload still answer
        _, meta = await _within(http.json("GET", f"{running.url}/api/metadata",
                                          params={"path": "plain.txt"}), reactor)
        assert meta["size"] == 5
        await _within(http.json("POST", f"{running.url}/api/upload", params={"path": "new.txt"},
                                data=b"new"), reactor)
        # created while running: the root watcher journals the plain file, not the FIFO
        os.mkfifo(str(root / "late-pipe"))
        (root / "late.txt").write_bytes(b"late")
        await running.service.operations.refresh(None)
        _, listing = await http.json("GET", f"{running.url}/api/list")
        assert sorted(entry["path"] for entry in listing) == ["late.txt", "new.txt", "plain.txt"]
    finally:
        for name in (specials[0], str(root / "late-pipe")):
            _release_fifo(name)
        await running.stop()
