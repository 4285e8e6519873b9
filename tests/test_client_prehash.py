"""Hashes of growing files: followed while written, finished at take, never trusted when the prefix changed."""

import hashlib
import os
import time

import pytest

from quantum_sync.client import prehash


@pytest.fixture
def hashes(monkeypatch, tmp_path):
    monkeypatch.setattr(prehash, "MIN_SIZE", 1000)
    h = prehash.GrowingHashes(str(tmp_path))
    yield h
    h.stop()


def settle(hashes, timeout=5.0):
    """Wait (bounded) until the worker has hashed every growth reported so far."""
    deadline = time.monotonic() + timeout
    while not hashes.idle():
        assert time.monotonic() < deadline, "the worker never caught up"
        time.sleep(0.005)


def grow(path, hashes, blocks):
    with open(path, "ab") as f:
        for block in blocks:
            f.write(block)
            f.flush()
            hashes.grew(path.name, os.path.getsize(path))
            settle(hashes)


def test_a_file_written_front_to_back_gets_its_hash(tmp_path, hashes):
    path = tmp_path / "big.bin"
    blocks = [os.urandom(5000) for _ in range(5)]
    grow(path, hashes, blocks[:4])
    assert hashes.hashed(path.name) == 20000  # the worker kept up
    with open(path, "ab") as f:
        f.write(blocks[4])  # the tail nobody reported yet
    data = b"".join(blocks)
    assert hashes.take(path.name, len(data)) == hashlib.sha256(data).hexdigest()
    assert hashes.take(path.name, len(data)) is None  # handed out once, then forgotten


def test_small_files_are_not_followed(tmp_path, hashes):
    path = tmp_path / "small.bin"
    grow(path, hashes, [b"x" * 10])
    assert hashes.take(path.name, 10) is None


def test_a_shortened_file_is_not_trusted(tmp_path, hashes):
    path = tmp_path / "big.bin"
    grow(path, hashes, [os.urandom(5000)])
    with open(path, "r+b") as f:
        f.truncate(2000)
    assert hashes.take(path.name, 2000) is None


def test_a_replaced_file_is_hashed_from_the_start(tmp_path, hashes):
    path = tmp_path / "big.bin"
    grow(path, hashes, [os.urandom(5000)])
    fresh = os.urandom(6000)
    (tmp_path / "new.bin").write_bytes(fresh)
    os.replace(tmp_path / "new.bin", path)
    hashes.grew(path.name, len(fresh))
    settle(hashes)
    assert hashes.take(path.name, len(fresh)) == hashlib.sha256(fresh).hexdigest()


def test_a_size_other_than_the_callers_gives_nothing(tmp_path, hashes):
    path = tmp_path / "big.bin"
    grow(path, hashes, [os.urandom(5000)])
    assert hashes.take(path.name, 4000) is None


def test_an_in_place_rewrite_gives_a_digest_that_does_not_match(tmp_path, hashes):
    """Documented limit: the server's X-Content-SHA256 check turns this into a 422, and the
    next attempt hashes the whole file."""
    path = tmp_path / "big.bin"
    grow(path, hashes, [os.urandom(5000)])
    with open(path, "r+b") as f:
        f.write(b"changed")
        f.write(os.urandom(1000))  # (grown too: the stat cannot tell the start changed)
    real = hashlib.sha256(path.read_bytes()).hexdigest()
    assert hashes.take(path.name, 6000) != real


def test_a_whole_file_hashed_then_written_in_place_is_not_trusted(tmp_path, hashes):
    """Its digest would be the version before's, the synced one's: the engine would take
    the change for none and upload nothing (so the server never checks the claim)."""
    path = tmp_path / "big.bin"
    grow(path, hashes, [os.urandom(5000)])
    before = os.stat(path).st_mtime_ns
    with open(path, "r+b") as f:
        f.seek(2000)
        f.write(b"changed in place")
    if os.stat(path).st_mtime_ns == before:  # a coarse clock: the next tick, as a later write gets
        os.utime(path, ns=(before, before + 1))
    hashes.grew(path.name, 5000)  # (the watcher reports the write, of the same size)
    settle(hashes)
    assert hashes.take(path.name, 5000) is None
