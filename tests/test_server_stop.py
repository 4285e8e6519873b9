"""Stopping the server with connections still open: no request reaches the closed index
(no 500, no traceback); a request being answered is answered in full first."""

import pytest_twisted
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory, Protocol

from tests.logcapture import LogCapture
from tests.support import start_server, wait_for

REQUEST = b"GET /api/metadata?path=a.txt HTTP/1.1\r\nHost: x\r\n\r\n"


class KeepAliveClient(Protocol):
    """A raw HTTP/1.1 client: what it received, and a Deferred for the server's hang-up."""

    def __init__(self):
        self.received = b""
        self.lost = defer.Deferred()

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason):
        self.lost.callback(None)


async def connect(reactor, port):
    client = KeepAliveClient()
    await TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(Factory.forProtocol(lambda: client))
    return client


async def answered(reactor, client):
    """Wait (bounded) until one whole small answer is in."""
    def complete():  # a chunked body ends with an empty chunk, a sized one with the JSON
        data = client.received
        return b"\r\n\r\n" in data and (data.endswith(b"\r\n0\r\n\r\n") or data.rstrip().endswith(b"}"))

    await wait_for(reactor, complete, what="the answer")


async def upload_in_progress(reactor, client, lock, path: str, body: bytes):
    """Send an upload and wait (bounded) until its install waits for ``lock`` (held by
    the test): the request is then surely in progress."""
    client.transport.write(b"POST /api/upload?path=%s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
                           % (path.encode(), len(body), body))
    await wait_for(reactor, lambda: lock.waiting, what="the upload waiting to be installed")


@pytest_twisted.ensureDeferred
async def test_idle_keepalive_connections_are_closed_before_the_index(reactor, tmp_path):
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "a.txt").write_bytes(b"alpha")
    server = await start_server(reactor, tmp_path)
    client = await connect(reactor, server.port)
    try:
        client.transport.write(REQUEST)
        await answered(reactor, client)
        assert client.received.startswith(b"HTTP/1.1 200")
        with LogCapture() as log:
            await server.stop()
            await client.lost.addTimeout(5, reactor)  # closed by the stop, not left open
            assert client.transport.connected == 0
        assert log.error_messages() == []
    finally:
        if client.transport.connected:
            client.transport.abortConnection()


@pytest_twisted.ensureDeferred
async def test_a_request_in_progress_when_the_server_stops_is_answered(reactor, tmp_path):
    server = await start_server(reactor, tmp_path)
    client = await connect(reactor, server.port)
    idle = await connect(reactor, server.port)
    lock = server.service.operations._lock
    await lock.acquire()  # the upload's install waits here: the request is surely in progress
    try:
        with LogCapture() as log:
            body = b"uploaded while the server stops"
            await upload_in_progress(reactor, client, lock, "b.txt", body)
            stopping = defer.ensureDeferred(server.stop())
            # the idle connection is dropped as the stop closes connections: from then on
            # the stop waits for the answer
            await idle.lost.addTimeout(5, reactor)
            assert not stopping.called
            lock.release()
            await stopping
            await client.lost.addTimeout(5, reactor)
        assert client.received.startswith(b"HTTP/1.1 200"), client.received[:300]
        assert (tmp_path / "root" / "b.txt").read_bytes() == body
        assert log.error_messages() == []
    finally:
        if lock.locked:
            lock.release()
        if client.transport.connected:
            client.transport.abortConnection()


@pytest_twisted.ensureDeferred
async def test_connections_still_busy_after_the_grace_time_are_aborted_quietly(reactor, tmp_path):
    import gc

    server = await start_server(reactor, tmp_path)
    client = await connect(reactor, server.port)
    lock = server.service.operations._lock
    await lock.acquire()  # the upload below is answered only once this is released
    site = server.service.listeners[0].site
    try:
        with LogCapture() as log:
            await upload_in_progress(reactor, client, lock, "c.txt", b"c")
            await site.close_connections(grace=0.2)
            await client.lost.addTimeout(5, reactor)
            gc.collect()  # an unhandled failure in a forgotten Deferred is logged now
        assert client.received == b""
        assert log.error_messages() == []
        assert "still open after 0.2 s are aborted" in log.text()
    finally:
        lock.release()
        if client.transport.connected:
            client.transport.abortConnection()
        await server.stop()
