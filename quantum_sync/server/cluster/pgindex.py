"""The index and the journal in PostgreSQL: the same interface as the SQLite
:class:`quantum_sync.server.index.Index`, shared by every node of a cluster.

Every call is one transaction on a thread of ``adbapi``'s pool, never on the reactor.
The journal's order is its commit order: the transaction that appends takes its ``seq``
values by updating the one row of ``journal_head``, whose row lock it holds until it
commits, so a later ``seq`` can never become visible before an earlier one (a reader of
``/api/changes`` would otherwise skip it). The schema is created and versioned here
(``schema_version``); a database whose schema is newer than this code is refused.
"""

import hashlib
import uuid

from twisted.application.service import Service
from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from quantum_sync.adapters.twisted import QuietConnection, close_pool
from quantum_sync.errors import SyncError
from quantum_sync.protocol import Change, FileMetadata, operation_text
from quantum_sync.server import versions
from quantum_sync.server.diskdiff import Row
from quantum_sync.server.indexapi import check_cursor, journal_page
from quantum_sync.threads import in_own_thread

#: The schema this code writes and reads.
SCHEMA_VERSION = 1

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS files (
        path TEXT COLLATE "C" PRIMARY KEY,
        is_directory BOOLEAN NOT NULL,
        size BIGINT NOT NULL,
        mtime_ns BIGINT NOT NULL,
        hash TEXT NOT NULL,
        source_client TEXT NOT NULL DEFAULT '',
        ino BIGINT NOT NULL DEFAULT 0,
        ctime_ns BIGINT NOT NULL DEFAULT 0)""",
    """CREATE TABLE IF NOT EXISTS intents (path TEXT COLLATE "C" PRIMARY KEY)""",
    """CREATE TABLE IF NOT EXISTS journal (
        seq BIGINT PRIMARY KEY,
        operation TEXT NOT NULL,
        source_client TEXT NOT NULL,
        timestamp TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS journal_head (
        one BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one),
        seq BIGINT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS client_ids (
        client_id TEXT PRIMARY KEY,
        user_name TEXT NOT NULL)""",
    # when each id was last seen (bindings.py); the ids of an older schema: seen now
    """ALTER TABLE client_ids ADD COLUMN IF NOT EXISTS seen TIMESTAMPTZ NOT NULL DEFAULT now()""",
    """CREATE INDEX IF NOT EXISTS client_ids_seen ON client_ids (seen)""",
    """CREATE TABLE IF NOT EXISTS nodes (
        node_id TEXT PRIMARY KEY,
        address TEXT NOT NULL,
        started TEXT NOT NULL,
        seen TIMESTAMPTZ NOT NULL)""",
    # the advisory lock the node's session holds while it lives (presence.py)
    """ALTER TABLE nodes ADD COLUMN IF NOT EXISTS session_key BIGINT NOT NULL DEFAULT 0""",
    """CREATE TABLE IF NOT EXISTS live_clients (
        client_id TEXT PRIMARY KEY,
        node_id TEXT NOT NULL)""",
    # the events Redis may not have carried to every node, for a short while (events.py)
    """CREATE TABLE IF NOT EXISTS events (
        id BIGSERIAL PRIMARY KEY,
        uid TEXT NOT NULL,
        node_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        data TEXT NOT NULL,
        timestamp TEXT NOT NULL,
        at TIMESTAMPTZ NOT NULL DEFAULT now())""",
    """CREATE INDEX IF NOT EXISTS events_at ON events (at)""",
]

#: Paths looked up a query by :meth:`PgIndex.get_many`.
LOOKUP_BATCH = 1000

_COLUMNS = "path, is_directory, size, mtime_ns, hash, ino, ctime_ns"

#: Records the intents to write the paths of the first parameter and reads the rows of
#: those of the second (the same list): one statement.
INTENDING = (f"WITH intended AS (INSERT INTO intents (path) SELECT unnest(%b::text[])"
             f" ON CONFLICT DO NOTHING) SELECT {_COLUMNS} FROM files WHERE path = ANY(%b)")

#: Takes the client ids ``%(ids)s`` for node ``%(node)s``, but those a live node holds:
#: one seen within ``%(live_for)s`` seconds whose session still holds its lock (the
#: shared try fails against it; presence.py).
CLAIM_CLIENTS = (
    "INSERT INTO live_clients AS l (client_id, node_id) SELECT unnest(%(ids)s::text[]), %(node)s"
    " ON CONFLICT (client_id) DO UPDATE SET node_id = EXCLUDED.node_id"
    " WHERE l.node_id <> EXCLUDED.node_id AND NOT EXISTS (SELECT 1 FROM nodes n"
    " WHERE n.node_id = l.node_id AND n.seen > now() - make_interval(secs => %(live_for)s)"
    " AND NOT pg_try_advisory_xact_lock_shared(n.session_key))")

#: Marks seen the client ids held by a live connection on a node seen within
#: ``%(live_for)s`` seconds, and forgets those unseen for ``%(forget_after)s`` seconds;
#: the number forgotten. (The statements of one share a snapshot: hence the exclusion.)
FORGET_OLD_CLIENTS = (
    "WITH live AS (UPDATE client_ids c SET seen = now() FROM live_clients l, nodes n"
    " WHERE c.client_id = l.client_id AND n.node_id = l.node_id"
    " AND n.seen > now() - make_interval(secs => %(live_for)s) RETURNING c.client_id),"
    " old AS (DELETE FROM client_ids WHERE seen < now() - make_interval(secs => %(forget_after)s)"
    " AND client_id NOT IN (SELECT client_id FROM live) RETURNING 1) SELECT count(*) FROM old")

#: Forgets the least recently seen client ids beyond ``%(max_ids)s``; the number forgotten.
FORGET_OVER_CLIENTS = (
    "WITH over AS (DELETE FROM client_ids WHERE client_id IN (SELECT client_id FROM client_ids"
    " ORDER BY seen DESC, client_id OFFSET %(max_ids)s) RETURNING 1) SELECT count(*) FROM over")

#: A file's row, with the client that wrote its content (kept when only its stat changed).
UPSERT = (
    "INSERT INTO files (path, is_directory, size, mtime_ns, hash, ino, ctime_ns, source_client)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
    " ON CONFLICT (path) DO UPDATE SET is_directory = EXCLUDED.is_directory,"
    " size = EXCLUDED.size, mtime_ns = EXCLUDED.mtime_ns, hash = EXCLUDED.hash,"
    " ino = EXCLUDED.ino, ctime_ns = EXCLUDED.ctime_ns, source_client = CASE WHEN"
    " files.hash = EXCLUDED.hash THEN files.source_client ELSE EXCLUDED.source_client END")


#: libpq settings of every connection a node makes: a database that cannot be reached is
#: known in seconds (not after TCP's retransmissions, some 15 minutes, for a host gone
#: silently), so requests answer 503 rather than hang.
CONNECT_OPTIONS = {"connect_timeout": 5, "keepalives": 1, "keepalives_idle": 10,
                   "keepalives_interval": 5, "keepalives_count": 3, "tcp_user_timeout": 15000}


class SchemaError(Exception):
    """The database holds a schema this code cannot use (one line for the operator)."""


def lock_key(namespace: str, name: str) -> int:
    """A bigint advisory-lock key for ``name`` in ``namespace`` (the schema: advisory
    locks are shared by every schema of a database)."""
    digest = hashlib.sha256(f"{namespace}\0{name}".encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def close_quietly(connection) -> None:
    """Close ``connection`` (None: nothing), whatever state its session is in: a lost
    session's close may raise, and its locks are gone with it either way."""
    if connection is not None:
        try:
            connection.close()
        except Exception:
            pass


def _escape_like(path: str) -> str:
    return path.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _row_metadata(row) -> Row:
    path, is_directory, size, mtime_ns, digest, ino, ctime_ns = row
    return Row(FileMetadata(path, size, mtime_ns / 1e9, digest, bool(is_directory)), mtime_ns, ino, ctime_ns)


def rows_by_path(rows) -> dict:
    """``{path: Row}`` of ``files`` rows."""
    return {row[0]: _row_metadata(row) for row in rows}


def _file_values(row) -> tuple:
    """The ``files`` columns of ``row`` (a :class:`Row`, or a ``(FileMetadata, mtime_ns)``
    pair: inode and ctime unknown)."""
    metadata, mtime_ns = row
    return (metadata.path, metadata.is_directory, metadata.size, mtime_ns, metadata.hash,
            getattr(row, "ino", 0), getattr(row, "ctime_ns", 0))


class _Portable:
    """A psycopg cursor that takes the SQLite-style SQL of the modules that keep tables
    in the index (``?`` placeholders, ``executescript``; INTEGER and REAL columns made
    64-bit), so that :mod:`quantum_sync.server.versions` runs on either index."""

    _TYPES = (("INTEGER", "BIGINT"), ("REAL", "DOUBLE PRECISION"))

    def __init__(self, cursor):
        self._cursor = cursor

    @staticmethod
    def _sql(sql: str) -> str:
        return sql.replace("%", "%%").replace("?", "%s")

    def execute(self, sql, params=None):
        return self._cursor.execute(sql if params is None else self._sql(sql), params)

    def executemany(self, sql, rows):
        # on a cursor of its own: in a pipeline, a query's fetch on the cursor that queued
        # many statements before it can meet one of their results (psycopg 3.3)
        rows = list(rows)
        return self._cursor.connection.cursor().executemany(self._sql(sql), rows) if rows else None

    def executescript(self, script: str):
        for old, new in self._TYPES:
            script = script.replace(f" {old} ", f" {new} ")
        for statement in script.split(";"):
            if statement.strip():
                self._cursor.execute(statement)

    def fetchone(self):
        return self._cursor.fetchone()

    def fetchall(self):
        return self._cursor.fetchall()


def create_schema(txn) -> str:
    """Create or check the schema in the transaction ``txn`` (the first node to start
    creates it, under an advisory lock); returns the journal id. Raises
    :class:`SchemaError` for a newer schema."""
    txn.execute("SELECT current_schema()")
    namespace = txn.fetchone()[0]
    txn.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key(namespace, "schema"),))
    for statement in SCHEMA:
        txn.execute(statement)
    # the tables other modules keep in the index: there before any node uses them
    _Portable(txn).executescript(versions.SCHEMA)
    txn.execute("SELECT max(version) FROM schema_version")
    version = txn.fetchone()[0]
    if version is None:
        txn.execute("INSERT INTO schema_version (version) VALUES (%s)", (SCHEMA_VERSION,))
    elif version > SCHEMA_VERSION:
        raise SchemaError(f"the database's schema is version {version}; this server knows"
                          f" up to {SCHEMA_VERSION} (upgrade the server)")
    txn.execute("INSERT INTO journal_head (seq) VALUES (0) ON CONFLICT DO NOTHING")
    txn.execute("INSERT INTO meta (key, value) VALUES ('journal_id', %s) ON CONFLICT DO NOTHING",
                (uuid.uuid4().hex,))
    txn.execute("SELECT value FROM meta WHERE key = 'journal_id'")
    return txn.fetchone()[0]


