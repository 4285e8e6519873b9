"""The ``/ws`` WebSocket: admission, the Autobahn protocol, and its limits.

:class:`HubResource` is mounted at ``/ws`` on the same Site as the Klein API. Before the
upgrade it refuses, with the contract's JSON error body, a request that is not a
WebSocket upgrade (400), an Origin outside ``allowed_origins`` (403, ``null`` included
unless listed), a server at ``max_connections`` (503 CONNECTION_LIMIT) and a bad
handshake token (401); each refusal raises a ``security_alert`` (those at the connection
cap at most one every 10 s, with a count).

:class:`HubProtocol` parses every frame with :mod:`quantum_sync.server.messages` and hands
the request to the hub or to ``operations.apply``. It enforces, per connection:

- the message size (Autobahn's payload limits, checked as each frame header arrives, so a
  fragmented message is closed with 1009 as soon as its total passes the limit;
  ``failByDrop`` is off so the client sees the code);
- the rate limit (:class:`RateLimiter`: RATE_LIMIT_EXCEEDED with ``retryAfter``, close
  1008 when still over the limit 5 s after the first refusal);
- a bounded send queue: the protocol is the transport's push producer, so once the
  kernel and transport buffers are full (Twisted pauses producers past 64 KiB) messages
  wait in a per-connection queue of at most ``max_send_queue`` bytes; past that the
  connection is closed with 1013 and the queue dropped;
- authentication: with auth enabled, a connection without a handshake token must send
  ``auth`` (Ping is allowed) within :data:`AUTH_TIMEOUT` seconds; anything else gets
  Error AUTH_REQUIRED and close 1008.

Autobahn's unsafe server defaults are all set explicitly in :class:`HubFactory`.
"""

import collections
import json
import math
import struct
import zlib

import attrs
from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.compress import PerMessageDeflateOffer, PerMessageDeflateOfferAccept
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.web.resource import Resource
from zope.interface import implementer

from quantum_sync.adapters import autobahn as autobahn_adapter
from quantum_sync.adapters import twisted as twisted_adapter
from quantum_sync.errors import SyncError
from quantum_sync.server import messages
from quantum_sync.server.auth import ANONYMOUS_ADMIN
from quantum_sync.server.hub import (
    CLOSE_POLICY,
    CLOSE_TRY_AGAIN_LATER,
    IHubConnection,
)

# Not a class attribute of the protocol: Autobahn's own ``self.log`` (txaio, info level)
# must stay, or its debug lines (raw handshakes with ?token=) would reach the log.
log = Logger()

#: Seconds a connection may stay unauthenticated when auth is enabled.
AUTH_TIMEOUT = 10.0
#: At most one security_alert for refusals at max_connections this often.
LIMIT_ALERT_SECONDS = 10.0
#: A client still over the rate limit this long after its first refusal is closed.
RATE_ABUSE_SECONDS = 5.0
#: A second without refusals forgives earlier ones.
RATE_FORGIVE_SECONDS = 1.0
#: permessage-deflate sizing: zlib at its defaults keeps ~300 KiB per connection once a
#: message has been compressed; a 512-byte window and memLevel 1 keep it to a few KiB.
DEFLATE_WINDOW_BITS = 9
DEFLATE_MEM_LEVEL = 1
#: Payloads shorter than this go out uncompressed (RSV1 unset) even where deflate is on.
COMPRESS_MIN_BYTES = 128


# -- rate limiting (pure) -------------------------------------------------------------------


@attrs.frozen
class Refusal:
    """A message over the rate limit: retry after ``retry_after`` seconds, or, when
    ``abusive``, close the connection."""

    retry_after: int
    abusive: bool


