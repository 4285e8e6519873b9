"""The broadcast hub: one object every change flows through, whoever made it.

The REST API, the WebSocket factory and the root watcher all hand journalled changes to
:meth:`Hub.publish`; PeerVault events and alerts go through :meth:`Hub.event` and
:meth:`Hub.alert`. The hub knows nothing about Autobahn: it talks to connections through
the small interface of :class:`IHubConnection` (implemented by ``ws.HubProtocol``), so its
logic is tested with a :class:`twisted.internet.task.Clock` and plain fakes.

Three LoopingCalls run while the service runs, each logging and surviving its own errors:
the heartbeat (a WebSocket ping to every connection every ``ping_interval``, and the
deadline for messages still being assembled from fragments), the stale cleanup (drop
connections silent for ``stale_timeout``, checked every ``cleanup_interval``) and the
``system_metrics`` tick (every ``metrics_interval``, which also raises storage and
performance alerts).
"""

import contextlib
import shutil

from twisted.application.service import Service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import Attribute, Interface

from quantum_sync.protocol import format_time
from quantum_sync.server import messages
from quantum_sync.server.metrics import Metrics

#: The events a cluster node also sends to the other nodes' subscribers (each node sends
#: its own ``system_metrics``, and announces the uploads it relays itself, the other
#: nodes' included: cluster/relaypeers.py).
RELAYED_EVENTS = frozenset({"peer_connected", "peer_disconnected", "storage_alert",
                            "performance_alert", "security_alert"})

#: WebSocket close codes the hub and the protocol use (RFC 6455 / IANA registry).
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_TRY_AGAIN_LATER = 1013


class IHubConnection(Interface):
    """What the hub needs of one WebSocket connection (and, optionally, a
    ``send_many(payloads)`` that sends several messages in order in one write, and on
    its class a ``send_all(connections, payloads, failed)`` that sends the same messages
    to many connections of the class, calling ``failed(connection)`` inside the handler
    of an exception one of them raised)."""

    client_id = Attribute("The id named by Subscribe, or None")
    address = Attribute("The peer's address, 'host:port'")
    connected_at = Attribute("Clock time the connection was made")
    last_seen = Attribute("Clock time of the last bytes received")
    assembling_since = Attribute("Clock time the message being assembled began, or None")
    topics = Attribute("The set of topics subscribed to")

    def send(payload):
        """Queue one text message (bytes); never blocks, never grows without bound."""

    def send_ping():
        """Send a WebSocket ping frame."""

    def close(code, reason):
        """Start a closing handshake with ``code``."""

    def abort(reason):
        """Drop the connection at once; ``reason`` goes into peer_disconnected."""


