"""zstd for transfers (``Content-Encoding: zstd``): bounded inflating, and whether it pays.

Both sides: the server inflates compressed upload bodies (:class:`Inflater`: never more
than a limit, one piece of :data:`PIECE` bytes in memory at a time, however small the
compressed input); a client compresses a file it uploads only where a sample of it
shrinks enough (:func:`pays`), and only with a server that is not on its machine unless
told otherwise (:func:`~quantum_sync.delta.wanted`'s modes). :class:`CompressedPieces`
is the compressing side both directions share: a file's zstd stream made a piece at a time
in a thread pool, paused and resumed by the transport it is written to.
"""

from twisted.internet.defer import Deferred
import zstandard

from quantum_sync.errors import SyncError

ENCODING = b"zstd"
#: Bytes inflated at a time (what an inflater holds).
PIECE = 1024 * 1024
#: Fast: on a link slow enough for compression to pay, this keeps up with it.
LEVEL = 1
#: A sample of this many bytes is compressed to decide...
SAMPLE = 1024 * 1024
#: ...and compression is used when it shrinks to at most this share.
WORTH = 0.8


def pays(sample: bytes) -> bool:
    """Whether compressing a content that starts with ``sample`` is worth it."""
    if not sample:
        return False
    return len(zstandard.ZstdCompressor(level=LEVEL).compress(sample)) <= WORTH * len(sample)


class TooLarge(Exception):
    pass


class Inflater:
    """Inflates a zstd stream fed in pieces (:meth:`feed`), handing each inflated piece to
    ``sink(piece)``; raises SyncError TOO_LARGE past ``limit`` inflated bytes (None: no
    limit), INVALID_REQUEST for a stream that is not zstd."""

    def __init__(self, sink, limit=None):
        self.size = 0
        self._sink, self._limit = sink, limit
        self._writer = zstandard.ZstdDecompressor().stream_writer(self, write_size=PIECE)

    def write(self, piece) -> int:  # the stream writer's output
        self.size += len(piece)
        if self._limit is not None and self.size > self._limit:
            raise TooLarge()
        self._sink(piece)
        return len(piece)

    def feed(self, data) -> None:
        try:
            self._writer.write(data)
        except TooLarge:
            raise SyncError("TOO_LARGE", f"the body inflates to more than the limit of {self._limit} bytes") from None
        except zstandard.ZstdError as error:
            raise SyncError("INVALID_REQUEST", f"the body is not a valid zstd stream: {error}") from None


class CompressedPieces:
    """The zstd stream of an open ``file`` (read from where it is), compressed a piece of
    :data:`PIECE` bytes at a time in ``threads`` (a
    :class:`~quantum_sync.threads.ThreadPoolService`), so the reactor only writes. The
    push-producer methods pause and resume it; subclasses write what
    :meth:`next_piece` gives where their body goes."""

    def __init__(self, file, threads):
        self._file = file
        self._threads = threads
        self._compressor = zstandard.ZstdCompressor(level=LEVEL).compressobj()
        self._paused = None  # a Deferred while paused
        self._stopped = False

    async def next_piece(self):
        """``(compressed bytes, whether the stream is complete)`` once not paused; None
        once stopped."""
        if self._paused is not None:
            await self._paused
        if self._stopped:
            return None
        piece = await self._threads.defer(self._next)
        return None if self._stopped else piece

    def _next(self) -> tuple:
        data = self._file.read(PIECE)
        if not data:
            return self._compressor.flush(), True
        return self._compressor.compress(data), False

    async def unpaused(self) -> bool:
        """Wait while paused; False once stopped. A body done while its consumer holds it
        paused would leave that consumer waiting to resume it (and resuming the next
        producer registered with it instead)."""
        if self._paused is not None:
            await self._paused
        return not self._stopped

    def pauseProducing(self):
        if self._paused is None:
            self._paused = Deferred()

    def resumeProducing(self):
        paused, self._paused = self._paused, None
        if paused is not None:
            paused.callback(None)

    def stopProducing(self):
        self._stopped = True
        self.resumeProducing()