@attrs.define
class RateLimiter:
    """A token bucket of ``rate`` messages a second (burst ``rate``) with an abuse window."""

    rate: float
    tokens: float
    updated: float
    first_refusal: float = None
    last_refusal: float = None

    @classmethod
    def start(cls, rate: float, now: float) -> "RateLimiter":
        return cls(rate, rate, now)

    def take(self, now: float):
        """None if a message may pass now, else a :class:`Refusal`."""
        if self.rate <= 0:
            return None
        self.tokens = min(self.rate, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.last_refusal is not None and now - self.last_refusal > RATE_FORGIVE_SECONDS:
            self.first_refusal = self.last_refusal = None
        if self.tokens >= 1:
            self.tokens -= 1
            return None
        if self.first_refusal is None:
            self.first_refusal = now
        self.last_refusal = now
        retry = max(1, math.ceil((1 - self.tokens) / self.rate))
        return Refusal(retry, now - self.first_refusal >= RATE_ABUSE_SECONDS)


# -- outgoing frames (pure) ----------------------------------------------------------------


def _frame(payload: bytes, compressed: bool) -> bytes:
    """One unmasked, final text frame (RSV1 marks a permessage-deflate payload)."""
    first = 0xC1 if compressed else 0x81
    length = len(payload)
    if length < 126:
        return struct.pack("!BB", first, length) + payload
    if length < 65536:
        return struct.pack("!BBH", first, 126, length) + payload
    return struct.pack("!BBQ", first, 127, length) + payload


class OutgoingFrames:
    """The wire frames of one server message, built once and shared by every connection.

    With no context takeover and the same window bits and memory level on every
    connection, the deflated frame is byte-for-byte the same for all of them: a
    broadcast is compressed once, not once per subscriber, and no connection keeps a
    compressor of its own.
    """

    __slots__ = ("payload", "_plain", "_deflated")

    def __init__(self, payload: bytes):
        self.payload = payload
        self._plain = None
        self._deflated = None

    def plain(self) -> bytes:
        if self._plain is None:
            self._plain = _frame(self.payload, compressed=False)
        return self._plain

    def deflated(self) -> bytes:
        if len(self.payload) < COMPRESS_MIN_BYTES:
            return self.plain()
        if self._deflated is None:
            compressor = zlib.compressobj(
                zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -DEFLATE_WINDOW_BITS, DEFLATE_MEM_LEVEL
            )
            body = compressor.compress(self.payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
            self._deflated = _frame(body[:-4], compressed=True)  # RFC 7692 7.2.1: drop 00 00 ff ff
        return self._deflated

    def framed(self, framing: str) -> bytes:
        """The frame for a connection's framing: ``"deflate"`` or ``"plain"``."""
        return self.deflated() if framing == "deflate" else self.plain()


class _FramesByFraming(dict):
    """The bytes of one or more messages (in order) for each framing of a connection
    (``"plain"``, ``"deflate"``), each made when first asked for."""

    def __init__(self, factory, payloads):
        super().__init__()
        self.factory = factory
        self.payloads = payloads

    def __missing__(self, framing: str) -> bytes:
        frame = self[framing] = b"".join(self.factory.frames(payload).framed(framing) for payload in self.payloads)
        return frame


def shares_our_deflate(extension) -> bool:
    """True for a permessage-deflate that :func:`accept_deflate` set up (so
    :meth:`OutgoingFrames.deflated` is valid for it)."""
    return (
        getattr(extension, "server_no_context_takeover", False)
        and extension.server_max_window_bits == DEFLATE_WINDOW_BITS
        and extension.mem_level == DEFLATE_MEM_LEVEL
    )


# -- origins (pure) ------------------------------------------------------------------------


def origin_allowed(origin: str, allowed) -> bool:
    """Exact match (case-insensitive, trailing slash ignored) against ``allowed``;
    ``*`` allows any origin except ``null``, which must be listed itself."""
    origin = origin.strip().rstrip("/").lower()
    allowed = [entry.strip().rstrip("/").lower() for entry in allowed]
    if origin == "null":
        return "null" in allowed
    return "*" in allowed or origin in allowed


def accept_deflate(offers):
    """Accept a client's permessage-deflate offer with small, context-free compressors."""
    for offer in offers:
        if isinstance(offer, PerMessageDeflateOffer):
            return PerMessageDeflateOfferAccept(
                offer,
                request_no_context_takeover=offer.accept_no_context_takeover,
                request_max_window_bits=DEFLATE_WINDOW_BITS if offer.accept_max_window_bits else 0,
                no_context_takeover=True,
                window_bits=DEFLATE_WINDOW_BITS,
                mem_level=DEFLATE_MEM_LEVEL,
            )
    return None


# -- the protocol ----------------------------------------------------------------------------


#: Seconds a connection holding a client id that another connection asks for has to
#: answer a ping (and the newcomer is told to retry after).
PROBE_TIMEOUT = 5

#: Requests that wait while the server checks its files at start (they read the journal
#: head or change files); pings, auth and topic requests are answered at once.
_NEED_INDEX = (messages.Subscribe, messages.FileOperationRequest)


def _in_use(client_id: str) -> SyncError:
    return SyncError("CLIENT_ID_IN_USE", f"another connection is subscribed as {client_id!r};"
                     " each client needs an id of its own", retryAfter=PROBE_TIMEOUT)


@implementer(IHubConnection, IPushProducer)
class HubProtocol(WebSocketServerProtocol):
    """One ``/ws`` connection: parse each message, then hand it to the hub."""

    def connectionMade(self):
        super().connectionMade()
        factory = self.factory
        self.hub = factory.hub
        now = factory.clock.seconds()
        self.connected_at = self.last_seen = now
        self.assembling_since = None
        self.client_id = None
        self.topics = set()
        self.identity = factory.handshake_identity
        peer = self.transport.getPeer()
        self.address = f"{getattr(peer, 'host', peer)}:{getattr(peer, 'port', '')}"
        self.close_reason = None
        self._limiter = RateLimiter.start(factory.config.rate_limit, now)
        self._held = None  # requests kept until the index is trusted (see _hold)
        self._probe = None  # the timer of a probe (see probe)
        self._probe_answered = False
        self._backlog = None
        self._backlog_bytes = 0
        self._paused = False
        self._auth_deadline = None
        self._framing = "autobahn"
        self._socket = None
        # Become the transport's producer (in place of the HTTP channel that handled the
        # upgrade) so Twisted tells us when the peer stops reading.
        self.transport.unregisterProducer()
        self.transport.registerProducer(self, True)
        self.hub.attach(self)

    def connectionLost(self, reason):
        super().connectionLost(reason)
        self._cancel_auth_deadline()
        if self._probe is not None and self._probe.active():
            self._probe.cancel()
        self._probe = None
        self._backlog = None
        self.hub.detach(self, self.close_reason or "closed")

    def onOpen(self):
        # How this connection's frames are made, fixed by the handshake.
        extensions = self.websocket_extensions_in_use
        if not extensions:
            self._framing = "plain"
        elif len(extensions) == 1 and shares_our_deflate(extensions[0]):
            self._framing = "deflate"
        if self._framing != "autobahn":  # (Autobahn's own frames go through Autobahn)
            self._socket = twisted_adapter.direct_socket(self.transport)
        if self.identity is None:
            self._auth_deadline = self.factory.clock.callLater(
                self.factory.auth_timeout, self._auth_expired
            )

    def dataReceived(self, data):
        self.last_seen = self.factory.clock.seconds()
        super().dataReceived(data)

    def onMessageBegin(self, isBinary):
        self.assembling_since = self.last_seen
        super().onMessageBegin(isBinary)

    def onMessage(self, payload, isBinary):
        self.assembling_since = None
        if self.state != self.STATE_OPEN:
            return  # closing: what the peer sent after our close frame is ignored
        self.factory.hub.metrics.observe_message_in(len(payload))
        refusal = self._limiter.take(self.factory.clock.seconds())
        if refusal is not None:
            self._rate_limited(refusal)
            return
        request = self._parsed(payload, isBinary)
        if request is None or not self._admitted(request):
            return
        if isinstance(request, _NEED_INDEX) and (self._held is not None or not self.factory.operations.ready):
            self._hold(request)
            return
        self._HANDLERS[type(request)](self, request)

    def _parsed(self, payload, isBinary):
        """The request in a message, or None once a message that is none is refused
        (before authentication: told to authenticate)."""
        try:
            return messages.parse_client_message(payload, isBinary)
        except SyncError as err:
            if self.identity is None:
                self._require_auth()
                return None
            if err.code == "INVALID_PATH":  # (operations.apply reports its own refusals)
                self.factory.security_alert("rejected_path", self.address, err.message)
            self._refuse(err)
            return None

    def _admitted(self, request) -> bool:
        """Whether the connection may make ``request``: anything but auth and ping needs
        an identity, checked again for each request."""
        if isinstance(request, (messages.AuthRequest, messages.PingRequest)):
            return True
        if self.identity is None:
            self._require_auth(request.id)
            return False
        return self._still_authorized(request)

    def _hold(self, request) -> None:
        """Keep ``request`` (and each later one of :data:`_NEED_INDEX`) until the server's
        index is trusted after a start, then handle them in order
        (FileOperations.when_ready)."""
        if self._held is None:
            self._held = []
            self.factory.operations.when_ready().addCallback(self._release_held)
        self._held.append(request)

    def _release_held(self, _) -> None:
        held, self._held = self._held, None
        for request in held:
            if self.state != self.STATE_OPEN:
                return
            self._HANDLERS[type(request)](self, request)

    def _still_authorized(self, request) -> bool:
        """Check the connection's identity again for each request, so an expired token,
        a removed account or a lowered role takes effect on an open WebSocket too:
        PERMISSION_DENIED is an Error (the connection stays), the others close 1008."""
        role = "write" if isinstance(request, messages.FileOperationRequest) else "read"
        try:
            self.identity = self.factory.authorizer.recheck(self.identity, role)
        except SyncError as err:
            self._refuse(err, request.id)
            if err.code != "PERMISSION_DENIED":
                self.close(CLOSE_POLICY, "authentication no longer valid")
            return False
        return True

    # -- requests -----------------------------------------------------------------------

    def _on_subscribe(self, request):
        subscribing = Deferred.fromCoroutine(self._subscribe(request))
        subscribing.addErrback(lambda failure: log.failure("Subscribe from {address} failed", failure,
                                                           address=self.address))

    async def _subscribe(self, request):
        """Claim the client id (its binding, and on a cluster its live connection: the
        database is asked, and this waits), then name the connection; on one server all
        of it happens at once."""
        operations = self.factory.operations
        client_id = request.client_id
        try:
            await self._claim(client_id)
            await self._claim_live(client_id)
        except SyncError as error:
            self._refuse(error, request.id)
            if error.code in ("SERVICE_UNAVAILABLE", "CLIENT_ID_IN_USE"):
                # refused as a whole: a client reconnects after a close (with its
                # backoff), where an unanswered Subscribe would leave it connected and deaf
                self.close(CLOSE_TRY_AGAIN_LATER, "try again later")
            return
        if self.state != self.STATE_OPEN:
            self.hub.release(client_id)  # (a cluster node's claim of it)
            return
        self.hub.identify(self, client_id)
        # every broadcast from here on has a seq above this cursor
        self.send(messages.ack("subscribe", request.id, journal_id=operations.journal_id,
                               cursor=operations.head))

    async def _claim_live(self, client_id: str) -> None:
        """CLIENT_ID_IN_USE while another live connection holds ``client_id``: here (it
        is probed) or, on a cluster, on another node (which is asked to probe it)."""
        self._not_held_here(client_id)
        claims = self.hub.claims
        if claims is not None and self.state == self.STATE_OPEN:
            if not await claims.claim(client_id):
                raise _in_use(client_id)
            self._not_held_here(client_id)  # (named here while the database answered)

    def _not_held_here(self, client_id: str) -> None:
        holder = self.hub.holder(client_id)
        if holder is not None and holder is not self:
            # a half-open connection (a laptop that slept) would hold the id until
            # stale_timeout: it must answer a ping now, or it is dropped
            holder.probe(PROBE_TIMEOUT)
            raise _in_use(client_id)

    def _on_topic(self, request):
        if request.action == "subscribe":
            self.hub.subscribe(self, request.topic)
        else:
            self.hub.unsubscribe(self, request.topic)
        self.send(messages.ack(request.action, request.id, topic=request.topic))

    def _on_ping(self, request):
        self.send(messages.pong(request.spelling, request.id))

    def _on_auth(self, request):
        try:
            identity = self.factory.authorizer.authorize_token(request.token, "read")
        except SyncError as err:
            self.factory.security_alert("auth_failed", self.address, err.message)
            self.send(messages.auth_error(err, request.id))
            self.close(CLOSE_POLICY, "authentication failed")
            return
        self.identity = identity
        self._cancel_auth_deadline()
        self.send(messages.auth_success(identity.user, identity.role, request.id))

    def _claim(self, client_id: str) -> Deferred:
        """With auth on, ``client_id`` must be (or become) this user's (a Deferred, fired
        at once on one server; a cluster node asks the database about a new id)."""
        bindings = self.hub.bindings
        if bindings is None or self.identity is None:
            return succeed(None)
        return maybeDeferred(bindings.claim, client_id, self.identity.user)

    def probe(self, timeout: float) -> None:
        """Ping now; drop the connection unless a pong comes within ``timeout``."""
        if self._probe is not None or self.state != self.STATE_OPEN:
            return
        self._probe_answered = False
        self.sendPing()
        self._probe = self.factory.clock.callLater(timeout, self._probe_due)

    def onPong(self, payload):
        self._probe_answered = True

    def _probe_due(self):
        self._probe = None
        if not self._probe_answered:
            log.info("dropping {address}: no answer to a probe", address=self.address)
            self.abort("no answer to a ping")

    def _on_file_operation(self, request):
        source = self.client_id or request.source_client
        claimed = succeed(None) if self.client_id else self._claim(source)
        d = claimed.addCallback(lambda _: maybeDeferred(self.factory.operations.apply, request.operation, source))

        def applied(change):
            operation_id = request.id if request.id is not None else "FileOperation"
            self.send(messages.ack(operation_id, request.id, seq=change.seq))

        def refused(failure):
            if failure.check(SyncError):
                self._refuse(failure.value, request.id)
            else:
                log.failure("FileOperation from {address} failed", failure, address=self.address)
                self._refuse(SyncError("INTERNAL_ERROR", "the operation failed"), request.id)

        d.addCallbacks(applied, refused)

    _HANDLERS = {
        messages.Subscribe: _on_subscribe,
        messages.TopicRequest: _on_topic,
        messages.PingRequest: _on_ping,
        messages.AuthRequest: _on_auth,
        messages.FileOperationRequest: _on_file_operation,
    }

    def _refuse(self, err: SyncError, message_id=None):
        self.send(messages.error(err, message_id))

    def _rate_limited(self, refusal: Refusal):
        if refusal.abusive:
            self.close(CLOSE_POLICY, "rate limit exceeded for too long")
            return
        err = SyncError(
            "RATE_LIMIT_EXCEEDED",
            f"more than {self.factory.config.rate_limit:g} messages a second",
            retryAfter=refusal.retry_after,
        )
        self.send(messages.error(err))

    def _require_auth(self, message_id=None):
        self.send(messages.error(SyncError("AUTH_REQUIRED", "send an auth message first"), message_id))
        self.close(CLOSE_POLICY, "authentication required")

    def _auth_expired(self):
        self._auth_deadline = None
        self.factory.security_alert("auth_timeout", self.address, "no auth message in time")
        self._require_auth()

    def _cancel_auth_deadline(self):
        if self._auth_deadline is not None and self._auth_deadline.active():
            self._auth_deadline.cancel()
        self._auth_deadline = None

    # -- IHubConnection -----------------------------------------------------------------

    def send(self, payload: bytes) -> None:
        """Send one text message now, or queue it while the peer is not reading."""
        if self.state != self.STATE_OPEN:
            return
        if self._paused or self._backlog:
            if self._backlog is None:
                self._backlog = collections.deque()
            self._backlog_bytes += len(payload)
            if self._backlog_bytes > self.factory.config.max_send_queue:
                self._backlog = None
                self._backlog_bytes = 0
                log.info("closing slow consumer {address}", address=self.address)
                self.close(CLOSE_TRY_AGAIN_LATER, "send queue full; catch up from the journal")
                return
            self._backlog.append(payload)
            return
        self._write(payload)

    def send_many(self, payloads) -> None:
        """Send several text messages, in order: in one write when the peer is reading
        and the frames are ours (else one :meth:`send` each)."""
        if self.state != self.STATE_OPEN:
            return
        if self._paused or self._backlog or self._framing == "autobahn":
            for payload in payloads:
                self.send(payload)
            return
        framing = self._framing
        self._send_frame(b"".join(self.factory.frames(payload).framed(framing) for payload in payloads))
        self.factory.hub.metrics.observe_messages_out(len(payloads), sum(map(len, payloads)))

    def _write(self, payload: bytes) -> None:
        if self._framing == "autobahn":
            self.sendMessage(payload, isBinary=False)
        else:
            self._send_frame(self.factory.frames(payload).framed(self._framing))
        self.factory.hub.metrics.observe_messages_out(1, len(payload))

    def _send_frame(self, frame: bytes) -> None:
        """Write one complete frame. Not through Autobahn's sendData (it formats a debug
        line per call); on an idle plain TCP socket not even through Twisted's write
        buffer, sparing two epoll updates and a write pass per subscriber — together
        most of a broadcast's CPU time. Anything else takes ``transport.write``."""
        if autobahn_adapter.bytes_queued(self):
            self.sendData(frame)
        elif self._socket is None or not twisted_adapter.send_if_idle(self.transport, self._socket, frame):
            self.transport.write(frame)

    @classmethod
    def send_all(cls, connections, payloads, failed) -> None:
        """:meth:`send_many` ``payloads`` to each of ``connections`` (in any order),
        calling ``failed(connection)`` from inside the handler of an exception one of
        them raised: one broadcast, or the messages of one burst.

        The same as a :meth:`send_many` each, but a connection whose frames are ours and
        whose socket is idle gets the shared frames in one ``send`` with no method chain,
        and the metrics are counted once: a subscriber costs a few attribute reads beside
        the system call."""
        if not connections:
            return
        opened = cls.STATE_OPEN
        send_if_idle, bytes_queued = twisted_adapter.send_if_idle, autobahn_adapter.bytes_queued
        factory = connections[0].factory
        frames = _FramesByFraming(factory, payloads)
        direct = 0
        for connection in connections:
            try:
                sock = connection._socket
                if sock is not None and connection.state == opened and not (
                        connection._paused or connection._backlog or bytes_queued(connection)) \
                        and send_if_idle(connection.transport, sock, frames[connection._framing]):
                    direct += 1
                else:
                    connection.send_many(payloads)
            except Exception:
                failed(connection)
        factory.hub.metrics.observe_messages_out(direct * len(payloads), direct * sum(map(len, payloads)))

    def send_ping(self) -> None:
        if self.state == self.STATE_OPEN:
            self.sendPing()

    def close(self, code: int, reason: str) -> None:
        if self.close_reason is None:
            self.close_reason = reason
        if self.state == self.STATE_OPEN:
            autobahn_adapter.send_close(self, code, reason)  # the contract's codes, 1001/1008/1009/1013
        elif self.state == self.STATE_CONNECTING:
            self.dropConnection(abort=True)

    def abort(self, reason: str) -> None:
        self.close_reason = reason
        self.dropConnection(abort=True)

    # -- IPushProducer (the transport calls these) --------------------------------------

    def pauseProducing(self):
        self._paused = True

    def resumeProducing(self):
        self._paused = False
        while self._backlog and not self._paused and self.state == self.STATE_OPEN:
            payload = self._backlog.popleft()
            self._backlog_bytes -= len(payload)
            self._write(payload)

    def stopProducing(self):
        self._backlog = None
        self._backlog_bytes = 0


# -- factory and resource --------------------------------------------------------------------


class HubFactory(WebSocketServerFactory):
    """Builds :class:`HubProtocol` with every Autobahn limit set explicitly.

    :param hub: the :class:`~quantum_sync.server.hub.Hub`.
    :param config: the ``websocket`` settings (``WebSocketConfig``).
    :param authorizer: the server's authorizer (``enabled``, ``authorize_token``).
    :param operations: applies a client's FileOperation:
        ``apply(operation, source_client) -> Change`` (or a Deferred of one); raises
        SyncError with the contract code.
    :param clock: ``IReactorTime`` for last_seen, the rate limiter and the auth deadline.
    """

    protocol = HubProtocol

    def __init__(self, hub, config, authorizer, operations, clock):
        super().__init__(server="quantum-sync")
        self.hub = hub
        self.config = config
        self.authorizer = authorizer
        self.operations = operations
        self.clock = clock
        self.auth_timeout = AUTH_TIMEOUT
        self.handshake_identity = None
        self._frames = OutgoingFrames(b"")
        self._limit_refusals = 0
        self._limit_alerted_at = None
        self.setProtocolOptions(
            # 1009 as soon as a frame header or the running total of a fragmented
            # message passes the limit (also after decompression).
            maxFramePayloadSize=config.max_message_size,
            maxMessagePayloadSize=config.max_message_size,
            # Send the close code (1008/1009) instead of dropping TCP (clients see 1006).
            failByDrop=False,
            # The hub's heartbeat LoopingCall pings and its cleanup drops stale peers.
            autoPingInterval=0,
            openHandshakeTimeout=5,
            closeHandshakeTimeout=5,
            # Origins and the connection cap are enforced by HubResource before the
            # upgrade, with the contract's JSON answer; Autobahn's own cap is a backstop.
            allowedOrigins=["*"],
            allowNullOrigin=True,
            maxConnections=config.max_connections,
            perMessageCompressionAccept=accept_deflate,
        )

    def frames(self, payload: bytes) -> OutgoingFrames:
        """The frames of ``payload``; the hub hands one bytes object to every subscriber
        of a broadcast, so the last one is kept and reused."""
        if self._frames.payload is not payload:
            self._frames = OutgoingFrames(payload)
        return self._frames

    def admit(self, request):
        """The identity a new WebSocket request connects as, or a SyncError refusing it."""
        upgrade = (request.getHeader("upgrade") or "").lower()
        if "websocket" not in upgrade:
            raise SyncError("INVALID_REQUEST", "this is a WebSocket endpoint: send an Upgrade: websocket request")
        address = _address(request)
        origin = request.getHeader("origin")
        if origin is not None and not origin_allowed(origin, self.config.allowed_origins):
            self.security_alert("origin_refused", address, origin)
            raise SyncError("PERMISSION_DENIED", f"origin {origin[:200]} is not allowed")
        if len(self.hub.connections) >= self.config.max_connections:
            self._connection_limit_alert(address)
            raise SyncError("CONNECTION_LIMIT", "too many connections; retry later")
        token = _handshake_token(request)
        if not self.authorizer.enabled:
            return ANONYMOUS_ADMIN
        if token is None:
            return None
        try:
            return self.authorizer.authorize_token(token, "read")
        except SyncError as err:
            self.security_alert("auth_failed", address, err.message)
            raise

    def security_alert(self, event: str, address: str, detail: str) -> None:
        self.hub.alert("security_alert", {"event": event, "address": address, "detail": detail[:200]})

    def _connection_limit_alert(self, address: str) -> None:
        """A ``security_alert`` for handshakes refused at ``max_connections``: the first
        at once, then at most one every :data:`LIMIT_ALERT_SECONDS` with the count, so a
        flood of refusals does not become a flood of alerts."""
        self._limit_refusals += 1
        now = self.clock.seconds()
        if self._limit_alerted_at is None or now - self._limit_alerted_at >= LIMIT_ALERT_SECONDS:
            self.security_alert("connection_limit", address,
                                f"{self._limit_refusals} handshake(s) refused at max_connections")
            self._limit_alerted_at = now
            self._limit_refusals = 0


def _address(request) -> str:
    peer = request.getClientAddress()
    return f"{getattr(peer, 'host', peer)}:{getattr(peer, 'port', '')}"


def _handshake_token(request):
    """A token from ``Authorization: Bearer T`` or ``?token=T``, or None."""
    header = request.getHeader("authorization")
    if header and header.lower().startswith("bearer "):
        return header[7:].strip() or None
    values = request.args.get(b"token")
    if values:
        return values[0].decode("utf-8", "replace") or None
    return None


class HubResource(Resource):
    """``/ws``: admission checks with JSON refusals, then Autobahn's WebSocketResource."""

    isLeaf = True

    def __init__(self, factory: HubFactory):
        super().__init__()
        self.factory = factory
        self._websocket = WebSocketResource(factory)

    def render(self, request):
        try:
            identity = self.factory.admit(request)
        except SyncError as err:
            request.setResponseCode(err.status)
            request.setHeader(b"content-type", b"application/json")
            if err.code == "CONNECTION_LIMIT":
                request.setHeader(b"retry-after", b"5")
            return json.dumps(err.to_json()).encode("utf-8")
        # buildProtocol and connectionMade run synchronously inside render.
        self.factory.handshake_identity = identity
        try:
            return self._websocket.render(request)
        finally:
            self.factory.handshake_identity = None


def websocket_resource(hub, config, authorizer, operations, clock) -> HubResource:
    """The ``/ws`` resource for a site (see :class:`HubFactory` for the parameters)."""
    return HubResource(HubFactory(hub, config, authorizer, operations, clock))
