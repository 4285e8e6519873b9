"""A cluster node's changes, delivered to its own hub in journal order.

Changes reach a node two ways: the ones it journalled itself, and the ones other nodes
publish through Redis. Neither is the record: Redis drops messages while a subscriber is
away, and a node's own change may arrive before another node's earlier one. So every
change goes through a :class:`Sequencer`, which lets out only the next ``seq``; a gap is
filled from the journal at once (a committed ``seq`` means every lower one is committed:
appends are serialised, see :mod:`.pgindex`). The journal is also polled, often while
Redis is away and now and then while it is there, so a change whose message was lost is
delivered even when no later one reveals the gap.
"""

from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from quantum_sync.errors import SyncError

#: Changes read from the journal a query while filling a gap or polling.
FILL_BATCH = 1000


class Sequencer:
    """Pure: changes in, the ones that may now be delivered out, in ``seq`` order."""

    def __init__(self, delivered: int = 0):
        #: The newest seq let out (every lower one was let out before it).
        self.delivered = delivered
        self._waiting = {}  # seq -> Change, all above delivered + 1

    def offer(self, change) -> list:
        """Take ``change``; return the changes now next in line (maybe none). A seq
        already let out, or already waiting, is dropped."""
        if change.seq <= self.delivered:
            return []
        self._waiting.setdefault(change.seq, change)
        return self.offer_waiting()

    def offer_waiting(self) -> list:
        """The waiting changes now next in line."""
        ready = []
        while self.delivered + 1 in self._waiting:
            self.delivered += 1
            ready.append(self._waiting.pop(self.delivered))
        return ready

    def skip_to(self, seq: int) -> None:
        """Give up on what lies at or below ``seq`` (pruned from the journal before this
        node read it): the next change let out is ``seq + 1``."""
        if seq > self.delivered:
            self.delivered = seq
            self._waiting = {k: v for k, v in self._waiting.items() if k > seq}

    @property
    def lowest_waiting(self):
        """The lowest seq waiting for a lower one, or None."""
        return min(self._waiting, default=None)

    @property
    def gap(self) -> bool:
        """True when a change waits for a lower one not yet seen."""
        return bool(self._waiting)


class Feed:
    """Delivers changes to ``deliver(changes)`` in journal order, reading gaps from
    ``index`` (a :class:`.pgindex.PgIndex`); polls the journal every ``fast_poll``
    seconds while Redis is away and every ``slow_poll`` while it is there."""

    log = Logger()

    def __init__(self, index, deliver, reactor, fast_poll: float = 0.25, slow_poll: float = 2.0):
        self._index = index
        self._deliver = deliver
        self._reactor = reactor
        self.sequencer = Sequencer()
        self.fast_poll = fast_poll
        self.slow_poll = slow_poll
        self._filling = None  # the Deferred of the fill in progress
        self._again = False
        self._loop = None
        self._fast = True

    @property
    def delivered(self) -> int:
        return self.sequencer.delivered

    def start(self, head: int) -> None:
        """Begin after ``head`` (the journal's head when the node opened it)."""
        self.sequencer.delivered = head
        self._poll_every(self.fast_poll if self._fast else self.slow_poll)

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def redis_up(self, up: bool) -> None:
        """Redis came (True) or went (False): poll seldom or often; on its return read
        what was missed."""
        self._fast = not up
        if self._loop is not None:
            self._poll_every(self.fast_poll if self._fast else self.slow_poll)
        if up:
            self.fill()

    def _poll_every(self, interval: float) -> None:
        if self._loop is not None and self._loop.running:
            if self._loop.interval == interval:
                return
            self._loop.stop()
        self._loop = LoopingCall(self.fill)
        self._loop.clock = self._reactor
        self._loop.start(interval, now=False)

    def offer(self, changes) -> None:
        """Changes heard (from Redis) or made here: deliver what is now in order; a gap
        is read from the journal."""
        ready = [change for offered in changes for change in self.sequencer.offer(offered)]
        if ready:
            self._deliver(ready)
        if self.sequencer.gap:
            self.fill()

    def fill(self) -> Deferred:
        """Read the journal after the last delivered seq (one read at a time; a call
        while one runs makes it read again when done)."""
        if self._filling is not None:
            self._again = True
            return self._filling
        filling = Deferred.fromCoroutine(self._fill())
        if not filling.called:  # (one that ended at once has cleared _filling already)
            self._filling = filling
        return filling

    async def _fill(self):
        try:
            while True:
                self._again = False
                try:
                    changes, _, has_more = await self._index.changes(self.delivered, FILL_BATCH)
                except SyncError as error:
                    if error.code != "CURSOR_EXPIRED":  # the database away: the next poll tries again
                        self.log.debug("reading the journal failed: {error}", error=error)
                        return
                    if not self._skip_pruned(error):
                        return
                    continue
                except Exception as error:
                    self.log.debug("reading the journal failed: {error}", error=error)
                    return
                self._offer_all(changes)
                if not (has_more or self._again):
                    return
        finally:
            self._filling = None

    def _skip_pruned(self, error: SyncError) -> bool:
        """Skip past journal entries pruned before this node delivered them (the
        CURSOR_EXPIRED ``error``); False when there is nothing to skip to."""
        # pruned before this node heard them: its clients find the same gap
        # in their own catch-up (410) and reconcile; the rest goes on
        self.log.warn("journal entries after {seq} were pruned before this node"
                      " delivered them", seq=self.delivered)
        lowest = self.sequencer.lowest_waiting
        if lowest is not None and lowest - 1 > self.delivered:
            target = lowest - 1  # deliver what was heard, read on from there
        else:
            target = error.extra["cursor"]  # nothing heard above: from the head
        if target <= self.delivered:
            return False
        self.sequencer.skip_to(target)
        ready = self.sequencer.offer_waiting()
        if ready:
            self._deliver(ready)
        return True

    def _offer_all(self, changes) -> None:
        """Offer ``changes`` read from the journal and deliver those now in order."""
        ready = []
        for change in changes:
            ready.extend(self.sequencer.offer(change))
        if ready:
            self._deliver(ready)
