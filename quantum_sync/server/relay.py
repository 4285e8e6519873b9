"""Relays: a large upload streamed on to the other clients while it is still arriving.

Without them a large file crosses the network twice in a row: the uploader's body
arrives, is made durable and journalled, the FileOperation goes out, and only then do
the other clients start downloading it. With a relay the second transfer overlaps the
first:

1. When a large upload's headers are in (its size known, ``X-Content-SHA256`` given, its
   path and client id valid, the caller allowed to upload: read by
   :meth:`FileApi.relay_upload <quantum_sync.server.api.FileApi.relay_upload>`), the
   server sends the event
   ``upload_started`` on the ``transfers`` topic (``data``: ``path``, ``hash``, ``size``,
   ``source_client``) to every subscriber of that topic but the uploader.
2. A subscriber may ``GET /api/relay?path=P&hash=H``: 200 and ``size`` bytes, which follow
   the upload's temp file as it is written (404 NOT_FOUND when no such upload is arriving).
   An upload that stops short cuts its relays short: their connections are aborted, so a
   reader sees an incomplete body.
3. What a reader gets is a staged copy and nothing more. It checks the bytes against the
   hash and installs them only when the FileOperation of that very hash arrives, with the
   usual checks. An upload refused after its headers (422, 412, 409...) was announced but
   is never journalled: no FileOperation follows, and its relayed copy is thrown away
   unused.

Nothing becomes visible earlier than without relays, and the uploader's request is
answered exactly as before.
"""

import os

from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.web import resource, server
from zope.interface import implementer

from quantum_sync.errors import SyncError

#: Uploads of at least this many bytes are relayed (smaller ones take milliseconds).
RELAY_MIN = 8 << 20
READ_SIZE = 256 << 10
TOPIC = "transfers"


class Relay:
    """One upload in progress (``size`` bytes hashing to ``sha256`` into ``temp_path``)
    and the readers following it. Its spool reports progress (:meth:`grew`, from the
    writing thread) and its end (:meth:`spool_closed`, on the reactor).

    The temp file is opened once, here: the install renames it away before the spool is
    closed, and a reader that comes in between still reads it (through a duplicate of
    this descriptor)."""

    def __init__(self, reactor, path: str, sha256: str, size: int, temp_path: str, forget):
        self.path = path
        self.sha256 = sha256
        self.size = size
        self.temp_path = temp_path
        self._fd = os.open(temp_path, os.O_RDONLY | os.O_CLOEXEC)
        self.written = 0
        self.closed = False
        self._reactor = reactor
        self._forget = forget
        self._readers = set()

    def grew(self, total: int) -> None:
        """``total`` bytes are in the temp file now (called from the writing thread)."""
        self._reactor.callFromThread(self._advance, total)

    def _advance(self, total: int) -> None:
        self.written = max(self.written, total)
        for reader in list(self._readers):
            reader.wake()

    def spool_closed(self) -> None:
        """The upload is over (its temp file installed, or abandoned): no more bytes come."""
        if self.closed:
            return
        self.closed = True
        self._forget(self)
        os.close(self._fd)  # the readers hold their own duplicates
        for reader in list(self._readers):
            reader.wake()

    def follow(self, request) -> "_RelayReader":
        """Answer ``request`` with the upload's bytes as they arrive (NOT_FOUND once the
        upload is over)."""
        if self.closed:
            raise SyncError("NOT_FOUND", f"no upload of {self.path} with that hash is arriving")
        reader = _RelayReader(self, request, os.dup(self._fd))
        self._readers.add(reader)
        return reader

    def _left(self, reader) -> None:
        self._readers.discard(reader)

    @property
    def reader_count(self) -> int:
        """Responses following this upload right now."""
        return len(self._readers)


