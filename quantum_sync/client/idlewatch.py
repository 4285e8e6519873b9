"""Transfers that stop moving bytes are aborted: :class:`IdleWatch` on every transfer,
told of each byte sent or received, and :func:`read_body`, which hands an answer's body
on chunk by chunk under such a watch."""

from twisted.internet import defer
from twisted.internet.protocol import Protocol
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss


class IdleWatch:
    """Aborts a transfer that moves no byte for ``seconds``: :attr:`abort` is what stops
    its current phase (cancel the request, stop reading the body); :meth:`touch` on every
    byte moved; :attr:`paused` while the client itself holds the body back (a slow disk)."""

    def __init__(self, clock, seconds):
        self._clock, self.seconds = clock, seconds
        self.last = clock.seconds()
        self.moved = 0  # bytes moved so far (what ``touch`` was told of)
        self.stalled = False
        self.paused = False
        self.abort = None
        self._call = clock.callLater(seconds, self._check)

    def touch(self, data=None):
        self.last = self._clock.seconds()
        if data:
            self.moved += len(data)

    def _check(self):
        idle = self._clock.seconds() - self.last
        if self.paused or idle < self.seconds:
            self._call = self._clock.callLater(self.seconds if self.paused else self.seconds - idle, self._check)
            return
        self._call = None
        self.stalled = True
        if self.abort is not None:
            self.abort()

    def stop(self):
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None


class _Collect(Protocol):
    """Hands each chunk of a body to ``on_chunk``; an exception it raises ends the body."""

    def __init__(self, on_chunk, done, watch):
        self._on_chunk, self._done, self._watch = on_chunk, done, watch
        self._error = None

    def connectionMade(self):
        if self._watch is not None:
            self._watch.abort = self.transport.stopProducing

    def dataReceived(self, data):
        if self._error is not None:
            return
        if self._watch is not None:
            self._watch.touch(data)
        try:
            self._on_chunk(data)
        except Exception as e:
            self._error = e
            self.transport.stopProducing()

    def connectionLost(self, reason):
        if self._error is not None:
            self._done.errback(self._error)
        elif reason.check(ResponseDone, PotentialDataLoss):
            self._done.callback(None)
        else:
            self._done.errback(reason)


def read_body(response, on_chunk, watch=None) -> defer.Deferred:
    """Deliver ``response``'s body to ``on_chunk``; fires when it has all arrived."""
    done = defer.Deferred()
    response.deliverBody(_Collect(on_chunk, done, watch))
    return done