def unavailable(error) -> SyncError:
    """The answer to a request that met an unreachable database: 503, try again soon."""
    return SyncError("SERVICE_UNAVAILABLE", f"the database cannot be reached: {str(error).strip()[:200]}",
                     retryAfter=2)


class PgIndex(Service):
    """Metadata cache and journal in PostgreSQL; every method returns a Deferred (or is
    a coroutine). A database that cannot be reached gives SERVICE_UNAVAILABLE."""

    log = Logger()

    def __init__(self, conninfo: str, retention: int, reactor, pool_size: int = 4):
        self.conninfo = conninfo
        self.retention = retention
        self._reactor = reactor
        self._pool_size = pool_size
        self._pool = None
        self._opened = None
        #: The journal's identity, known once the database is open.
        self.journal_id = None
        #: The schema's name (advisory-lock keys are made in it), once open.
        self.namespace = None
        #: The node's :class:`.fence.ClusterFence`, on whose connection an upload group
        #: commits (None: every commit on a pooled connection).
        self.fence = None

    def start(self) -> None:
        if self._pool is not None:
            return
        self._pool = adbapi.ConnectionPool(
            "psycopg", self.conninfo, cp_min=1, cp_max=self._pool_size, cp_reconnect=True,
            cp_noisy=False, cp_reactor=self._reactor, **CONNECT_OPTIONS,
        )
        # a connection the database dropped fails its transaction (SERVICE_UNAVAILABLE)
        # and is replaced, without a traceback logged for it
        self._pool.connectionFactory = QuietConnection
        self._opened = Deferred.fromCoroutine(self._run(self._create))

    def _create(self, txn):
        self.journal_id = create_schema(txn)
        txn.execute("SELECT current_schema()")
        self.namespace = txn.fetchone()[0]

    async def open(self) -> None:
        self.start()
        await self._opened

    def stopService(self):
        """Close the pool; a Deferred, fired once its threads have ended (a query in
        flight ends first, and the reactor does not wait for it)."""
        super().stopService()
        pool, self._pool = self._pool, None
        if pool is None:
            return succeed(None)
        return close_pool(pool, lambda f: in_own_thread(self._reactor, f))

    async def _run(self, function, *args):
        """``function(txn, *args)`` in one transaction on a pool thread.

        A pooled connection the database dropped (it restarted, or was away) fails on
        first use, and the pool then makes a new one: a transaction that failed so before
        its commit was sent changed nothing, and is run once more."""
        import psycopg

        committing = []

        def run(txn, *args):
            result = function(txn, *args)
            committing.append(True)  # the pool commits next: an error from here is unknown
            return result

        for attempt in range(2):
            if self._pool is None:
                raise SyncError("SERVICE_UNAVAILABLE", "the server is shutting down")
            try:
                return await self._pool.runInteraction(run, *args)
            except (psycopg.OperationalError, psycopg.InterfaceError, adbapi.ConnectionLost) as error:
                if attempt or committing:
                    raise unavailable(error) from None

    async def interaction(self, function, *args):
        """``function(txn, *args)`` in one transaction, ``txn`` taking the SQLite-style
        SQL of the tables other modules keep in the index (the versions)."""
        await self._opened
        return await self._run(lambda txn: function(_Portable(txn), *args))

    # -- reads --------------------------------------------------------------------

    async def get(self, path: str):
        def run(txn):
            txn.execute(f"SELECT {_COLUMNS} FROM files WHERE path = %s", (path,))
            row = txn.fetchone()
            return _row_metadata(row) if row else None

        return await self._run(run)

    async def get_after(self, function, path: str) -> tuple:
        """``(function(), get(path))`` in one pool thread call."""
        def run(txn):
            first = function()
            txn.execute(f"SELECT {_COLUMNS} FROM files WHERE path = %s", (path,))
            row = txn.fetchone()
            return first, (_row_metadata(row) if row else None)

        return await self._run(run)

    async def get_many(self, paths) -> dict:
        paths = list(paths)
        return await self._run(_get_many, paths) if paths else {}

    async def list_all(self) -> list:
        def run(txn):
            txn.execute(f"SELECT {_COLUMNS} FROM files ORDER BY path")
            return [_row_metadata(row) for row in txn.fetchall()]

        return await self._run(run)

    async def list_under(self, top: str) -> list:
        def run(txn):
            txn.execute(f"SELECT {_COLUMNS} FROM files WHERE path = %s OR path LIKE %s"
                        " ORDER BY path", (top, _escape_like(top) + "/%"))
            return [_row_metadata(row) for row in txn.fetchall()]

        return await self._run(run)

    async def head(self) -> int:
        return await self._run(_head)

    async def changes(self, since: int, limit: int) -> tuple:
        """``(changes, cursor, has_more)`` after ``since``, as the SQLite index answers
        (CURSOR_EXPIRED for a pruned or foreign cursor)."""
        return await self._run(_changes, since, limit, self.journal_id)

    # -- the nodes ------------------------------------------------------------------

    async def bind_client(self, client_id: str, user: str) -> str:
        """Bind ``client_id`` to ``user`` unless it is bound already, and mark it seen;
        returns its user (one statement: a racing binding on another node is waited
        for, and its user returned)."""
        def run(txn):
            txn.execute("INSERT INTO client_ids AS c (client_id, user_name) VALUES (%s, %s)"
                        " ON CONFLICT (client_id) DO UPDATE SET seen = now()"
                        " RETURNING user_name", (client_id, user))
            return txn.fetchone()[0]

        return await self._run(run)

    async def prune_clients(self, forget_after: float, max_ids: int, live_for: float) -> int:
        """Forget the client ids unseen for ``forget_after`` seconds (those held by a
        connection on a node seen within ``live_for`` seconds are seen now), then the
        least recently seen beyond ``max_ids``; returns how many went."""
        values = {"live_for": live_for, "forget_after": forget_after, "max_ids": max_ids}

        def run(txn):
            txn.execute(FORGET_OLD_CLIENTS, values)
            old = txn.fetchone()[0]
            txn.execute(FORGET_OVER_CLIENTS, values)
            return old + txn.fetchone()[0]

        return await self._run(run)

    async def claim_clients(self, client_ids, node_id: str, live_for: float) -> list:
        """Record that ``node_id`` holds the live connections of ``client_ids``, except
        those another live node holds (:data:`CLAIM_CLIENTS`); returns those."""
        values = {"ids": list(client_ids), "node": node_id, "live_for": live_for}
        return await self._run(_claim_clients, values)

    async def renew_clients(self, client_ids, node_id: str, live_for: float) -> list:
        """:meth:`claim_clients` for the ids ``node_id`` holds already (nearly all of
        them, read first, need no write); returns those another live node holds."""
        def run(txn):
            txn.execute("SELECT t.id FROM unnest(%s::text[]) AS t(id) LEFT JOIN live_clients l"
                        " ON l.client_id = t.id WHERE l.node_id IS DISTINCT FROM %s", (list(client_ids), node_id))
            missing = [row[0] for row in txn.fetchall()]
            if not missing:
                return []
            return _claim_clients(txn, {"ids": missing, "node": node_id, "live_for": live_for})

        return await self._run(run)

    async def release_clients(self, client_ids, node_id: str) -> None:
        """``node_id`` no longer holds connections of ``client_ids``."""
        def run(txn):
            txn.execute("DELETE FROM live_clients WHERE client_id = ANY(%s) AND node_id = %s",
                        (list(client_ids), node_id))

        await self._run(run)

    async def record_events(self, node_id: str, events, keep_for: float) -> None:
        """Keep ``node_id``'s ``events`` (``(uid, kind, data as JSON, timestamp)``) for
        the other nodes to read; drop those older than ``keep_for`` seconds."""
        def run(txn):
            txn.executemany("INSERT INTO events (uid, node_id, kind, data, timestamp)"
                            " VALUES (%s, %s, %s, %s, %s)",
                            [(uid, node_id, kind, data, timestamp) for uid, kind, data, timestamp in events])
            txn.execute("DELETE FROM events WHERE at < now() - make_interval(secs => %s)", (keep_for,))

        await self._run(run)

    async def recent_events(self, node_id: str, within: float) -> list:
        """The other nodes' events of the last ``within`` seconds, oldest first:
        ``(uid, kind, data as JSON, timestamp)``."""
        def run(txn):
            txn.execute("SELECT uid, kind, data, timestamp FROM events WHERE at > now() -"
                        " make_interval(secs => %s) AND node_id <> %s ORDER BY id", (within, node_id))
            return txn.fetchall()

        return await self._run(run)

    # -- writes ---------------------------------------------------------------------

    async def record(self, upserts, removals, operation, source_client, timestamp, also=None):
        """As :meth:`Index.record`: the cache updated and ``operation`` (when given)
        journalled in one transaction, after ``also(txn)``."""
        changes = await self.record_each([(upserts, removals, operation, source_client)], timestamp, also)
        return changes[0] if changes else None

    async def record_many(self, items, source_client, timestamp) -> list:
        return await self.record_each(
            [(upserts, removals, operation, source_client) for upserts, removals, operation in items],
            timestamp)

    async def record_each(self, items, timestamp, also=None, done_intents=()) -> list:
        """In one transaction: ``also(txn)``, every item's cache changes and its operation
        (when given) journalled with the next ``seq``, the intents of ``done_intents``
        forgotten. Returns the Changes, in order.

        An upload group's commit (``done_intents`` given while :attr:`fence` holds the
        group's locks) runs on the fence's connection and releases the locks in the same
        round trip; any other in one pipeline and its commit on a pooled connection."""
        def send(txn):
            if also is not None:
                also(_Portable(txn))
            if any(removals for _, removals, _, _ in items):
                for upserts, removals, _, source in items:
                    _update_files(txn, upserts, removals, source)
            else:  # only upserts: the last row of each path, in one statement
                _upsert(txn, {row[0].path: _file_values(row) + (source,)
                              for upserts, _, _, source in items for row in upserts})
            if done_intents:
                txn.execute("DELETE FROM intents WHERE path = ANY(%b)", (list(done_intents),))
            return self._journal(txn, [(operation, source) for _, _, operation, source in items
                                       if operation is not None], timestamp)

        if done_intents and self.fence is not None and self.fence.grouping:
            return await self.fence.commit(send)
        return await self._run(_pipelined, send)

    async def get_many_intending(self, paths) -> dict:
        """:meth:`get_many`, recording (durably, before it returns) the intent to write
        each of ``paths`` (see :meth:`Index.get_many_intending`)."""
        def run(txn):
            txn.execute(INTENDING, (paths, paths))
            return rows_by_path(txn.fetchall())

        paths = sorted(set(paths))
        return await self._run(run) if paths else {}

    async def intents(self) -> list:
        def run(txn):
            txn.execute("SELECT path FROM intents ORDER BY path")
            return [row[0] for row in txn.fetchall()]

        return await self._run(run)

    async def forget_intents(self, paths) -> None:
        def run(txn):
            txn.execute("DELETE FROM intents WHERE path = ANY(%b)", (list(paths),))

        await self._run(run)

    async def rename(self, source: str, destination: str, operation, source_client, timestamp,
                     also=None):
        def run(txn):
            if also is not None:
                also(_Portable(txn))
            txn.execute("DELETE FROM files WHERE path = %s OR path LIKE %s",
                        (destination, _escape_like(destination) + "/%"))
            txn.execute(
                "UPDATE files SET path = %s || substr(path, %s) WHERE path = %s OR path LIKE %s",
                (destination, len(source) + 1, source, _escape_like(source) + "/%"))
            changes = self._journal(txn, [(operation, source_client)], timestamp)()
            return changes[0] if changes else None

        return await self._run(run)

    def _journal(self, txn, entries, timestamp):
        """Send the append of ``entries`` (``(operation, source_client)``) with
        consecutive seqs taken from ``journal_head`` (its row lock, held to commit, orders
        the writers), and the pruning past the retention when the head crosses a hundred;
        returns a function giving their Changes once the statements are answered (so
        that a pipeline needs no round trip of its own for them)."""
        if not entries:
            return lambda: []
        texts = [operation_text(operation) for operation, _ in entries]
        count = len(entries)
        appended = txn.connection.cursor()  # (read after the pipeline: a cursor of its own)
        # the seqs taken and the entries written in one statement
        appended.execute(
            "WITH head AS (UPDATE journal_head SET seq = seq + %(count)s RETURNING seq)"
            " INSERT INTO journal (seq, operation, source_client, timestamp)"
            " SELECT head.seq - %(count)s + entry.position, entry.operation, entry.source, %(timestamp)s"
            " FROM head, unnest(%(operations)b::text[], %(sources)b::text[])"
            " WITH ORDINALITY AS entry(operation, source, position) RETURNING seq",
            {"count": count, "timestamp": timestamp, "operations": texts,
             "sources": [source for _, source in entries]})
        txn.execute("DELETE FROM journal WHERE seq <= (SELECT seq - %s FROM journal_head"
                    " WHERE seq / 100 <> (seq - %s) / 100)", (self.retention, count))

        def changes():
            last = max(row[0] for row in appended.fetchall())
            return [Change(seq, operation, source_client, timestamp, text) for seq, (operation, source_client), text
                    in zip(range(last - count + 1, last + 1), entries, texts)]

        return changes