@implementer(IPushProducer)
class _RelayReader:
    """Writes a relay's bytes into one response as they are written, paused by the
    transport like any streaming producer; finishes at ``size`` bytes, aborts the
    connection if the upload ends before."""

    def __init__(self, relay: Relay, request, fd: int):
        self._relay = relay
        self._request = request
        self._fd = fd
        self._sent = 0
        self._paused = False
        self._busy = False
        self._done = False
        request.registerProducer(self, True)
        request.notifyFinish().addBoth(lambda _: self._end())

    def wake(self) -> None:
        if self._done or self._paused or self._busy:
            return
        self._busy = True
        try:
            self._send_written()
        except OSError:
            self._abort()
            return
        finally:
            self._busy = False
        if self._done:
            return
        if self._sent >= self._relay.size:
            self._request.unregisterProducer()
            self._request.finish()
        elif self._relay.closed and self._sent >= self._relay.written:
            self._abort()

    def _send_written(self) -> None:
        """Write what the upload has written and this response has not sent yet, until
        paused or done."""
        relay = self._relay
        while self._sent < relay.written and not self._paused and not self._done:
            chunk = os.pread(self._fd, min(READ_SIZE, relay.written - self._sent), self._sent)
            if not chunk:
                break
            self._sent += len(chunk)
            self._request.write(chunk)

    def _abort(self) -> None:
        transport = getattr(self._request.channel, "transport", None)
        self._end()
        if transport is not None:
            transport.abortConnection()

    def _end(self) -> None:
        if self._done:
            return
        self._done = True
        self._relay._left(self)
        os.close(self._fd)

    def pauseProducing(self):
        self._paused = True

    def resumeProducing(self):
        self._paused = False
        self.wake()

    def stopProducing(self):
        self._end()


class RelayResource(resource.Resource):
    """The answer to ``GET /api/relay`` for one relay."""

    isLeaf = True

    def __init__(self, relay: Relay):
        super().__init__()
        self._relay = relay

    def render_GET(self, request):
        relay = self._relay
        reader = relay.follow(request)  # before any header: a refusal is a JSON answer
        request.setHeader(b"Content-Type", b"application/octet-stream")
        request.setHeader(b"Content-Length", b"%d" % relay.size)
        request.setHeader(b"ETag", f'"{relay.sha256}"'.encode("ascii"))
        reader.wake()
        return server.NOT_DONE_YET


class Relays:
    """The uploads being relayed, by ``(path, sha256)``; announces each on the hub."""

    log = Logger()

    def __init__(self, reactor, hub):
        self._reactor = reactor
        self._hub = hub
        self._relays = {}

    def offer(self, spool, path: str, sha256: str, length, source: str) -> Relay | None:
        """Relay the upload of ``path`` from client ``source`` (its headers in, announcing
        ``length`` bytes hashing to ``sha256``, its body about to go into ``spool``) if it
        is large and someone listens."""
        if length is None or length < RELAY_MIN or not self._hub.subscriber_count(TOPIC):
            return None
        if (path, sha256) in self._relays:
            return None
        try:
            relay = Relay(self._reactor, path, sha256, length, spool.path, self._forget)
        except OSError:  # e.g. out of descriptors: the upload simply goes unrelayed
            return None
        self._relays[(path, sha256)] = relay
        spool.relay = relay
        self._hub.event("upload_started", {"path": path, "hash": sha256, "size": length, "source_client": source},
                        skip_client=source)
        return relay

    def get(self, path: str, sha256: str) -> Relay:
        """The relay of ``path`` hashing to ``sha256``; NOT_FOUND when there is none."""
        relay = self._relays.get((path, sha256))
        if relay is None:
            raise SyncError("NOT_FOUND", f"no upload of {path} with that hash is arriving")
        return relay

    def reader_count(self) -> int:
        """Responses following any upload right now (the relays' readers)."""
        return sum(relay.reader_count for relay in self._relays.values())

    def _forget(self, relay: Relay) -> None:
        if self._relays.get((relay.path, relay.sha256)) is relay:
            del self._relays[(relay.path, relay.sha256)]
