"""The REST API's reading of requests and writing of JSON answers: query parameters and
headers decoded and checked (a SyncError with a contract code otherwise), JSON bodies
parsed (large ones in a thread), answers and errors encoded.
"""

import json
import os
from urllib.parse import quote

from quantum_sync.errors import SyncError
from quantum_sync.protocol import is_sha256
from quantum_sync.server.operations import check_client_id

#: JSON request bodies up to this many bytes are parsed on the reactor, larger ones in a thread.
JSON_INLINE = 64 * 1024


def encode_json(body) -> bytes:
    """``body`` as compact UTF-8 JSON (blocking for a large body: see :func:`write_json`)."""
    return json.dumps(body, separators=(",", ":")).encode("utf-8")


def write_json(request, body, status: int = 200, encoded: bytes = None) -> bytes:
    """Set status and JSON content type; return the encoded body (``encoded``, when the
    caller already encoded a large one on a thread)."""
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Cache-Control", b"no-store")
    return encode_json(body) if encoded is None else encoded


def write_error(request, error: SyncError) -> bytes:
    if "retryAfter" in error.extra:
        request.setHeader(b"Retry-After", str(int(error.extra["retryAfter"] + 0.999)).encode())
    return write_json(request, error.to_json(), error.status)


def query(request, name: str, required: bool = True):
    """The decoded value of query parameter ``name`` (first occurrence)."""
    values = request.args.get(name.encode("ascii"))
    if not values:
        if required:
            raise SyncError("INVALID_REQUEST", f"missing query parameter {name!r}")
        return None
    try:
        return values[0].decode("utf-8")
    except UnicodeDecodeError:
        code = "INVALID_PATH" if name == "path" else "INVALID_REQUEST"
        raise SyncError(code, f"query parameter {name!r} is not valid UTF-8") from None


def query_int(request, name: str, default: int, minimum: int, maximum: int) -> int:
    text = query(request, name, required=False)
    if text is None:
        return default
    if not text.isascii() or not text.isdigit() or len(text) > 19:
        raise SyncError("INVALID_REQUEST", f"{name} must be a non-negative integer")
    value = int(text)
    if not minimum <= value <= maximum:
        raise SyncError("INVALID_REQUEST", f"{name} must be between {minimum} and {maximum}")
    return value


def header(request, name: str):
    """The first value of header ``name`` as text (INVALID_REQUEST unless UTF-8)."""
    values = request.requestHeaders.getRawHeaders(name.encode("ascii"))
    if not values:
        return None
    try:
        return values[0].decode("utf-8").strip()
    except UnicodeDecodeError:
        raise SyncError("INVALID_REQUEST", f"the {name} header is not valid UTF-8") from None


def client_id(request) -> str:
    """The caller's ``X-Client-Id`` (``""`` when absent)."""
    return check_client_id(header(request, "X-Client-Id") or "")


def expected_sha256(request):
    """The upload's ``X-Content-SHA256``, lowercase (None when absent)."""
    expected = header(request, "X-Content-SHA256")
    if expected is None:
        return None
    expected = expected.lower()
    if not is_sha256(expected):
        raise SyncError("INVALID_REQUEST", "X-Content-SHA256 must be a SHA-256 hex digest")
    return expected


async def read_json_body(request, threads):
    """The request's JSON body, parsed on the reactor when it is small and in a thread
    above :data:`JSON_INLINE` bytes (in ``threads``; bodies go up to 16 MiB); INVALID_REQUEST if it is
    not JSON."""
    content = request.content
    if content.seek(0, os.SEEK_END) <= JSON_INLINE:
        return _parse_json(content)
    return await threads.defer(_parse_json, content)


def _parse_json(content):
    content.seek(0)
    try:
        return json.loads(content.read().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise SyncError("INVALID_REQUEST", "the body must be a JSON object") from None


def attachment(name: str) -> bytes:
    """A ``Content-Disposition`` that saves the body as ``name`` (RFC 6266: an ASCII
    fallback and the UTF-8 name percent-encoded)."""
    fallback = "".join(c if c.isascii() and c.isprintable() and c not in '"\\%' else "_" for c in name)
    encoded = quote(name.encode("utf-8", "surrogateescape"), safe="")
    return f'attachment; filename="{fallback}"; filename*=UTF-8\'\'{encoded}'.encode("ascii")
