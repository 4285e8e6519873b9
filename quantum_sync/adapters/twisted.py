"""Twisted details that have no public API.

- A TCP server transport's write buffer (``tcp.Server``: ``_tempDataLen``, ``offset``,
  ``dataBuffer``) and its ``socket``: a WebSocket frame goes straight to the socket when
  nothing is buffered, sparing Twisted's write buffer two epoll updates and a write pass
  per subscriber. Measured on a 1,000-client broadcast: 2.8x the broadcasts a second of a
  bare Autobahn server, and server CPU ~15 ms per broadcast against ~27 ms with the same
  frames written through ``transport.write`` (bench/README.md, bench_ws.py).
- The request line an ``HTTPChannel`` has parsed (``_command``, ``_path``) before its
  request gets the body length: uploads are routed, gated and spooled before the body is
  read, where ``Request.method``/``uri`` are not yet set.
- An ``adbapi`` pooled connection's driver connection and pool (``Connection._connection``,
  ``_pool``): a connection the database dropped is let go without adbapi's two
  "Rollback failed" tracebacks per transaction that meets it (:class:`QuietConnection`).
- An ``adbapi`` pool's reactor triggers and its closing (``startID``, ``shutdownID``,
  ``finalClose``): :func:`close_pool` joins the pool's threads off the reactor, where
  ``ConnectionPool.close`` joins them on it (a query in flight would block the reactor).
- The TCP connection under a response body's transport (``TransportProxyProducer._producer``):
  larger socket reads while a download streams in.
- The connection under the consumer Agent hands a request's body producer
  (``LengthEnforcingConsumer._consumer``, ``ChunkedEncoder.transport``): an upload
  refused before its body went is aborted at once, rather than left open with the rest
  of the body in its buffer until the server cuts it.
"""

from twisted.enterprise import adbapi
from twisted.internet import tcp

_BUFFER = ("_tempDataLen", "offset", "dataBuffer", "socket")


def direct_socket(transport):
    """The socket under a plain TCP server ``transport`` whose write buffer
    :func:`send_if_idle` can read, else None (then write through ``transport.write``)."""
    if type(transport) is tcp.Server and all(hasattr(transport, name) for name in _BUFFER):
        return transport.socket
    return None


def send_if_idle(transport, sock, data: bytes) -> bool:
    """Write ``data`` straight to ``sock`` (:func:`direct_socket` of ``transport``) when
    the transport is open and holds no unsent bytes, so that nothing is overtaken; what
    the socket does not take at once goes to ``transport.write``. False, having written
    nothing, while bytes wait in Twisted's buffer (or the transport is closing)."""
    if not transport.connected or transport.disconnecting or transport._tempDataLen \
            or transport.offset != len(transport.dataBuffer):
        return False
    try:
        written = sock.send(data)
    except OSError:  # would block, or lost: Twisted finds out on its own
        written = 0
    if written != len(data):
        transport.write(data[written:])
    return True


def request_line(channel) -> tuple:
    """``(method, target)`` of the request an ``HTTPChannel`` is reading (bytes; empty
    before its request line has arrived)."""
    return getattr(channel, "_command", b""), getattr(channel, "_path", b"")


class QuietConnection(adbapi.Connection):
    """An ``adbapi.ConnectionPool``'s connection (its ``connectionFactory``) that lets a
    driver connection the database dropped go quietly: adbapi's own rollback logs two
    tracebacks for every transaction that meets one, however expected (the database
    restarting, a network cut), while the caller is told anyway (the transaction's own
    error is raised). The pool opens a new connection at the next transaction, as it
    would have. Needs a driver whose connections say ``broken`` (psycopg 3)."""

    def rollback(self):
        driver = self._connection
        if getattr(driver, "broken", False):
            self._pool.disconnect(driver)  # (closes it; the thread's next one is new)
            return
        super().rollback()


def close_pool(pool, apart):
    """Close the ``adbapi.ConnectionPool`` ``pool`` as its ``close`` does, but with its
    threads joined and its connections closed by ``apart(f)`` (a Deferred of ``f()``
    run off the reactor, such as :func:`quantum_sync.threads.in_own_thread`): a query in
    flight ends without the reactor waiting for it. Call on the reactor; a Deferred."""
    reactor = pool._reactor
    for name in ("shutdownID", "startID"):
        trigger = getattr(pool, name)
        if trigger:
            reactor.removeSystemEventTrigger(trigger)
            setattr(pool, name, None)
    return apart(pool.finalClose)


def body_connection(transport):
    """The connection (a TCP transport, with ``bufferSize``) under the transport a
    response body's protocol gets, or None."""
    connection = getattr(transport, "_producer", None)
    return connection if hasattr(connection, "bufferSize") else None


def request_connection(consumer):
    """The connection (a transport with ``abortConnection``) under the ``consumer`` that
    Agent hands a request's body producer, or None."""
    for name in ("_consumer", "transport"):
        connection = getattr(consumer, name, None)
        if hasattr(connection, "abortConnection"):
            return connection
    return None
