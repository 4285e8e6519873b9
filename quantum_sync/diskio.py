"""Blocking disk helpers shared by the server store and the client folder.

Call them from a thread (``deferToThread``), never on the reactor.
"""

import hashlib
import os

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
