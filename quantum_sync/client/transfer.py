"""The client's side of the HTTP API (contract section 4), over treq.

One persistent connection pool per client; transfers (uploads and downloads) are
bounded by a semaphore. Large ones are streamed from and to disk: uploads through a
``FileBodyProducer``, downloads with ``unbuffered=True`` collected into a staging file
in ``.quantum-sync/tmp/`` (:mod:`quantum_sync.client.staging`); small ones travel as bytes in memory (the bytes the engine
hashed, a body of at most its announced size). Every download is checked against the
expected SHA-256. Every request
carries ``X-Client-Id`` (so the server does not send the client its own changes back)
and, with a token, ``Authorization: Bearer`` with the token the
:class:`~quantum_sync.client.credentials.Credentials` hold when the request starts; a
request refused with a 401 is sent once more when they have a newer token
(``AUTH_EXPIRED``: logged in again, or the token file rewritten). Everything the server
sends is parsed by :mod:`quantum_sync.protocol`, so its paths are validated before the
engine sees them.

A transfer that moves no byte for :data:`IDLE_TIMEOUT` seconds (a half-open connection:
a laptop that slept, a NAT that forgot it) is aborted (:class:`TransferStalled`), and a
single upload or download is tried again after a backoff, its slot free meanwhile; the
client's sockets have TCP keepalive on too (:mod:`quantum_sync.client.keepalive`).

Failures are sorted for the engine: :class:`ServerUnavailable` (no answer, a 5xx, a
refused certificate, a 401: try again later, never "everything was deleted"),
:class:`RequestRefused` with the contract code (4xx), and its special cases
:class:`PreconditionFailed` (412) and :class:`CursorExpired` (410).
"""

import contextlib
import email.utils
import hashlib
import json
import os
import tempfile
import time
from urllib.parse import quote, urlsplit

import attrs
import treq
from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool
from twisted.web.http_headers import Headers

from quantum_sync import batch, protocol
from quantum_sync.client import staging
from quantum_sync.client.backoff import Backoff
from quantum_sync.client.batches import Batcher
from quantum_sync.client.bodies import BytesBody, WatchedBody
from quantum_sync.client.compress import ZstdFileBody, inflate_file, sample_pays
from quantum_sync.client.credentials import Credentials, FixedToken, NoCredentials
from quantum_sync.client.failover import ServerList
from quantum_sync.client.idlewatch import IdleWatch, read_body
from quantum_sync.client.jsonarray import json_array_items
from quantum_sync.client.keepalive import KeptEndpoints
from quantum_sync.client.localfs import open_regular, unlink_quietly
from quantum_sync.compression import ENCODING
from quantum_sync.errors import SyncError
from quantum_sync.threads import ReactorThreads

SMALL_REQUEST_TIMEOUT = 30.0
BATCH_UPLOAD = "/api/batch/upload"
BATCH_DOWNLOAD = "/api/batch/download"
UPLOAD_CHUNK = 1 << 20
CHANGES_PAGE = 1000
#: Transfers of at most this many bytes use the small lane, which allows
#: :data:`SMALL_LANE_FACTOR` times the configured concurrency.
SMALL_TRANSFER = 256 * 1024
SMALL_LANE_FACTOR = 8
#: Small transfers waiting at once travel together in batch requests (``/api/batch/``,
#: :mod:`quantum_sync.batch`): at most this many files and about this many bytes a
#: request, this many requests of each direction at once.
BATCH_FILES = 256
BATCH_BYTES = 4 << 20
BATCHES_IN_FLIGHT = 2
#: Bytes a download batch's manifest may take per file, beyond the files' contents.
BATCH_MANIFEST_PER_FILE = 32 * 1024
#: Relayed downloads (another client's upload, read while it arrives: ``/api/relay``)
#: kept at once at most, and the seconds one that no download claims is kept staged.
PREFETCHES = 2
PREFETCH_KEEP = 60.0
#: Seconds a download waits for the relay it claimed before it fetches the stored file
#: itself (the upload a relay follows is over by then, unless the FileOperation came from
#: another upload of the same bytes and the relayed one stalled).
CLAIM_WAIT = 30.0
#: Seconds a transfer may go without a byte sent or received before it is aborted.
IDLE_TIMEOUT = 60.0
#: Tries of a stalled upload or download after the first (a backoff between, the slot free).
STALL_RETRIES = 3
#: A 429 without a usable Retry-After pauses requests this long; a longer one is capped.
DEFAULT_RETRY_AFTER = 1.0
MAX_RETRY_AFTER = 600.0


@attrs.frozen
class _SmallUpload:
    path: str
    sha256: str
    if_match: str | None
    data: bytes


@attrs.frozen
class _SmallDownload:
    path: str
    sha256: str
    size: int


