"""The folder's own state, in ``<local-path>/.quantum-sync/state.db`` (SQLite).

What survives a restart, a crash or a long time offline:

- ``files``: per path the last version both sides agreed on (hash, size, kind, the
  server's mtime) and the local size/mtime it had then (so an unchanged file is
  recognised without hashing it again);
- ``meta``: the client id, the journal cursor, and which folder the state belongs to
  (device, inode and path: a folder copied with its ``.quantum-sync/`` is noticed, and
  takes a new client id, since two clients sharing one would miss each other's changes);
- ``pending``: local changes seen but not yet sent (the offline queue).

Everything is held in memory and written through to SQLite on one dedicated thread in
small batched transactions, so the reactor never waits on the disk. A folder whose
database did not exist when it was opened :attr:`is_new`: nothing is known to have been
synced, so a reconcile deletes nothing on the server.
"""

import json
import os
import shutil
import sqlite3
import time
import uuid

import attrs
from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from quantum_sync.client.reconcile import Entry
from quantum_sync.paths import STATE_DIR_NAME, is_inside

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY, is_dir INTEGER NOT NULL, hash TEXT NOT NULL, size INTEGER NOT NULL,
    modified REAL NOT NULL, local_size INTEGER NOT NULL, local_mtime_ns INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS pending (path TEXT PRIMARY KEY, source TEXT, queued_at REAL NOT NULL);
