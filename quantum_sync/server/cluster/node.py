"""One node of a cluster: the parts of :mod:`quantum_sync.server.cluster` put together
for a :class:`quantum_sync.server.service.ServerService`.

The service asks the node for its index (:class:`.pgindex.PgIndex`) and fence
(:class:`.fence.ClusterFence`); its FileOperations hand every journalled change to
:meth:`ClusterNode.offer`, which publishes it to the other nodes and delivers it, in
order with theirs, to the node's own hub.
"""

import socket

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from quantum_sync.config import ConfigError
from quantum_sync.errors import is_unavailable
from quantum_sync.protocol import format_time
from quantum_sync.server.cluster.bindings import ClusterBindings
from quantum_sync.server.cluster.events import EventRelay
from quantum_sync.server.cluster.feed import Feed
from quantum_sync.server.cluster.fence import ClusterFence
from quantum_sync.server.cluster.leader import Leadership
from quantum_sync.server.cluster.liveclients import PROBE_EVENT, LiveClients
from quantum_sync.server.cluster.pgindex import CONNECT_OPTIONS, PgIndex, SchemaError, create_schema
from quantum_sync.server.cluster.presence import Presence
from quantum_sync.server.cluster.redisbus import RedisAddress, RedisBus
from quantum_sync.server.cluster.relaypeers import ENDED as RELAY_ENDED
from quantum_sync.server.cluster.relaypeers import STARTED as RELAY_STARTED
from quantum_sync.server.cluster.relaypeers import RelayPeers
from quantum_sync.server.cluster.versionreads import VersionReads
from quantum_sync.server.hub import RELAYED_EVENTS


def default_node_id(listeners, hostname=None, pid=None) -> str:
    """Host name and the port of the first listener (``host:8080``); where that port is
    not fixed in the config (0, a UNIX socket), host name and process id."""
    import os

    host = (hostname or socket.gethostname()).split(".")[0] or "node"
    for listener in listeners:
        kind, _, rest = listener.endpoint.partition(":")
        port = rest.split(":", 1)[0]
        if kind in ("tcp", "tcp6", "ssl") and port.isdigit() and int(port):
            return f"{host}:{port}"
    return f"{host}:pid{pid or os.getpid()}"


def preflight(cluster, source: str) -> None:
    """Blocking, before the reactor runs: reach the database (creating or checking its
    schema) and Redis; ConfigError with one line when either cannot be used."""
    import psycopg

    where = f"{source}: cluster"
    try:
        with psycopg.connect(cluster.database, **CONNECT_OPTIONS) as connection:
            with connection.cursor() as cursor:
                create_schema(cursor)
    except SchemaError as error:
        raise ConfigError(f"{where}.database: {error}") from None
    except psycopg.Error as error:
        reason = " ".join(str(error).split())[:300]
        raise ConfigError(f"{where}.database: cannot use the database: {reason}") from None
    try:
        address = RedisAddress.parse(cluster.redis)
    except ValueError as error:
        raise ConfigError(f"{where}.redis: {error}") from None
    try:
        with socket.create_connection((address.host, address.port), timeout=5) as connection:
            if address.password is not None:
                connection.sendall(b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n" % (
                    len(address.password.encode()), address.password.encode()))
            connection.sendall(b"*1\r\n$4\r\nPING\r\n")
            answer = connection.recv(256)
    except OSError as error:
        raise ConfigError(f"{where}.redis: cannot reach Redis at {address.host}:{address.port}:"
                          f" {error.strerror or error}") from None
    if b"+PONG" not in answer:
        raise ConfigError(f"{where}.redis: Redis at {address.host}:{address.port} answered"
                          f" {answer.decode('utf-8', 'replace').strip()[:100]!r}")


#: Seconds between the new leader's tries to rescan the root while the database is away.
RESCAN_RETRY = 2.0