class _Prefetch:
    """A relayed download: the staged file's name once it is done (None if it failed),
    for the :meth:`ServerClient.download` that claims it."""

    def __init__(self):
        self.done = False
        self.claimed = False
        self.staged = None
        self.expiry = None  # the call that throws an unclaimed staged file away
        self._waiters = []

    def settle(self, staged) -> None:
        self.done, self.staged = True, staged
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.called:  # not given up on (CLAIM_WAIT)
                waiter.callback(staged)

    def claim(self) -> defer.Deferred:
        """The staged name (or None), once the download is done; the claimer owns the file."""
        self.claimed = True
        if self.expiry is not None and self.expiry.active():
            self.expiry.cancel()
        if self.done:
            return defer.succeed(self.staged)
        waiter = defer.Deferred()
        self._waiters.append(waiter)
        return waiter


@attrs.frozen
class ChangesPage:
    """One answer of ``/api/changes``: entries, the cursor after them, whether more
    follow, and the id of the journal they are from (None when the server names none)."""

    changes: list
    cursor: int
    has_more: bool
    journal_id: str = None


def _parse_listing(raw: bytes) -> tuple:
    """``(entries, problems)`` of an ``/api/list`` answer; ServerUnavailable when it is not
    a JSON list."""
    try:
        body = json_array_items(raw.decode("utf-8"))
    except ValueError:  # UnicodeDecodeError too
        raise ServerUnavailable("GET /api/list: the answer is not a JSON list") from None
    parsed, problems = [], []
    for item in body:
        try:
            parsed.append(protocol.parse_metadata(item))
        except SyncError as e:
            problems.append(e.message)
    return parsed, problems


class ServerUnavailable(Exception):
    """No usable answer (connection, timeout, 5xx, TLS refusal): retry later."""


class RequestRefused(Exception):
    """A 4xx answer with a contract error code."""

    def __init__(self, status, code, message):
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


class NotAuthorized(ServerUnavailable):
    """A 401: no token, or one the server no longer takes (a path's job is retried later,
    as when the server is down; the credentials say what to do, once)."""

    def __init__(self, status, code, message):
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


class PreconditionFailed(RequestRefused):
    """412: the server's file is not the version the upload was based on."""


class CursorExpired(RequestRefused):
    """410: the journal no longer holds the entries after our cursor."""


class TransferStalled(ServerUnavailable):
    """No byte moved for the idle timeout: the connection was aborted."""


class DownloadCorrupt(ServerUnavailable):
    """The downloaded bytes did not hash to what the server announced."""


def refusal(what: str, status: int, code: str, message: str) -> Exception:
    """The exception for an answer ``status`` with contract ``code`` (``what``: the
    request, for the message): :class:`ServerUnavailable` for a 5xx or a 429, else a
    :class:`RequestRefused` (or its subclass for 412 and 410); :class:`NotAuthorized` for 401."""
    if status >= 500 or status == 429:
        return ServerUnavailable(f"{what}: {status} {code}: {message}")
    if status == 401:
        return NotAuthorized(status, code, message)
    cls = {412: PreconditionFailed, 410: CursorExpired}.get(status, RequestRefused)
    return cls(status, code, message)


async def _settled(deferreds) -> list:
    """Per Deferred of ``deferreds``, its result or the exception it failed with."""
    answers = await defer.DeferredList(list(deferreds), consumeErrors=True)
    return [value if succeeded else value.value for succeeded, value in answers]


async def _bounded_body(response, limit: int, too_long: Exception, what: str, watch=None) -> bytes:
    """The body of ``response``, refused with ``too_long`` as soon as it passes ``limit``
    bytes (the connection is then closed); ServerUnavailable when it breaks off
    (:class:`TransferStalled` when ``watch`` saw it stall)."""
    chunks, received = [], [0]

    def collect(chunk):
        received[0] += len(chunk)
        if received[0] > limit:
            raise too_long
        chunks.append(chunk)

    try:
        await read_body(response, collect, watch)
    except Exception as e:
        if e is too_long:
            raise
        raise _broken_off(what, e, watch) from None
    return b"".join(chunks)


def _broken_off(what, error, watch) -> ServerUnavailable:
    if watch is not None and watch.stalled:
        return TransferStalled(f"{what}: no byte moved for {watch.seconds:g} s; aborted")
    return ServerUnavailable(f"{what} interrupted: {error}")


def _tls_reason(failure):
    try:
        from quantum_sync.tls import tls_failure_reason
    except ImportError:  # pragma: no cover - tls.py is part of the package
        return None
    return tls_failure_reason(failure)


def retry_after_seconds(values, now=None) -> float:
    """Seconds to wait from the ``Retry-After`` header ``values`` (delta-seconds or an HTTP
    date), within [0, :data:`MAX_RETRY_AFTER`]; :data:`DEFAULT_RETRY_AFTER` when absent or bad."""
    if not values:
        return DEFAULT_RETRY_AFTER
    text = (values[0].decode("latin-1") if isinstance(values[0], bytes) else values[0]).strip()
    try:
        seconds = float(int(text))
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return DEFAULT_RETRY_AFTER
        if when is None or when.tzinfo is None:
            return DEFAULT_RETRY_AFTER
        seconds = when.timestamp() - (time.time() if now is None else now)
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


