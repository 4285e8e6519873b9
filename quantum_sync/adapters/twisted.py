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
- The TCP connection under a response body's transport (``TransportProxyProducer._producer``):
  larger socket reads while a download streams in.
"""

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


def body_connection(transport):
    """The connection (a TCP transport, with ``bufferSize``) under the transport a
    response body's protocol gets, or None."""
    connection = getattr(transport, "_producer", None)
    return connection if hasattr(connection, "bufferSize") else None
