"""Helpers for the WebSocket tests (this module holds no tests of its own).

- :func:`hub_site`: a real hub + ``/ws`` resource on a real Site listening on
  127.0.0.1:0, with a small in-memory journal standing in for the server's operations
  (tests/test_ws_service.py runs the same protocol inside the real server).
- :class:`Client`: a real Autobahn client over a real socket that records every message
  and the close code it was sent.
- :func:`raw_handshake`: an upgrade request over treq, to read refusals (HTTP status and
  JSON body) exactly as sent.
"""

import base64
import json
import os

import attrs
import treq
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from autobahn.websocket.compress import PerMessageDeflateOffer, PerMessageDeflateResponseAccept
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, serverFromString
from twisted.internet.task import deferLater
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import Site

from quantum_sync.config import WebSocketConfig
from quantum_sync.errors import SyncError
from quantum_sync.protocol import Change, Delete, now
from quantum_sync.server.auth import OpenAuthorizer
from quantum_sync.server.hub import Hub
from quantum_sync.server.metrics import Metrics
from quantum_sync.server.ws import HubFactory, HubResource
from support import wait_for

TIMEOUT = 5.0
#: Timers long enough to stay out of the way of tests that do not exercise them.
QUIET = {"ping_interval": 30, "stale_timeout": 300, "cleanup_interval": 60, "metrics_interval": 60}
#: The journal identity of :class:`MemoryJournal`.
MEMORY_JOURNAL_ID = "6d656d6f72792d6a6f75726e616c2d31"


@attrs.define
class MemoryJournal:
    """Stands in for ``service.operations`` until the server runs the protocol:
    a set of paths, Delete/Move/Create applied to it, each change journalled and
    published through the hub like the real operations do."""

    hub: Hub
    paths: set = attrs.field(factory=set)
    seq: int = 0
    journal_id: str = MEMORY_JOURNAL_ID

    @property
    def head(self) -> int:
        return self.seq

    #: always ready (the real operations wait for their start-up check)
    ready = True

    def apply(self, operation, source_client):
        if isinstance(operation, Delete):
            if operation.path not in self.paths:
                raise SyncError("NOT_FOUND", f"{operation.path} does not exist")
            self.paths.discard(operation.path)
        elif operation.kind == "Move":
            if operation.destination in self.paths:
                raise SyncError("CONFLICT", f"{operation.destination} exists")
            self.paths.discard(operation.source)
            self.paths.add(operation.destination)
        else:
            self.paths.add(operation.metadata.path)
        self.seq += 1
        change = Change(self.seq, operation, source_client, now())
        self.hub.publish(change)
        return change


@attrs.define
class HubSite:
    """A running hub + /ws on a real port."""

    reactor: object
    hub: Hub
    factory: HubFactory
    port: object
    journal: MemoryJournal
    clients: list = attrs.field(factory=list)

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port.getHost().port}/ws"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port.getHost().port}/ws"

    async def connect(self, url=None, **options) -> "Client":
        client = await connect(self.reactor, url or self.ws_url, **options)
        self.clients.append(client)
        return client

    async def stop(self):
        await drop_all(self.reactor, self.clients, self.hub)
        self.hub.stopService()
        await self.port.stopListening()


async def hub_site(reactor, tmp_path, authorizer=None, factory_clock=None, **settings) -> HubSite:
    """Start a hub (its LoopingCalls on the real reactor) and ``/ws`` on 127.0.0.1:0."""
    config = WebSocketConfig(**settings)
    hub = Hub(config, reactor, metrics=Metrics(clock=reactor.seconds), storage_root=str(tmp_path),
              journal_id=lambda: MEMORY_JOURNAL_ID)
    journal = MemoryJournal(hub)
    factory = HubFactory(hub, config, authorizer or OpenAuthorizer(), journal, factory_clock or reactor)
    root = Resource()
    root.putChild(b"ws", HubResource(factory))
    port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(Site(root))
    hub.startService()
    return HubSite(reactor, hub, factory, port, journal)


