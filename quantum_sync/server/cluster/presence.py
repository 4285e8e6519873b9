"""The live nodes of a cluster.

Each node keeps a PostgreSQL session of its own, which holds an advisory lock named
after the node for as long as the session lives, and writes the node's heartbeat row
(``nodes.seen``) on it every few seconds. A node is live while it holds that lock and
was seen within :data:`LIVE_FOR` seconds: a node that dies loses its session and the lock
at once (PostgreSQL sees the connection close), and a host gone silent stops beating.
What a node holds on behalf of its clients (:mod:`.liveclients`) is its own only while
it is live.
"""

from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from quantum_sync.server.cluster.pgindex import CONNECT_OPTIONS, close_quietly, lock_key
from quantum_sync.server.operations import SerialThread

#: A node whose heartbeat is older than this is not live.
LIVE_FOR = 15
HEARTBEAT = 5.0

_BEAT = ("INSERT INTO nodes (node_id, address, started, seen, session_key) VALUES (%s, %s, %s, now(), %s)"
         " ON CONFLICT (node_id) DO UPDATE SET address = EXCLUDED.address, started = EXCLUDED.started,"
         " seen = now(), session_key = EXCLUDED.session_key")
_LIVE = ("SELECT node_id, address, started FROM nodes"
         " WHERE seen > now() - make_interval(secs => %s) ORDER BY node_id")


def node_key(namespace: str, node_id: str) -> int:
    """The advisory lock a live node's session holds."""
    return lock_key(namespace, "node:" + node_id)


class Presence:
    """Keeps this node's session, its lock and heartbeat, and the list of live nodes
    (``live``: dicts with ``node_id``, ``address``, ``started``), read by the monitoring
    endpoints. ``after_beat()`` (a coroutine function) runs after each beat."""

    log = Logger()

    def __init__(self, conninfo: str, namespace: str, node_id: str, address, started: str, reactor,
                 after_beat=None, interval: float = HEARTBEAT):
        self._conninfo = conninfo
        self.node_id = node_id
        self.session_key = node_key(namespace, node_id)
        self._address = address  # a callable: where the node listens
        self._started = started
        self._after_beat = after_beat
        self._thread = SerialThread(reactor)
        self._connection = None
        self._locked = False
        self.live = [{"node_id": node_id, "address": "", "started": started}]
        self._loop = LoopingCall(lambda: Deferred.fromCoroutine(self.beat()))
        self._loop.clock = reactor
        self._interval = interval

    async def start(self) -> None:
        """Forget what a previous run of this node held, beat once, then every few seconds."""
        try:
            await self._thread.run(self._forget_held)
        except Exception as error:
            self.log.warn("cannot clear this node's client ids from before: {error}", error=error)
        await self.beat()
        self._loop.start(self._interval, now=False)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    async def beat(self) -> None:
        """Write the heartbeat and read who else is live (a database away: next time)."""
        try:
            self.live = await self._thread.run(self._beat, self._address())
        except Exception as error:
            self.log.debug("heartbeat failed: {error}", error=error)
        if self._after_beat is not None:
            await self._after_beat()

    async def leave(self) -> None:
        """Remove this node's row and what it held, and end its session (a clean stop)."""
        try:
            await self._thread.run(self._leave)
        except Exception:
            pass
        await self._thread.run(self._drop)

    # -- on the session's thread ------------------------------------------------------

    def _session(self):
        import psycopg

        if self._connection is None or self._connection.closed:
            self._connection = psycopg.connect(self._conninfo, autocommit=True, **CONNECT_OPTIONS)
            self._locked = False
        if not self._locked:
            self._locked = self._connection.execute("SELECT pg_try_advisory_lock(%s)",
                                                    (self.session_key,)).fetchone()[0]
            if not self._locked:
                self.log.warn("another process holds node id {node_id}: give each node its own",
                              node_id=self.node_id)
        return self._connection

    def _run(self, work):
        import psycopg

        try:
            connection = self._session()
            with connection.transaction():
                return work(connection)
        except psycopg.Error:
            self._drop()
            raise

    def _beat(self, address: str) -> list:
        def work(connection):
            connection.execute(_BEAT, (self.node_id, address, self._started, self.session_key))
            rows = connection.execute(_LIVE, (LIVE_FOR,)).fetchall()
            return [{"node_id": n, "address": a, "started": s} for n, a, s in rows]

        return self._run(work)

    def _forget_held(self) -> None:
        self._run(lambda c: c.execute("DELETE FROM live_clients WHERE node_id = %s", (self.node_id,)))

    def _leave(self) -> None:
        def work(connection):
            connection.execute("DELETE FROM live_clients WHERE node_id = %s", (self.node_id,))
            connection.execute("DELETE FROM nodes WHERE node_id = %s", (self.node_id,))

        self._run(work)

    def _drop(self) -> None:
        connection, self._connection = self._connection, None
        self._locked = False
        close_quietly(connection)
