"""Compressed uploads (``Content-Encoding: zstd``) for slow links.

:func:`sample_pays` reads the start of a file and says whether compressing it is worth
it (:func:`quantum_sync.compression.pays`); :class:`ZstdFileBody` is a request body that
reads and compresses a file a piece at a time in a thread, so the reactor only writes.
"""

from twisted.internet import defer, task
from twisted.internet.threads import deferToThread
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer
import zstandard

from quantum_sync.compression import LEVEL, SAMPLE, pays
from quantum_sync.diskio import open_regular

#: Bytes read and compressed at a time.
PIECE = 1024 * 1024


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
class ZstdFileBody:
    """The zstd stream of an open file (read from where it is), sent chunked."""

    length = UNKNOWN_LENGTH

    def __init__(self, file):
        self._file = file
        self._compressor = zstandard.ZstdCompressor(level=LEVEL).compressobj()
        self._paused = None  # a Deferred while paused
        self._stopped = False

    def startProducing(self, consumer):
        return defer.ensureDeferred(self._run(consumer))

    async def _run(self, consumer):
        while True:
            if self._paused is not None:
                await self._paused
            if self._stopped:
                raise task.TaskStopped()
            piece, done = await deferToThread(self._next)
            if self._stopped:
                raise task.TaskStopped()
            if piece:
                consumer.write(piece)
            if done:
                return

    def _next(self) -> tuple:
        data = self._file.read(PIECE)
        if not data:
            return self._compressor.flush(), True
        return self._compressor.compress(data), False

    def pauseProducing(self):
        if self._paused is None:
            self._paused = defer.Deferred()

    def resumeProducing(self):
        paused, self._paused = self._paused, None
        if paused is not None:
            paused.callback(None)

    def stopProducing(self):
        self._stopped = True
        self.resumeProducing()
