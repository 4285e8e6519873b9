"""Restores that hold a version across the nodes of a cluster.

A restore reads a version's file from the shared versions area; a pruning on any node
(the leader's pass, or the limits a recording applies) must leave it meanwhile. The
restore holds the version's PostgreSQL advisory lock shared, on a session of the node's
own, from before it reads the version's row until its copy is made; a pruning tries the
lock exclusive in the transaction that would forget the row (held to its commit, never
waited for) and leaves the versions it cannot take, for a later pruning. So a pruning
either forgets a version before a restore reads its row (the restore answers
``NOT_FOUND``) or leaves it until the restore is done. A node that dies drops its
session, and its holds with it.
"""

from quantum_sync.errors import SyncError
from quantum_sync.server.cluster.pgindex import CONNECT_OPTIONS, close_quietly, lock_key, unavailable
from quantum_sync.server.operations import SerialThread

#: How long a restore waits for a pruning's transaction that holds its version (the
#: transaction is short: this bounds one left hanging by a node cut off mid-way).
LOCK_TIMEOUT = "10s"


class VersionReads:
    """:class:`quantum_sync.server.versions.LocalReads` for a cluster node: ``namespace``
    (a callable) names the schema once the index is open."""

    def __init__(self, conninfo: str, namespace, reactor):
        self._conninfo = conninfo
        self._namespace = namespace
        self._thread = SerialThread(reactor)
        self._connection = None

    def _key(self, version_id: str) -> int:
        return lock_key(self._namespace(), "version:" + version_id)

    async def hold(self, version_id: str) -> None:
        """Keep ``version_id`` from every node's prunings until :meth:`release`
        (SERVICE_UNAVAILABLE when the database cannot be asked)."""
        await self._thread.run(self._lock, self._key(version_id))

    async def release(self, version_id: str) -> None:
        await self._thread.run(self._unlock, self._key(version_id))

    def free(self, txn, ids) -> set:
        """Those of ``ids`` no restore on any node holds, taken until ``txn`` ends."""
        keys = {self._key(version_id): version_id for version_id in ids}
        txn.execute("SELECT k FROM unnest(?::bigint[]) AS k WHERE pg_try_advisory_xact_lock(k)", (list(keys),))
        return {keys[row[0]] for row in txn.fetchall()}

    def _lock(self, key: int) -> None:
        import psycopg

        try:
            if self._connection is None or self._connection.closed:
                self._connection = psycopg.connect(self._conninfo, autocommit=True, **CONNECT_OPTIONS)
                self._connection.execute(f"SET lock_timeout = '{LOCK_TIMEOUT}'")
            self._connection.execute("SELECT pg_advisory_lock_shared(%s)", (key,))
        except psycopg.errors.LockNotAvailable:  # (the session, and the other holds, stay)
            raise SyncError("SERVICE_UNAVAILABLE", "the version is busy; try again", retryAfter=2) from None
        except psycopg.Error as error:
            self._drop()  # (the holds of the restores under way go with the session)
            raise unavailable(error) from None

    def _unlock(self, key: int) -> None:
        import psycopg

        if self._connection is None:
            return  # the session went, and the hold with it
        try:
            self._connection.execute("SELECT pg_advisory_unlock_shared(%s)", (key,))
        except psycopg.Error:
            self._drop()

    def _drop(self) -> None:
        connection, self._connection = self._connection, None
        close_quietly(connection)

    def close(self) -> None:
        """Close the session (its holds go with it)."""
        self._thread.run(self._drop)
