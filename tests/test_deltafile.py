"""Building a file from a base file and a delta plan, on real files: the result and its
hash are the new content's for any base and edit, with ``copy_file_range`` and without;
a short base or a wrong amount of sent bytes is refused."""

import contextlib
import hashlib
import io
import os
import random
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quantum_sync import blocklists, deltafile
from quantum_sync.blocks import Chunker, Reuse, Send, literals, plan_delta

SMALL = Chunker(min_size=64, avg_size=320, max_size=1280)


def build(tmp_path, base: bytes, plan, sent: bytes, name="out"):
    base_path, out_path = tmp_path / f"{name}.base", tmp_path / name
    base_path.write_bytes(base)
    base_fd = os.open(base_path, os.O_RDONLY)
    out_fd = os.open(out_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        digest, size = deltafile.assemble(plan, base_fd, io.BytesIO(sent), out_fd)
    finally:
        os.close(base_fd)
        os.close(out_fd)
    return digest, size, out_path.read_bytes()


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32), st.integers(0, 20000), st.integers(0, 20000), st.integers(1, 500),
       st.booleans())
def test_the_file_built_is_the_new_content(tmp_path_factory, seed, size, where, length, kernel_copy):
    rng = random.Random(seed)
    base = rng.randbytes(size)
    where %= size + 1
    new = base[:where] + rng.randbytes(length) + base[where + length // 2:]
    plan = plan_delta(SMALL.blocks(base), SMALL.blocks(new))
    tmp_path = tmp_path_factory.mktemp("d")
    refusal = mock.patch.object(os, "copy_file_range", _refused, create=True)
    with refusal if not kernel_copy else contextlib.nullcontext():
        digest, built_size, built = build(tmp_path, base, plan, literals(plan, new))
    assert built == new and built_size == len(new)
    assert digest == hashlib.sha256(new).hexdigest()


def _refused(*args):
    raise OSError(18, "Invalid cross-device link")


def test_a_large_base_is_copied_in_pieces(tmp_path):
    base = random.Random(1).randbytes(3 * deltafile.PIECE + 12345)
    new = base[:100] + b"inserted" + base[100:]
    plan = plan_delta(Chunker().blocks(base), Chunker().blocks(new))
    assert any(isinstance(step, Reuse) and step.length > deltafile.PIECE for step in plan)
    digest, size, built = build(tmp_path, base, plan, literals(plan, new))
    assert built == new and digest == hashlib.sha256(new).hexdigest()


def test_what_does_not_fit_the_plan_is_refused(tmp_path):
    base = b"0123456789"
    with pytest.raises(ValueError, match="past the end"):
        build(tmp_path, base, (Reuse(5, 6),), b"")
    with pytest.raises(ValueError, match="fewer"):
        build(tmp_path, base, (Reuse(0, 4), Send(4, 3)), b"ab")
    with pytest.raises(ValueError, match="more"):
        build(tmp_path, base, (Send(0, 2),), b"abc")
    assert build(tmp_path, base, (Reuse(2, 3), Send(3, 2), Reuse(0, 1)), b"xy")[2] == b"234xy0"


def test_a_failed_background_writeback_fails_the_build(tmp_path):
    """Linux reports a writeback error once: the final fsync would then succeed, so the
    error of the background sync must fail the build itself."""
    base = random.Random(2).randbytes(3 * deltafile.COPY_PIECE)
    plan = (Reuse(0, len(base)),)
    base_path, out_path = tmp_path / "base", tmp_path / "out"
    base_path.write_bytes(base)
    base_fd = os.open(base_path, os.O_RDONLY)
    out_fd = os.open(out_path, os.O_RDWR | os.O_CREAT, 0o600)

    def failing(fd):
        raise OSError(5, "Input/output error")

    try:
        with pytest.raises(OSError, match="Input/output"):
            deltafile.assemble(plan, base_fd, io.BytesIO(), out_fd, datasync=failing)
    finally:
        os.close(base_fd)
        os.close(out_fd)


def test_the_hash_thread_hashes_bytes_and_ranges_in_order(tmp_path):
    data = random.Random(3).randbytes(5 * deltafile.PIECE + 7)
    path = tmp_path / "f"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        hasher = deltafile.HashThread(fd)
        hasher.bytes(data[:100])
        hasher.range(100, 3 * deltafile.PIECE)
        hasher.bytes(data[100 + 3 * deltafile.PIECE:])
        assert hasher.finish() == hashlib.sha256(data).hexdigest()
        short = deltafile.HashThread(fd)
        short.range(len(data) - 10, 20)  # past the end: the file is shorter than was copied
        with pytest.raises(ValueError, match="shorter"):
            short.finish()
    finally:
        os.close(fd)


def test_one_read_gives_the_hash_and_keeps_the_list(tmp_path):
    data = random.Random(4).randbytes(3 * blocklists.READ_SIZE + 99)
    path = tmp_path / "f"
    path.write_bytes(data)
    lists = blocklists.BlockLists(str(tmp_path / "lists"))
    fd = os.open(path, os.O_RDONLY)
    try:
        sha256 = lists.hash_and_keep(fd)
        assert lists.make(fd, "0" * 64) is None  # another content's hash: nothing under it
    finally:
        os.close(fd)
    assert sha256 == hashlib.sha256(data).hexdigest()
    assert lists.blocks(sha256) == Chunker().blocks(data)
    assert sorted(os.listdir(tmp_path / "lists")) == [sha256]
    opened = lists.open(sha256)  # read from its file, a block at a time
    try:
        assert tuple(opened) == Chunker().blocks(data) and opened[-1] == Chunker().blocks(data)[-1]
    finally:
        opened.close()
    assert lists.open("0" * 64) is None
    with open(tmp_path / "lists" / sha256, "r+b") as f:
        f.write(bytes(4))  # a block of no bytes
    with pytest.raises(ValueError, match="a block of 0 bytes"):
        lists.open(sha256)
    with open(tmp_path / "lists" / sha256, "ab") as f:
        f.write(b"x")  # not whole entries: as if none were kept (it is made again)
    assert lists.open(sha256) is None and lists.read(sha256) is None
