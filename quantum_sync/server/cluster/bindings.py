"""Client ids bound to users (with ``auth``) across the nodes of a cluster: the same
rule as :class:`quantum_sync.server.clientids.ClientIdBindings` (an id is its first
user's), kept in PostgreSQL instead of a file every node would overwrite.

:meth:`ClusterBindings.claim` stays synchronous (it answers from memory); a new binding
is then written with ``INSERT ... ON CONFLICT DO NOTHING``, and when another node bound
the id first the database's owner replaces the one in memory. The bindings are read
again every few seconds, so a binding made on another node is known here soon after.
"""

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from quantum_sync.server.clientids import claim

RELOAD_INTERVAL = 5.0


class ClusterBindings:
    """``{client id: user}`` shared through ``index`` (a :class:`.pgindex.PgIndex`)."""

    log = Logger()

    def __init__(self, index, reactor, interval: float = RELOAD_INTERVAL):
        self._index = index
        self._users = {}
        self._writing = set()  # Deferreds of the bindings being written
        self._loop = LoopingCall(lambda: Deferred.fromCoroutine(self.load()))
        self._loop.clock = reactor
        self._interval = interval

    def start(self) -> None:
        self._loop.start(self._interval, now=True)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    async def load(self) -> None:
        """Read every binding (the database's owner wins over memory)."""
        try:
            self._users.update(await self._index.client_bindings())
        except Exception as error:  # the database away: next time
            self.log.debug("cannot read the client id bindings: {error}", error=error)

    def owner(self, client_id: str):
        """The user ``client_id`` is bound to, as far as this node knows (or None)."""
        return self._users.get(client_id)

    def claim(self, client_id: str, user: str) -> None:
        """Bind ``client_id`` to ``user`` if it is free; PERMISSION_DENIED when it is
        another user's."""
        if not claim(self._users, client_id, user):
            return
        writing = Deferred.fromCoroutine(self._write(client_id, user))
        self._writing.add(writing)
        writing.addBoth(lambda _: self._writing.discard(writing))

    async def _write(self, client_id: str, user: str) -> None:
        try:
            owner = await self._index.bind_client(client_id, user)
        except Exception as error:  # written by the next claim of the id, on a node
            self.log.warn("cannot record that {client_id} is {user}'s: {error}",
                          client_id=client_id, user=user, error=error)
            self._users.pop(client_id, None)
            return
        if owner != user:
            self.log.warn("client id {client_id} was bound to another user on another node first",
                          client_id=client_id)
            self._users[client_id] = owner

    async def flush(self) -> None:
        """Wait until every binding made so far is written."""
        while self._writing:
            await DeferredList(list(self._writing))
