"""End to end: a large file is hashed while it is written, and a wrong guess costs a retry, never bytes."""

import hashlib
import os

import pytest_twisted
from twisted.internet.task import deferLater

from quantum_sync.client import localfs, prehash
from clients import read
from support import wait_for

BLOCK = 1 << 20


def full_hashes(monkeypatch):
    """The paths localfs hashes from the start (instead of finishing a growing hash)."""
    seen = []
    real = localfs.sha256_file

    def recording(path):
        seen.append(os.path.basename(path))
        return real(path)

    monkeypatch.setattr(localfs, "sha256_file", recording)
    return seen


async def following_client(servers, clients, monkeypatch):
    """Files from 2 MiB are followed while written; (the full hashes seen, client a, 12 blocks of 1 MiB)."""
    monkeypatch.setattr(prehash, "MIN_SIZE", 2 * BLOCK)
    hashed = full_hashes(monkeypatch)
    a = await clients.start(servers[0], "a")
    return hashed, a, [os.urandom(BLOCK) for _ in range(12)]


async def write_slowly(reactor, path, blocks, before_close=None):
    with open(path, "wb") as f:
        for block in blocks:
            f.write(block)
            f.flush()
            await deferLater(reactor, 0.01, lambda: None)  # the writer's pace
        if before_close is not None:
            before_close(f)


@pytest_twisted.ensureDeferred
async def test_a_file_written_front_to_back_is_not_read_twice(reactor, servers, clients, monkeypatch):
    hashed, a, blocks = await following_client(servers, clients, monkeypatch)
    await write_slowly(reactor, os.path.join(a.config.folder, "big.bin"), blocks)
    data = b"".join(blocks)
    await wait_for(reactor, lambda: read(servers[0].root, "big.bin") == data, what="the upload")
    assert "big.bin" not in hashed


@pytest_twisted.ensureDeferred
async def test_a_rewrite_the_growing_hash_missed_is_caught_and_sent_right(reactor, servers, clients, monkeypatch):
    hashed, a, blocks = await following_client(servers, clients, monkeypatch)

    def rewrite_the_start(f):
        f.seek(0)
        f.write(b"rewritten in place")  # same size: only the content tells

    await write_slowly(reactor, os.path.join(a.config.folder, "big.bin"), blocks, rewrite_the_start)
    data = b"rewritten in place" + b"".join(blocks)[len(b"rewritten in place"):]
    await wait_for(reactor, lambda: read(servers[0].root, "big.bin") == data, what="the right upload")
    assert "big.bin" in hashed  # the server refused the guess (422); the retry hashed it all
    assert hashlib.sha256(read(servers[0].root, "big.bin")).hexdigest() == hashlib.sha256(data).hexdigest()


@pytest_twisted.ensureDeferred
async def test_a_change_in_place_after_a_write_found_synced_is_sent(reactor, servers, clients, monkeypatch):
    """A followed file that the engine found synced without taking its hash (written back
    as it was, its mtime kept) stays hashed whole in the client; a later change in place,
    of the same size, must not get that digest, the synced version's (it would be taken
    for no change, and never sent)."""
    _, a, blocks = await following_client(servers, clients, monkeypatch)
    path = os.path.join(a.config.folder, "big.bin")
    data = b"".join(blocks)
    await write_slowly(reactor, path, blocks)
    await wait_for(reactor, lambda: read(servers[0].root, "big.bin") == data, what="the upload")
    await wait_for(reactor, lambda: localfs.unchanged(localfs.lstat(path), a.engine.state.base("big.bin")),
                   what="the upload recorded")
    synced = os.stat(path)
    with open(path, "r+b") as f:
        f.write(blocks[0])  # the same bytes, the mtime put back: the synced version's stat
        f.flush()
        os.utime(f.fileno(), ns=(synced.st_atime_ns, synced.st_mtime_ns))
    await wait_for(reactor, lambda: a.engine.growing.hashed("big.bin") == len(data), what="the write followed")
    changed = os.urandom(BLOCK)
    with open(path, "r+b") as f:
        f.seek(5 * BLOCK)
        f.write(changed)
    data = data[: 5 * BLOCK] + changed + data[6 * BLOCK :]
    await wait_for(reactor, lambda: read(servers[0].root, "big.bin") == data, what="the change in place")
