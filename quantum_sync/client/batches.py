"""Work for many items in one call: one thread call, or one HTTP request.

A burst of small jobs (stat and hash 2,000 new files, upload them, download and install
2,000 others) would cost a thread hop or a request each; a :class:`Batcher` hands every
item waiting to one call, and the items that arrive meanwhile to the next one. Nothing
waits for a batch to fill: an item submitted while a call slot is free goes at the end of
the reactor's turn, with everything else submitted in that turn.
"""

from twisted.internet import defer


class Batcher:
    """Runs ``send(items)`` for the submitted items, a batch at a time per call slot
    (``concurrency`` slots), at most ``max_items`` items and (given ``size``) about
    ``max_size`` of ``size(item)`` together in one batch. ``send`` returns (a Deferred
    of) one result per item, in order: an exception instance fails that item only; a
    failure of the whole call fails every item of its batch.

    With a ``reactor``, a batch starts on the reactor's next turn rather than at the
    first submit: what one turn submits (the answers of a whole batch, resuming their
    jobs) goes together, instead of its first item going alone (a request to the server
    costs about as much for one file as for many)."""

    def __init__(self, send, concurrency: int = 1, max_items: int = None, max_size: int = None, size=None,
                 reactor=None):
        self._send = send
        self._slots = concurrency
        self._max_items = max_items
        self._max_size = max_size
        self._size = size
        self._waiting = []
        self._reactor = reactor
        self._soon = None

    def submit(self, item) -> defer.Deferred:
        """A Deferred that fires with ``item``'s result (or fails with its exception)."""
        d = defer.Deferred()
        self._waiting.append((item, d))
        if self._reactor is None:
            self._next()
        elif self._soon is None and self._slots:
            self._soon = self._reactor.callLater(0, self._turn_ended)
        return d

    def _turn_ended(self):
        self._soon = None
        self._next()

    def _take(self) -> list:
        """The next batch from the front of the queue (at least one item)."""
        end = len(self._waiting) if self._max_items is None else min(len(self._waiting), self._max_items)
        if self._size is not None and self._max_size is not None:
            total = 0
            for count, (item, _) in enumerate(self._waiting[:end]):
                total += self._size(item)
                if total > self._max_size and count:
                    end = count
                    break
        batch, self._waiting = self._waiting[:end], self._waiting[end:]
        return batch

    def _next(self):
        while self._waiting and self._slots:
            batch = self._take()
            self._slots -= 1
            sent = defer.maybeDeferred(self._send, [item for item, _ in batch])
            sent.addCallbacks(self._done, self._failed, callbackArgs=(batch,), errbackArgs=(batch,))

    def _done(self, results, batch):
        # the slot is given back after the callbacks: what they submit goes in the next batch
        for (_, d), result in zip(batch, results):
            if isinstance(result, BaseException):
                d.errback(result)
            else:
                d.callback(result)
        self._slots += 1
        self._next()

    def _failed(self, failure, batch):
        for _, d in batch:
            d.errback(failure)
        self._slots += 1
        self._next()


class ThreadBatcher(Batcher):
    """Runs blocking ``work(items)`` in ``threads`` (a
    :class:`~quantum_sync.threads.ThreadPoolService`), ``concurrency`` batches
    at a time, each started at the end of a reactor turn (the downloads of one batch
    answer in one turn: their installs go as one call, not the first one or two alone,
    each with an fsync of its own)."""

    def __init__(self, reactor, threads, work, concurrency: int = 1):
        super().__init__(lambda items: threads.defer(work, items), concurrency,
                         reactor=reactor)
