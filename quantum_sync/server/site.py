"""The HTTP site: request bodies, routing from the config, access log.

- :class:`SyncRequest` hashes upload bodies as they arrive, keeping a small one in
  memory and streaming any other into a temp file in the state directory, and enforces ``max_upload_size`` (Content-Length before reading; counted
  for chunked bodies), answering 413 at once.
- :class:`RootResource` sends ``/ws/health`` (and the monitoring endpoints, and the web
  UI's files when the handler key ``ui`` is true) anywhere,
  routed paths to the ``file_sync`` handler (REST API, WebSocket), everything else 404.
- :class:`SyncSite` writes one access-log line per request and feeds the metrics.
"""

import json
import os
import re
import time
import weakref
from urllib.parse import unquote_to_bytes

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import http, resource, server

from quantum_sync import batch
from quantum_sync.adapters import twisted as twisted_adapter
from quantum_sync.compression import ENCODING
from quantum_sync.delta import DELTA_MIN
from quantum_sync.errors import SyncError
from quantum_sync.protocol import now
from quantum_sync.server.httpio import write_json
from quantum_sync.server.monitoring import monitoring_endpoints
from quantum_sync.server.spools import SMALL_BODY, SPOOLS, BatchSpool, MemorySpool, UploadSpool
from quantum_sync.server.webui import ui_endpoints
from quantum_sync.server.ws import websocket_resource

#: Cap on bodies of non-upload requests (JSON for /api/sync and login, batches).
MAX_JSON_BODY = batch.MAX_BODY
UPLOAD_PATH = b"/api/upload"
DELTA_UPLOAD_PATH = b"/api/upload-delta"
#: Routes whose bodies are spooled to a hashing file (and may be as large as an upload).
SPOOLED_PATHS = (UPLOAD_PATH, DELTA_UPLOAD_PATH)
BATCH_UPLOAD_PATH = b"/api/batch/upload"
#: Seconds a refused (413) request may keep sending before the connection is cut.
REFUSED_GRACE = 10
#: Socket read size while an upload body streams in.
UPLOAD_READ_SIZE = 256 * 1024
ACCESS_LOG = Logger(namespace="quantum_sync.access")
log = Logger()


def redact(uri: bytes) -> str:
    """The request URI with the value of every query parameter that Twisted would read
    as ``token`` (percent-encoded names such as ``%74oken`` included) hidden, for logs."""
    path, question, query = uri.partition(b"?")
    if question and (b"token" in query or b"%" in query):  # else no name can read "token"
        parts = []
        for part in query.split(b"&"):
            name, equals, _ = part.partition(b"=")
            if unquote_to_bytes(name.replace(b"+", b" ")) == b"token":
                part = name + b"=REDACTED"
            parts.append(part)
        uri = path + b"?" + b"&".join(parts)
    return uri.decode("utf-8", "replace")


def _host(address) -> str:
    """The host of a peer address, for logs (its text form when it has none)."""
    host = getattr(address, "host", None)
    return str(address) if host is None else host