"""


@attrs.frozen
class Base:
    """The last agreed version of a path, and the local stat it had when agreed."""

    entry: Entry
    modified: float
    local_size: int
    local_mtime_ns: int


def folder_identity(folder: str) -> str:
    """Device, inode and real path of ``folder``, as stored in the state (JSON)."""
    st = os.stat(folder)
    return json.dumps({"device": st.st_dev, "inode": st.st_ino, "path": os.path.realpath(folder)}, sort_keys=True)


def state_dir(folder: str) -> str:
    return os.path.join(folder, STATE_DIR_NAME)


def tmp_dir(folder: str) -> str:
    """Where downloads are staged; emptied on every start (crash leftovers)."""
    return os.path.join(state_dir(folder), "tmp")


class FolderState:
    """In-memory view of the state database with batched write-behind on one thread."""

    def __init__(self, reactor, folder: str):
        self.folder = folder
        self._reactor = reactor
        self._pool = ThreadPool(1, 1, name="quantum-sync-state")
        self._db = None
        self.is_new = False
        #: The folder this state was made for, when that is not this one (a copy).
        self.made_for = None
        self.bases = {}
        self.meta = {}
        self.pending = {}
        self._dirty_files = {}
        self._dirty_meta = {}
        self._dirty_pending = {}
        self._flush_call = None
        self._write_lock = defer.DeferredLock()

    # -- opening / closing ---------------------------------------------------------------

    async def open(self):
        """Create ``.quantum-sync/`` and its tmp folder, clean crash leftovers, load."""
        self._pool.start()
        await self._run(self._open_sync)
        return self

    def _open_sync(self):
        os.makedirs(state_dir(self.folder), exist_ok=True)
        shutil.rmtree(tmp_dir(self.folder), ignore_errors=True)
        os.makedirs(tmp_dir(self.folder), exist_ok=True)
        path = os.path.join(state_dir(self.folder), "state.db")
        self.is_new = not os.path.exists(path)
        self._db = sqlite3.connect(path, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        self._db.commit()
        for row in self._db.execute("SELECT path, is_dir, hash, size, modified, local_size, local_mtime_ns FROM files"):
            path_, is_dir, digest, size, modified, lsize, lmtime = row
            self.bases[path_] = Base(Entry(digest, size, bool(is_dir)), modified, lsize, lmtime)
        self.meta = dict(self._db.execute("SELECT key, value FROM meta"))
        self._identity = folder_identity(self.folder)
        recorded = self.meta.get("folder")
        if recorded is not None and recorded != self._identity:
            self.made_for = json.loads(recorded).get("path", "?")
        self.pending = {p: s for p, s, _ in self._db.execute("SELECT path, source, queued_at FROM pending")}

    async def close(self):
        """Write everything out and stop the database thread."""
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        await self.flush()
        if self._db is not None:
            await self._run(self._db.close)
        self._pool.stop()

    def _run(self, fn, *args):
        return deferToThreadPool(self._reactor, self._pool, fn, *args)

    # -- client id and cursor ------------------------------------------------------------

    def client_id(self, wanted=None) -> str:
        """``wanted`` when given (and remembered), else the remembered id, else a new UUID;
        a new one too when the state was made for another folder (:attr:`made_for`)."""
        remembered = None if self.made_for is not None else self.meta.get("client_id")
        cid = wanted or remembered or str(uuid.uuid4())
        if self.meta.get("client_id") != cid:
            self._set_meta("client_id", cid)
        if self.meta.get("folder") != self._identity:  # written with the id (one transaction)
            self._set_meta("folder", self._identity)
        return cid

    @property
    def cursor(self) -> int:
        return int(self.meta.get("cursor", 0))

    def set_cursor(self, value: int) -> None:
        if value != self.cursor:
            self._set_meta("cursor", str(int(value)))

    def _set_meta(self, key, value):
        self.meta[key] = value
        self._dirty_meta[key] = value
        self._schedule()

    # -- bases --------------------------------------------------------------------------

    def base(self, path):
        return self.bases.get(path)

    def set_base(self, path: str, base: Base) -> None:
        self.bases[path] = base
        self._dirty_files[path] = base
        self._schedule()

    def forget(self, path: str, recursive: bool = False) -> None:
        doomed = [p for p in self.bases if is_inside(p, path)] if recursive else [path]
        for p in doomed:
            if self.bases.pop(p, None) is not None:
                self._dirty_files[p] = None
        self._schedule()

    def move(self, source: str, destination: str) -> None:
        """Move the bases of ``source`` and everything below it to ``destination``."""
        for p in [p for p in self.bases if is_inside(p, source)]:
            base = self.bases.pop(p)
            self._dirty_files[p] = None
            new = destination + p[len(source):]
            self.bases[new] = base
            self._dirty_files[new] = base
        self._schedule()

    # -- offline queue ------------------------------------------------------------------

    def queue(self, path: str, source: str = None) -> None:
        """Remember a local change that could not be sent (a move has its ``source``)."""
        if self.pending.get(path, "-") != source:
            self.pending[path] = source
            self._dirty_pending[path] = source
            self._schedule()

    def unqueue(self, path: str) -> None:
        if path in self.pending:
            del self.pending[path]
            self._dirty_pending[path] = False
            self._schedule()

    # -- write-behind -------------------------------------------------------------------

    def _schedule(self):
        if self._flush_call is None or not self._flush_call.active():
            self._flush_call = self._reactor.callLater(0.05, self.flush)

    def flush(self):
        """Write all changes made so far in one transaction; a Deferred that fires when done."""
        files, meta, pending = self._dirty_files, self._dirty_meta, self._dirty_pending
        self._dirty_files, self._dirty_meta, self._dirty_pending = {}, {}, {}
        if not (files or meta or pending) or self._db is None:
            return self._write_lock.run(defer.succeed, None)

        def write():
            with self._db:
                for path, base in files.items():
                    if base is None:
                        self._db.execute("DELETE FROM files WHERE path=?", (path,))
                    else:
                        e = base.entry
                        self._db.execute(
                            "INSERT OR REPLACE INTO files VALUES (?,?,?,?,?,?,?)",
                            (path, int(e.is_directory), e.hash, e.size, base.modified, base.local_size, base.local_mtime_ns),
                        )
                for key, value in meta.items():
                    self._db.execute("INSERT OR REPLACE INTO meta VALUES (?,?)", (key, value))
                for path, source in pending.items():
                    if source is False:
                        self._db.execute("DELETE FROM pending WHERE path=?", (path,))
                    else:
                        self._db.execute("INSERT OR REPLACE INTO pending VALUES (?,?,?)", (path, source, time.time()))

        return self._write_lock.run(self._run, write)