class ServerClient:
    """HTTP calls to one quantum-sync server for one client id."""

    log = Logger()

    def __init__(self, reactor, server_url: str, client_id: str, credentials=None, ca_cert=None, concurrency: int = 8,
                 idle_timeout: float = IDLE_TIMEOUT, fallbacks=(), threads=None):
        """``credentials``: a :class:`~quantum_sync.client.credentials.Credentials`, a
        fixed token (str) or None; ``idle_timeout``: seconds a transfer may move no byte;
        ``fallbacks``: further servers of the same cluster, tried in turn; ``threads``: the
        :class:`~quantum_sync.threads.ThreadPoolService` for blocking work (else the reactor's)."""
        self.idle_timeout = idle_timeout
        self._running = {}  # IdleWatch -> (direction, path) of the single transfers running
        if not isinstance(credentials, Credentials):
            credentials = FixedToken(reactor, credentials) if credentials else NoCredentials(reactor)
        self.credentials = credentials
        self.server_url = server_url.rstrip("/")
        #: The servers of one cluster, tried in turn when one cannot be reached.
        self.servers = ServerList((self.server_url, *fallbacks))
        self.client_id = client_id
        self._reactor = reactor
        self.threads = threads if threads is not None else ReactorThreads(reactor)
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        self._pool.maxPersistentPerHost = concurrency * (1 + SMALL_LANE_FACTOR) + 4
        self._pool.retryAutomatically = True
        if urlsplit(self.server_url).scheme == "https":
            from quantum_sync.tls import https_policy

            endpoints = KeptEndpoints(reactor, https_policy(ca_cert), connect_timeout=10)
        else:
            endpoints = KeptEndpoints(reactor, connect_timeout=10)
        self._endpoints = endpoints
        self._requests = set()  # the requests waiting for their answer (Deferreds)
        self._closed = False  # stopped: nothing more is sent
        agent = Agent.usingEndpointFactory(reactor, endpoints, pool=self._pool)
        self._agent = agent
        self._http = treq.client.HTTPClient(agent)
        self._headers = {"X-Client-Id": [client_id]}
        self._raw_headers = {k.encode("ascii"): [v.encode("utf-8") for v in vs] for k, vs in self._headers.items()}
        self._use(self.server_url)
        self._transfers = defer.DeferredSemaphore(concurrency)
        self._small_transfers = defer.DeferredSemaphore(concurrency * SMALL_LANE_FACTOR)
        self._paused_until = 0.0  # reactor time before which no request is sent (Retry-After)
        self._batching = True  # until the server shows it has no batch endpoints
        self._upload_batches = Batcher(self._upload_batch, BATCHES_IN_FLIGHT, BATCH_FILES, BATCH_BYTES,
                                       size=lambda job: len(job.data), reactor=reactor)
        self._download_batches = Batcher(self._download_batch, BATCHES_IN_FLIGHT, BATCH_FILES, BATCH_BYTES,
                                         size=lambda job: job.size, reactor=reactor)
        self._prefetches = {}  # (path, sha256) -> _Prefetch
        #: Large files whose sample compresses well go as zstd (quantum_sync.client.compress),
        #: and large downloads are asked for as zstd (the server decides by its own sample).
        self.compress_uploads = self.compress_downloads = False
        #: The server is asked to keep the block lists of large uploads (deltas are on).
        self.keep_block_lists = False

    def rename(self, client_id: str) -> None:
        """Go on as ``client_id``: the next requests carry it."""
        self.client_id = client_id
        self._headers["X-Client-Id"] = [client_id]
        self._raw_headers[b"X-Client-Id"] = [client_id.encode("utf-8")]

    def _use(self, server_url: str) -> None:
        self.server_url = server_url
        parts = urlsplit(server_url)
        netloc = parts.netloc.rpartition("@")[2].encode("idna")
        self._transfer_prefix = parts.scheme.encode("ascii") + b"://" + netloc
        # with its Host header given, Agent sends a transfer's headers as they are (no copy)
        self._raw_headers[b"Host"] = [netloc]

    def _fail_over(self) -> None:
        """The server could not be reached: the next requests go to the next one."""
        if len(self.servers.urls) > 1:
            self._use(self.servers.advance())
            self.log.warn("cannot reach the server; going on with {url}", url=self.server_url)

    def _lane(self, size):
        """The semaphore a transfer of ``size`` bytes (None: unknown) waits on: many small
        files go side by side, so a server that commits uploads in groups gets groups."""
        small = size is not None and size <= SMALL_TRANSFER
        return self._small_transfers if small else self._transfers

    def abort(self) -> None:
        """Stop at once: nothing more is sent, the requests in flight are cancelled and
        every connection is aborted, busy or pooled (a server that stays silent holds
        no stop up). What was being transferred fails as :class:`ServerUnavailable`:
        a download's staging file is removed, nothing half-sent is stored."""
        self._closed = True
        for requested in list(self._requests):
            requested.cancel()
        self._endpoints.abort_all()
        self._pool.closeCachedConnections()

    def close(self):
        """:meth:`abort`, then drop the unclaimed prefetched files (a Deferred)."""
        self.abort()
        removed = [self._expire(key, entry) for key, entry in list(self._prefetches.items())]
        return defer.gatherResults([*removed, self._pool.closeCachedConnections()])

    def _drop_connections(self):
        """After a failure, start afresh: a kept-alive connection may lead to a server
        that is going away."""
        self._pool.closeCachedConnections()

    # -- plumbing ----------------------------------------------------------------------

    def _url(self, path):
        return self.server_url + path

    def _check_paused(self, method, path):
        if self._closed:
            raise ServerUnavailable(f"{method} {path}: the client is stopping")
        pause = self._paused_until - self._reactor.seconds()
        if pause > 0:  # the server said 429 with Retry-After: do not ask again before then
            raise ServerUnavailable(f"{method} {path}: rate limited by the server, next try in {pause:.1f} s")

    async def _authorized(self, send):
        """``await send(token)`` with the current token; when the server refuses it (401)
        and the credentials have a newer one, once more with that."""
        token = await self.credentials.current()
        try:
            return await send(token)
        except NotAuthorized:
            if not await self.credentials.refresh(token):
                raise
        return await send(self.credentials.token)

    async def _request(self, method, path, params=None, headers=None, timeout=SMALL_REQUEST_TIMEOUT, **kwargs):
        async def send(token):
            self._check_paused(method, path)
            all_headers = dict(self._headers)
            all_headers.update(headers or {})
            if token:
                all_headers["Authorization"] = [f"Bearer {token}"]
            requested = self._http.request(method, self._url(path), params=params, headers=Headers(all_headers),
                                           timeout=timeout, **kwargs)
            return await self._answer(method, path, requested)

        return await self._authorized(send)

    async def _transfer_request(self, method, path, file_path, headers=None, body=None, query="", watch=None):
        """A transfer's request (``path`` with ``?path=file_path`` unless that is None, then
        ``query``) on the Agent itself: treq's URL, cookie and redirect layers cost more
        than a small file. ``body``: a producer that can be sent twice, or a callable
        making a new one for each sending. ``watch``: the transfer's :class:`IdleWatch`
        (the request is aborted when it stalls)."""
        target = path if file_path is None else f"{path}?path={quote(file_path, safe='')}{query}"
        url = self._transfer_prefix + target.encode("ascii")

        async def send(token):
            self._check_paused(method, path)
            all_headers = dict(self._raw_headers)
            all_headers.update(headers or {})
            if token:
                all_headers[b"Authorization"] = [b"Bearer " + token.encode("utf-8")]
            producer = body() if callable(body) else body
            if watch is not None and producer is not None:
                producer = WatchedBody(producer, watch)
            requested = self._agent.request(method.encode("ascii"), url, Headers(all_headers), producer)
            if watch is not None:
                watch.abort = requested.cancel
            watched = producer if isinstance(producer, WatchedBody) else None
            try:
                response = await self._answer(method, path, requested, watch)
            except BaseException:
                if watched is not None:
                    watched.answered(refused=True)
                raise
            if watched is not None:
                watched.answered()
            return response

        return await self._authorized(send)

    async def _answer(self, method, path, requested, watch=None):
        """The response to ``requested`` (a Deferred), its failures sorted for the engine."""
        self._requests.add(requested)
        try:
            response = await requested
        except Exception as e:  # connection refused, reset, TLS, DNS, aborted...
            raise self._unanswered(method, path, e, watch) from None
        finally:
            self._requests.discard(requested)
        if response.code >= 400:
            await self._raise_for(method, path, response)
        return response

    def _unanswered(self, method, path, error, watch) -> ServerUnavailable:
        """What a request that got no answer (``error``) fails with."""
        if self._closed:
            return ServerUnavailable(f"{method} {path}: the client is stopping")
        self._drop_connections()
        if watch is not None and watch.stalled:  # (cancelled: however Twisted wraps it)
            return TransferStalled(f"{method} {path}: no byte moved for {self.idle_timeout:g} s; aborted")
        self._fail_over()
        if isinstance(error, defer.CancelledError):
            return ServerUnavailable(f"{method} {path}: timed out")
        reason = _tls_reason(Failure(error)) or f"{type(error).__name__}: {error}"
        return ServerUnavailable(f"{method} {path}: {reason}")

    async def _raise_for(self, method, path, response):
        try:
            body = json.loads(await treq.content(response))
            code, message = body["error"]["code"], body["error"]["message"]
        except Exception:
            code, message = "UNKNOWN", "no error body"
        status = response.code
        if status == 429:
            self._paused_until = self._reactor.seconds() + retry_after_seconds(response.headers.getRawHeaders(b"retry-after"))
        if status >= 500 or status == 429:
            self._drop_connections()
        raise refusal(f"{method} {path}", status, code, message)

    @staticmethod
    async def _body(method, path, response) -> bytes:
        """The whole body of ``response``; ServerUnavailable when it breaks off (the
        connection reset, or aborted by a stop)."""
        try:
            return await response.content()
        except Exception as e:
            raise ServerUnavailable(f"{method} {path} interrupted: {type(e).__name__}") from None

    async def _json(self, method, path, **kwargs):
        response = await self._request(method, path, **kwargs)
        body = await self._body(method, path, response)
        try:
            return json.loads(body)
        except ValueError:
            raise ServerUnavailable(f"{method} {path}: the answer is not JSON") from None

    # -- metadata ----------------------------------------------------------------------

    async def list(self) -> list:
        """Every file and directory on the server (invalid entries are skipped and logged).
        The answer is decoded and checked in a thread: tens of thousands of entries would
        hold the reactor for a quarter of a second."""
        response = await self._request("GET", "/api/list")
        parsed, problems = await self.threads.defer(_parse_listing, await self._body("GET", "/api/list", response))
        for problem in problems:
            self.log.warn("ignoring a listing entry the server sent: {error}", error=problem)
        return parsed

    def _parse_each(self, items, parse, what):
        """Each item parsed and validated; one the client cannot trust is skipped and logged."""
        parsed = []
        for item in items:
            try:
                parsed.append(parse(item))
            except SyncError as e:
                self.log.warn("ignoring a {what} the server sent: {error}", what=what, error=e.message)
        return parsed

    async def metadata(self, path: str):
        """The server's FileMetadata for ``path``, or None when it has nothing there."""
        try:
            body = await self._json("GET", "/api/metadata", params={"path": path})
        except RequestRefused as e:
            if e.status == 404:
                return None
            raise
        try:
            meta = protocol.parse_metadata(body)
        except SyncError as e:
            raise ServerUnavailable(f"metadata of {path}: {e.message}") from None
        if meta.path != path:
            raise ServerUnavailable(f"metadata of {path} names {meta.path}")
        return meta

    async def changes(self, since: int, journal_id=None) -> "ChangesPage":
        """The journal entries after ``since``; raises :class:`CursorExpired` (also when
        ``journal_id`` is given and is not the server's journal)."""
        params = {"since": str(since), "limit": str(CHANGES_PAGE)}
        if journal_id is not None:
            params["journal_id"] = journal_id
        body = await self._json("GET", "/api/changes", params=params)
        try:
            raw = body["changes"]
            cursor = int(body.get("cursor", since))
            has_more = bool(body.get("has_more", False))
            named = body.get("journal_id")
        except (KeyError, TypeError, ValueError, AttributeError):
            raise ServerUnavailable("GET /api/changes: malformed answer") from None
        if not isinstance(raw, list):
            raise ServerUnavailable("GET /api/changes: malformed answer")
        changes = self._parse_each(raw, protocol.parse_change, "journal entry")
        if changes:
            cursor = max(cursor, changes[-1].seq)
        return ChangesPage(changes, cursor, has_more, named if isinstance(named, str) else None)

    async def log_in(self, user: str, password: str):
        """``POST /api/v1/auth/login``: ``(token, life)``, ``life`` the seconds the server
        gives the token (its ``expires_at`` less the answer's ``Date``, so a client clock
        that is off does not matter)."""
        self._check_paused("POST", "/api/v1/auth/login")
        requested = self._http.request("POST", self._url("/api/v1/auth/login"), headers=Headers(self._headers),
                                       json={"username": user, "password": password}, timeout=SMALL_REQUEST_TIMEOUT)
        response = await self._answer("POST", "/api/v1/auth/login", requested)
        try:
            data = json.loads(await self._body("POST", "/api/v1/auth/login", response))["data"]
            token, expires = data["token"], protocol.parse_time(data["expires_at"])
            assert isinstance(token, str) and token
        except (ValueError, KeyError, TypeError, AssertionError, SyncError):
            raise ServerUnavailable("POST /api/v1/auth/login: malformed answer") from None
        now = time.time()
        dated = response.headers.getRawHeaders(b"date")
        if dated:
            try:
                now = email.utils.parsedate_to_datetime(dated[0].decode("latin-1")).timestamp()
            except (TypeError, ValueError):
                pass
        return token, expires - now

    async def journal_head(self):
        """The journal's newest seq (``/ws/metrics``), or None when the server does not say."""
        try:
            body = await self._json("GET", "/ws/metrics")
            head = body.get("journal_head")
            return int(head) if head is not None else None
        except (RequestRefused, AttributeError, TypeError, ValueError):
            return None

    async def sync(self, operations) -> list:
        """POST /api/sync; the per-operation results."""
        body = await self._json(
            "POST",
            "/api/sync",
            json={"operations": [op.to_json() for op in operations], "client_id": self.client_id},
        )
        try:
            results = body["results"]
            assert isinstance(results, list) and len(results) == len(operations)
        except (KeyError, TypeError, AssertionError):
            raise ServerUnavailable("POST /api/sync: malformed answer") from None
        return results

    # -- transfers ---------------------------------------------------------------------

    def upload(self, path: str, abspath: str, sha256: str, if_match=None, size=None, data=None):
        """Send ``data`` (the file's bytes, when the caller holds them) or stream ``abspath``
        (``size`` bytes, when known) to ``path``; ``if_match`` is the hash the server must
        still hold (None: the path must be new). The stored FileMetadata."""
        if data is not None:  # small: travels in a batch with the others waiting
            return self._upload_batches.submit(_SmallUpload(path, sha256, if_match, data))
        return defer.ensureDeferred(self._retrying(
            self._lane(size), f"upload of {path}", lambda: self._upload(path, abspath, sha256, if_match, data)))

    @contextlib.contextmanager
    def _watching(self, direction=None, path=None):
        """An :class:`IdleWatch` for one transfer, stopped when it ends; one of ``path``
        is listed by :meth:`transfers_running` meanwhile."""
        watch = IdleWatch(self._reactor, self.idle_timeout)
        if path is not None:
            self._running[watch] = (direction, path)
        try:
            yield watch
        finally:
            self._running.pop(watch, None)
            watch.stop()

    def transfers_running(self) -> list:
        """``(direction, path, bytes moved)`` of every single file transfer running
        (small files travelling in batches are not listed)."""
        return [(direction, path, watch.moved) for watch, (direction, path) in self._running.items()]

    async def _retrying(self, lane, what, transfer):
        """``await transfer()`` holding a slot of ``lane``; when it stalls, again after a
        backoff (the slot given back meanwhile), :data:`STALL_RETRIES` times at most."""
        backoff = Backoff(initial=1.0, cap=30.0)
        for tries in range(STALL_RETRIES + 1):
            try:
                return await lane.run(lambda: defer.ensureDeferred(transfer()))
            except TransferStalled as e:
                if tries == STALL_RETRIES:
                    raise
                delay = backoff.next_delay()
                self.log.info("{error}; trying again in {delay:.1f} s", error=str(e), delay=delay)
                await task.deferLater(self._reactor, delay, lambda: None)

    async def _upload_batch(self, jobs) -> list:
        """Send the small uploads ``jobs``: one request for all of them (a single one
        goes alone, as a plain upload); per job its FileMetadata or its exception."""
        if len(jobs) == 1 or not self._batching:
            return await _settled(
                self._small_transfers.run(lambda j=j: defer.ensureDeferred(self._upload(j.path, None, j.sha256, j.if_match, j.data)))
                for j in jobs)
        answer = await self._send_batch(jobs)
        if answer is None:
            return await self._upload_batch(jobs)
        try:
            results = batch.parse_upload_answer(json.loads(answer), [j.path for j in jobs])
        except (ValueError, SyncError):
            raise ServerUnavailable("upload batch: malformed answer") from None
        return [self._item_refusal("upload", j.path, r) if isinstance(r, batch.ItemError) else r for j, r in zip(jobs, results)]

    async def _send_batch(self, jobs):
        """The answer's body to an upload batch of ``jobs`` (None: the server takes no
        batches)."""
        manifest = batch.upload_manifest([(j.path, len(j.data), j.sha256, j.if_match) for j in jobs])
        body = BytesBody(batch.encode(manifest, [j.data for j in jobs]))
        with self._watching() as watch:
            response = await self._batch_request(BATCH_UPLOAD, body, watch)
            if response is None:
                return None
            return await self._answer_body(response, "upload batch", watch)

    @staticmethod
    def _answer_body(response, what, watch):
        """The JSON answer to an upload (at most 1 MiB plus a batch's per-file share)."""
        limit = (1 << 20) + BATCH_FILES * 1024
        return _bounded_body(response, limit, ServerUnavailable(f"{what}: the answer is longer than {limit} bytes"),
                             what, watch)

    async def _batch_request(self, path, body, watch):
        """POST a batch to ``path``; None (and no batches from now on) when the server
        has no such endpoint."""
        try:
            return await self._transfer_request("POST", path, None, {b"Content-Type": [batch.CONTENT_TYPE]}, body,
                                                watch=watch)
        except RequestRefused as e:
            if e.status not in (404, 405):
                raise
            self.log.info("the server takes no batches; small files go one request each")
            self._batching = False
            return None

    @staticmethod
    def _item_refusal(what, path, item) -> Exception:
        return refusal(f"{what} of {path}", item.status, item.code, item.message)

    async def _upload(self, path, abspath, sha256, if_match, data):
        headers = {b"X-Content-SHA256": [sha256.encode("ascii")], b"Content-Type": [b"application/octet-stream"]}
        if if_match:
            headers[b"If-Match"] = [f'"{if_match}"'.encode("ascii")]
        else:
            headers[b"If-None-Match"] = [b"*"]
        if data is None and self.keep_block_lists:  # (a large file: deltas of it later)
            headers[b"X-Block-List"] = [b"keep"]
        compress = data is None and self.compress_uploads and await self.threads.defer(sample_pays, abspath)
        if compress:
            headers[b"Content-Encoding"] = [ENCODING]
        opened = []

        def producer():
            if data is not None:
                return BytesBody(data)
            # never blocks: a FIFO put in the file's place is LocalChanged, as a missing file
            opened.append(os.fdopen(open_regular(abspath), "rb"))
            return ZstdFileBody(opened[-1], self.threads) if compress else FileBodyProducer(opened[-1], readSize=UPLOAD_CHUNK)

        with self._watching("up", path) as watch:
            try:
                # PUT: Twisted parses no form out of it
                response = await self._transfer_request("PUT", "/api/upload", path, headers, producer, watch=watch)
            finally:
                for f in opened:
                    f.close()
            answer = await self._answer_body(response, f"upload of {path}", watch)
        try:
            meta = protocol.parse_metadata(json.loads(answer))
        except (ValueError, SyncError):
            raise ServerUnavailable(f"upload of {path}: malformed answer") from None
        return meta

    def download_bytes(self, path: str, sha256: str, size: int):
        """The bytes of ``path``, announced as ``size`` bytes (at most
        :data:`SMALL_TRANSFER`), checked to hash to ``sha256``; held in memory."""
        return self._download_batches.submit(_SmallDownload(path, sha256, size))

    def _download_alone(self, job):
        return self._small_transfers.run(lambda: defer.ensureDeferred(self._download_bytes(job.path, job.sha256, job.size)))

    async def _download_batch(self, jobs) -> list:
        """Fetch the small downloads ``jobs``: one request for all of them (a single one
        goes alone); per job its checked bytes or its exception."""
        if len(jobs) == 1 or not self._batching:
            return await _settled(self._download_alone(j) for j in jobs)
        items = await self._fetch_batch(jobs)
        if items is None:
            return await self._download_batch(jobs)
        results, alone = [], {}
        for position, (job, item) in enumerate(zip(jobs, items)):
            if isinstance(item, batch.ItemError) and item.code == "TOO_LARGE":
                alone[position] = self._download_alone(job)  # grown since announced, or the batch was full
            results.append(self._batch_item(job, item))
        for position, outcome in zip(alone, await _settled(alone.values())):
            results[position] = outcome
        return results

    async def _fetch_batch(self, jobs):
        """The items of the answer to a download batch of ``jobs``, one a job (None: the
        server takes no batches)."""
        with self._watching() as watch:
            response = await self._batch_request(
                BATCH_DOWNLOAD, BytesBody(json.dumps({"paths": [j.path for j in jobs]}).encode("utf-8")), watch)
            if response is None:
                return None
            limit = batch.MAX_BODY + BATCH_MANIFEST_PER_FILE * len(jobs)
            body = await _bounded_body(
                response, limit, ServerUnavailable(f"download batch: the answer is longer than {limit} bytes"),
                "download batch", watch)
        try:
            return batch.parse_download_answer(body, [j.path for j in jobs])
        except SyncError as e:
            raise ServerUnavailable(f"download batch: malformed answer: {e.message}") from None

    def _batch_item(self, job, item):
        """One file of a download batch's answer: its checked bytes, or the exception."""
        if isinstance(item, batch.ItemError):
            return self._item_refusal("download", job.path, item)
        if hashlib.sha256(item[1]).hexdigest() != job.sha256:
            return DownloadCorrupt(f"download of {job.path}: content does not match its SHA-256")
        return item[1]

    async def _download_bytes(self, path, sha256, size):
        with self._watching() as watch:
            response = await self._transfer_request("GET", "/api/download", path, watch=watch)
            data = await _bounded_body(
                response, size, DownloadCorrupt(f"download of {path}: longer than the {size} bytes announced"),
                f"download of {path}", watch)
        if hashlib.sha256(data).hexdigest() != sha256:
            raise DownloadCorrupt(f"download of {path}: content does not match its SHA-256")
        return data

    def download(self, path: str, sha256: str, staging_dir: str, size=None):
        """Stream ``path`` (announced as ``size`` bytes, when known) into a new file in
        ``staging_dir``, check it hashes to ``sha256``, fsync it; the staged file's name
        (the caller renames or removes it). A prefetch of that version is used when
        there is one."""
        entry = self._prefetches.pop((path, sha256), None)
        if entry is not None:
            return defer.ensureDeferred(self._claim(entry, path, sha256, staging_dir, size))
        return self._fetch(path, sha256, staging_dir, size)

    def _fetch(self, path, sha256, staging_dir, size):
        return defer.ensureDeferred(self._retrying(
            self._lane(size), f"download of {path}", lambda: self._download(path, sha256, staging_dir, size=size)))

    async def _claim(self, entry, path, sha256, staging_dir, size):
        waiter = entry.claim()
        waiter.addTimeout(CLAIM_WAIT, self._reactor)
        try:
            staged = await waiter
        except defer.TimeoutError:
            entry.claimed = False  # its staged file is removed when its download ends
            staged = None
        if staged is not None:
            return staged
        return await self._fetch(path, sha256, staging_dir, size)

    def prefetching(self, path: str, sha256: str) -> bool:
        """Whether a prefetch of that version of ``path`` is kept or running (its
        :meth:`download` claims it)."""
        return (path, sha256) in self._prefetches

    def prefetch(self, path: str, sha256: str, size: int, staging_dir: str) -> None:
        """Start reading another client's upload of ``path`` (``size`` bytes hashing to
        ``sha256``) from the server's relay while it arrives, staged and checked like
        any download, for the :meth:`download` of that version to claim. At most
        :data:`PREFETCHES` are kept; one nobody claims is removed after
        :data:`PREFETCH_KEEP` seconds. A failure only means the download happens later."""
        key = (path, sha256)
        if key in self._prefetches or len(self._prefetches) >= PREFETCHES:
            return
        entry = self._prefetches[key] = _Prefetch()

        def done(result):
            staged = None if isinstance(result, Failure) else result
            if staged is None and not (isinstance(result.value, RequestRefused) and result.value.status == 404):
                self.log.info("relay of {path} failed ({error}); it is downloaded once stored",
                              path=path, error=result.getErrorMessage())
            if not entry.claimed:
                if staged is not None and self._prefetches.get(key) is entry:
                    entry.expiry = self._reactor.callLater(PREFETCH_KEEP, self._expire, key, entry)
                else:  # failed, or thrown away while it ran: settled once its file is gone
                    if self._prefetches.get(key) is entry:
                        del self._prefetches[key]
                    return self.threads.defer(unlink_quietly, staged).addCallback(lambda _: entry.settle(None))
            entry.settle(staged)

        relay = defer.ensureDeferred(self._download(path, sha256, staging_dir, route="/api/relay", query=f"&hash={sha256}"))
        relay.addBoth(done)

    def _expire(self, key, entry) -> defer.Deferred:
        """Throw away a prefetch nobody claimed (its download, if running, ends unused);
        fires once its staged file is removed (in a thread)."""
        if self._prefetches.get(key) is entry:
            del self._prefetches[key]
        if entry.expiry is not None and entry.expiry.active():
            entry.expiry.cancel()
        if entry.done and not entry.claimed:
            staged, entry.staged = entry.staged, None
            return self.threads.defer(unlink_quietly, staged)
        return defer.succeed(None)

    async def _download(self, path, sha256, staging_dir, route="/api/download", query="", size=None):
        # asked for as zstd where compression is on: the server sends it so if it pays
        headers = {b"Accept-Encoding": [ENCODING]} if self.compress_downloads and route == "/api/download" else None
        with self._watching("down", path) as watch:
            response = await self._transfer_request("GET", route, path, headers, query=query, watch=watch)
            if (response.headers.getRawHeaders(b"content-encoding") or [b""])[-1].strip().lower() == ENCODING:
                compressed = await self._stage(response, path, None, staging_dir, watch)
                staged = await self.threads.defer(inflate_file, compressed, staging_dir, sha256, size)
                if staged is None:
                    raise DownloadCorrupt(f"download of {path}: its zstd body does not inflate to its SHA-256")
                return staged
            return await self._stage(response, path, sha256, staging_dir, watch)

    async def _stage(self, response, path, sha256, staging_dir, watch):
        """The body of ``response`` in a new file of ``staging_dir``, checked to hash to
        ``sha256`` (None: not checked, a compressed body)."""
        fd, staged = await self.threads.defer(tempfile.mkstemp, dir=staging_dir, prefix="dl-")
        sink = staging.StagingSink(self._reactor, fd)
        try:
            try:
                await staging.receive(response, sink, watch)
            except Exception as e:
                raise _broken_off(f"download of {path}", e, watch) from None
            finally:
                digest = await self.threads.defer(sink.finish)
            if sha256 is not None and digest != sha256:
                raise DownloadCorrupt(f"download of {path}: content does not match its SHA-256")
        except BaseException:
            await self.threads.defer(os.unlink, staged)
            raise
        return staged
