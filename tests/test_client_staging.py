"""Downloads into the staging file: hashed and written by two threads, paused when they fall behind."""

import errno
import hashlib
import os

import pytest

import pytest_twisted
from twisted.internet import defer
from twisted.internet.task import deferLater

from quantum_sync.client import staging


def test_what_is_put_is_written_and_hashed(tmp_path, reactor):
    fd = os.open(tmp_path / "staged", os.O_WRONLY | os.O_CREAT)
    sink = staging.StagingSink(reactor, fd)
    chunks = [os.urandom(n) for n in (1, 1000, 65536, 3)] * 50
    for chunk in chunks:
        sink.put(chunk)
    digest = sink.finish()
    data = b"".join(chunks)
    assert digest == hashlib.sha256(data).hexdigest()
    assert (tmp_path / "staged").read_bytes() == data


def test_a_write_error_is_reported_by_finish(tmp_path, reactor):
    fd = os.open(tmp_path / "staged", os.O_RDONLY | os.O_CREAT)  # every write fails
    sink = staging.StagingSink(reactor, fd)
    sink.put(b"x" * 10)
    try:
        sink.finish()
    except OSError:
        pass
    else:
        raise AssertionError("a failed write went unreported")


def test_a_writeback_error_is_reported_by_finish(tmp_path, reactor):
    """The background sync saw the error, so the final fsync would succeed: the download
    fails all the same and is never installed."""
    def lost_writeback(fd):
        raise OSError(errno.EIO, "lost")

    fd = os.open(tmp_path / "staged", os.O_WRONLY | os.O_CREAT)
    sink = staging.StagingSink(reactor, fd, datasync=lost_writeback)
    for _ in range(9):
        sink.put(b"x" * (1024 * 1024))
    with pytest.raises(OSError) as raised:
        sink.finish()
    assert raised.value.errno == errno.EIO


@pytest_twisted.ensureDeferred
async def test_the_source_is_paused_when_the_threads_fall_behind(tmp_path, reactor, monkeypatch):
    monkeypatch.setattr(staging, "BACKLOG", 1024)
    events = []
    resumed = defer.Deferred()
    fd = os.open(tmp_path / "staged", os.O_WRONLY | os.O_CREAT)
    sink = staging.StagingSink(reactor, fd)

    def resume():
        events.append("resume")
        if not resumed.called:
            resumed.callback(None)

    sink.flow(lambda: events.append("pause"), resume)
    sink.put(b"y" * 4096)  # over the backlog at once: paused
    assert events == ["pause"]
    sink.put(b"y" * 4096)  # already paused: not paused twice
    assert events == ["pause"]
    await defer.gatherResults([resumed]).addTimeout(10, reactor)
    # finished: every write is done, so any other pause or resume would have come by now
    assert (await deferLater(reactor, 0, sink.finish)) == hashlib.sha256(b"y" * 8192).hexdigest()
    assert events == ["pause", "resume"]
