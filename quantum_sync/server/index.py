"""The SQLite index in the state directory: cached file metadata and the change journal.

One writer thread (``adbapi`` with ``cp_max=1``), so the reactor never blocks on SQLite
and every transaction is serialised. ``files`` caches path/size/mtime_ns/hash so
listings never rehash unchanged files; ``journal`` gives every applied change the next
sequence number and keeps the last ``journal_retention`` entries. The journal has an
identity (``journal_id``, made with it and kept in ``meta``): a new or lost state
directory means a new journal, which clients must not mistake for the one they followed.
"""

import os
import uuid

from twisted.application.service import Service
from twisted.enterprise import adbapi
from twisted.logger import Logger

from quantum_sync.errors import SyncError
from quantum_sync.protocol import Change, FileMetadata, operation_text
from quantum_sync.server.diskdiff import Row
from quantum_sync.server.indexapi import check_cursor, journal_page

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY,
    is_directory INTEGER NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    hash TEXT NOT NULL,
    source_client TEXT NOT NULL DEFAULT '',
    ino INTEGER NOT NULL DEFAULT 0,
    ctime_ns INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS journal (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    operation TEXT NOT NULL,
    source_client TEXT NOT NULL,
    timestamp TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS intents (
    path TEXT PRIMARY KEY
);
"""
#: Columns added to ``files`` after its first release (added to an older index at open).
ADDED_COLUMNS = (("ino", "INTEGER NOT NULL DEFAULT 0"), ("ctime_ns", "INTEGER NOT NULL DEFAULT 0"),
                 ("source_client", "TEXT NOT NULL DEFAULT ''"))

#: A file's row, with the client that wrote its content (kept when only its stat changed).
UPSERT = (
    "INSERT INTO files (path, is_directory, size, mtime_ns, hash, ino, ctime_ns, source_client)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT(path) DO UPDATE SET is_directory = excluded.is_directory, size = excluded.size,"
    " mtime_ns = excluded.mtime_ns, hash = excluded.hash, ino = excluded.ino,"
    " ctime_ns = excluded.ctime_ns, source_client = CASE WHEN"
    " files.hash = excluded.hash THEN files.source_client ELSE excluded.source_client END")

#: Paths looked up a query by :meth:`Index.get_many` (below SQLite's variable limit).
LOOKUP_BATCH = 500


def _prepare_connection(connection):
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=FULL")
    connection.execute("PRAGMA busy_timeout=5000")
    connection.execute("PRAGMA case_sensitive_like=ON")


def _row_metadata(row) -> Row:
    """A :class:`Row` from a ``files`` row."""
    path, is_directory, size, mtime_ns, digest, ino, ctime_ns = row
    return Row(FileMetadata(path, size, mtime_ns / 1e9, digest, bool(is_directory)), mtime_ns, ino, ctime_ns)


def _file_values(row) -> tuple:
    """The ``files`` columns of ``row`` (a :class:`Row`, or a plain ``(FileMetadata,
    mtime_ns)`` pair: inode and ctime unknown)."""
    metadata, mtime_ns = row
    return (metadata.path, int(metadata.is_directory), metadata.size, mtime_ns, metadata.hash,
            getattr(row, "ino", 0), getattr(row, "ctime_ns", 0))


def _escape_like(path: str) -> str:
    return path.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class Index(Service):
    """Metadata cache and journal; every method returns a Deferred."""

    log = Logger()

    def __init__(self, state_dir: str, retention: int, reactor):
        self.db_path = os.path.join(state_dir, "index.sqlite3")
        self.retention = retention
        self._reactor = reactor
        self._pool = None
        self._opened = None
        #: The journal's identity (32 hex digits), known once the database is open.
        self.journal_id = None

    def start(self) -> None:
        """Open the database; the schema is created by the first queued transaction, so
        every later call runs after it (one thread, first in first out)."""
        if self._pool is not None:
            return
        os.makedirs(os.path.dirname(self.db_path), exist_ok=True)
        self._pool = adbapi.ConnectionPool(
            "sqlite3", self.db_path, check_same_thread=False, cp_min=1, cp_max=1,
            cp_openfun=_prepare_connection, cp_reactor=self._reactor,
        )
        self._opened = self._pool.runInteraction(self._create)

    def _create(self, txn) -> None:
        _create_schema(txn)
        txn.execute("SELECT value FROM meta WHERE key = 'journal_id'")
        row = txn.fetchone()
        if row is None:
            row = (uuid.uuid4().hex,)
            txn.execute("INSERT INTO meta (key, value) VALUES ('journal_id', ?)", row)
        self.journal_id = row[0]

    def startService(self):
        super().startService()
        self.start()

    async def open(self) -> None:
        """Wait until the schema exists (after :meth:`start`)."""
        self.start()
        await self._opened

    def stopService(self):
        super().stopService()
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    @property
    def _db(self):
        """The open pool; a request that outlived the server's stop gets a clean 503."""
        if self._pool is None:
            raise SyncError("SERVICE_UNAVAILABLE", "the server is shutting down")
        return self._pool

    def interaction(self, function, *args):
        """``function(txn, *args)`` in the index's thread, in one transaction (for the
        tables other modules keep in the index, such as the versions)."""
        return self._db.runInteraction(function, *args)

    # -- reads --------------------------------------------------------------------

    async def get(self, path: str):
        """``(FileMetadata, mtime_ns)`` for ``path`` or ``None``."""
        rows = await self._db.runQuery(
            "SELECT path, is_directory, size, mtime_ns, hash, ino, ctime_ns FROM files WHERE path = ?", (path,))
        return _row_metadata(rows[0]) if rows else None

    async def get_after(self, function, path: str) -> tuple:
        """``(function(), get(path))`` with both run in the index's thread: one thread
        hop for a blocking read (e.g. opening a small file) and the row it is checked
        against. ``function`` must be short and must not use the index."""
        def run(txn):
            first = function()
            txn.execute("SELECT path, is_directory, size, mtime_ns, hash, ino, ctime_ns FROM files WHERE path = ?",
                        (path,))
            row = txn.fetchone()
            return first, (_row_metadata(row) if row else None)

        return await self._db.runInteraction(run)

    async def get_many(self, paths) -> dict:
        """``{path: (FileMetadata, mtime_ns)}`` for those of ``paths`` that are indexed
        (one read for many, :data:`LOOKUP_BATCH` paths a query)."""
        paths = list(paths)
        return await self._db.runInteraction(self._get_many, paths) if paths else {}

    @staticmethod
    def _get_many(txn, paths) -> dict:
        found = {}
        for start in range(0, len(paths), LOOKUP_BATCH):
            part = paths[start:start + LOOKUP_BATCH]
            txn.execute(
                "SELECT path, is_directory, size, mtime_ns, hash, ino, ctime_ns FROM files WHERE path IN"
                f" ({','.join('?' * len(part))})", part)
            for row in txn.fetchall():
                found[row[0]] = _row_metadata(row)
        return found

    async def list_all(self) -> list:
        """Every indexed entry as ``(FileMetadata, mtime_ns)``, sorted by path."""
        rows = await self._db.runQuery(
            "SELECT path, is_directory, size, mtime_ns, hash, ino, ctime_ns FROM files ORDER BY path")
        return [_row_metadata(row) for row in rows]

    async def list_under(self, top: str) -> list:
        """The indexed entries at and below ``top``, as :meth:`list_all` gives them."""
        rows = await self._db.runQuery(
            "SELECT path, is_directory, size, mtime_ns, hash, ino, ctime_ns FROM files"
            " WHERE path = ? OR path LIKE ? ESCAPE '\\' ORDER BY path",
            (top, _escape_like(top) + "/%"))
        return [_row_metadata(row) for row in rows]

    async def head(self) -> int:
        """The sequence number of the newest journal entry (0 when there is none)."""
        return await self._db.runInteraction(_head)

    async def changes(self, since: int, limit: int) -> tuple:
        """``(changes, cursor, has_more)`` after ``since``; CURSOR_EXPIRED (with the
        ``journal_id`` and the head as ``cursor``) when entries after ``since`` were already
        pruned, or ``since`` is beyond the head (a cursor of another journal)."""
        return await self._db.runInteraction(_changes, since, limit, self.journal_id)

    # -- writes ---------------------------------------------------------------------

    async def record(self, upserts, removals, operation, source_client, timestamp, also=None):
        """In one transaction: update the cache (``upserts``: ``(FileMetadata, mtime_ns)``;
        ``removals``: paths removed with everything below them) and, when ``operation``
        is given, append it to the journal. Returns the journal :class:`Change` or None.
        ``also(txn)``, when given, runs first in the same transaction (it sees the rows
        as they were)."""
        return await self._db.runInteraction(
            _after(also, self._record), upserts, removals, operation, source_client, timestamp)

    async def record_many(self, items, source_client, timestamp) -> list:
        """Several :meth:`record` calls in one transaction; ``items`` holds
        ``(upserts, removals, operation)``. Returns the journal Changes, in order."""
        return await self.record_each(
            [(upserts, removals, operation, source_client) for upserts, removals, operation in items],
            timestamp)

    async def record_each(self, items, timestamp, also=None, done_intents=()) -> list:
        """:meth:`record_many` with a source client per item: ``items`` holds
        ``(upserts, removals, operation, source_client)``; in the same transaction the
        intents of ``done_intents`` are forgotten. Returns the Changes, in order.
        ``also``: as for :meth:`record`."""
        def run(txn):
            changes = [self._record(txn, upserts, removals, operation, source_client, timestamp)
                       for upserts, removals, operation, source_client in items]
            txn.executemany("DELETE FROM intents WHERE path = ?", [(path,) for path in done_intents])
            return [change for change in changes if change is not None]

        return await self._db.runInteraction(_after(also, run))

    async def get_many_intending(self, paths) -> dict:
        """:meth:`get_many`, recording in the same transaction (durably, before it
        returns) the intent to write each of ``paths``: a crash before their journal
        entries leaves the intents, and the next start looks at those paths first."""
        def run(txn):
            txn.executemany("INSERT OR IGNORE INTO intents (path) VALUES (?)", [(path,) for path in paths])
            return self._get_many(txn, paths)

        paths = list(paths)
        return await self._db.runInteraction(run) if paths else {}

    async def intents(self) -> list:
        """The paths whose writes were intended and never journalled (a crash)."""
        return [row[0] for row in await self._db.runQuery("SELECT path FROM intents ORDER BY path")]

    async def forget_intents(self, paths) -> None:
        """Forget the intents of ``paths`` (looked at after a crash)."""
        await self._db.runInteraction(
            lambda txn: txn.executemany("DELETE FROM intents WHERE path = ?", [(p,) for p in paths]))

    async def rename(self, source: str, destination: str, operation, source_client, timestamp,
                     also=None):
        """Move the cached rows of ``source`` (and below) to ``destination`` and journal;
        ``also``: as for :meth:`record`."""
        return await self._db.runInteraction(
            _after(also, self._rename), source, destination, operation, source_client, timestamp)

    def _record(self, txn, upserts, removals, operation, source_client, timestamp):
        for path in removals:
            txn.execute("DELETE FROM files WHERE path = ? OR path LIKE ? ESCAPE '\\'",
                        (path, _escape_like(path) + "/%"))
        txn.executemany(UPSERT, [_file_values(row) + (source_client,) for row in upserts])
        return self._journal(txn, operation, source_client, timestamp)

    def _rename(self, txn, source, destination, operation, source_client, timestamp):
        txn.execute("DELETE FROM files WHERE path = ? OR path LIKE ? ESCAPE '\\'",
                    (destination, _escape_like(destination) + "/%"))
        txn.execute(
            "UPDATE files SET path = ? || substr(path, ?) WHERE path = ? OR path LIKE ? ESCAPE '\\'",
            (destination, len(source) + 1, source, _escape_like(source) + "/%"),
        )
        return self._journal(txn, operation, source_client, timestamp)

    def _journal(self, txn, operation, source_client, timestamp):
        if operation is None:
            return None
        text = operation_text(operation)
        txn.execute(
            "INSERT INTO journal (operation, source_client, timestamp) VALUES (?, ?, ?)",
            (text, source_client, timestamp),
        )
        seq = txn.lastrowid
        if seq > self.retention:
            txn.execute("DELETE FROM journal WHERE seq <= ?", (seq - self.retention,))
        return Change(seq, operation, source_client, timestamp, text)


def _after(also, function):
    """``function`` of a transaction, run after ``also(txn)`` when ``also`` is given."""
    if also is None:
        return function

    def run(txn, *args):
        also(txn)
        return function(txn, *args)

    return run


def _create_schema(txn) -> None:
    txn.executescript(SCHEMA)
    txn.execute("PRAGMA table_info(files)")
    present = {column[1] for column in txn.fetchall()}
    for name, kind in ADDED_COLUMNS:  # an index made before they were
        if name not in present:
            txn.execute(f"ALTER TABLE files ADD COLUMN {name} {kind}")


def _head(txn) -> int:
    txn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'journal'")
    row = txn.fetchone()
    return row[0] if row else 0


def _changes(txn, since: int, limit: int, journal_id: str):
    head = _head(txn)

    def oldest():
        txn.execute("SELECT MIN(seq) FROM journal")
        return txn.fetchone()[0]

    check_cursor(since, head, oldest, journal_id)
    txn.execute(
        "SELECT seq, operation, source_client, timestamp FROM journal"
        " WHERE seq > ? ORDER BY seq LIMIT ?", (since, limit + 1))
    return journal_page(txn.fetchall(), limit, since)
