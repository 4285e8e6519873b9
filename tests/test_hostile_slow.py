"""Slow and half-open connections against a running server: a client that sends nothing,
trickles a request head (slowloris) or a JSON body is dropped at the request deadline;
slow uploads, idle WebSockets and normal keep-alive requests are not."""

import json

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater

from tests.support import HttpClient, start_server
from test_ws_support import connect

DEADLINE = 0.5


class RawClient(Protocol):
    """A TCP client that records what it receives and when the server hangs up."""

    def __init__(self, reactor):
        self.reactor = reactor
        self.received = b""
        self.lost = defer.Deferred()
        self.lost_at = None

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason):
        self.lost_at = self.reactor.seconds()
        self.lost.callback(None)

    @property
    def open(self):
        return self.lost_at is None


@pytest_twisted.async_yield_fixture
async def server(reactor, tmp_path):
    running = await start_server(reactor, tmp_path)
    for listener in running.service.listeners:
        listener.site.request_timeout = DEADLINE
    opened = []

    async def raw():
        client = RawClient(reactor)
        await TCP4ClientEndpoint(reactor, "127.0.0.1", running.port).connect(
            Factory.forProtocol(lambda: client))
        opened.append(client)
        return client

    running_raw = (running, raw)
    yield running_raw
    for client in opened:
        if client.open:
            client.transport.abortConnection()
    await running.stop()


async def trickle(reactor, client, data: bytes, step=0.1, until=None):
    """Send ``data`` a byte every ``step`` seconds while the connection stays open."""
    for byte in data:
        if not client.open or (until is not None and reactor.seconds() > until):
            return
        client.transport.write(bytes([byte]))
        await deferLater(reactor, step, lambda: None)


async def within(reactor, deferred, seconds):
    return await deferred.addTimeout(seconds, reactor)


@pytest_twisted.ensureDeferred
async def test_silent_connection_is_dropped(server, reactor):
    running, raw = server
    client = await raw()
    started = reactor.seconds()
    await within(reactor, client.lost, DEADLINE + 2)
    assert DEADLINE - 0.1 <= client.lost_at - started
    assert client.received == b""


_JSON = json.dumps({"operations": [], "client_id": "slow"}).encode()


@pytest.mark.parametrize("prompt, trickled", [
    # slowloris: a request head that never ends
    (b"", b"GET /api/list HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200 + b"\r\n\r\n"),
    # a JSON body sent a byte at a time
    (b"POST /api/sync HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(_JSON), _JSON),
])
@pytest_twisted.ensureDeferred
async def test_trickled_request_is_dropped_while_still_sending(server, reactor, prompt, trickled):
    running, raw = server
    client = await raw()
    client.transport.write(prompt)
    started = reactor.seconds()
    await trickle(reactor, client, trickled, step=0.02, until=started + DEADLINE + 2)
    await within(reactor, client.lost, 2)
    assert client.lost_at - started < DEADLINE + 1
    assert client.received == b""


@pytest_twisted.ensureDeferred
async def test_slow_upload_body_is_not_cut(server, reactor):
    running, raw = server
    client = await raw()
    body = b"0123456789" * 3
    client.transport.write(b"POST /api/upload?path=slow.txt HTTP/1.1\r\nHost: x\r\nContent-Length: "
                           + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n")
    await trickle(reactor, client, body, step=DEADLINE * 3 / len(body))
    await within(reactor, client.lost, 5)
    assert client.received.startswith(b"HTTP/1.1 200"), client.received[:200]
    with open(f"{running.root}/slow.txt", "rb") as f:
        assert f.read() == body


@pytest_twisted.ensureDeferred
async def test_keepalive_requests_each_get_their_own_deadline(server, reactor):
    running, raw = server
    client = await raw()
    for _ in range(3):  # prompt requests on one connection, spaced past the deadline in total
        client.received = b""
        client.transport.write(b"GET /ws/health HTTP/1.1\r\nHost: x\r\n\r\n")
        await deferLater(reactor, DEADLINE * 0.6, lambda: None)
        assert client.received.startswith(b"HTTP/1.1 200") and client.open
    # then an idle keep-alive connection is dropped at the deadline
    await within(reactor, client.lost, DEADLINE + 2)


@pytest_twisted.ensureDeferred
async def test_idle_websocket_outlives_the_request_deadline(server, reactor):
    running, raw = server
    client = await connect(reactor, running.ws_url)
    try:
        # an idle connection opened after it is dropped at the deadline: the WebSocket's
        # deadline, had it one, would have come first
        idle = await raw()
        await within(reactor, idle.lost, DEADLINE + 2)
        assert await client.request({"type": "Ping", "id": 1}) == {"type": "Pong", "id": 1}
    finally:
        client.transport.abortConnection()
    http = HttpClient(reactor)
    try:
        await http.json("GET", running.url + "/api/list")
    finally:
        await http.close()


def test_the_deadline_is_on_by_default():
    from quantum_sync.server.site import SyncSite

    assert 0 < SyncSite.request_timeout <= 60