class SyncRequest(server.Request):
    """A Request that spools uploads to a hashing temp file and caps body sizes."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.started = time.monotonic()
        self.bytes_in = 0
        self._limit = None
        self._refused = False
        self._abort_call = None
        self._reading_paused = False
        self._body_received = False

    def gotLength(self, length):
        site = self.channel.site
        method, target = twisted_adapter.request_line(self.channel)  # (self.method is not set yet)
        writing = method in (b"POST", b"PUT")
        route = target.split(b"?")[0] if writing else None
        self._limit = site.max_upload_size if route in SPOOLED_PATHS else MAX_JSON_BODY
        if length is not None and self._limit is not None and length > self._limit:
            self._refuse(self._too_large())
            return
        if route in SPOOLED_PATHS:
            self._start_upload(site, target, length, whole=route == UPLOAD_PATH)
            return
        if route == BATCH_UPLOAD_PATH:
            self._start_batch(site, target, length)
            return
        super().gotLength(length)

    def _gate(self, site, target: bytes) -> bool:
        """Whether the caller may upload at all (asked before a byte is stored); a
        refusal is answered here."""
        # the gate may read ?token=, the upload_started hook ?path=
        self.args = http.parse_qs(target.partition(b"?")[2], 1)
        if site.upload_gate is not None:
            try:
                site.upload_gate(self)
            except SyncError as error:
                self._refuse(error)
                return False
        return True

    def _start_batch(self, site, target: bytes, length):
        """A batch upload's body: in memory when all uploads' memory allows (else where
        Twisted keeps bodies); the handler takes it apart."""
        if not self._gate(site, target):
            return
        self.content = None if length is None else BatchSpool.reserve(length)
        if self.content is None:
            super().gotLength(length)

    def _start_upload(self, site, target: bytes, length, whole: bool = True):
        """Check the caller may upload at all before a byte is stored, then spool: in
        memory when the body is small (and all uploads' memory allows), else to a file.
        ``whole``: a whole file's body (not a delta's), whose block list is made as it
        streams in when it may be large, and which may be relayed."""
        if not self._gate(site, target):
            return
        compressed = self._compressed()
        if compressed is None:
            return
        if self._spool_in_memory(length, compressed) or not self._spool_to_file(site, length, whole, compressed):
            return
        if whole and not compressed and site.upload_started is not None:
            site.upload_started(self, self.content, length)
        # Bigger socket reads for bulk bodies: fewer trips through the HTTP parser.
        if hasattr(self.channel.transport, "bufferSize"):
            self.channel.transport.bufferSize = UPLOAD_READ_SIZE

    def _spool_in_memory(self, length, compressed: bool) -> bool:
        """Keep a small plain body in memory, when all uploads' memory allows."""
        if length is None or length > SMALL_BODY or compressed:
            return False
        self.content = MemorySpool.reserve(length)
        return self.content is not None

    def _spool_to_file(self, site, length, whole: bool, compressed: bool) -> bool:
        """Spool the body to a file (with its block list made as it streams in, when
        wanted); False when the spool cannot be made (the handler answers that)."""
        blocks = None
        try:
            reactor = site.reactor
            if whole and self._blocks_while_streaming(site, length, compressed):
                blocks = site.block_lists.writer()
            self.content = UploadSpool(
                site.temp_dir, on_drained=lambda: reactor.callFromThread(self._resume_reading),
                datasync=site.datasync, blocks=blocks,
                inflate_limit=site.max_upload_size if compressed else False)
        except OSError:
            if blocks is not None:
                blocks.abort()
            super().gotLength(0)  # the handler answers with the spool's absence
            return False
        return True

    def _blocks_while_streaming(self, site, length, compressed: bool) -> bool:
        """Whether a whole file's block list is made as its body streams in: the site
        keeps block lists, the uploader asks, and the body may be large."""
        return (site.block_lists is not None and self._wants_blocks()
                and (length is None or length >= DELTA_MIN or compressed))

    def _wants_blocks(self) -> bool:
        """Whether the uploader asks for the file's block list to be made as the body
        streams in (``X-Block-List: keep``: a client that sends deltas later). Cutting
        and hashing blocks costs a core beside the hashing; an upload that does not ask
        goes at full speed, and its list is made from the file if ever asked for."""
        return (self.requestHeaders.getRawHeaders(b"x-block-list") or [b""])[-1].strip().lower() == b"keep"

    def _compressed(self):
        """True for a zstd body, False for a plain one; None (refused here) for any other
        ``Content-Encoding``."""
        encoding = (self.requestHeaders.getRawHeaders(b"content-encoding") or [b"identity"])[-1].strip().lower()
        if encoding in (b"identity", b""):
            return False
        if encoding == ENCODING:
            return True
        self._refuse(SyncError("INVALID_REQUEST", "an upload's Content-Encoding is zstd or none"))
        return None

    def _too_large(self) -> SyncError:
        return SyncError("TOO_LARGE", f"the body is larger than the limit of {self._limit} bytes")

    def handleContentChunk(self, data):
        if self._refused:
            return
        self.bytes_in += len(data)
        if self._limit is not None and self.bytes_in > self._limit:
            self._refuse(self._too_large())
            return
        if isinstance(self.content, SPOOLS):
            if self.content.write(data) and not self._reading_paused:
                self._reading_paused = True
                self.channel.transport.pauseProducing()
            return
        super().handleContentChunk(data)

    def _resume_reading(self):
        """The spool's backlog went down: read from the client again."""
        channel = getattr(self, "channel", None)  # gone once the request is finished
        if self._reading_paused and not self._body_received and channel and channel.transport:
            self._reading_paused = False
            channel.transport.resumeProducing()

    def _refuse(self, error: SyncError):
        """Answer ``error`` before (or while) reading the body, then drop the connection
        once the client has been told; the body is never stored."""
        self._refused = True
        if isinstance(self.content, SPOOLS):
            self.content.close()
        self.content = None
        self.requestHeaders.removeHeader(b"Expect")  # no "100 Continue" after refusing
        body = json.dumps(error.to_json()).encode("utf-8")
        head = [b"HTTP/1.1 %d %s" % (error.status, http.RESPONSES.get(error.status, b"Error")),
                b"Content-Type: application/json", b"Connection: close",
                b"Content-Length: %d" % len(body)]
        for name, values in self.responseHeaders.getAllRawHeaders():  # e.g. WWW-Authenticate
            head.extend(name + b": " + value for value in values)
        transport = self.channel.transport
        transport.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
        self.channel.site.log_refused(self, error.status, len(body))
        # Keep reading (and discarding) briefly so the client sees the answer rather
        # than a reset, but never longer than REFUSED_GRACE seconds.
        self._abort_call = self.channel.callLater(REFUSED_GRACE, transport.abortConnection)

    def requestReceived(self, command, path, version):
        self._body_received = True  # from here on the handler owns the spooled body
        if self._reading_paused:
            self._reading_paused = False
            self.channel.transport.resumeProducing()
        if self._refused:
            self.channel.transport.loseConnection()
            return
        super().requestReceived(command, path, version)

    def connectionLost(self, reason):
        if isinstance(self.content, SPOOLS) and not self._body_received:
            self.content.close()
        if self._abort_call is not None and self._abort_call.active():
            self._abort_call.cancel()
        super().connectionLost(reason)


