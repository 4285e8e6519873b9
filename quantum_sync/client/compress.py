"""Compressed transfers (``Content-Encoding: zstd``) for slow links.

:func:`sample_pays` reads the start of a file and says whether compressing it is worth
it (:func:`quantum_sync.compression.pays`); :class:`ZstdFileBody` is a request body that
reads and compresses a file a piece at a time in a thread, so the reactor only writes;
:func:`inflate_file` turns a compressed download, staged as it came, into the file.
"""

import hashlib
import os
import tempfile

from twisted.internet import defer, task
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

from quantum_sync.compression import PIECE, SAMPLE, CompressedPieces, Inflater, pays
from quantum_sync.diskio import open_regular
from quantum_sync.errors import SyncError

def sample_pays(abspath: str) -> bool:
    """Whether the file at ``abspath`` compresses well enough to send it compressed
    (blocking: run it in a thread); False when it cannot be read."""
    try:
        fd, _ = open_regular(abspath, follow_symlinks=False)
    except OSError:
        return False
    with open(fd, "rb") as f:
        return pays(f.read(SAMPLE))


@implementer(IBodyProducer)
class ZstdFileBody(CompressedPieces):
    """The zstd stream of an open file (read from where it is), sent chunked; compressed
    in ``threads`` (a :class:`~quantum_sync.threads.ThreadPoolService`)."""

    length = UNKNOWN_LENGTH

    def startProducing(self, consumer):
        return defer.ensureDeferred(self._run(consumer)).addErrback(_never_once_stopped)

    async def _run(self, consumer):
        while True:
            got = await self.next_piece()
            if got is None:
                raise task.TaskStopped()
            piece, done = got
            if piece:
                consumer.write(piece)
            if done:
                if not await self.unpaused():  # done once the connection resumed the body
                    raise task.TaskStopped()
                return


def _never_once_stopped(failure):
    """IBodyProducer: once stopProducing was called, the Deferred of startProducing must
    never fire (Twisted logs an unhandled error for one that fails on a lost connection)."""
    failure.trap(task.TaskStopped)
    return defer.Deferred()


def inflate_file(compressed: str, staging_dir: str, sha256: str, limit=None):
    """Inflate the zstd file ``compressed`` (removed afterwards) into a new file of
    ``staging_dir``, fsynced (blocking: a thread); its name when its content hashes to
    ``sha256`` and is at most ``limit`` bytes, else None (nothing left)."""
    fd, staged = tempfile.mkstemp(dir=staging_dir, prefix="dl-")
    digest = hashlib.sha256()

    def sink(piece):
        digest.update(piece)
        view = memoryview(piece)
        while view:
            view = view[os.write(fd, view):]

    try:
        inflater = Inflater(sink, limit)
        with open(compressed, "rb") as source:
            while data := source.read(PIECE):
                inflater.feed(data)
        good = digest.hexdigest() == sha256
        if good:
            os.fsync(fd)
    except SyncError:
        good = False
    finally:
        os.close(fd)
        os.unlink(compressed)
    if not good:
        os.unlink(staged)
        return None
    return staged
