"""Request bodies for :class:`~quantum_sync.client.transfer.ServerClient`: bytes already
in memory, and a body whose writes tell the transfer's idle watch (so a stalled transfer
is noticed) and which stops, and drops its connection, when the server refuses it early."""

from twisted.internet import defer
from twisted.python.failure import Failure
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from quantum_sync.adapters import twisted as twisted_adapter


@implementer(IBodyProducer)
class BytesBody:
    """A request body already in memory, written in one go (no cooperator task). When
    that write fills the connection's buffer (it pauses the body), the body is done only
    once the connection resumes it: a body done while paused would leave the kept-alive
    connection taking its *next* body for a paused one, and resuming that (Twisted's
    ``NotPaused`` from a ``FileBodyProducer``: the connection drops)."""

    def __init__(self, data: bytes):
        self._data = data
        self.length = len(data)
        self._paused = False
        self._resumed = None  # fires when resumed after a pause during the write

    def startProducing(self, consumer):
        self._paused = False  # (sent again after a refusal: a new connection)
        consumer.write(self._data)
        if not self._paused:
            return defer.succeed(None)
        self._resumed = defer.Deferred()  # never fires once stopped (IBodyProducer)
        return self._resumed

    def pauseProducing(self):
        self._paused = True

    def resumeProducing(self):
        self._paused = False
        resumed, self._resumed = self._resumed, None
        if resumed is not None:
            resumed.callback(None)

    def stopProducing(self):
        self._resumed = None


@implementer(IBodyProducer)
class WatchedBody:
    """A request body whose every write tells an :class:`IdleWatch`. The body is resumed
    only after it was paused (once however many pauses came between): a connection that
    resumes a body it never paused (see :class:`BytesBody`) must not make a
    ``FileBodyProducer`` raise ``NotPaused`` in the reactor's write."""

    def __init__(self, producer, watch):
        self._producer, self._watch = producer, watch
        self.length = producer.length
        self._paused = False
        self._sending = False  # started, neither done nor stopped
        self._sent = False  # the whole body went
        self._connection = None  # the connection the body goes into

    def startProducing(self, consumer):
        self._sending, self._sent = True, False
        self._connection = twisted_adapter.request_connection(consumer)
        done = self._producer.startProducing(_TouchingConsumer(consumer, self._watch))
        return done.addBoth(self._done)

    def _done(self, result):
        self._sending = False
        self._sent = not isinstance(result, Failure)
        return result

    def answered(self, refused: bool = False) -> None:
        """The server answered (or the request failed) before the whole body went: a
        refusal at the head (401, 413, 503...) stops the body there, rather than sending
        the rest into a connection the server only drains before closing it. The
        connection of a ``refused`` one is aborted (its answer has been read): it can
        carry no other request, and with the unsent rest of the body in its buffer it
        would stay open until the server cut it (10 s on ours)."""
        if self._sending:
            self.stopProducing()
        if refused and not self._sent and self._connection is not None:
            self._connection.abortConnection()

    def pauseProducing(self):
        if not self._paused:
            self._producer.pauseProducing()  # (a finished FileBodyProducer raises: not paused)
            self._paused = True

    def resumeProducing(self):
        if self._paused:
            self._paused = False
            self._producer.resumeProducing()

    def stopProducing(self):
        if self._sending:
            self._sending = False
            self._producer.stopProducing()


class _TouchingConsumer:
    def __init__(self, consumer, watch):
        self._consumer, self._watch = consumer, watch

    def write(self, data):
        self._watch.touch(data)
        self._consumer.write(data)

    def registerProducer(self, producer, streaming):
        self._consumer.registerProducer(producer, streaming)

    def unregisterProducer(self):
        self._consumer.unregisterProducer()
