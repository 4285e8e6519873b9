"""Building a new file from a base file and a delta plan (:mod:`quantum_sync.blocks`).

Blocking: run it in a thread. Reused ranges are copied from the base with
``os.copy_file_range`` (a reflink where the file system can, else an in-kernel copy;
plain reads and writes where the call is missing or refused), sent ranges come from a
stream, and the SHA-256 of the result is taken from the bytes as written, the reused
ones read back from the new file, so it proves what the file holds. Memory stays at
one piece of :data:`PIECE` bytes whatever the size.
"""

import errno
import hashlib
import os

from quantum_sync.blocks import Reuse

PIECE = 1024 * 1024
#: Errors of ``copy_file_range`` after which plain reads and writes do the copy.
_NO_COPY_RANGE = (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EBADF, errno.EPERM)


def assemble(plan, base_fd: int, sent, out_fd: int) -> tuple:
    """Write the content ``plan`` describes into ``out_fd`` (an empty file open for
    reading and writing) from ``base_fd`` and ``sent`` (anything with ``read(n)``
    giving the sent bytes in order). Returns ``(sha256 hex, size)``; ValueError when
    the base is shorter than the plan reads or ``sent`` ends early or holds more."""
    digest, position = hashlib.sha256(), 0
    base_size = os.fstat(base_fd).st_size
    copy_range = getattr(os, "copy_file_range", None)
    for step in plan:
        if isinstance(step, Reuse):
            if step.base_offset + step.length > base_size:
                raise ValueError("the plan reads past the end of the base")
            copy_range = _copy(base_fd, step.base_offset, out_fd, position, step.length, copy_range)
            _hash_back(out_fd, position, step.length, digest)
        else:
            left = step.length
            while left:
                piece = sent.read(min(left, PIECE))
                if not piece:
                    raise ValueError("fewer bytes were sent than the plan needs")
                digest.update(piece)
                _write_all(out_fd, piece, position + step.length - left)
                left -= len(piece)
        position += step.length
    if sent.read(1):
        raise ValueError("more bytes were sent than the plan needs")
    return digest.hexdigest(), position


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
