"""Broadcasts between the nodes of a cluster through Redis pub/sub (txredisapi).

A node publishes every change it journals on the journal's channel; every node hears
them and hands them to its :class:`.feed.Feed`, which delivers in ``seq`` order and reads
what is missing from the journal. Redis is a hint, never the record: while it is away
writes go on, the feed polls the journal, and on its return the feed reads what was
missed.
"""

import json
from urllib.parse import unquote, urlsplit

import attrs
import txredisapi
from twisted.internet.endpoints import HostnameEndpoint
from twisted.logger import Logger

from quantum_sync.protocol import Change, parse_operation


@attrs.frozen
class RedisAddress:
    """Where Redis is, from a ``redis://[:password@]host[:port][/db]`` URL."""

    host: str
    port: int = 6379
    db: int = 0
    password: str | None = None

    @classmethod
    def parse(cls, url: str) -> "RedisAddress":
        """Raises ValueError with the reason for a URL that names no Redis."""
        parts = urlsplit(url)
        if parts.scheme != "redis" or not parts.hostname:
            raise ValueError("expected redis://HOST[:PORT][/DB]")
        db = parts.path.strip("/") or "0"
        if not db.isdigit():
            raise ValueError(f"database {db!r} is not a number")
        try:
            port = parts.port or 6379
        except ValueError:
            raise ValueError("invalid port") from None
        password = unquote(parts.password) if parts.password else None
        return cls(parts.hostname, port, int(db), password)


def channel(journal_id: str, kind: str = "changes") -> str:
    """The pub/sub channel of a journal's ``changes`` or ``events`` (channels are global
    to a Redis server, so the journal's identity keeps clusters sharing one Redis apart)."""
    return f"quantum-sync:{journal_id}:{kind}"


def encode_changes(changes, node_id: str = "") -> str:
    """One message for ``changes`` (a group's, in seq order) from node ``node_id`` (named
    first: a node knows its own messages, which Redis sends back to it too, without
    decoding them)."""
    return json.dumps({"node": node_id, "changes": [
        [change.seq, change.operation_text, change.source_client, change.timestamp] for change in changes]},
        separators=(",", ":"))


def sender_prefix(node_id: str) -> str:
    """How the messages :func:`encode_changes` makes for ``node_id`` begin."""
    return json.dumps({"node": node_id}, separators=(",", ":"))[:-1] + ","


def decode_changes(text) -> list:
    """The Changes a message carries (ValueError, KeyError, TypeError or SyncError for a
    malformed one)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    changes = []
    for seq, operation, source_client, timestamp in json.loads(text)["changes"]:
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
            raise ValueError("bad seq")
        changes.append(Change(seq, parse_operation(json.loads(operation)), str(source_client),
                              str(timestamp), operation))
    return changes


class _Subscriber(txredisapi.SubscriberProtocol):
    """Subscribes to the bus's channel once connected and hands messages to it."""

    bus = None

    def connectionMade(self):
        started = super().connectionMade()  # AUTH first where a password is set
        started.addCallback(lambda _: self.subscribe([self.bus.channel, self.bus.events_channel]))
        started.addCallbacks(lambda _: self.bus.heard_up(self),
                             lambda failure: self.bus.log.warn("cannot subscribe to Redis: {f}",
                                                               f=failure.getErrorMessage()))

    def messageReceived(self, pattern, channel, message):
        if channel == self.bus.events_channel:
            self.bus.heard_event(message)
        else:
            self.bus.heard(message)

    def connectionLost(self, why):
        super().connectionLost(why)
        self.bus.heard_down(self)


class RedisBus:
    """Publishes this node's changes and feeds the ones heard to ``on_change`` (a list,
    one group's);
    ``on_state(up)`` hears when the subscription comes and goes."""

    log = Logger()

    def __init__(self, address: RedisAddress, journal_id: str, reactor, on_change, on_state,
                 node_id: str = "", on_event=None):
        self.address = address
        self.channel = channel(journal_id)
        self.events_channel = channel(journal_id, "events")
        self.node_id = node_id
        self._own = sender_prefix(node_id)
        self._on_event = on_event
        self._reactor = reactor
        self._on_change = on_change
        self._on_state = on_state
        self.up = False
        self.published = 0
        self._publisher = None
        self._subscriber = None

    def _endpoint(self):
        return HostnameEndpoint(self._reactor, self.address.host, self.address.port, timeout=5)

    def start(self) -> None:
        self._publisher = txredisapi.RedisFactory(
            f"{self.address.host}:{self.address.port}", None, 1, isLazy=True,
            password=self.address.password)
        self._publisher.startConnecting(self._endpoint())
        self._subscriber = txredisapi.SubscriberFactory(isLazy=True)
        self._subscriber.password = self.address.password
        self._subscriber.protocol = type("Subscriber", (_Subscriber,), {"bus": self})
        self._subscriber.startConnecting(self._endpoint())

    async def stop(self) -> None:
        for factory in (self._publisher, self._subscriber):
            if factory is not None:
                try:
                    await factory.disconnect()
                except Exception:
                    pass
        self._publisher = self._subscriber = None

    @property
    def can_publish(self) -> bool:
        """True while the publishing connection is up."""
        return self._publisher is not None and bool(self._publisher.size)

    def publish(self, changes) -> None:
        """Send ``changes`` to the other nodes; skipped while Redis is away (the other
        nodes poll the journal then)."""
        if not self.can_publish:
            return
        sent = self._publisher.handler.publish(self.channel, encode_changes(changes, self.node_id))
        sent.addErrback(lambda failure: None)  # lost: the others read the journal
        self.published += 1

    def publish_event(self, kind: str, data: dict, timestamp: str, uid: str = ""):
        """Send one of this node's events (``uid``: its identity, for the receivers to
        drop a copy heard twice) to the other nodes: a Deferred of the number of
        subscribers that received it, or None while Redis is away
        (:mod:`.events` then carries it)."""
        if not self.can_publish:
            return None
        text = json.dumps({"node": self.node_id, "kind": kind, "data": data, "timestamp": timestamp,
                           "uid": uid}, separators=(",", ":"))
        return self._publisher.handler.publish(self.events_channel, text)

    def heard_event(self, message) -> None:
        try:
            obj = json.loads(message)
            node, kind, data, timestamp = obj["node"], obj["kind"], obj["data"], obj["timestamp"]
            uid = obj.get("uid", "")
            if not (isinstance(kind, str) and isinstance(data, dict) and isinstance(timestamp, str)
                    and isinstance(uid, str)):
                raise ValueError("bad event")
        except (ValueError, KeyError, TypeError, AttributeError):
            self.log.warn("dropped a malformed message on {channel}", channel=self.events_channel)
            return
        if node != self.node_id and self._on_event is not None:
            self._on_event(kind, data, timestamp, uid)

    def heard(self, message) -> None:
        if isinstance(message, str) and message.startswith(self._own):
            return  # this node's own: delivered already
        try:
            changes = decode_changes(message)
        except Exception:
            self.log.warn("dropped a malformed message on {channel}", channel=self.channel)
            return
        self._on_change(changes)

    def heard_up(self, protocol) -> None:
        self.up = True
        self._on_state(True)

    def heard_down(self, protocol) -> None:
        if self.up:
            self.up = False
            self._on_state(False)
