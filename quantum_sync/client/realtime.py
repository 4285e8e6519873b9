"""The WebSocket link to the server's hub (contract section 5), under a ClientService.

On every connection: ``auth`` first (when there is a token: the credentials' current
one, see :mod:`quantum_sync.client.credentials`), then ``Subscribe`` with the client id;
once the server acknowledges it, the engine catches up from the journal (a reconnect
never needs a full rescan). A token renewed while the connection is open is sent on it
as a new ``auth``: the connection stays, and the server's check of the identity on
every later message passes. ``FileOperation`` messages go to the
engine with their ``seq``; the engine notices gaps. The link also subscribes to the
``transfers`` topic, whose ``upload_started`` events let the engine fetch another
client's large upload while it arrives (:mod:`quantum_sync.server.relay`).

Reconnection (:mod:`quantum_sync.client.backoff`): exponential backoff with full jitter
up to 60 s. ``ClientService`` itself starts over whenever TCP connects, so the link keeps
its own count: a session is a success only if it was subscribed and stayed up a while.
A wait the server asks for is honoured: ``Retry-After`` on a refused handshake (503 at
``max_connections``, 429) and ``retryAfter`` in an ``Error``. ``CLIENT_ID_IN_USE`` (another
live connection is subscribed with this client id) is answered as the protocol asks:
the next connection, after ``retryAfter``, subscribes again (the server meanwhile drops
a half-open holder, such as this client's own connection from before a sleep); refused
once more, another client really uses the id, and the link goes on with the new id its
owner hands it (none for an id the user gave: then said once and backed off). A server
with no ``/ws`` (404) is said once and tried again every few minutes, the client
polling meanwhile. Every state change is logged.
"""

import json

from urllib.parse import urlsplit

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.application.internet import ClientService
from twisted.internet import defer
from twisted.logger import Logger

from quantum_sync import protocol
from quantum_sync.client.failover import RotatingEndpoint, host_and_port
from quantum_sync.client.backoff import Backoff, session_failed
from quantum_sync.client.credentials import Credentials, FixedToken, NoCredentials
from quantum_sync.client.keepalive import KeepAliveEndpoint
from quantum_sync.client.transfer import MAX_RETRY_AFTER, retry_after_seconds
from quantum_sync.errors import SyncError


_log = Logger()
TRANSFERS_TOPIC = "transfers"
#: Seconds between reconnects while the server refuses the only token there is.
SLOW_RETRY = 60.0
#: The cap of the reconnect backoff, in seconds.
MAX_BACKOFF = 60.0
#: Seconds between tries of a server whose route has no /ws (404).
NO_WEBSOCKET_RETRY = 180.0
#: The wait after CLIENT_ID_IN_USE when the server gives no retryAfter.
DEFAULT_ID_IN_USE_WAIT = 30.0


def websocket_url(server_url: str) -> str:
    """``ws://host:port/ws`` (or ``wss://``) for an ``http(s)://host:port`` server URL."""
    parts = urlsplit(server_url)
    scheme = "wss" if parts.scheme == "https" else "ws"
    return f"{scheme}://{parts.netloc}/ws"


