"""Blocking work for many items in one thread call.

A burst of small jobs (stat and hash 2,000 new files, install 2,000 downloads) would cost
a thread hop each; a :class:`ThreadBatcher` hands every item waiting to one call on the
reactor's thread pool, and the items that arrive meanwhile to the next call.
"""

from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool


class ThreadBatcher:
    """Runs ``work(items)`` on a thread, one batch at a time. ``work`` is blocking and
    returns one result per item, in order: an exception instance fails that item only."""

    def __init__(self, reactor, work):
        self._reactor = reactor
        self._work = work
        self._waiting = []
        self._running = False

    def submit(self, item) -> defer.Deferred:
        """A Deferred that fires with ``item``'s result (or fails with its exception)."""
        d = defer.Deferred()
        self._waiting.append((item, d))
        if not self._running:
            self._next()
        return d

    def _next(self):
        batch, self._waiting = self._waiting, []
        self._running = bool(batch)
        if not batch:
            return
        ran = deferToThreadPool(self._reactor, self._reactor.getThreadPool(), self._work, [item for item, _ in batch])
        ran.addCallbacks(self._done, self._failed, callbackArgs=(batch,), errbackArgs=(batch,))

    def _done(self, results, batch):
        for (_, d), result in zip(batch, results):
            if isinstance(result, BaseException):
                d.errback(result)
            else:
                d.callback(result)
        self._next()

    def _failed(self, failure, batch):
        for _, d in batch:
            d.errback(failure)
        self._next()