class SyncChannel(http.HTTPChannel):
    """An HTTPChannel with an absolute deadline for receiving each request.

    Twisted's idle timeout restarts on every byte, so a client trickling a header line
    (slowloris) would hold its connection for ever. Here a request's head, and for
    everything but uploads its body too, must arrive within ``site.request_timeout``
    seconds of the connection (or of the previous answer); otherwise the connection is
    dropped. Upload bodies (single and batch) stay under the idle timeout (they may be
    large and slow).
    """

    _deadline = None
    _gone = False
    #: True from a request's last byte until its answer is done.
    answering = False

    def connectionMade(self):
        super().connectionMade()
        self.site.channels.add(self)
        self._close_waiters = []
        self._arm()

    def when_closed(self) -> defer.Deferred:
        """Fires once this connection is gone."""
        if self._gone:
            return defer.succeed(None)
        waiter = defer.Deferred()
        self._close_waiters.append(waiter)
        return waiter

    def _arm(self):
        self._disarm()
        timeout = getattr(self.site, "request_timeout", None)
        if timeout:
            self._deadline = self.callLater(timeout, self._too_slow, timeout)

    def _disarm(self):
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _too_slow(self, timeout):
        self._deadline = None
        address = self.transport.getPeer()
        ACCESS_LOG.info("{client} dropped: no complete request within {timeout} s",
                        client=_host(address), timeout=timeout)
        self.transport.abortConnection()

    def allHeadersReceived(self):
        if twisted_adapter.request_line(self)[1].split(b"?")[0] in (*SPOOLED_PATHS, BATCH_UPLOAD_PATH):
            self._disarm()
        super().allHeadersReceived()

    def allContentReceived(self):
        self._disarm()
        self.answering = True
        super().allContentReceived()

    def requestDone(self, request):
        self.answering = False
        super().requestDone(request)
        if self.persistent and self.transport is not None and self.transport.connected:
            self._arm()  # the next request on this connection gets its own deadline

    def connectionLost(self, reason):
        self._disarm()
        self.site.channels.discard(self)
        super().connectionLost(reason)
        self._gone = True
        waiters, self._close_waiters = getattr(self, "_close_waiters", []), []
        for waiter in waiters:
            waiter.callback(None)


