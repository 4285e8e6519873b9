"""quantum_sync.adapters.twisted: pins the Twisted details it reads, over real sockets,
so that a Twisted that changes them fails here instead of corrupting a WebSocket stream
or misrouting an upload. Every wait is bounded."""

import socket

import pytest
import pytest_twisted
from twisted.internet import defer, protocol
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.task import deferLater
from twisted.web import http, resource, server
from twisted.web.client import Agent, readBody
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

from quantum_sync.adapters import twisted as adapter


async def _until(reactor, condition, what, timeout=10.0):
    waited = 0.0
    while not condition():
        assert waited < timeout, what
        await deferLater(reactor, 0.01, lambda: None)
        waited += 0.01


class _Collect(protocol.Protocol):
    def __init__(self):
        self.received = bytearray()

    def dataReceived(self, data):
        self.received += data


@pytest_twisted.ensureDeferred
async def test_a_tcp_servers_write_buffer_is_read_as_the_adapter_expects(reactor):
    accepted = defer.Deferred()

    class Server(protocol.Protocol):
        def connectionMade(self):
            accepted.callback(self)

    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(protocol.Factory.forProtocol(Server))
    client = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), _Collect())
    try:
        server_side = await accepted
        transport = server_side.transport
        sock = adapter.direct_socket(transport)
        assert isinstance(sock, socket.socket) and sock is transport.getHandle()
        assert adapter.send_if_idle(transport, sock, b"a")  # idle: straight to the socket
        transport.write(b"x" * 100)  # held in Twisted's buffer until the reactor writes it
        assert not adapter.send_if_idle(transport, sock, b"z")  # would overtake it: not sent
        await _until(reactor, lambda: len(client.received) == 101, "the buffered bytes never arrived")
        # once the buffer is empty the direct path writes again, after everything before it
        await _until(reactor, lambda: adapter.send_if_idle(transport, sock, b"y"), "the buffer never emptied")
        await _until(reactor, lambda: len(client.received) == 102, "the direct byte never arrived")
        # more than the socket takes at once: the rest goes through Twisted's buffer, in order
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        big = bytes(range(256)) * 4096
        assert adapter.send_if_idle(transport, sock, big)
        assert not adapter.send_if_idle(transport, sock, b"z")  # the rest waits in the buffer
        await _until(reactor, lambda: len(client.received) == 102 + len(big), "the rest never arrived")
        assert bytes(client.received) == b"a" + b"x" * 100 + b"y" + big
        transport.loseConnection()
        assert not adapter.send_if_idle(transport, sock, b"z")  # closing: nothing may be written
    finally:
        client.transport.loseConnection()
        await port.stopListening()


def test_a_transport_that_is_not_plain_tcp_has_no_direct_socket():
    from twisted.internet.testing import StringTransport

    assert adapter.direct_socket(StringTransport()) is None


class _Seen:
    lines = []


class _SeeingRequest(server.Request):
    def gotLength(self, length):
        _Seen.lines.append(adapter.request_line(self.channel))
        super().gotLength(length)


class _Hello(resource.Resource):
    isLeaf = True

    def render(self, request):
        return b"hello " * 20000  # larger than one socket read: the body streams


