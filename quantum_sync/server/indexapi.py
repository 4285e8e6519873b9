"""What the server asks of an index: the one interface the SQLite
:class:`~quantum_sync.server.index.Index` (embedded) and the PostgreSQL
:class:`~quantum_sync.server.cluster.pgindex.PgIndex` (a cluster node) both offer.

Rows are :class:`~quantum_sync.server.diskdiff.Row` (``(FileMetadata, mtime_ns)`` with
inode and ctime); journal entries are :class:`~quantum_sync.protocol.Change`. Every
method runs its work off the reactor and returns an awaitable. tests/test_index_interface.py
checks that both classes have every method named here, with the same parameters.
"""

import json
from typing import Protocol

from quantum_sync.errors import SyncError
from quantum_sync.protocol import Change, parse_operation


class IndexInterface(Protocol):
    """The index and journal of one root."""

    #: The journal's identity (a string made with the journal), once open.
    journal_id: str | None

    def start(self) -> None:
        """Begin opening (the schema is made or checked first)."""

    async def open(self) -> None:
        """Wait until the index is open."""

    def stopService(self):
        """Close the connections."""

    def interaction(self, function, *args):
        """``function(txn, *args)`` in one transaction, with SQLite-style SQL (``?``
        placeholders, ``executescript``): for the tables other modules keep there."""

    async def get(self, path: str):
        """The Row of ``path``, or None."""

    async def get_after(self, function, path: str) -> tuple:
        """``(function(), get(path))`` in one thread call."""

    async def get_many(self, paths) -> dict:
        """``{path: Row}`` of the indexed ones of ``paths``."""

    async def get_many_intending(self, paths) -> dict:
        """:meth:`get_many`, recording durably first the intent to write each path."""

    async def intents(self) -> list:
        """The paths whose writes were intended and never journalled (a crash)."""

    async def forget_intents(self, paths) -> None:
        """Forget the intents of ``paths``."""

    async def list_all(self) -> list:
        """Every Row, sorted by path."""

    async def list_under(self, top: str) -> list:
        """The Rows at and below ``top``, sorted by path."""

    async def head(self) -> int:
        """The newest journal seq (0 for none)."""

    async def changes(self, since: int, limit: int) -> tuple:
        """``(changes, cursor, has_more)`` after ``since``; CURSOR_EXPIRED for a cursor
        beyond the head or before what is kept."""

    async def record(self, upserts, removals, operation, source_client, timestamp, also=None):
        """Cache changes and (when ``operation`` is given) its journal entry, in one
        transaction after ``also(txn)``; the Change or None."""

    async def record_many(self, items, source_client, timestamp) -> list:
        """Several :meth:`record` in one transaction (``(upserts, removals, operation)``)."""

    async def record_each(self, items, timestamp, also=None, done_intents=()) -> list:
        """:meth:`record_many` with a source client per item, forgetting
        ``done_intents`` in the same transaction."""

    async def rename(self, source: str, destination: str, operation, source_client, timestamp,
                     also=None):
        """Move the rows of ``source`` (and below) to ``destination`` and journal it."""


def check_cursor(since: int, head: int, oldest, journal_id: str) -> None:
    """Both indexes' rule for ``/api/changes?since=``: CURSOR_EXPIRED (with the journal's
    id and head) for a ``since`` beyond ``head``, or one after which entries are no longer
    kept (``oldest()``: the oldest seq kept, None for an empty journal; asked only when
    ``since`` is below the head)."""
    if since > head:
        raise SyncError(
            "CURSOR_EXPIRED",
            f"cursor {since} is beyond this journal's head; re-list and continue from {head}",
            journal_id=journal_id, cursor=head)
    if since < head:
        first = oldest()
        if first is None or first > since + 1:
            raise SyncError(
                "CURSOR_EXPIRED",
                f"changes after {since} are no longer kept; re-list and continue from {head}",
                journal_id=journal_id, cursor=head)


def journal_page(rows, limit: int, since: int) -> tuple:
    """Both indexes' page of ``/api/changes`` from the journal ``rows`` read after
    ``since`` (``(seq, operation text, source client, timestamp)``, in seq order, at most
    ``limit + 1`` of them): ``(changes, cursor, has_more)``."""
    has_more = len(rows) > limit
    changes = [Change(seq, parse_operation(json.loads(operation)), source, timestamp, operation)
               for seq, operation, source, timestamp in rows[:limit]]
    cursor = changes[-1].seq if changes else since
    return changes, cursor, has_more