def _abort_left(channels, grace: float) -> None:
    """Abort the ``channels`` still open after the ``grace`` seconds of a stop."""
    left = [c for c in channels if not c._gone]
    if left:
        ACCESS_LOG.info("server stopping: {count} connections still open after {grace} s are aborted",
                        count=len(left), grace=grace)
        for channel in left:
            channel.transport.abortConnection()


class SyncSite(server.Site):
    """A Site with an access log line per request that also feeds the metrics."""

    requestFactory = SyncRequest
    # No HTTP/2 negotiation (not needed); every connection gets the deadline above.
    protocol = SyncChannel
    #: Seconds a client has to send a whole request (head, and body unless an upload).
    request_timeout = 30

    def __init__(self, root, metrics, temp_dir: str, max_upload_size, reactor=None,
                 upload_gate=None, upload_started=None, datasync=os.fdatasync, block_lists=None):
        super().__init__(root, reactor=reactor)
        #: :class:`~quantum_sync.blocklists.BlockLists` where uploads of at least
        #: :data:`~quantum_sync.delta.DELTA_MIN` bytes leave their block lists (None: none kept)
        self.block_lists = block_lists
        self.metrics = metrics
        self.temp_dir = temp_dir
        #: The background sync of spooled uploads (``os.fdatasync``; tests inject faults).
        self.datasync = datasync
        self.max_upload_size = max_upload_size
        #: ``gate(request)`` raises SyncError when the caller may not upload at all;
        #: checked when an upload's headers are in, before its body is stored.
        self.upload_gate = upload_gate
        #: ``upload_started(request, spool, length)``: told of each upload spooled to a
        #: file once its headers are in (large ones are relayed to the other clients
        #: while they arrive, see :mod:`quantum_sync.server.relay`).
        self.upload_started = upload_started
        #: Open HTTP connections. A connection handed to the WebSocket hub leaves its HTTP
        #: channel without a transport (and without connectionLost): it is skipped, and
        #: weakly held so that it does not stay here for ever.
        self.channels = weakref.WeakSet()

    async def close_connections(self, grace: float = 5.0) -> None:
        """Once the port no longer listens: drop idle connections and those still sending
        a request, let a request being answered finish (then its connection closes), and
        abort whatever is left after ``grace`` seconds. Afterwards no request reaches the
        operations any more, so the index can be closed."""
        live = [c for c in list(self.channels) if c.transport is not None]
        if not live:
            return
        for channel in live:
            channel.persistent = False
            if not channel.answering:
                channel.transport.loseConnection()
        # wait for all of them or the grace time, whichever comes first (nothing is
        # cancelled: a waiter left over is simply forgotten)
        timer = defer.Deferred()
        call = self.reactor.callLater(grace, timer.callback, None)
        await defer.DeferredList([defer.DeferredList([c.when_closed() for c in live]), timer],
                                 fireOnOneCallback=True)
        if call.active():
            call.cancel()
        _abort_left(live, grace)

    def log(self, request):  # noqa: F811 - twisted's hook, called once per finished request
        duration = time.monotonic() - request.started
        self._access(request.method, request.uri, request.code, request.sentLength,
                     request.bytes_in, duration, request.getClientAddress())

    def log_refused(self, request, status, sent):
        """The access-log line of a request refused before it was read (413)."""
        channel = request.channel
        method, target = twisted_adapter.request_line(channel)
        self._access(method or b"?", target, status,
                     sent, request.bytes_in, time.monotonic() - request.started,
                     request.getClientAddress())

    def _access(self, method, uri, status, sent, received, duration, address):
        method = method.decode("ascii", "replace") if isinstance(method, bytes) else str(method)
        client, path, duration_ms = _host(address), redact(uri or b""), duration * 1000
        # The line is formatted here, once, and passed as a format without fields (braces
        # doubled): the observers' generic formatting of six fields cost more than the
        # rest of the log call. The fields stay in the event for JSON logs.
        line = f"{client} {method} {path} {status} {sent}B {duration_ms:.1f}ms"
        if "{" in line or "}" in line:
            line = line.replace("{", "{{").replace("}", "}}")
        ACCESS_LOG.info(line, client=client, method=method, path=path, status=status,
                        bytes_out=sent, bytes_in=received, duration_ms=duration_ms)
        self.metrics.observe_request(duration, received, sent)


