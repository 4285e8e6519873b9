"""The bodies of the small uploads stored last, answered to the downloads that follow."""

import collections
import stat


class RecentBodies:
    """The bodies of the small uploads stored last (at most ``limit`` bytes together), so
    the downloads that follow each of them (every other client fetches a new file) need
    no thread, file read or index lookup. Used on the reactor only.

    An entry answers only while the name still has the inode, size, mtime and ctime it was
    stored with: a later write, rename or removal by anyone makes it a miss."""

    def __init__(self, limit: int = 8 * 1024 * 1024):
        self.limit = limit
        self._entries = collections.OrderedDict()  # path -> (FileMetadata, key, body)
        self._size = 0

    def add(self, metadata, st_key: tuple, body: bytes) -> None:
        """Remember ``body``, stored as ``metadata`` in a file with ``st_key``
        (``(st_ino, st_size, st_mtime_ns, st_ctime_ns)``: an inode number is reused once
        freed, and a file replaced within one tick of the clock keeps its mtime)."""
        old = self._entries.pop(metadata.path, None)
        if old is not None:
            self._size -= len(old[2])
        self._entries[metadata.path] = (metadata, st_key, body)
        self._size += len(body)
        while self._size > self.limit:
            self._size -= len(self._entries.popitem(last=False)[1][2])

    def get(self, path: str, st) -> tuple | None:
        """``(FileMetadata, body)`` when ``st`` (an lstat of ``path`` now, or None) is
        still the file that was stored, else None."""
        entry = self._entries.get(path)
        if entry is None or st is None or not stat.S_ISREG(st.st_mode):
            return None
        metadata, key, body = entry
        if (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns) != key:
            return None
        return metadata, body
