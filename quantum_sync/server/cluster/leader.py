"""One node at a time watches and rescans the shared root, prunes its versions area and
forgets the client ids long unseen: the holder of a PostgreSQL session advisory lock on
a connection of its own. A node that dies drops its connection, the lock goes with it,
and the next node to try takes over."""

from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from quantum_sync.server.cluster.pgindex import CONNECT_OPTIONS, close_quietly, lock_key
from quantum_sync.server.operations import SerialThread


class Leadership:
    """Tries for the lock every ``interval`` seconds; ``on_change(leading)`` hears when
    this node becomes the leader or stops being it (its connection lost)."""

    log = Logger()

    def __init__(self, conninfo: str, namespace: str, reactor, on_change, interval: float = 2.0):
        self._conninfo = conninfo
        self._key = lock_key(namespace, "leader")
        self._reactor = reactor
        self._on_change = on_change
        self._thread = SerialThread(reactor)
        self._connection = None
        self.leading = False
        self._loop = LoopingCall(self._check)
        self._loop.clock = reactor
        self.interval = interval

    async def start(self) -> None:
        """Try once, then every ``interval`` seconds."""
        await self._check()
        self._loop.start(self.interval, now=False)

    def stop(self) -> Deferred:
        if self._loop.running:
            self._loop.stop()
        return self._thread.run(self._drop)

    async def _check_async(self):
        leading = await self._thread.run(self._try)
        if leading != self.leading:
            self.leading = leading
            self.log.info("this node {what} the root's watcher",
                          what="is now" if leading else "is no longer")
            self._on_change(leading)

    def _check(self):
        return Deferred.fromCoroutine(self._check_async())

    def _try(self) -> bool:
        """Blocking: True while this node holds the lock."""
        import psycopg

        try:
            if self._connection is None:
                self._connection = psycopg.connect(self._conninfo, autocommit=True, **CONNECT_OPTIONS)
            if self.leading:
                self._connection.execute("SELECT 1")  # still there, so still held
                return True
            return bool(self._connection.execute("SELECT pg_try_advisory_lock(%s)",
                                                 (self._key,)).fetchone()[0])
        except psycopg.Error:
            self._drop()
            return False

    def _drop(self) -> None:
        connection, self._connection = self._connection, None
        close_quietly(connection)