class JsonResource(resource.Resource):
    """A leaf that answers every method with one JSON body computed per request."""

    isLeaf = True

    def __init__(self, body, status: int = 200):
        super().__init__()
        self._body = body
        self._status = status

    def render(self, request):
        body = self._body() if callable(self._body) else self._body
        return write_json(request, body, self._status)


NOT_FOUND = JsonResource(SyncError("NOT_FOUND", "no such endpoint").to_json(), 404)
#: A URL path that is not UTF-8 (Klein would log a traceback for it).
BAD_URL = JsonResource(SyncError("INVALID_REQUEST", "the URL path is not valid UTF-8").to_json(), 400)


_HOST = re.compile(rb"^(?:[A-Za-z0-9_-]{1,63}(?:\.[A-Za-z0-9_-]{1,63})*\.?|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?$")
BAD_HOST = JsonResource(SyncError("INVALID_REQUEST", "the Host header is not a host name").to_json(), 400)


def _plausible_host(host) -> bool:
    """True for a missing Host or a syntactically valid ``name[:port]`` of at most 255 bytes."""
    return host is None or (len(host) <= 255 and bool(_HOST.match(host)))


#: Answers :func:`_remembered` keeps at most per question (then it starts afresh).
REMEMBERED = 1024


def _remembered(answers: dict, key, decide) -> bool:
    """``decide(key)``, remembered in ``answers``: the same few request paths and Host
    values come with every request, and matching them again costs more than a lookup."""
    answer = answers.get(key)
    if answer is None:
        if len(answers) >= REMEMBERED:
            answers.clear()
        answer = answers[key] = decide(key)
    return answer


class RootResource(resource.Resource):
    """Dispatch on the whole request path: fixed endpoints first, then the config's routes."""

    def __init__(self, listener, handler_resource, endpoints: dict, websocket=None):
        super().__init__()
        self._listener = listener
        self._handler = handler_resource
        self._endpoints = endpoints
        self._websocket = websocket
        self._routed = {}  # request path -> routed to the handler? (see _remembered)
        self._hosts = {}  # Host header -> plausible?

    def getChildWithDefault(self, name, request):
        # Hand the whole path to a leaf: undo the one segment twisted consumed.
        request.postpath.insert(0, request.prepath.pop())
        try:
            path = request.path.decode("utf-8")
            unquote_to_bytes(request.path).decode("utf-8")
        except UnicodeDecodeError:
            return BAD_URL
        if path in self._endpoints:
            return self._endpoints[path]
        if not _remembered(self._routed, path, self._listener.routes_to_handler):
            return NOT_FOUND
        if path == "/ws":
            return self._websocket or NOT_FOUND
        if not _remembered(self._hosts, request.getHeader(b"host"), _plausible_host):
            return BAD_HOST  # Klein's routing would fail on it with a 500
        return self._handler

    def render(self, request):
        return NOT_FOUND.render(request)


def health_endpoint(started: float):
    return JsonResource(lambda: {"status": "ok", "timestamp": now(),
                                 "uptime": round(time.time() - started, 3)})


def build_site(listener, service) -> SyncSite:
    """The Site for one listener of ``service`` (a ServerService)."""
    endpoints = {"/ws/health": health_endpoint(service.started)}
    # ---- real-time mount point (quantum_sync.server.ws / .monitoring) -------------
    endpoints.update(monitoring_endpoints(service.hub, service.authorizer))
    websocket = websocket_resource(service.hub, service.config.handler.websocket,
                                   service.authorizer, service.operations, service.reactor)
    # -------------------------------------------------------------------------------
    if not listener.routes_to_handler("/ws"):
        log.warn("no route serves /ws on {endpoint}: clients there get no live changes and"
                 " poll instead", endpoint=listener.endpoint)
    handler = service.config.handler
    if handler.ui:
        endpoints.update(ui_endpoints())
    root = RootResource(listener, service.api.resource(), endpoints, websocket)
    return SyncSite(root, service.metrics, service.store.temp_dir, handler.max_upload_size,
                    reactor=service.reactor, upload_gate=service.api.upload_gate,
                    upload_started=service.api.relay_upload if handler.relay and handler.cluster is None else None,
                    datasync=service.datasync, block_lists=service.block_lists)