def _pipelined(txn, send):
    """``send(txn)``'s statements in one pipeline (one round trip before the commit);
    the result of the function it returns."""
    with txn.connection.pipeline():
        finish = send(txn)
    return finish()


def _claim_clients(txn, values) -> list:
    txn.execute(CLAIM_CLIENTS, values)
    txn.execute("SELECT client_id FROM live_clients WHERE client_id = ANY(%(ids)s)"
                " AND node_id <> %(node)s", values)
    return [row[0] for row in txn.fetchall()]


def _update_files(txn, upserts, removals, source_client) -> None:
    for path in removals:
        txn.execute("DELETE FROM files WHERE path = %s OR path LIKE %s", (path, _escape_like(path) + "/%"))
    if upserts:
        txn.executemany(UPSERT, [_file_values(row) + (source_client,) for row in upserts])


def _upsert(txn, rows: dict) -> None:
    """``rows`` (path -> the values of UPSERT) written in one statement."""
    if rows:
        columns = list(zip(*rows.values()))
        txn.execute(
            "INSERT INTO files (path, is_directory, size, mtime_ns, hash, ino, ctime_ns, source_client)"
            " SELECT * FROM unnest(%b::text[], %b::boolean[], %b::bigint[], %b::bigint[], %b::text[],"
            " %b::bigint[], %b::bigint[], %b::text[])" + UPSERT[UPSERT.index(" ON CONFLICT"):],
            [list(column) for column in columns])


def _get_many(txn, paths) -> dict:
    found = {}
    for start in range(0, len(paths), LOOKUP_BATCH):
        txn.execute(f"SELECT {_COLUMNS} FROM files WHERE path = ANY(%b)", (paths[start:start + LOOKUP_BATCH],))
        for row in txn.fetchall():
            found[row[0]] = _row_metadata(row)
    return found


def _head(txn) -> int:
    txn.execute("SELECT seq FROM journal_head")
    row = txn.fetchone()
    return row[0] if row else 0


def _changes(txn, since: int, limit: int, journal_id: str):
    head = _head(txn)

    def oldest():
        txn.execute("SELECT min(seq) FROM journal")
        return txn.fetchone()[0]

    check_cursor(since, head, oldest, journal_id)
    txn.execute("SELECT seq, operation, source_client, timestamp FROM journal"
                " WHERE seq > %s AND seq <= %s ORDER BY seq LIMIT %s", (since, head, limit + 1))
    return journal_page(txn.fetchall(), limit, since)
