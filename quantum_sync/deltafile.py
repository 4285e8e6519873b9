"""Building a new file from a base file and a delta plan (:mod:`quantum_sync.blocks`).

Blocking: run it in a thread. Reused ranges are copied from the base with
``os.copy_file_range`` (a reflink where the file system can, else an in-kernel copy;
plain reads and writes where the call is missing or refused), sent ranges come from a
stream, and the SHA-256 of the result is taken from the bytes as written, the reused
ones read back from the new file, so it proves what the file holds.

One pass, three things at once: the calling thread copies and writes, a thread of its
own hashes each piece as soon as it is in the new file (hashlib lets go of the GIL: the
copy and the hash run on two cores), and :class:`~quantum_sync.diskio.Writeback` starts
the disk writes every few MiB, so the caller's final fsync has little left. Memory stays
at a few pieces of :data:`PIECE` bytes whatever the size.
"""

import errno
import hashlib
import os
import queue
import threading

from quantum_sync.blocks import Reuse
from quantum_sync.diskio import Writeback

PIECE = 1024 * 1024
#: Bytes copied at a time from the base: each copy is hashed while the next is made.
COPY_PIECE = 8 * PIECE
#: Pieces waiting for the hashing thread at most (the writer waits beyond).
_WAITING = 8
#: Errors of ``copy_file_range`` after which plain reads and writes do the copy.
_NO_COPY_RANGE = (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EBADF, errno.EPERM)


def assemble(plan, base_fd: int, sent, out_fd: int, datasync=os.fdatasync) -> tuple:
    """Write the content ``plan`` describes into ``out_fd`` (an empty file open for
    reading and writing) from ``base_fd`` and ``sent`` (anything with ``read(n)``
    giving the sent bytes in order). Returns ``(sha256 hex, size)``; ValueError when
    the base is shorter than the plan reads or ``sent`` ends early or holds more; the
    OSError of a background writeback (``datasync``) that failed."""
    hasher, flusher = HashThread(out_fd), Writeback(out_fd, datasync)
    try:
        size = _write(plan, base_fd, sent, out_fd, hasher, flusher)
    except BaseException:
        hasher.stop()
        flusher.stop()
        raise
    digest, error = hasher.finish(), flusher.stop()
    if error is not None:
        raise error
    return digest, size


def _write(plan, base_fd, sent, out_fd, hasher, flusher) -> int:
    position, base_size = 0, os.fstat(base_fd).st_size
    copy_range = getattr(os, "copy_file_range", None)
    for step in plan:
        if isinstance(step, Reuse):
            if step.base_offset + step.length > base_size:
                raise ValueError("the plan reads past the end of the base")
            done = 0
            while done < step.length:
                length = min(COPY_PIECE, step.length - done)
                copy_range = _copy(base_fd, step.base_offset + done, out_fd, position + done, length, copy_range)
                hasher.range(position + done, length)
                flusher.wrote(length)
                done += length
        else:
            left = step.length
            while left:
                piece = sent.read(min(left, PIECE))
                if not piece:
                    raise ValueError("fewer bytes were sent than the plan needs")
                _write_all(out_fd, piece, position + step.length - left)
                hasher.bytes(piece)
                flusher.wrote(len(piece))
                left -= len(piece)
        position += step.length
    if sent.read(1):
        raise ValueError("more bytes were sent than the plan needs")
    return position


class HashThread:
    """A SHA-256 taken in order by a thread of its own: of bytes handed over
    (:meth:`bytes`), and of ranges of file ``fd`` read back (:meth:`range`: a file being
    written). The caller goes on while it hashes; at most a few pieces wait."""

    def __init__(self, fd: int = -1):
        self._fd = fd
        self._digest = hashlib.sha256()
        self._queue = queue.Queue(_WAITING)
        self._error = None
        self._thread = threading.Thread(target=self._run, name="assemble-hash", daemon=True)
        self._thread.start()

    def bytes(self, data) -> None:
        self._check()
        self._queue.put(data)

    def range(self, offset: int, length: int) -> None:
        self._check()
        self._queue.put((offset, length))

    def _check(self):
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is not None:
                continue  # (drained until the writer sees the error)
            try:
                if isinstance(item, tuple):
                    _hash_back(self._fd, *item, self._digest)
                else:
                    self._digest.update(item)
            except (OSError, ValueError) as error:
                self._error = error

    def stop(self) -> None:
        """Wait for the thread to hash what was handed over (or to drop it after an error)."""
        self._queue.put(None)
        self._thread.join()

    def finish(self) -> str:
        """The hex digest of all that was handed over."""
        self.stop()
        self._check()
        return self._digest.hexdigest()


def _copy(source: int, offset: int, target: int, at: int, length: int, copy_range):
    """Copy ``length`` bytes; returns ``copy_range`` for the next copy (None once the
    kernel refused it: plain reads and writes from then on)."""
    while length and copy_range is not None:
        try:
            done = copy_range(source, target, length, offset, at)
        except OSError as error:
            if error.errno not in _NO_COPY_RANGE:
                raise
            copy_range = None
            break
        if done == 0:
            raise ValueError("the base ended while it was copied")
        offset, at, length = offset + done, at + done, length - done
    while length:
        piece = os.pread(source, min(length, PIECE), offset)
        if not piece:
            raise ValueError("the base ended while it was copied")
        _write_all(target, piece, at)
        offset, at, length = offset + len(piece), at + len(piece), length - len(piece)
    return copy_range


def _hash_back(fd: int, offset: int, length: int, digest) -> None:
    while length:
        piece = os.pread(fd, min(length, PIECE), offset)
        if not piece:
            raise ValueError("the new file is shorter than what was copied into it")
        digest.update(piece)
        offset, length = offset + len(piece), length - len(piece)


def _write_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written