class ClusterNode:
    """A cluster node's shared index, fence, feed, bus, leadership and heartbeat."""

    log = Logger()

    def __init__(self, cluster, node_id: str, retention: int, reactor, clock=None):
        self.cluster = cluster
        self.node_id = node_id
        self._reactor = reactor
        self.redis = RedisAddress.parse(cluster.redis)
        self.index = PgIndex(cluster.database, retention, reactor)
        self.fence = ClusterFence(cluster.database, lambda: self.index.namespace, reactor)
        self.index.fence = self.fence  # an upload group commits on the fence's connection
        #: what restores read of the shared versions area, held from every node's prunings
        self.version_reads = VersionReads(cluster.database, lambda: self.index.namespace, reactor)
        #: client ids bound to users (used with ``auth``), kept in the database and
        #: pruned by the leader (``clock``: a test's Clock, else the reactor)
        self.bindings = ClusterBindings(self.index, clock or reactor)
        self.feed = None
        self.bus = None
        self.events = None
        self.leadership = None
        self.presence = None
        self.clients = None
        self.relays = None  # the large uploads relayed across nodes (with ``relay`` on)
        self.started = format_time(reactor.seconds())
        self._service = None
        self._rescan = None  # the leader's rescan of the whole root, when it began leading
        self._rescan_retry = None  # its next try, while the database is away
        self._outgoing = []  # this node's changes of this reactor turn, for the other nodes

    async def start(self, service) -> None:
        """After the index opened: follow the journal from its head, hear the other
        nodes, beat, and try to lead."""
        self._service = service
        operations = service.operations
        head = await self.index.head()
        operations.head = head
        self.feed = Feed(self.index, self._deliver, self._reactor)
        self.feed.start(head)
        self.bus = RedisBus(self.redis, self.index.journal_id, self._reactor,
                            self.feed.offer, self._redis_up, self.node_id, self._heard_event)
        self.events = EventRelay(self.index, self.bus, self.node_id, self._reactor, self._peer_event,
                                 lambda: len(self.presence.live) if self.presence is not None else 1)
        self.bus.start()
        self.events.start()
        service.hub.relay = self._relay_event
        if service.config.handler.relay:
            self.relays = RelayPeers(service.api.relays, service.store.root, self._send_event)
            service.api.relays.peers = self.relays
        self.clients = LiveClients(self.index, self.node_id, service.hub, self._ask_probe, self._reactor)
        service.hub.claims = self.clients
        self.presence = Presence(self.cluster.database, self.index.namespace, self.node_id, self._address,
                                 self.started, self._reactor, after_beat=self.clients.renew)
        await self.presence.start()  # live before it serves: its claims hold from the first
        self.leadership = Leadership(self.cluster.database, self.index.namespace, self._reactor,
                                     self._lead)
        await self.leadership.start()

    def _address(self) -> str:
        for listener in self._service.listeners:
            if listener.port is not None:
                host = listener.port.getHost()
                return f"{getattr(host, 'host', '')}:{getattr(host, 'port', '')}"
        return ""

    def offer(self, change) -> None:
        """A change this node journalled: to its own hub in order and, with the others
        journalled in the same reactor turn (a group's), to the other nodes in one
        message."""
        self.feed.offer([change])
        if not self._outgoing:
            self._reactor.callLater(0, self._send)
        self._outgoing.append(change)

    def _send(self) -> None:
        changes, self._outgoing = self._outgoing, []
        self.bus.publish(changes)

    def _relay_event(self, kind, data) -> None:
        self._send_event(kind, {**data, "node_id": self.node_id})

    def _ask_probe(self, client_id: str) -> None:
        self._send_event(PROBE_EVENT, {"id": client_id})

    def _send_event(self, kind, data) -> None:
        self.events.send(kind, data, format_time(self._reactor.seconds()))

    def _redis_up(self, up: bool) -> None:
        self.feed.redis_up(up)
        self.events.redis_up(up)

    def _heard_event(self, kind, data, timestamp, uid) -> None:
        self.events.heard(kind, data, timestamp, uid)

    def _peer_event(self, kind, data, timestamp) -> None:
        if kind == PROBE_EVENT and isinstance(data.get("id"), str):
            self.clients.probe(data["id"])
        elif kind in (RELAY_STARTED, RELAY_ENDED) and self.relays is not None:
            self.relays.heard(kind, data)
        elif kind in RELAYED_EVENTS:
            self._service.hub.relayed_event(kind, data, timestamp)

    def _deliver(self, changes) -> None:
        service = self._service
        if len(changes) == 1:  # (a burst only pays for several: it holds each subscriber's)
            service.operations.head = changes[0].seq
            service.hub.publish(changes[0])
            return
        with service.hub.burst():
            for change in changes:
                service.operations.head = change.seq
                service.hub.publish(change)

    def _lead(self, leading: bool) -> None:
        self._service.versions.lead(leading)  # the shared versions area: pruned by one node
        self.bindings.lead(leading)  # and the client ids' bindings
        watcher = self._service.watcher
        if leading:
            watcher.startService()
            self._rescan_root()
        elif watcher.running:
            watcher.stopService()

    def _rescan_root(self) -> None:
        """What changed while no node watched (or before this cluster started); while
        the database is away, again every :data:`RESCAN_RETRY` seconds as long as this
        node leads."""
        self._rescan_retry = None
        if self.leadership is None or not self.leadership.leading:
            return
        self._rescan = Deferred.fromCoroutine(self._service.operations.refresh(None))
        self._rescan.addErrback(self._rescan_failed)

    def _rescan_failed(self, failure) -> None:
        if is_unavailable(failure):
            self.log.warn("rescanning the root waits for the database: {error}", error=failure.value.message)
            self._rescan_retry = self._reactor.callLater(RESCAN_RETRY, self._rescan_root)
        else:
            self.log.failure("rescanning the root failed", failure)

    def figures(self) -> dict:
        """What the monitoring endpoints show of the cluster."""
        return {
            "node_id": self.node_id,
            "nodes": self.presence.live if self.presence is not None else [],
            "leader": bool(self.leadership and self.leadership.leading),
            "redis": bool(self.bus and self.bus.up),
        }

    async def stop(self) -> None:
        if self._rescan is not None:  # (it needs the index, closed after this)
            await self._rescan
        if self._rescan_retry is not None:  # (one its failure may have asked for)
            self._rescan_retry.cancel()
            self._rescan_retry = None
        if self.leadership is not None:
            await self.leadership.stop()
            await self.bindings.stop()
            watcher = self._service.watcher
            if watcher.running:
                await watcher.stopService()
        if self.presence is not None:
            self.presence.stop()
            await self.presence.leave()
        if self.feed is not None:
            self.feed.stop()
        if self.events is not None:
            self.events.stop()
        if self.bus is not None:
            await self.bus.stop()
        self.fence.close()
        self.version_reads.close()
