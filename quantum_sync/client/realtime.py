"""The WebSocket link to the server's hub (contract section 5), under a ClientService.

On every connection: ``auth`` first (when a token is configured), then ``Subscribe``
with the client id; once the server acknowledges it, the engine catches up from the
journal (a reconnect never needs a full rescan). ``FileOperation`` messages go to the
engine with their ``seq``; the engine notices gaps. The link also subscribes to the
``transfers`` topic, whose ``upload_started`` events let the engine fetch another
client's large upload while it arrives (:mod:`quantum_sync.server.relay`). Reconnection
uses exponential backoff; every state change is logged.
"""

import json

import txaio
from urllib.parse import urlsplit

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import defer
from twisted.logger import Logger

from quantum_sync import protocol
from quantum_sync.client.failover import RotatingEndpoint, host_and_port
from quantum_sync.errors import SyncError


_log = Logger()
TRANSFERS_TOPIC = "transfers"


def websocket_url(server_url: str) -> str:
    """``ws://host:port/ws`` (or ``wss://``) for an ``http(s)://host:port`` server URL."""
    parts = urlsplit(server_url)
    scheme = "wss" if parts.scheme == "https" else "ws"
    return f"{scheme}://{parts.netloc}/ws"


def _parsed(parse, value, kind):
    """``parse(value)``, or None (logged) when the server sent something invalid."""
    try:
        return parse(value)
    except SyncError as e:
        _log.warn("realtime: ignoring an invalid {kind}: {error}", kind=kind, error=e.message)
        return None


class SyncClientProtocol(WebSocketClientProtocol):
    """Speaks the client side of the hub protocol; all decisions are the link's.

    (Autobahn's own ``self.log`` is left alone: it filters its frame-level debug lines.)
    """

    def onConnect(self, response):
        self._opened = defer.Deferred()

    def onOpen(self):
        link = self.factory.link
        if link.token:
            self._send({"type": "auth", "payload": {"token": link.token}})
        else:
            self._subscribe()

    def _subscribe(self):
        self._send({"type": "Subscribe", "client_id": self.factory.link.client_id})

    def _send(self, message):
        self.sendMessage(json.dumps(message).encode("utf-8"))

    def onMessage(self, payload, isBinary):
        link = self.factory.link
        try:
            message = json.loads(payload.decode("utf-8"))
            kind = message.get("type")
        except (ValueError, UnicodeDecodeError, AttributeError):
            _log.warn("realtime: unreadable message from the server")
            return
        if kind == "auth_success":
            self._subscribe()
        elif kind == "auth_error":
            _log.error("realtime: the server refused the token: {message}", message=message.get("message", ""))
        elif kind == "Ack" and message.get("operation_id") == "subscribe" and "topic" not in message:
            link.subscribed(self, message.get("journal_id"))
            if link.relay:
                # large uploads of other clients, announced while they arrive (an extension
                # of the server's; an older one answers an Error, which is only logged)
                self._send({"type": "subscribe", "topic": TRANSFERS_TOPIC, "id": TRANSFERS_TOPIC})
        elif kind == "upload_started":
            announced = _parsed(protocol.parse_upload_started, message.get("data"), kind)
            if announced is not None:
                link.engine.upload_started(announced)
        elif kind == "FileOperation":
            operation = _parsed(protocol.parse_operation, message.get("operation"), kind)
            if operation is not None:
                seq = message.get("seq")
                link.received(seq if isinstance(seq, int) and not isinstance(seq, bool) else None, operation,
                              message.get("journal_id"))
        elif kind == "Error" and message.get("id") == TRANSFERS_TOPIC:
            _log.info("realtime: the server announces no uploads in progress; large files are fetched once stored")
        elif kind == "Error":
            _log.warn(
                "realtime: server error {code}: {message}", code=message.get("code"), message=message.get("message")
            )

    def onClose(self, wasClean, code, reason):
        self.factory.link.closed(self, code, reason)


class RealtimeLink:
    """Owns the ClientService; tells the engine when it is up, down, and what arrives."""

    log = Logger()

    def __init__(self, reactor, server_url, client_id, engine, token=None, ca_cert=None, relay=True,
                 fallbacks=()):
        self.reactor = reactor
        self.client_id = client_id
        self.relay = relay
        self.token = token
        self.engine = engine
        self.connected = False
        self._protocol = None
        url = websocket_url(server_url)
        headers = {"X-Client-Id": client_id}
        txaio.set_global_log_level("info")  # Autobahn's frame-level debug lines are not for admins
        self.factory = WebSocketClientFactory(url, headers=headers)
        self.factory.protocol = SyncClientProtocol
        self.factory.link = self
        # Autobahn's incremental UTF-8 check costs four foreign calls per message, each
        # giving up the GIL (a third of a receiving client's time per message in a burst);
        # every text message is decoded as strict UTF-8 in onMessage instead, and one that
        # is not is refused there.
        self.factory.setProtocolOptions(autoPingInterval=15, autoPingTimeout=10, openHandshakeTimeout=10,
                                        utf8validateIncoming=False)
        from quantum_sync.tls import client_endpoint

        endpoint = RotatingEndpoint([client_endpoint(reactor, *host_and_port(url), ca_cert)
                                     for url in (server_url, *fallbacks)])
        self.service = ClientService(
            endpoint, self.factory, retryPolicy=backoffPolicy(initialDelay=0.5, maxDelay=30.0), clock=reactor
        )

    def subscribed(self, proto, journal_id=None):
        self._protocol = proto
        self.engine.journal_named(journal_id)
        if not self.connected:
            self.log.info("realtime: connected and subscribed to {url}", url=self.factory.url)
        self.connected = True
        self.engine.catch_up_soon()
        self.engine.retry_pending()

    def received(self, seq, operation, journal_id=None):
        self.engine.remote_operation(seq, operation, journal_id)

    def closed(self, proto, code, reason):
        if self.connected:
            self.log.warn("realtime: disconnected (code {code}, {reason}); reconnecting with backoff", code=code, reason=reason or "")
        self.connected = False
        self._protocol = None

    def stop(self):
        """Stop reconnecting and drop the connection (a Deferred)."""
        self.connected = False
        return self.service.stopService()