@pytest_twisted.ensureDeferred
async def test_the_request_line_is_known_when_the_body_length_is(reactor):
    site = server.Site(_Hello())
    site.requestFactory = _SeeingRequest
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site)
    client = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), _Collect())
    try:
        _Seen.lines.clear()
        client.transport.write(b"POST /api/upload?path=a HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi")
        await _until(reactor, lambda: b"hello" in client.received, "no answer")
        assert _Seen.lines == [(b"POST", b"/api/upload?path=a")]
        assert adapter.request_line(http.HTTPChannel()) == (b"", b"")  # before any request line
    finally:
        client.transport.loseConnection()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_pooled_connection_the_database_dropped_goes_quietly(reactor, pg_schema):
    """adbapi's rollback after a lost connection logs "Rollback failed" twice; the
    adapter's connection closes it without a word, the transaction's own error is
    raised, and the pool makes a new connection for the next one."""
    import psycopg
    from twisted.enterprise import adbapi

    from tests.logcapture import LogCapture

    pool = adbapi.ConnectionPool("psycopg", pg_schema, cp_min=1, cp_max=1, cp_reconnect=True,
                                 cp_noisy=False, cp_reactor=reactor)
    pool.connectionFactory = adapter.QuietConnection
    pool.start()

    def backend(txn):
        txn.execute("SELECT pg_backend_pid()")
        return txn.fetchone()[0]

    try:
        first = await pool.runInteraction(backend)
        with psycopg.connect(pg_schema, autocommit=True) as other:
            other.execute("SELECT pg_terminate_backend(%s)", (first,))
        with LogCapture() as log:
            try:
                await pool.runInteraction(backend)
            except psycopg.OperationalError:
                pass
            else:
                raise AssertionError("the dropped connection answered")
        assert log.error_messages() == []
        assert await pool.runInteraction(backend) != first  # a new one
    finally:
        pool.close()


@pytest_twisted.ensureDeferred
async def test_a_pool_closed_apart_leaves_no_trigger_thread_or_connection(reactor, pg_schema):
    """close_pool removes the pool's start and shutdown triggers (a reactor stopping
    later would close it twice) and hands the joining and closing to ``apart``."""
    from twisted.enterprise import adbapi

    from quantum_sync.threads import in_own_thread

    pool = adbapi.ConnectionPool("psycopg", pg_schema, cp_min=1, cp_max=2, cp_noisy=False,
                                 cp_reactor=reactor)
    pool.start()
    await pool.runOperation("SELECT 1")
    [driver] = pool.connections.values()
    handed = []

    def apart(f):
        handed.append(f)
        return in_own_thread(reactor, f)

    closed = adapter.close_pool(pool, apart)
    assert handed == [pool.finalClose] and pool.shutdownID is None and pool.startID is None
    await closed.addTimeout(10, reactor)
    assert not pool.running and pool.connections == {} and driver.closed
    assert pool.threadpool.joined and not any(t.is_alive() for t in pool.threadpool.threads)


@pytest_twisted.ensureDeferred
async def test_a_response_bodys_transport_leads_to_its_tcp_connection(reactor):
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(server.Site(_Hello()))
    seen, done = [], defer.Deferred()

    class Body(protocol.Protocol):
        def connectionMade(self):
            connection = adapter.body_connection(self.transport)
            seen.append(connection)
            connection.bufferSize = 1 << 18  # what staging does while a download streams

        def connectionLost(self, reason):
            done.callback(None)

    try:
        response = await Agent(reactor).request(b"GET", b"http://127.0.0.1:%d/" % port.getHost().port)
        response.deliverBody(Body())
        await done
        (connection,) = seen
        assert isinstance(connection.getHandle(), socket.socket)  # the TCP connection itself
        assert connection.bufferSize == 1 << 18
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("length", [11, UNKNOWN_LENGTH])
async def test_a_request_bodys_consumer_leads_to_its_tcp_connection(reactor, length):
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(server.Site(_Hello()))
    seen = []

    @implementer(IBodyProducer)
    class Body:
        def __init__(self):
            self.length = length

        def startProducing(self, consumer):
            seen.append(adapter.request_connection(consumer))
            consumer.write(b"hello world")
            return defer.succeed(None)

        def stopProducing(self):
            pass

    try:
        response = await Agent(reactor).request(b"POST", b"http://127.0.0.1:%d/" % port.getHost().port,
                                                bodyProducer=Body())
        (connection,) = seen
        assert isinstance(connection.getHandle(), socket.socket)  # the TCP connection itself
        assert connection.getPeer().port == port.getHost().port and response.code == 200
        await readBody(response)
    finally:
        await port.stopListening()
