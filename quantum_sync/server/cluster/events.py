"""Events between the nodes of a cluster: the peer and alert events a node's hub relays
(:data:`quantum_sync.server.hub.RELAYED_EVENTS`) and the probe requests of
:mod:`.liveclients`.

They go through Redis, which keeps nothing: a node whose subscription is down hears
nothing of it. So an event that Redis may not have carried to every node (the node could
not publish, or fewer subscribers received it than there are live nodes) is also kept
in PostgreSQL's ``events`` table for a few minutes, and every node reads the table's
recent events: every 0.25 s while its own subscription is down, every 2 s while it is
up. Each event has a ``uid``, so a node delivers it once, however it came. Events are
not the record (the journal is): one made while both Redis and the database are away
reaches its own node's subscribers only.
"""

import json
import uuid

from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

#: Seconds an event stays in the table.
KEEP_FOR = 300
#: Seconds of events read a poll (a node cut off from the database for longer misses
#: those of the gap).
WINDOW = 30
FAST_POLL = 0.25
SLOW_POLL = 2.0


class EventRelay:
    """Sends this node's events through ``bus`` (a :class:`.redisbus.RedisBus`) and,
    where needed, ``index`` (a :class:`.pgindex.PgIndex`); hands the other nodes' to
    ``deliver(kind, data, timestamp)`` once each. ``live_nodes()``: how many nodes are
    live (this one included)."""

    log = Logger()

    def __init__(self, index, bus, node_id: str, reactor, deliver, live_nodes):
        self._index = index
        self._bus = bus
        self.node_id = node_id
        self._reactor = reactor
        self._deliver = deliver
        self._live_nodes = live_nodes
        self._seen = {}  # uid -> when it was delivered (or found at start)
        self._outgoing = []  # events to keep in the table, written at the end of the turn
        self._primed = False  # the first read only marks what was there before
        self._loop = LoopingCall(lambda: Deferred.fromCoroutine(self.poll()))
        self._loop.clock = reactor

    def start(self) -> None:
        self._loop.start(FAST_POLL if not self._bus.up else SLOW_POLL, now=True)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    def redis_up(self, up: bool) -> None:
        """This node's subscription came (True) or went (False): read the table seldom
        or often (from the next read on)."""
        self._loop.interval = SLOW_POLL if up else FAST_POLL

    def send(self, kind: str, data: dict, timestamp: str) -> None:
        """One of this node's events, to the other nodes."""
        event = (uuid.uuid4().hex, kind, json.dumps(data, separators=(",", ":")), timestamp)
        sent = self._bus.publish_event(kind, data, timestamp, event[0])
        if sent is None:
            self._keep(event)
            return
        sent.addCallbacks(lambda receivers: None if receivers >= self._live_nodes() else self._keep(event),
                          lambda failure: self._keep(event))

    def _keep(self, event) -> None:
        if not self._outgoing:
            self._reactor.callLater(0, self._write)
        self._outgoing.append(event)

    def _write(self) -> None:
        events, self._outgoing = self._outgoing, []
        writing = Deferred.fromCoroutine(self._index.record_events(self.node_id, events, KEEP_FOR))
        writing.addErrback(lambda failure: self.log.debug(
            "cannot keep {count} events for the other nodes: {error}", count=len(events), error=failure.value))

    def heard(self, kind: str, data: dict, timestamp: str, uid: str = "") -> None:
        """An event another node published through Redis."""
        if uid:
            if uid in self._seen:
                return
            self._seen[uid] = self._reactor.seconds()
        self._deliver(kind, data, timestamp)

    async def poll(self) -> None:
        """Deliver the other nodes' recent events from the table not delivered yet."""
        try:
            rows = await self._index.recent_events(self.node_id, WINDOW)
        except Exception as error:  # the database away: next time
            self.log.debug("cannot read the other nodes' events: {error}", error=error)
            return
        now = self._reactor.seconds()
        self._seen = {uid: at for uid, at in self._seen.items() if at > now - 2 * WINDOW}
        for uid, kind, data, timestamp in rows:
            if uid in self._seen:
                continue
            self._seen[uid] = now
            if self._primed:
                self._deliver(kind, json.loads(data), timestamp)
        self._primed = True
