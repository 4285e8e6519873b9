"""The live nodes of a cluster: each node writes its heartbeat row (``nodes.seen``)
every few seconds; a node seen within :data:`LIVE_FOR` seconds is live."""

from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

#: A node whose heartbeat is older than this is not listed as live.
LIVE_FOR = 15
HEARTBEAT = 5.0


class Presence:
    """Keeps this node's heartbeat and the list of live nodes (``live``: dicts with
    ``node_id``, ``address``, ``started``), read by the monitoring endpoints."""

    log = Logger()

    def __init__(self, index, node_id: str, address, started: str, reactor, interval: float = HEARTBEAT):
        self._index = index
        self.node_id = node_id
        self._address = address  # a callable: where the node listens
        self._started = started
        self.live = [{"node_id": node_id, "address": "", "started": started}]
        self._loop = LoopingCall(lambda: Deferred.fromCoroutine(self.beat()))
        self._loop.clock = reactor
        self._interval = interval

    def start(self) -> None:
        self._loop.start(self._interval, now=True)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    async def beat(self) -> None:
        """Write the heartbeat and read who else is live (a database away: next time)."""
        try:
            self.live = await self._index.heartbeat(self.node_id, self._address(), self._started, LIVE_FOR)
        except Exception as error:
            self.log.debug("heartbeat failed: {error}", error=error)

    async def leave(self) -> None:
        """Remove this node's row (a clean stop)."""
        try:
            await self._index.forget_node(self.node_id)
        except Exception:
            pass
