"""The folder's own state, in ``<local-path>/.quantum-sync/state.db`` (SQLite).

What survives a restart, a crash or a long time offline:

- ``files``: per path the last version both sides agreed on (hash, size, kind, the
  server's mtime) and the local size/mtime it had then (so an unchanged file is
  recognised without hashing it again);
- ``meta``: the client id, the journal cursor and the journal's id, whether the folder is
  paused, the files of a mass delete held (``held_deletes``), and which folder the
  state belongs to (device, inode and path: a folder copied with its ``.quantum-sync/`` is
  noticed, and takes a new client id, since two clients sharing one would miss each
  other's changes);
- ``pending``: local changes seen but not yet sent (the offline queue).

Everything is held in memory and written through to SQLite on one dedicated thread in
small batched transactions, so the reactor never waits on the disk. A transaction that
fails (a full disk, an I/O error) loses nothing: its changes go back into the next batch
(newer changes of the same rows win) and the write is tried again, after 0.5 s doubling
to 30 s, with one log line per failing streak. A folder whose
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
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from quantum_sync.client.reconcile import Entry
from quantum_sync.paths import STATE_DIR_NAME, is_inside

#: Seconds changes wait to be written together.
WRITE_DELAY = 0.05
#: The wait before a failed write is tried again, doubling up to RETRY_MAX.
RETRY_FIRST = 0.5
RETRY_MAX = 30.0

log = Logger()

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
        self._retry_delay = None  # while writes fail: the wait before the next try

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
        if self._flush_call is not None and self._flush_call.active():  # the last write failed
            self._flush_call.cancel()
            log.error("closing the folder's state with {count} change(s) not written", count=self.unwritten)
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

    def new_client_id(self) -> str:
        """A new client id for this folder (a UUID), remembered in place of the old."""
        cid = str(uuid.uuid4())
        self._set_meta("client_id", cid)
        return cid

    @property
    def cursor(self) -> int:
        return int(self.meta.get("cursor", 0))

    def set_cursor(self, value: int) -> None:
        if value != self.cursor:
            self._set_meta("cursor", str(int(value)))

    @property
    def journal_id(self):
        """The id of the server journal the cursor points into (None: not known yet)."""
        return self.meta.get("journal_id")

    def set_journal_id(self, value: str) -> None:
        if value != self.journal_id:
            self._set_meta("journal_id", value)

    @property
    def paused(self) -> bool:
        """The folder was paused (``quantum-sync-client pause``) and not resumed since: a
        pause outlives a restart of the daemon."""
        return self.meta.get("paused") == "1"

    def set_paused(self, value: bool) -> None:
        if value != self.paused:
            self._set_meta("paused", "1" if value else "0")

    @property
    def held_deletes(self) -> frozenset:
        """The files whose local delete is held as part of a mass delete (until they come
        back, or a start with ``--allow-mass-delete``): a hold outlives a restart."""
        return frozenset(json.loads(self.meta.get("held_deletes", "[]")))

    def set_held_deletes(self, paths) -> None:
        value = json.dumps(sorted(paths))
        if value != self.meta.get("held_deletes", "[]"):
            self._set_meta("held_deletes", value)

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

    def _schedule(self, delay=WRITE_DELAY):
        if self._flush_call is None or not self._flush_call.active():
            self._flush_call = self._reactor.callLater(delay, self.flush)

    @property
    def unwritten(self) -> int:
        """Changes held in memory, not yet written."""
        return len(self._dirty_files) + len(self._dirty_meta) + len(self._dirty_pending)

    def flush(self):
        """Write all changes made so far in one transaction; a Deferred that fires when done
        (it never fails: a failed write is kept and tried again, see the module's doc)."""
        files, meta, pending = self._dirty_files, self._dirty_meta, self._dirty_pending
        self._dirty_files, self._dirty_meta, self._dirty_pending = {}, {}, {}
        if not (files or meta or pending) or self._db is None:
            return self._write_lock.run(defer.succeed, None)
        d = self._write_lock.run(self._run, self._writer(files, meta, pending))
        d.addCallbacks(self._written, self._not_written, errbackArgs=(files, meta, pending))
        return d

    def _written(self, _):
        if self._retry_delay is not None:
            self._retry_delay = None
            log.info("the folder's state is written again")

    def _not_written(self, failure, files, meta, pending):
        # newer changes (made while this batch was being written) win over the batch's
        for batch, dirty in ((files, self._dirty_files), (meta, self._dirty_meta), (pending, self._dirty_pending)):
            for key, value in batch.items():
                dirty.setdefault(key, value)
        if self._retry_delay is None:
            self._retry_delay = RETRY_FIRST
            log.error("writing the folder's state failed ({error}); its {count} change(s) are kept and written "
                      "again shortly", error=failure.getErrorMessage(), count=self.unwritten)
        else:
            self._retry_delay = min(self._retry_delay * 2, RETRY_MAX)
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = self._reactor.callLater(self._retry_delay, self.flush)

    def _writer(self, files, meta, pending):
        """The blocking write of one batch (run on the state's thread)."""

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

        return write
