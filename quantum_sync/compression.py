"""zstd for transfers (``Content-Encoding: zstd``): bounded inflating, and whether it pays.

Both sides: the server inflates compressed upload bodies (:class:`Inflater`: never more
than a limit, one piece of :data:`PIECE` bytes in memory at a time, however small the
compressed input); a client compresses a file it uploads only where a sample of it
shrinks enough (:func:`pays`), and only with a server that is not on its machine unless
told otherwise (:func:`~quantum_sync.delta.wanted`'s modes).
"""

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
