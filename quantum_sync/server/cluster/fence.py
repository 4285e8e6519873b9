"""Locks that hold across the nodes of a cluster: PostgreSQL advisory locks on a
connection of the node's own.

An upload group takes the tree lock shared and one lock per path exclusive, in key order
(no two nodes can wait on each other); every other change (delete, move, new directory,
a rescan) takes the tree lock exclusive. They are held from the preconditions' check to
the journal's commit, so of two racing uploads to one path on two nodes the second sees
the first's result (and gets 412 where its precondition no longer holds). The locks are
session locks: a node that dies drops its connection and so its locks.

An upload group commits on the fence's own connection (:meth:`ClusterFence.commit`):
its transaction and the release of its locks go in one round trip.
"""

import contextlib
import threading
from collections.abc import Mapping

from twisted.logger import Logger

from quantum_sync.errors import SyncError
from quantum_sync.server.cluster.pgindex import CONNECT_OPTIONS, INTENDING, close_quietly, lock_key, rows_by_path, unavailable
from quantum_sync.server.operations import SerialThread


class ClusterFence:
    """``held(paths)``: an async context manager holding the cluster's locks for an
    upload group on ``paths``, or for any other change when ``paths`` is None.

    Used only under the node's own operation lock (one holder at a time per node)."""

    log = Logger()

    def __init__(self, conninfo: str, namespace, reactor):
        self._conninfo = conninfo
        self._namespace = namespace  # a callable: the schema's name, once the index is open
        self._thread = SerialThread(reactor)
        self._connection = None
        self._locked = False  # locks held on the connection (known where it is used)
        self._queued = 0  # calls queued on the fence's thread, not yet done
        #: True while an upload group's locks are held (its commit goes through the fence)
        self.grouping = False
        self._released = False  # the hold's locks went with its commit

    def _keys(self, paths) -> list:
        namespace = self._namespace()
        return sorted({lock_key(namespace, "path:" + path) for path in paths})

    @contextlib.asynccontextmanager
    async def held(self, paths=None, intending=False):
        """With ``intending``, gives the index rows of ``paths`` as a mapping
        (``{path: Row}``) whose first look takes the locks and records the intents to
        write ``paths``, in one round trip, on the thread that looks: the group's install,
        which looks before it writes anything (so the locks cost no thread hop of their
        own)."""
        tree = lock_key(self._namespace(), "tree")
        if intending:
            if self._queued:  # (a release still to run: the connection is used in order)
                await self._on_thread(lambda: None)
            rows = _LockedRows(lambda: self._lock(tree, self._keys(paths), sorted(set(paths))))
        else:
            keys = None if paths is None else self._keys(paths)
            rows = await self._on_thread(self._lock, tree, keys, None)
        self.grouping, self._released = intending, False
        try:
            yield rows
        finally:
            self.grouping = False
            if not self._released:  # (not waited for: the next hold runs after it)
                self._on_thread(self._unlock).addErrback(
                    lambda failure: self.log.failure("releasing the cluster's locks failed", failure))

    def _on_thread(self, function, *args):
        """``function(*args)`` on the fence's thread, after what was queued before."""
        self._queued += 1

        def done(result):
            self._queued -= 1
            return result

        return self._thread.run(function, *args).addBoth(done)

    def _lock(self, tree: int, keys, intended):
        import psycopg

        try:
            if self._connection is None or self._connection.closed:
                self._connection = psycopg.connect(self._conninfo, autocommit=True, **CONNECT_OPTIONS)
            connection = self._connection
            self._locked = True
            if keys is None:
                connection.execute("SELECT pg_advisory_lock(%s)", (tree,))
                return None
            with connection.pipeline():  # the intents go once the locks are granted
                connection.execute(
                    "SELECT pg_advisory_lock_shared(%s), (SELECT count(pg_advisory_lock(k))"
                    " FROM (SELECT unnest(%b::bigint[]) AS k) AS keys)", (tree, keys))
                if intended is not None:
                    cursor = connection.execute(INTENDING, (intended, intended))
            return None if intended is None else rows_by_path(cursor.fetchall())
        except psycopg.Error as error:
            self._drop()
            raise unavailable(error) from None

    async def commit(self, send):
        """While an upload group's locks are held: ``send(cursor)``'s statements in one
        transaction on the fence's connection, then the locks released, all in one
        round trip; the result of the function ``send`` returned."""
        result = await self._on_thread(self._commit, send)
        self._released = True
        return result

    def _commit(self, send):
        import psycopg

        connection = self._connection
        if connection is None or connection.closed:  # (its session, and the locks, are gone)
            raise unavailable("the connection holding the locks was lost")
        try:
            with connection.pipeline():
                cursor = connection.cursor()
                cursor.execute("BEGIN")
                finish = send(cursor)
                cursor.execute("COMMIT")
                cursor.execute("SELECT pg_advisory_unlock_all()")
            self._locked = False
            return finish()
        except BaseException as error:
            # whatever failed, no transaction may stay open on the connection (the next
            # group's intents would go into it): it, and the locks, go with the session
            self._drop()
            if isinstance(error, (psycopg.OperationalError, psycopg.InterfaceError)):
                raise unavailable(error) from None
            raise

    def _unlock(self) -> None:
        import psycopg

        if self._connection is None or not self._locked:
            return
        try:
            self._connection.execute("SELECT pg_advisory_unlock_all()")
            self._locked = False
        except psycopg.Error:
            self._drop()  # the session is gone, and its locks with it

    def _drop(self) -> None:
        connection, self._connection = self._connection, None
        self._locked = False
        close_quietly(connection)

    def close(self) -> None:
        """Close the connection (its locks go with it)."""
        self._on_thread(self._drop)


class _LockedRows(Mapping):
    """An upload group's index rows (``{path: Row}``), read by ``take()`` (which takes
    the group's locks first) at the first look, on the looking thread; a failure is
    raised again at every look after it."""

    def __init__(self, take):
        self._take = take
        self._rows = None
        self._error = None
        self._guard = threading.Lock()

    def _taken(self) -> dict:
        with self._guard:
            if self._rows is None:
                if self._error is not None:
                    raise self._error
                try:
                    self._rows = self._take()
                except SyncError as error:
                    self._error = error
                    raise
            return self._rows

    def __getitem__(self, path):
        return self._taken()[path]

    def __iter__(self):
        return iter(self._taken())

    def __len__(self) -> int:
        return len(self._taken())
