"""Blocking disk helpers shared by the server store and the client folder.

Call them from a thread (``deferToThread``), never on the reactor.
"""

import hashlib
import os
import threading

#: Read size for hashing: large enough to keep SHA-256 busy, small enough for memory.
CHUNK = 1024 * 1024


def sha256_file(path: str) -> str:
    """SHA-256 hex of the file at ``path``."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def fsync_directory(path: str) -> None:
    """Make a rename or unlink inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Writeback:
    """Starts writeback of a growing file every :data:`EVERY` bytes from a thread of its
    own (``fdatasync``), so that the final fsync of a large file has little left to do and
    the writer never waits for the disk meanwhile."""

    EVERY = 64 * 1024 * 1024

    def __init__(self, fd: int):
        self._fd = fd
        self._unflushed = 0
        self._wake = threading.Event()
        self._stopping = False
        self._thread = None

    def wrote(self, size: int) -> None:
        """``size`` more bytes were written (called by the one writing thread)."""
        self._unflushed += size
        if self._unflushed < self.EVERY:
            return
        self._unflushed = 0
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="writeback", daemon=True)
            self._thread.start()
        self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._stopping:
                return
            try:
                os.fdatasync(self._fd)
            except OSError:
                pass  # the final fsync reports problems

    def stop(self) -> None:
        """Wait for the writeback thread (before the descriptor may be closed)."""
        if self._thread is not None:
            self._stopping = True
            self._wake.set()
            self._thread.join()
