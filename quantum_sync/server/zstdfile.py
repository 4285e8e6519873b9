"""A download sent as zstd (``Content-Encoding: zstd``) to a client that asked for it.

:class:`ZstdDownload` answers for one opened file: its headers as
:class:`~quantum_sync.server.download.HashedFile` gives them (ETag of the content, an
attachment), no ``Content-Length`` (the body goes chunked), and a push producer that
reads and compresses the file a piece at a time in the reactor's thread pool, so the
reactor only writes, paused by its transport. :func:`worth_compressing` samples the file
first: only a file whose start shrinks enough is sent this way.
"""

import os

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.web import http, resource, server
from zope.interface import implementer

from quantum_sync.compression import ENCODING, SAMPLE, CompressedPieces, pays
from quantum_sync.threads import ReactorThreads

log = Logger()


def accepts_zstd(request) -> bool:
    """Whether ``request`` lists zstd in its ``Accept-Encoding`` (and asks no range)."""
    if request.getHeader(b"range") is not None:
        return False
    accepted = b",".join(request.requestHeaders.getRawHeaders(b"accept-encoding") or [])
    codings = {part.split(b";")[0].strip().lower() for part in accepted.split(b",")}
    return ENCODING in codings


def worth_compressing(fd: int) -> bool:
    """Whether the file open as ``fd`` compresses well enough (blocking: a thread)."""
    return pays(os.pread(fd, SAMPLE, 0))


class ZstdDownload(resource.Resource):
    """One opened file (``opened``: its file object) with content hash ``digest``, sent as
    zstd; ``headers(request)`` sets the download's other headers."""

    isLeaf = True

    def __init__(self, opened, digest: str, headers, reactor, threads=None):
        super().__init__()
        self._file, self._digest, self._headers = opened, digest, headers
        self._threads = threads if threads is not None else ReactorThreads(reactor)

    def render_GET(self, request):
        self._headers(request)
        request.setHeader(b"Vary", b"Accept-Encoding")
        if request.setETag(f'"{self._digest}"'.encode("ascii")) == http.CACHED or request.method == b"HEAD":
            self._file.close()
            return b""
        request.setHeader(b"Content-Type", b"application/octet-stream")
        request.setHeader(b"Content-Encoding", ENCODING)
        _ZstdStream(request, self._file, self._threads).start()
        return server.NOT_DONE_YET

    render_HEAD = render_GET


@implementer(IPushProducer)
class _ZstdStream(CompressedPieces):
    """Writes the compressed pieces of ``file`` into ``request`` as they are made."""

    def __init__(self, request, file, threads):
        super().__init__(file, threads)
        self._request = request

    def start(self) -> None:
        self._request.registerProducer(self, True)
        self._request.notifyFinish().addErrback(lambda _: self.stopProducing())
        Deferred.fromCoroutine(self._run()).addErrback(
            lambda failure: log.failure("sending a compressed download failed", failure))

    async def _run(self) -> None:
        try:
            while True:
                got = await self.next_piece()
                if got is None:
                    return
                piece, done = got
                if piece:
                    self._request.write(piece)
                if done:
                    self._request.unregisterProducer()
                    self._request.finish()
                    return
        except Exception:
            if not self._stopped:
                self._request.loseConnection()  # cut short: the client sees an incomplete body
            raise
        finally:
            self._file.close()