class Client(WebSocketClientProtocol):
    """Records every message (parsed JSON) and how the connection closed."""

    def __init__(self):
        super().__init__()
        self.inbox = defer.DeferredQueue()
        self.received = []
        self.opened = defer.Deferred()
        self.closed = defer.Deferred()
        self.close_code = None

    def onOpen(self):
        self.opened.callback(self)

    def onMessage(self, payload, isBinary):
        message = json.loads(payload)
        self.received.append(message)
        self.inbox.put(message)

    def onClose(self, wasClean, code, reason):
        self.close_code = code
        if not self.opened.called:
            self.opened.errback(ConnectionError(f"handshake failed: {code} {reason}"))
        if not self.closed.called:
            self.closed.callback((code, reason))

    def send_json(self, obj) -> None:
        self.sendMessage(json.dumps(obj).encode("utf-8"))

    async def next(self, timeout=TIMEOUT) -> dict:
        """The next message, failing after ``timeout`` seconds."""
        from twisted.internet import reactor

        return await self.inbox.get().addTimeout(timeout, reactor)

    async def expect(self, kind: str, timeout=TIMEOUT, **fields) -> dict:
        """Skip messages until one of ``kind`` (with ``fields``) arrives."""
        from twisted.internet import reactor

        deadline = reactor.seconds() + timeout
        while True:
            message = await self.next(max(0.01, deadline - reactor.seconds()))
            if message.get("type") == kind and all(message.get(k) == v for k, v in fields.items()):
                return message

    async def request(self, obj, timeout=TIMEOUT) -> dict:
        """Send ``obj`` and return the next message."""
        self.send_json(obj)
        return await self.next(timeout)

    async def wait_closed(self, timeout=TIMEOUT):
        from twisted.internet import reactor

        return await self.closed.addTimeout(timeout, reactor)


async def connect(reactor, url, origin=None, headers=None, compress=False, client_class=Client) -> Client:
    """Open a real WebSocket to ``url`` and wait for the handshake."""
    factory = WebSocketClientFactory(url, origin=origin, headers=headers or {})
    factory.protocol = client_class
    if compress:
        factory.setProtocolOptions(
            perMessageCompressionOffers=[
                PerMessageDeflateOffer(accept_max_window_bits=True, accept_no_context_takeover=True)
            ],
            perMessageCompressionAccept=lambda response: PerMessageDeflateResponseAccept(response),
        )
    port = int(url.split(":")[2].split("/")[0])
    client = await TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=TIMEOUT).connect(factory)
    await client.opened.addTimeout(TIMEOUT, reactor)
    return client


async def drop_all(reactor, clients, hub, timeout=TIMEOUT):
    """Close every client and wait until the server side has let them all go."""
    for client in clients:
        if client.transport is not None and client.state != client.STATE_CLOSED:
            client.transport.abortConnection()
    await wait_for(reactor, lambda: not hub.connections, timeout)
    # let Autobahn's closing timers on both sides settle
    await deferLater(reactor, 0, lambda: None)


UPGRADE_HEADERS = {
    "Upgrade": ["websocket"],
    "Connection": ["Upgrade"],
    "Sec-WebSocket-Version": ["13"],
}


async def raw_handshake(reactor, url, headers=None):
    """A WebSocket upgrade request that is expected to be refused: (status, JSON body)."""
    pool = HTTPConnectionPool(reactor, persistent=False)
    try:
        key = base64.b64encode(os.urandom(16)).decode()
        all_headers = {**UPGRADE_HEADERS, "Sec-WebSocket-Key": [key], **(headers or {})}
        response = await treq.get(url, headers=all_headers, agent=Agent(reactor, pool=pool))
        body = await response.content()
        return response.code, json.loads(body) if body else None
    finally:
        await pool.closeCachedConnections()
