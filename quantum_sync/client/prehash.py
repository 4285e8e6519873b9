"""SHA-256 of large files while they are being written.

A large file is usually written front to back. Hashing it only once it is finished puts
a whole read and hash between the last write and the upload. :class:`GrowingHashes`
follows such a file instead: the watcher reports each time it grows (from watchdog's
thread), and a worker thread hashes the bytes appended since the last time. When the
engine needs the file's hash, only the tail is left to read (:meth:`GrowingHashes.take`).

The result is a claim the server checks, never trusted blindly: a rewrite in place that
the hashed prefix missed gives a digest that does not match what is uploaded, the server
answers 422 HASH_MISMATCH and changes nothing, and the next attempt hashes the whole file
(``take`` forgets what it handed out). A file replaced (another inode) or shortened is
hashed from the start. A file written without growing since its last bytes were hashed
(its mtime moved, its size did not: a rewrite in place) is too: its digest, that of the
version before, would say it is unchanged, and then nothing is uploaded for the server
to check (a followed file the engine found synced without taking its hash stays here).
"""

import hashlib
import os
import stat
import threading
from collections import OrderedDict

from quantum_sync.diskio import CHUNK

#: Files smaller than this are hashed when finished, as before (it takes milliseconds).
MIN_SIZE = 8 << 20
#: Growing files followed at once; the oldest is forgotten beyond this.
MAX_FILES = 16
#: Opens that never wait (a FIFO put in a file's place) and follow no symlink; fstat checks the kind.
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class _Partial:
    """The digest of a file's first ``offset`` bytes (inode ``ino``), the last of them
    read when its mtime was ``mtime_ns``. Only bytes added move ``mtime_ns``: a write
    that moves the mtime without growing the file makes ``take`` refuse the digest
    (the worker leaves it be: what it sees may be an append half done)."""

    def __init__(self, ino: int):
        self.ino = ino
        self.offset = 0
        self.mtime_ns = None
        self.digest = hashlib.sha256()
        self.lock = threading.Lock()  # held while bytes are added

    def extend(self, fd: int, st) -> bool:
        """Hash what was appended up to ``st.st_size``; False when the prefix is no longer valid."""
        if st.st_ino != self.ino or st.st_size < self.offset:
            return False
        if st.st_size > self.offset:
            self.mtime_ns = st.st_mtime_ns
        while self.offset < st.st_size:
            chunk = os.pread(fd, min(CHUNK, st.st_size - self.offset), self.offset)
            if not chunk:
                break
            self.digest.update(chunk)
            self.offset += len(chunk)
        return True


class GrowingHashes:
    """Hashes of the growing files of ``folder`` (by relative path), kept up to date by a
    worker thread (thread-safe)."""

    def __init__(self, folder: str):
        self._folder = folder
        self._lock = threading.Lock()
        self._partials = OrderedDict()  # relative path -> _Partial
        self._pending = OrderedDict()  # relative paths that grew, in order
        self._busy = False  # the worker is hashing one of them
        self._wake = threading.Event()
        self._thread = None
        self._stopped = False

    def grew(self, path: str, size: int) -> None:
        """``path`` is now ``size`` bytes (called from any thread; returns at once)."""
        if size < MIN_SIZE or self._stopped:
            return
        with self._lock:
            self._pending[path] = True
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="prehash", daemon=True)
                self._thread.start()
        self._wake.set()

    def take(self, path: str, size: int):
        """(Blocking) the SHA-256 hex of ``path`` as ``size`` bytes, finishing the tail, or
        None when it was not followed or its prefix no longer holds. Forgets the path."""
        with self._lock:
            partial = self._partials.pop(path, None)
            self._pending.pop(path, None)
        if partial is None:
            return None
        with partial.lock:
            try:
                fd = os.open(os.path.join(self._folder, path), _READ)
            except OSError:
                return None
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode) or st.st_size != size or not partial.extend(fd, st) \
                        or partial.offset != size or partial.mtime_ns != st.st_mtime_ns:
                    return None  # (the last: written in place since its last bytes were read)
            finally:
                os.close(fd)
            return partial.digest.hexdigest()

    def idle(self) -> bool:
        """True when no growth reported so far is waiting or being hashed."""
        with self._lock:
            return not self._pending and not self._busy

    def hashed(self, path: str) -> int:
        """How many bytes of ``path`` are hashed (0 when it is not followed)."""
        with self._lock:
            partial = self._partials.get(path)
        return partial.offset if partial is not None else 0

    def stop(self) -> None:
        self._stopped = True
        self._wake.set()

    def _run(self):
        while not self._stopped:
            self._wake.wait()
            self._wake.clear()
            while not self._stopped:
                with self._lock:
                    if not self._pending:
                        break
                    path, _ = self._pending.popitem(last=False)
                    partial = self._partials.get(path)
                    self._busy = True
                try:
                    self._follow(path, partial)
                finally:
                    with self._lock:
                        self._busy = False

    def _follow(self, path, partial):
        try:
            fd = os.open(os.path.join(self._folder, path), _READ)
        except OSError:
            with self._lock:
                self._partials.pop(path, None)
            return
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                with self._lock:
                    self._partials.pop(path, None)
                return
            if partial is None or partial.ino != st.st_ino:
                partial = _Partial(st.st_ino)
                with self._lock:
                    self._partials[path] = partial
                    while len(self._partials) > MAX_FILES:
                        self._partials.popitem(last=False)
            with partial.lock:
                if not partial.extend(fd, st):
                    with self._lock:
                        if self._partials.get(path) is partial:
                            del self._partials[path]
        except OSError:
            pass
        finally:
            os.close(fd)
