"""Client ids bound to users (with ``auth``) across the nodes of a cluster: the same
rule as :class:`quantum_sync.server.clientids.ClientIdBindings` (an id is its first
user's; an id unseen for :data:`~quantum_sync.server.clientids.FORGET_AFTER` seconds,
or the least recently seen beyond :data:`~quantum_sync.server.clientids.MAX_IDS`, is
forgotten and free again), kept in PostgreSQL instead of a file every node would
overwrite.

An id this node has not seen, or not confirmed for :data:`CONFIRM_EVERY` seconds, is
bound (or its owner read) in PostgreSQL before the claim is answered, by one
``INSERT ... ON CONFLICT`` that returns the owner and marks the id seen: of two users
claiming one new id on two nodes at once, the database's first wins on both. In
between, the node answers from memory. So an id in use is marked seen at least once
an hour, and a node never answers from a binding older than that while the database
answers (while it is away, what the node knew stands). The leader forgets the ids
unseen (no claim, no live connection) for ``forget_after`` seconds, in one pass every
:data:`~quantum_sync.server.clientids.PRUNE_EVERY` seconds.
"""

from twisted.logger import Logger

from quantum_sync.errors import SyncError
from quantum_sync.server.clientids import FORGET_AFTER, MAX_IDS, PRUNE_EVERY, claim, forgotten
from quantum_sync.server.cluster.presence import LIVE_FOR
from quantum_sync.server.passes import Passes

#: Seconds a node answers a binding from memory before it asks the database again
#: (which marks the id seen).
CONFIRM_EVERY = 3600.0

class ClusterBindings:
    """``{client id: user}`` shared through ``index`` (a :class:`.pgindex.PgIndex`);
    ``clock`` times the confirmations and the leader's passes."""

    log = Logger()

    def __init__(self, index, clock, forget_after: float = FORGET_AFTER, max_ids: int = MAX_IDS,
                 prune_every: float = PRUNE_EVERY, confirm_every: float = CONFIRM_EVERY):
        self._index = index
        self._clock = clock
        self.forget_after, self.max_ids = forget_after, max_ids
        self.confirm_every = confirm_every
        self._prune_every = prune_every
        self._users = {}  # id -> the user the database named
        self._confirmed = {}  # id -> when the database last named it
        self._swept = clock.seconds()
        self._passes = Passes(lambda: self.prune(), self._failed, clock, prune_every)

    def owner(self, client_id: str):
        """The user ``client_id`` is bound to, as far as this node knows (or None)."""
        return self._users.get(client_id)

    async def claim(self, client_id: str, user: str) -> None:
        """Bind ``client_id`` to ``user`` if it is free; PERMISSION_DENIED when it is
        another user's, SERVICE_UNAVAILABLE when an id this node does not know cannot
        be checked (the database away)."""
        now = self._clock.seconds()
        confirmed = self._confirmed.get(client_id)
        if client_id and (confirmed is None or now - confirmed >= self.confirm_every):
            try:
                owner = await self._index.bind_client(client_id, user)
            except SyncError as error:
                if error.code != "SERVICE_UNAVAILABLE" or client_id not in self._users:
                    raise  # (what this node knew stands while the database is away)
            else:
                self._users[client_id], self._confirmed[client_id] = owner, now
                self._sweep(now)
        claim({client_id: self._users[client_id]} if client_id else {}, client_id, user)

    def _sweep(self, now: float) -> None:
        """Once every pass's interval: forget in memory what the leader forgets."""
        if now - self._swept < self._prune_every:
            return
        self._swept = now
        for client_id in forgotten(self._confirmed, now, self.forget_after, self.max_ids):
            del self._users[client_id], self._confirmed[client_id]

    async def flush(self) -> None:
        """Nothing to wait for: every binding is written before it is answered."""

    # -- the leader's pass ---------------------------------------------------------

    @property
    def pruning(self) -> bool:
        """Whether this node runs the passes (the leader)."""
        return self._passes.running

    def lead(self, leading: bool) -> None:
        """Run a pass now and then every interval, or stop running them."""
        if leading:
            self._passes.start()
        else:
            self._passes.stop()

    async def stop(self) -> None:
        self.lead(False)
        if self._passes.last is not None:
            await self._passes.last

    def _failed(self, failure) -> None:
        if failure.check(SyncError):  # the database away: the next pass
            self.log.info("client ids not pruned: {error}", error=failure.value.message)
        else:
            self.log.failure("pruning client ids failed", failure)

    async def prune(self) -> int:
        """One pass: the ids held live are seen now; those unseen for
        :attr:`forget_after` seconds, and the least recently seen beyond
        :attr:`max_ids`, are forgotten. Returns how many went."""
        gone = await self._index.prune_clients(self.forget_after, self.max_ids, LIVE_FOR)
        if gone:
            self.log.info("forgot {count} client ids unseen for {days:.0f} days or beyond the {most} kept",
                          count=gone, days=self.forget_after / 86400, most=self.max_ids)
        return gone
