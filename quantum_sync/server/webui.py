"""The web UI's files (package data in ``quantum_sync/server/ui/``), served at ``/`` and
``/ui/NAME`` when the handler key ``ui`` is true.

The files are read once when the site is built, so a request never touches the disk.
Every answer carries a strict Content-Security-Policy (scripts and styles from this
origin only: no inline script, no eval), ``X-Content-Type-Options: nosniff`` and an ETag.
"""

import hashlib
import os

from twisted.web import http
from twisted.web.resource import Resource

from quantum_sync.errors import SyncError
from quantum_sync.server.httpio import write_error

#: Where the UI's files live inside the package.
UI_DIRECTORY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ui")
#: The URL prefix of every asset (``/`` itself answers with ``index.html``).
PREFIX = "/ui/"
#: The kinds of file served; setup.cfg's package_data ships exactly these.
CONTENT_TYPES = {
    ".html": b"text/html; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
}
#: The policy of every UI answer: nothing but this origin's own files and connections.
CONTENT_SECURITY_POLICY = (
    b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    b"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def secure_headers(request) -> None:
    """The headers that keep a UI answer (or a download) from running anything foreign."""
    request.setHeader(b"Content-Security-Policy", CONTENT_SECURITY_POLICY)
    request.setHeader(b"X-Content-Type-Options", b"nosniff")
    request.setHeader(b"Referrer-Policy", b"no-referrer")
    request.setHeader(b"X-Frame-Options", b"DENY")


class StaticAsset(Resource):
    """One UI file held in memory, answered to GET and HEAD (304 on a matching ETag)."""

    isLeaf = True

    def __init__(self, body: bytes, content_type: bytes):
        super().__init__()
        self._body = body
        self._type = content_type
        self._etag = b'"' + hashlib.sha256(body).hexdigest()[:32].encode("ascii") + b'"'

    def render(self, request):
        secure_headers(request)
        if request.method not in (b"GET", b"HEAD"):
            return write_error(request, SyncError("METHOD_NOT_ALLOWED", "only GET is supported here"))
        request.setHeader(b"Cache-Control", b"no-cache")
        if request.setETag(self._etag) == http.CACHED:
            return b""
        request.setHeader(b"Content-Type", self._type)
        request.setHeader(b"Content-Length", str(len(self._body)).encode("ascii"))
        return b"" if request.method == b"HEAD" else self._body


def ui_endpoints(directory: str = UI_DIRECTORY) -> dict:
    """The UI's resources by request path: ``/`` and ``/ui/NAME`` for every file of
    ``directory`` with a known type."""
    endpoints = {}
    for name in sorted(os.listdir(directory)):
        content_type = CONTENT_TYPES.get(os.path.splitext(name)[1])
        if content_type is None:
            continue
        with open(os.path.join(directory, name), "rb") as f:
            asset = StaticAsset(f.read(), content_type)
        endpoints[PREFIX + name] = asset
        if name == "index.html":
            endpoints["/"] = asset
    return endpoints
