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

from twisted.logger import Logger

from quantum_sync.server.cluster.pgindex import CONNECT_OPTIONS, INTENDING, lock_key, rows_by_path, unavailable
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
        self._locked = False  # (on the fence's thread) locks held on the connection
        #: True while an upload group's locks are held (its commit goes through the fence)
        self.grouping = False

    def _keys(self, paths) -> list:
        namespace = self._namespace()
        return sorted({lock_key(namespace, "path:" + path) for path in paths})

    @contextlib.asynccontextmanager
    async def held(self, paths=None, intending=False):
        """With ``intending``, the intents to write ``paths`` are recorded once the locks
        are held, and the index rows of ``paths`` given (``{path: Row}``), in the same
        round trip (:meth:`PgIndex.get_many_intending`, without a hop of its own)."""
        tree = lock_key(self._namespace(), "tree")
        keys = None if paths is None else self._keys(paths)
        rows = await self._thread.run(self._lock, tree, keys, sorted(set(paths)) if intending else None)
        self.grouping = intending
        try:
            yield rows
        finally:
            self.grouping = False
            # not waited for: the next hold runs on the same thread, after it
            self._thread.run(self._unlock).addErrback(
                lambda failure: self.log.failure("releasing the cluster's locks failed", failure))

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
        return await self._thread.run(self._commit, send)

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
        except psycopg.Error as error:
            self._drop()  # the transaction and the locks go with the session
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
        if connection is not None:
            try:
                connection.close()
            except Exception:
                pass

    def close(self) -> None:
        """Close the connection (its locks go with it)."""
        self._thread.run(self._drop)
