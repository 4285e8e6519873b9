"""One live WebSocket per client id across the nodes of a cluster.

Within a node the hub refuses a second connection with an id (:mod:`quantum_sync.server.ws`).
Across nodes each id's live connection is a row of ``live_clients`` naming the node that
holds it. A ``Subscribe`` claims the row (:meth:`PgIndex.claim_clients`): it is taken from
a node that is not live (:mod:`.presence`: its session and lock gone, or no heartbeat
for :data:`.presence.LIVE_FOR` seconds), never from a live one; then the newcomer gets
``CLIENT_ID_IN_USE`` and the holding node is asked, through Redis, to probe its
connection as a node probes its own (a half-open one goes within the probe's timeout).
A connection that closes gives its row up. After each heartbeat a node claims again
every id it holds, so a row lost while the node was cut off from the database is either
taken back or, where another node took it meanwhile, the connection here is closed.
"""

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from quantum_sync.errors import SyncError
from quantum_sync.server.cluster.presence import LIVE_FOR
from quantum_sync.server.hub import CLOSE_TRY_AGAIN_LATER
from quantum_sync.server.ws import PROBE_TIMEOUT

#: The event a node sends the others to have the holder of a client id probed.
PROBE_EVENT = "probe_client"


class LiveClients:
    """The client ids whose live connections this node holds, shared through ``index``
    (a :class:`.pgindex.PgIndex`); ``hub`` holds the connections, ``ask_probe(client_id)``
    sends the probe request to the other nodes."""

    log = Logger()

    def __init__(self, index, node_id: str, hub, ask_probe, reactor):
        self._index = index
        self._reactor = reactor
        self._batch = None  # (ids given up this reactor turn, fired once they are)
        self.node_id = node_id
        self._hub = hub
        self._ask_probe = ask_probe
        self._claiming = {}  # client id -> claims in flight
        self._releasing = {}  # client id -> a Deferred fired once its row is removed

    async def claim(self, client_id: str) -> bool:
        """True when this node may hold ``client_id``'s connection; False when another
        live node holds it (that node is asked to probe its connection). While the
        database is away this node's own rule stands alone (the next heartbeat settles
        it)."""
        releasing = self._releasing.get(client_id)
        if releasing is not None:
            await releasing
        self._claiming[client_id] = self._claiming.get(client_id, 0) + 1
        try:
            taken = await self._index.claim_clients([client_id], self.node_id, LIVE_FOR)
        except SyncError as error:
            self.log.debug("cannot check client id {client_id} across the nodes: {error}",
                           client_id=client_id, error=error.message)
            return True
        finally:
            self._claiming[client_id] -= 1
            if not self._claiming[client_id]:
                del self._claiming[client_id]
        if taken:
            self._ask_probe(client_id)
            return False
        return True

    def release(self, client_id: str) -> None:
        """No connection here holds ``client_id`` any more: give its row up (with the
        others given up in the same reactor turn, in one statement)."""
        if client_id in self._claiming or client_id in self._releasing:
            return
        if self._batch is None:
            self._batch = ([], Deferred())
            self._reactor.callLater(0, self._release_all)
        released, done = self._batch
        released.append(client_id)
        self._releasing[client_id] = done

    def _release_all(self) -> None:
        (released, done), self._batch = self._batch, None
        releasing = Deferred.fromCoroutine(self._index.release_clients(released, self.node_id))
        releasing.addErrback(lambda failure: self.log.debug(
            "cannot give up {count} client ids: {error}", count=len(released), error=failure.value))
        releasing.addBoth(self._released, released, done)

    def _released(self, _, released, done) -> None:
        for client_id in released:
            self._releasing.pop(client_id, None)
        done.callback(None)

    def probe(self, client_id: str) -> None:
        """Another node asks: probe the connection holding ``client_id`` here, or give
        the row up where none does (its close raced the other node's claim)."""
        holder = self._hub.holder(client_id)
        if holder is not None:
            holder.probe(PROBE_TIMEOUT)
        else:
            self.release(client_id)

    async def renew(self) -> None:
        """Claim again every id held here; close the connections whose ids another node
        holds now."""
        held = self._hub.client_ids()
        if not held:
            return
        try:
            taken = await self._index.claim_clients(held, self.node_id, LIVE_FOR)
        except Exception as error:  # the database away: next time
            self.log.debug("cannot renew the client ids held here: {error}", error=error)
            return
        for client_id in taken:
            holder = self._hub.holder(client_id)
            if holder is not None:
                self.log.warn("client id {client_id} was taken by another node while this one was"
                              " cut off; closing its connection here", client_id=client_id)
                holder.close(CLOSE_TRY_AGAIN_LATER, "client id in use on another node")
