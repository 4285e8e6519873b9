"""A stored file served for a download: opened once (a small one read whole in the
thread that opens it), paired with the index row that describes it, and answered by
:class:`HashedFile` with the ETag of its content.
"""

import io
import os

import attrs
from twisted.web import http
from twisted.web.static import File, getTypeAndEncoding

from quantum_sync import batch
from quantum_sync.diskio import open_regular
from quantum_sync.errors import SyncError
from quantum_sync.server.diskdiff import matches
from quantum_sync.server.httpio import attachment
from quantum_sync.server.store import DiskEntry
from quantum_sync.server.webui import secure_headers

DOWNLOAD_CHUNK = 256 * 1024
#: Files of at most this many bytes are read whole in the thread that opens them (and
#: only such files travel in a download batch).
SMALL_DOWNLOAD = batch.MAX_DOWNLOAD_FILE
#: More byte ranges than this in one request are ignored (the whole file is sent).
MAX_RANGES = 16


class HashedFile(File):
    """A downloadable file: twisted's static.File (Range/206, HEAD, streaming) plus an
    ETag of its SHA-256; never a directory listing.

    It serves the already ``opened`` file whose content has that hash, so a rename onto
    the path meanwhile can never pair one version's bytes with another's ETag."""

    def __init__(self, path: str, digest: str, opened):
        super().__init__(path, defaultType="application/octet-stream")
        self.digest = digest
        self._opened = opened.file
        self._stat = opened.stat

    def openForReading(self):
        return self._opened

    def getFileSize(self):
        return self._stat.st_size

    def getModificationTime(self):
        return self._stat.st_mtime

    def exists(self):
        return True

    def isdir(self):
        return False

    def download_headers(self, request) -> None:
        """The headers of every download of this file (with or without compression)."""
        request.setHeader(b"Accept-Ranges", b"bytes")
        # Always a download, never a page: an uploaded HTML file must not run in the
        # web UI's origin.
        request.setHeader(b"Content-Disposition", attachment(self.basename()))
        secure_headers(request)

    def render_GET(self, request):
        self.download_headers(request)
        if request.setETag(f'"{self.digest}"'.encode("ascii")) == http.CACHED:
            self._opened.close()
            return b""
        ranges = request.getHeader(b"range")
        if ranges is not None and (not ranges.isascii() or ranges.count(b",") >= MAX_RANGES):
            # Undecodable, or a multipart answer many times the file's size: a Range
            # header that is not understood is ignored (RFC 9110 14.2), whole file it is.
            request.requestHeaders.removeHeader(b"range")
        if isinstance(self._opened, io.BytesIO) and request.getHeader(b"range") is None:
            return self._render_whole(request)
        return super().render_GET(request)

    render_HEAD = render_GET

    def _render_whole(self, request) -> bytes:
        """static.File's answer without a Range (Last-Modified, Content-Type and -Length,
        HEAD) for a body already in memory: returned at once, no producer."""
        if request.setLastModified(self._stat.st_mtime) == http.CACHED:
            return b""
        if self.type is None:
            self.type, self.encoding = getTypeAndEncoding(
                self.basename(), self.contentTypes, self.contentEncodings, self.defaultType)
        request.setHeader(b"Content-Length", b"%d" % self.getFileSize())  # as File's own answer
        if self.type:
            request.setHeader(b"Content-Type", self.type.encode("ascii"))
        if self.encoding:
            request.setHeader(b"Content-Encoding", self.encoding.encode("ascii"))
        return b"" if request.method == b"HEAD" else self._opened.getvalue()

    def restat(self, reraise=True):
        """The opened file's stat is all this resource needs (no stat of the name)."""

    def makeProducer(self, request, fileForReading):
        producer = super().makeProducer(request, fileForReading)
        producer.bufferSize = DOWNLOAD_CHUNK  # fewer, larger reads and socket writes
        return producer

    def directoryListing(self):
        raise SyncError("NOT_FOUND", "not a file")


@attrs.frozen
class Opened:
    """A file opened for a download: a file object (its bytes already in memory for a
    small file) and its ``fstat``."""

    file: object
    stat: os.stat_result | None


def open_file(absolute: str):
    """The regular file at ``absolute`` opened for reading (never through a final
    symlink, never blocking on a FIFO or device) as an :class:`Opened`, or None. A file
    of at most :data:`SMALL_DOWNLOAD` bytes is read whole here, so the reactor never
    reads it."""
    try:
        fd, st = open_regular(absolute, follow_symlinks=False)
    except OSError:
        return None
    opened = os.fdopen(fd, "rb")
    if st.st_size > SMALL_DOWNLOAD:
        return Opened(opened, st)
    with opened:
        data = opened.read(SMALL_DOWNLOAD + 1)
        after = os.fstat(fd)
    unchanged = len(data) == st.st_size and (after.st_size, after.st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    return Opened(io.BytesIO(data), st if unchanged else None)  # None: matches no row


def describes(current, opened) -> bool:
    """True when index row ``current`` (``(FileMetadata, mtime_ns)`` or None) is the
    version of the regular file ``opened`` (or None)."""
    if current is None or opened is None or opened.stat is None or current[0].is_directory:
        return False
    st = opened.stat
    return matches(current, DiskEntry(current[0].path, False, st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns))