class Hub(Service):
    """Fans out journal changes and PeerVault events to WebSocket subscribers.

    :param config: the ``websocket`` settings (``WebSocketConfig``): intervals, limits
        and alert thresholds.
    :param clock: an ``IReactorTime`` (the reactor, or a ``Clock`` in tests).
    :param metrics: the server's :class:`Metrics`.
    :param storage_root: where free space is measured (the sync root), or None.
    :param journal_head: a callable returning the journal's newest ``seq``; without
        it the hub reports the newest seq it has published.
    :param journal_id: a callable returning the journal's identity, which every
        ``FileOperation`` broadcast carries.
    :param cluster: on a cluster node, a callable returning what the figures show of
        the cluster (``node_id``, the live ``nodes``, ...).
    """

    log = Logger()

    def __init__(self, config, clock, metrics=None, storage_root=None, journal_head=None,
                 journal_id=lambda: "", cluster=None):
        self.config = config
        self.clock = clock
        self.metrics = metrics if metrics is not None else Metrics(clock=clock.seconds)
        self.storage_root = storage_root
        self._journal_head = journal_head
        self._journal_id = journal_id
        self._cluster = cluster
        #: On a cluster node, ``relay(kind, data)`` hands the events of
        #: :data:`RELAYED_EVENTS` to the other nodes.
        self.relay = None
        self.connections = set()
        self._clients = {}  # client id -> the connection that named itself so
        #: :class:`~quantum_sync.server.clientids.ClientIdBindings` with auth on, else None
        self.bindings = None
        #: ``block_lists(sha256)``: the short block list of a new version, carried in its
        #: FileOperation (:meth:`quantum_sync.server.delta.Deltas.offered`), or None
        self.block_lists = None
        #: On a cluster node, the client ids whose connections the node holds
        #: (:class:`~quantum_sync.server.cluster.liveclients.LiveClients`), else None
        self.claims = None
        self._subscribers = {topic: set() for topic in messages.TOPICS}
        self.last_seq = 0
        self._bursts = 0  # burst() blocks open
        self._held = []  # (payload, connections) of the broadcasts made in a burst
        self._alerting = set()
        self._loops = []

    # -- service lifecycle --------------------------------------------------------------

    def startService(self):
        super().startService()
        for interval, work in (
            (self.config.ping_interval, self.heartbeat),
            (self.config.cleanup_interval, self.cleanup),
            (self.config.metrics_interval, self.metrics_tick),
        ):
            if not interval:  # off (config.py refuses 0 for the timers that cannot be)
                continue
            loop = LoopingCall(self._survive, work)
            loop.clock = self.clock
            loop.start(interval, now=False)
            self._loops.append(loop)

    def stopService(self):
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._loops = []
        for connection in list(self.connections):
            connection.close(CLOSE_GOING_AWAY, "server shutting down")
        return super().stopService()

    def _survive(self, work):
        """Run one periodic task; a failure is logged and the loop goes on."""
        try:
            work()
        except Exception:
            self.log.failure("periodic hub task {task} failed", task=work.__name__)

    # -- connections and topics ---------------------------------------------------------

    def attach(self, connection) -> None:
        """A WebSocket connection opened (it receives nothing until it subscribes)."""
        self.connections.add(connection)

    def detach(self, connection, reason: str = "closed") -> None:
        """A connection went; announce it if it had named itself."""
        if connection not in self.connections:
            return
        self.connections.discard(connection)
        for topic in connection.topics:
            self._subscribers[topic].discard(connection)
        if self._clients.get(connection.client_id) is connection:
            del self._clients[connection.client_id]
            self.release(connection.client_id)
        if connection.client_id is not None:
            self.event(
                "peer_disconnected",
                {"id": connection.client_id, "reason": reason, "timestamp": self._now()},
            )

    def identify(self, connection, client_id: str) -> None:
        """Subscribe (seed form): name the connection, subscribe it to file_operations
        and announce ``peer_connected``."""
        if self._clients.get(connection.client_id) is connection:
            del self._clients[connection.client_id]
            if connection.client_id != client_id:
                self.release(connection.client_id)
        if connection in self.connections:
            self._clients[client_id] = connection
        connection.client_id = client_id
        self.subscribe(connection, "file_operations")
        self.event(
            "peer_connected",
            {"id": client_id, "address": connection.address, "timestamp": self._now()},
        )

    def holder(self, client_id: str):
        """The open connection that named itself ``client_id``, or None."""
        return self._clients.get(client_id)

    def client_ids(self) -> list:
        """The client ids of the open connections that named themselves."""
        return list(self._clients)

    def release(self, client_id: str) -> None:
        """On a cluster node, give ``client_id`` up unless a connection here holds it."""
        if self.claims is not None and client_id not in self._clients:
            self.claims.release(client_id)

    def subscribe(self, connection, topic: str) -> None:
        if connection in self.connections:
            connection.topics.add(topic)
            self._subscribers[topic].add(connection)

    def unsubscribe(self, connection, topic: str) -> None:
        connection.topics.discard(topic)
        self._subscribers[topic].discard(connection)

    def subscriber_count(self, topic: str) -> int:
        return len(self._subscribers[topic])

    # -- broadcasting -------------------------------------------------------------------

    def publish(self, change) -> None:
        """Broadcast ``change`` (a journalled :class:`quantum_sync.protocol.Change`) to
        every ``file_operations`` subscriber except its source client.

        Called in journal order on the reactor thread; a seq at or below the last one
        published is a duplicate and is dropped, so each change goes out exactly once.
        """
        if change.seq <= self.last_seq:
            self.log.warn(
                "hub: change {seq} is not newer than {last}; not broadcast again",
                seq=change.seq,
                last=self.last_seq,
            )
            return
        self.last_seq = change.seq
        self._deliver(messages.file_operation(change, self._journal_id(), self._blocks_of(change)),
                      self._audience("file_operations", change.source_client))

    def _blocks_of(self, change):
        """The block list offered for the version a change names (:attr:`block_lists`), or None."""
        metadata = getattr(change.operation, "metadata", None)
        if self.block_lists is None or metadata is None or metadata.is_directory:
            return None
        return self.block_lists(metadata.hash)

    def event(self, kind: str, data: dict, skip_client: str = "") -> None:
        """Send a PeerVault event to the subscribers of its topic (except the connections
        of ``skip_client``, where given); on a cluster node, the peer and alert events
        go to the other nodes' subscribers too (:attr:`relay`)."""
        self._deliver(messages.event(kind, data, self._now()), self._audience(messages.EVENT_TOPICS[kind], skip_client))
        if self.relay is not None and kind in RELAYED_EVENTS:
            self.relay(kind, data)

    def relayed_event(self, kind: str, data: dict, timestamp: str) -> None:
        """An event another node of the cluster sent: to this node's subscribers only."""
        self._deliver(messages.event(kind, data, timestamp), self._audience(messages.EVENT_TOPICS[kind], ""))

    def _audience(self, topic: str, skip_client: str) -> list:
        """The subscribers of ``topic``, without the connections of ``skip_client`` (when
        it is given)."""
        if not skip_client:
            return list(self._subscribers[topic])
        return [c for c in self._subscribers[topic] if c.client_id != skip_client]

    @contextlib.contextmanager
    def burst(self):
        """Broadcasts made inside go to each connection together when the block ends: one
        write per connection for a whole group of changes rather than one per change (the
        same messages, in the same order)."""
        self._bursts += 1
        try:
            yield
        finally:
            self._bursts -= 1
            if not self._bursts:
                held, self._held = self._held, []
                self._release(held)

    def _deliver(self, payload: bytes, connections) -> None:
        """The same bytes to each connection (held until the end of a burst)."""
        if self._bursts:
            self._held.append((payload, connections))
        else:
            self._fan_out(payload, connections)

    def _fan_out(self, payload: bytes, connections) -> None:
        """One broadcast: the connections of each class together."""
        kinds = {}
        for connection in connections:
            kind = type(connection)
            if kind in kinds:
                kinds[kind].append(connection)
            else:
                kinds[kind] = [connection]
        payloads = [payload]
        for kind, group in kinds.items():
            self._send_all(kind, group, payloads)

    def _release(self, held) -> None:
        """A burst's ``(payload, connections)`` broadcasts, in order: each connection's
        messages together, and the connections of one class that get the same messages
        (the same objects) together."""
        if len(held) == 1:
            self._fan_out(*held[0])
            return
        each = {}
        for payload, connections in held:
            for connection in connections:
                each.setdefault(id(connection), (connection, []))[1].append(payload)
        groups = {}
        for connection, payloads in each.values():
            key = (type(connection), *map(id, payloads))
            if key in groups:
                groups[key][0].append(connection)
            else:
                groups[key] = ([connection], payloads)
        for (kind, *_), (connections, payloads) in groups.items():
            self._send_all(kind, connections, payloads)

    def _send_all(self, kind, connections, payloads) -> None:
        """``payloads`` to ``connections``, all of class ``kind``: through the class's
        ``send_all`` where it has one, else one by one."""
        send_all = getattr(kind, "send_all", None)
        if send_all is not None:
            send_all(connections, payloads, self._failed)
        else:
            for connection in connections:
                self._send(connection, payloads)

    def _send(self, connection, payloads) -> None:
        """``payloads`` to one connection; one that fails is dropped, the rest still get
        theirs."""
        try:
            send_many = getattr(connection, "send_many", None)
            if send_many is not None and len(payloads) > 1:
                send_many(payloads)
            else:
                for payload in payloads:
                    connection.send(payload)
        except Exception:
            self._failed(connection)

    def _failed(self, connection) -> None:
        """Sending to ``connection`` raised (called in the handler): log it, drop it."""
        self.log.failure("hub: sending to {address} failed", address=connection.address)
        connection.abort("error")

    def alert(self, kind: str, data: dict) -> None:
        """Send a PeerVault event on the ``alerts`` topic (``security_alert``,
        ``storage_alert``, ``performance_alert``) to subscribers of that topic."""
        self.log.warn("{kind}: {data}", kind=kind, data=data)
        self.event(kind, {**data, "timestamp": data.get("timestamp", self._now())})

    # -- periodic work ------------------------------------------------------------------

    def heartbeat(self) -> None:
        """Ping every connection; close those still assembling a fragmented message
        begun more than ``ping_interval`` ago (a trickle keeps ``last_seen`` fresh, so
        the stale cleanup alone would never catch it)."""
        now = self.clock.seconds()
        deadline = self.config.ping_interval
        for connection in list(self.connections):
            started = connection.assembling_since
            if started is not None and now - started > deadline:
                connection.close(CLOSE_POLICY, "message took too long to arrive")
            else:
                connection.send_ping()

    def cleanup(self) -> None:
        """Drop connections that sent nothing (not even a pong) for ``stale_timeout``."""
        now = self.clock.seconds()
        for connection in list(self.connections):
            if now - connection.last_seen > self.config.stale_timeout:
                self.log.info(
                    "hub: dropping stale connection {address} ({client_id})",
                    address=connection.address,
                    client_id=connection.client_id,
                )
                connection.abort("timeout")
                self.detach(connection, "timeout")

    def metrics_tick(self) -> None:
        """Publish ``system_metrics`` and raise storage/performance alerts on crossing
        ``storage_alert_free_bytes`` / ``performance_alert_ms`` (0 disables either)."""
        figures = self.figures()
        self.event("system_metrics", figures)
        free_floor = self.config.storage_alert_free_bytes
        available = figures["storage"]["available_space"]
        self._threshold_alert(
            "storage_alert",
            bool(free_floor) and available is not None and available < free_floor,
            {"level": "warning", "message": "free disk space is low",
             "metric": "available_space", "value": available, "threshold": free_floor},
        )
        limit_ms = self.config.performance_alert_ms
        average_ms = figures["average_response_time"] * 1000
        self._threshold_alert(
            "performance_alert",
            bool(limit_ms) and average_ms > limit_ms,
            {"level": "warning", "message": "average response time is high",
             "metric": "average_response_time_ms", "value": round(average_ms, 1),
             "threshold": limit_ms},
        )

    def _threshold_alert(self, kind: str, over: bool, data: dict) -> None:
        """Alert once when a figure crosses its threshold, again only after it recovered."""
        if over and kind not in self._alerting:
            self._alerting.add(kind)
            self.alert(kind, data)
        elif not over:
            self._alerting.discard(kind)

    # -- figures ------------------------------------------------------------------------

    def storage(self) -> dict:
        """Totals of the file system holding the root (None where unknown)."""
        if self.storage_root is not None:
            try:
                usage = shutil.disk_usage(self.storage_root)
            except OSError:
                pass
            else:
                return {"total_space": usage.total, "used_space": usage.used,
                        "available_space": usage.free}
        return {"total_space": None, "used_space": None, "available_space": None}

    def journal_head(self) -> int:
        return self._journal_head() if self._journal_head is not None else self.last_seq

    def figures(self) -> dict:
        """The body of ``/ws/metrics`` (and the data of ``system_metrics``)."""
        figures = {
            "connections": len(self.connections),
            "messages_in": self.metrics.messages_in,
            "messages_out": self.metrics.messages_out,
            "bytes_transferred": self.metrics.bytes_transferred,
            "requests_per_second": self.metrics.requests_per_second(),
            "average_response_time": self.metrics.average_response_time(),
            "storage": self.storage(),
            "journal_head": self.journal_head(),
            "events_lost": self.metrics.events_lost,
            "rescans": self.metrics.rescans,
        }
        if self._cluster is not None:
            figures["cluster"] = self._cluster()
        return figures

    def status(self) -> dict:
        """The body of ``/ws/status``."""
        return {
            "clients": [
                {
                    "client_id": connection.client_id,
                    "address": connection.address,
                    "connected_at": format_time(connection.connected_at),
                    "last_seen": format_time(connection.last_seen),
                    "topics": sorted(connection.topics),
                }
                for connection in sorted(self.connections, key=lambda c: c.connected_at)
            ]
        }

    def _now(self) -> str:
        return format_time(self.clock.seconds())
