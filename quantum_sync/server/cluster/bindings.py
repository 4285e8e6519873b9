"""Client ids bound to users (with ``auth``) across the nodes of a cluster: the same
rule as :class:`quantum_sync.server.clientids.ClientIdBindings` (an id is its first
user's), kept in PostgreSQL instead of a file every node would overwrite.

A binding never changes once made, so the bindings a node has seen are kept in memory
and answered from there. An id this node has not seen is bound (or its owner read) in
PostgreSQL before the claim is answered, by one ``INSERT ... ON CONFLICT`` that returns
the owner: of two users claiming one new id on two nodes at once, the database's first
wins on both, and no node answers from a stale copy.
"""

from quantum_sync.server.clientids import claim


class ClusterBindings:
    """``{client id: user}`` shared through ``index`` (a :class:`.pgindex.PgIndex`)."""

    def __init__(self, index):
        self._index = index
        self._users = {}  # the bindings seen here (the database's, never changed)

    def owner(self, client_id: str):
        """The user ``client_id`` is bound to, as far as this node knows (or None)."""
        return self._users.get(client_id)

    async def claim(self, client_id: str, user: str) -> None:
        """Bind ``client_id`` to ``user`` if it is free; PERMISSION_DENIED when it is
        another user's, SERVICE_UNAVAILABLE when a new id cannot be checked (the
        database away)."""
        if client_id and client_id not in self._users:
            self._users[client_id] = await self._index.bind_client(client_id, user)
        claim(self._users, client_id, user)

    async def flush(self) -> None:
        """Nothing to wait for: every binding is written before it is answered."""