def _wait(value):
    """A wait the server asked for, in seconds within [0, MAX_RETRY_AFTER]; None when
    ``value`` is not a number."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value != value:
        return None
    return min(max(float(value), 0.0), MAX_RETRY_AFTER)


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

    def connectionMade(self):
        self.factory.link.attempts += 1
        super().connectionMade()

    def failHandshake(self, reason):
        # the server answered the upgrade with something else than 101: its status and
        # Retry-After decide the wait (Autobahn keeps the parsed answer on the protocol)
        status = None
        parts = (getattr(self, "http_status_line", None) or "").split()
        if len(parts) > 1 and parts[1].isdigit():
            status = int(parts[1])
        headers = getattr(self, "http_headers", None) or {}
        self.factory.link.handshake_refused(status, headers.get("retry-after"))
        super().failHandshake(reason)

    def onConnect(self, response):
        self.auth_token = None  # the token this connection authenticated with
        self.is_subscribed = False

    def onOpen(self):
        d = defer.ensureDeferred(self.factory.link.credentials.current())
        d.addCallbacks(self._authenticate, self._no_token)

    def _authenticate(self, token):
        if self.state != self.STATE_OPEN:
            return
        if token:
            self.send_token(token)
        else:
            self._subscribe()

    def send_token(self, token):
        """Authenticate with ``token`` (again, when a renewed one replaces it)."""
        self.auth_token = token
        self._send({"type": "auth", "payload": {"token": token}})

    def _no_token(self, failure):
        _log.warn("realtime: no token to authenticate with ({error})", error=failure.getErrorMessage())
        self.sendClose()

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
        if kind == "FileOperation":
            operation = _parsed(protocol.parse_operation, message.get("operation"), kind)
            if operation is not None:
                seq = message.get("seq")
                link.received(seq if isinstance(seq, int) and not isinstance(seq, bool) else None, operation,
                              message.get("journal_id"), message.get("blocks"))
        elif kind == "Error" and message.get("id") == TRANSFERS_TOPIC:
            _log.info("realtime: the server announces no uploads in progress; large files are fetched once stored")
        else:
            handler = self._HANDLERS.get(kind) if isinstance(kind, str) else None
            if handler is not None:
                handler(self, message, link)

    def _on_auth_success(self, message, link):
        if not self.is_subscribed:
            self._subscribe()

    def _on_auth_error(self, message, link):
        link.token_refused(self.auth_token, message.get("code"), message.get("message", ""))

    def _on_ack(self, message, link):
        if message.get("operation_id") != "subscribe" or "topic" in message:
            return
        self.is_subscribed = True
        link.subscribed(self, message.get("journal_id"))
        if link.relay:
            # large uploads of other clients, announced while they arrive (an extension
            # of the server's; an older one answers an Error, which is only logged)
            self._send({"type": "subscribe", "topic": TRANSFERS_TOPIC, "id": TRANSFERS_TOPIC})

    def _on_upload_started(self, message, link):
        announced = _parsed(protocol.parse_upload_started, message.get("data"), "upload_started")
        if announced is not None:
            link.engine.upload_started(announced)

    def _on_error(self, message, link):
        if message.get("code") == "CLIENT_ID_IN_USE":
            self._client_id_in_use(message, link)
            return
        if "retryAfter" in message:
            link.server_asked_to_wait(message["retryAfter"])
        _log.warn(
            "realtime: server error {code}: {message}", code=message.get("code"), message=message.get("message")
        )

    def _client_id_in_use(self, message, link):
        """Another connection holds this client id: the link decides what the next
        connection does; this one is closed (by the server too, with 1013)."""
        link.client_id_in_use(message.get("retryAfter"))
        if self.state == self.STATE_OPEN:
            self.sendClose()

    #: The handler of each other message type from the server (the rest are ignored).
    _HANDLERS = {
        "auth_success": _on_auth_success,
        "auth_error": _on_auth_error,
        "Ack": _on_ack,
        "upload_started": _on_upload_started,
        "Error": _on_error,
    }

    def onClose(self, wasClean, code, reason):
        self.factory.link.closed(self, code, reason)


class RealtimeLink:
    """Owns the ClientService (``service``: a child of the folder's service); tells the
    engine when it is up, down, and what arrives."""

    log = Logger()

    def __init__(self, reactor, server_url, client_id, engine, credentials=None, ca_cert=None, relay=True,
                 poll_interval=30.0, random=None, fallbacks=(), id_taken=None):
        """``credentials``: a :class:`~quantum_sync.client.credentials.Credentials`, a
        fixed token (str) or None; ``poll_interval``: how often the client reconciles while
        the link is down (for the log); ``random``: the backoff's jitter source;
        ``fallbacks``: further servers of the same cluster, tried in turn; ``id_taken``:
        called with the client id when another client really uses it, returns the id to
        go on with (None: keep it)."""
        self.reactor = reactor
        self.poll_interval = poll_interval
        self.attempts = 0  # TCP connections made (each one a handshake)
        self._backoff = Backoff(initial=1.0, cap=MAX_BACKOFF, **({"random": random} if random else {}))
        self._subscribed_at = None
        self._wait_asked = 0.0  # seconds the server asked us to wait before the next attempt
        self._no_websocket = False
        self._id_in_use_said = False
        self._id_refusals = 0  # CLIENT_ID_IN_USE in a row, over connections
        self._id_taken = id_taken
        self.client_id = client_id
        self.relay = relay
        if not isinstance(credentials, Credentials):
            credentials = FixedToken(reactor, credentials) if credentials else NoCredentials(reactor)
        self.credentials = credentials
        credentials.on_change(self._token_changed)
        self._hold_until = 0.0  # no reconnect before (a token the server refused, none newer)
        self.engine = engine
        self.connected = False
        self._protocol = None
        url = websocket_url(server_url)
        headers = {"X-Client-Id": client_id}
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

        endpoint = RotatingEndpoint([KeepAliveEndpoint(client_endpoint(reactor, *host_and_port(url), ca_cert))
                                     for url in (server_url, *fallbacks)])
        self.service = ClientService(endpoint, self.factory, retryPolicy=self.next_delay, clock=reactor)

    def next_delay(self, _attempts=None) -> float:
        """Seconds before the next attempt (``ClientService``'s retry policy; its own count
        of attempts starts over on every TCP connect, so ours is used)."""
        asked, self._wait_asked = self._wait_asked, 0.0
        if self._no_websocket:
            asked = max(asked, NO_WEBSOCKET_RETRY)
        asked = max(asked, self._hold_until - self.reactor.seconds())
        return self._backoff.next_delay(at_least=asked)

    def server_asked_to_wait(self, seconds) -> None:
        """The server said when to try again (``retryAfter``, ``Retry-After``)."""
        seconds = _wait(seconds)
        if seconds is not None:
            self._wait_asked = max(self._wait_asked, seconds)

    def handshake_refused(self, status, retry_after) -> None:
        """The upgrade was answered ``status`` (None: unreadable), with ``retry_after``
        (the header's text, or None)."""
        if retry_after is not None:
            self.server_asked_to_wait(retry_after_seconds([retry_after]))
        if status == 404:
            if not self._no_websocket:
                self.log.warn("realtime: the server serves no /ws on this route: polling every {interval:g} s",
                              interval=self.poll_interval)
            self._no_websocket = True

    def client_id_in_use(self, retry_after) -> None:
        """The server refused our ``Subscribe``: another live connection has our client id.
        The first time, the next connection waits ``retry_after`` (within bounds): the
        holder may be our own half-open connection, which the server drops meanwhile.
        Refused again, another client really uses the id: the next connection goes on
        with the id ``id_taken`` gives, soon; without one it waits ``retry_after`` again
        (said once)."""
        wait = _wait(retry_after)
        self._id_refusals += 1
        if self._id_refusals > 1:
            taken = self._id_taken(self.client_id) if self._id_taken is not None else None
            if taken:
                self.client_id = self.factory.headers["X-Client-Id"] = taken
                self._id_refusals = 0
                return
            if not self._id_in_use_said:
                self._id_in_use_said = True
                self.log.warn("realtime: another client is connected with client id {client_id}; retrying with "
                              "backoff (two clients sharing one id miss each other's changes: give each its own "
                              "--client-id)", client_id=self.client_id)
        self.server_asked_to_wait(DEFAULT_ID_IN_USE_WAIT if wait is None else wait)

    def _token_changed(self, token):
        proto = self._protocol
        if proto is not None and token and proto.state == proto.STATE_OPEN:
            proto.send_token(token)
        self._hold_until = 0.0

    def token_refused(self, token, code, message):
        """The server refused ``token`` (the connection is then closed): reconnect with a
        newer one when there is one, else slowly."""
        self.log.info("realtime: the server refused the token: {code} {message}", code=code, message=message)

        def refreshed(newer):
            if not newer:
                self._hold_until = self.reactor.seconds() + SLOW_RETRY

        defer.ensureDeferred(self.credentials.refresh(token)).addCallbacks(
            refreshed, lambda f: self.log.info("realtime: no new token yet: {error}", error=f.getErrorMessage()))

    def subscribed(self, proto, journal_id=None):
        self._protocol = proto
        self._subscribed_at = self.reactor.seconds()
        self._no_websocket = self._id_in_use_said = False
        self._id_refusals = 0
        self.engine.journal_named(journal_id)
        if not self.connected:
            self.log.info("realtime: connected and subscribed to {url}", url=self.factory.url)
        self.connected = True
        self.engine.catch_up_soon()
        self.engine.retry_pending()

    def received(self, seq, operation, journal_id=None, blocks=None):
        if blocks is not None:  # (the new version's block list, for a delta download)
            self.engine.actions.deltas.offer(operation, blocks)
        self.engine.remote_operation(seq, operation, journal_id)

    def closed(self, proto, code, reason):
        if not session_failed(self._subscribed_at, self.reactor.seconds(), code):
            self._backoff.succeeded()
        self._subscribed_at = None
        if self.connected:
            self.log.warn("realtime: disconnected (code {code}, {reason}); reconnecting with backoff", code=code, reason=reason or "")
        self.connected = False
        self._protocol = None

    @property
    def protocol(self):
        """The subscribed connection (a :class:`SyncClientProtocol`); None while there is none."""
        return self._protocol

    def stop(self):
        """Stop reconnecting and drop the connection (a Deferred)."""
        self.connected = False
        return self.service.stopService()
