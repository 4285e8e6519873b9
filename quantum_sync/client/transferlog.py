"""The log line of each transfer, one line per batch.

Every upload and download is logged, so that an admin can follow them; but a burst of
small files finishes hundreds of transfers in one reactor turn (a batch request's
answer), and a log event per file cost the client more than the transfer itself. The
transfers finished in the same turn share one line that names each of them. While a
large reconcile logs its progress every few seconds, these lines go to the debug level.
"""

from twisted.logger import Logger


class TransferLog:
    """Collects finished transfers and logs them on the reactor's next turn: one line
    ``uploaded PATH (N bytes)`` for a single one, ``uploaded K files (N bytes): PATH (N
    bytes), ...`` for several."""

    log = Logger(namespace="quantum_sync.client.engine.Engine")

    def __init__(self, reactor):
        self._reactor = reactor
        self._done = {}  # (verb, quiet) -> [(path, size)], in the order they finished
        self._call = None
        #: while more than 0, the lines are logged at the debug level
        self.quiet = 0

    def add(self, verb: str, path: str, size: int) -> None:
        # quiet or not when it finished (the line comes a turn later, maybe after the reconcile)
        self._done.setdefault((verb, self.quiet > 0), []).append((path, size))
        if self._call is None:
            self._call = self._reactor.callLater(0, self.flush)

    def flush(self) -> None:
        """Log what has been collected (also called when stopping)."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        done, self._done = self._done, {}
        for (verb, quiet), items in done.items():
            emit = self.log.debug if quiet else self.log.info
            if len(items) == 1:
                (path, size), = items
                emit("{verb} {path} ({size} bytes)", verb=verb, path=path, size=size)
                continue
            listing = ", ".join(f"{path} ({size} bytes)" for path, size in items)
            emit("{verb} {count} files ({size} bytes): {listing}", verb=verb, count=len(items),
                          size=sum(size for _, size in items), listing=listing)
