"""The one place where a path from the outside becomes a canonical path: pure, no I/O.

Server and client alike pass every path that arrives over the network (query strings,
JSON bodies, WebSocket messages, listings, journal entries) through :func:`normalize`
and, before touching the disk, :func:`quantum_sync.resolve.walk` (the I/O half: symlinks,
see that module). The rules (contract section 3):

- relative, ``/``-separated, NFC-normalised; no empty, ``.`` or ``..`` segments;
- no NUL, control or format characters (bidi overrides included), no backslashes;
- each segment at most 255 bytes and the whole path at most 4096 bytes of UTF-8;
- never the internal state directory :data:`STATE_DIR_NAME` or anything below it.

Nothing here touches the disk: :func:`relative_from_disk` only works on the name it is
given.
"""

import functools
import os
import unicodedata

from quantum_sync.errors import SyncError, invalid_path

#: Name of the internal state directory, at the top of a server root and of a client
#: folder. Never listed, journalled, synced or addressable through the API.
STATE_DIR_NAME = ".quantum-sync"

MAX_SEGMENT_BYTES = 255
MAX_PATH_BYTES = 4096


def _check_characters(path: str) -> None:
    if path.isascii() and path.isprintable() and "\\" not in path:
        return  # the common case, quickly: no printable ASCII character is refused
    for ch in path:
        if ch == "\\":
            raise invalid_path("backslashes are not allowed in paths")
        category = unicodedata.category(ch)
        if category in ("Cc", "Cf", "Cs", "Co", "Cn") and ch != "\u200d":
            # Cc: NUL and other controls; Cf: bidi overrides and other invisible
            # formatting; Cs: lone surrogates; Co/Cn: private use and unassigned.
            raise invalid_path(f"character U+{ord(ch):04X} is not allowed in paths")


def normalize(path) -> str:
    """Validate ``path`` and return its canonical form (NFC), or raise INVALID_PATH.

    ``path`` is the already-decoded string as the caller received it; it is never
    URL-decoded again here, so ``%2e%2e`` stays a literal (and harmless) name.
    """
    if not isinstance(path, str):
        raise invalid_path("a path must be a string")
    return _normalized(str(path))


# A path is checked several times on its way (parsed from a message, resolved, walked,
# journalled): the answers for the paths seen last are remembered (a refusal is not).
@functools.lru_cache(maxsize=16384)
def _normalized(path: str) -> str:
    if path == "":
        raise invalid_path("the path is empty")
    _check_characters(path)
    path = unicodedata.normalize("NFC", path)
    _check_characters(path)
    if path.startswith("/"):
        raise invalid_path("paths are relative to the root and never start with '/'")
    encoded = path.encode("utf-8")
    if len(encoded) > MAX_PATH_BYTES:
        raise invalid_path(f"the path is longer than {MAX_PATH_BYTES} bytes")
    segments = path.split("/")
    for segment in segments:
        if segment == "":
            raise invalid_path("empty path segment (doubled or trailing '/')")
        if segment in (".", ".."):
            raise invalid_path("'.' and '..' segments are not allowed")
        if len(segment.encode("utf-8")) > MAX_SEGMENT_BYTES:
            raise invalid_path(f"a path segment is longer than {MAX_SEGMENT_BYTES} bytes")
    if segments[0] == STATE_DIR_NAME:
        raise invalid_path(f"{STATE_DIR_NAME} is internal and cannot be addressed")
    return path


def is_valid(path) -> bool:
    """True when :func:`normalize` accepts ``path`` unchanged (already canonical)."""
    try:
        return normalize(path) == path
    except SyncError:
        return False


def parent(path: str) -> str:
    """The parent of a canonical path, ``""`` for a top-level entry."""
    return path.rpartition("/")[0]


def ancestors(path: str) -> list:
    """The proper ancestors of a canonical path, outermost first (``a``, ``a/b`` for ``a/b/c``)."""
    segments = path.split("/")
    return ["/".join(segments[:i]) for i in range(1, len(segments))]


def is_inside(child: str, ancestor: str) -> bool:
    """True when canonical path ``child`` is ``ancestor`` itself or lies below it."""
    return child == ancestor or child.startswith(ancestor + "/")


def outermost(tops) -> list:
    """The canonical paths of ``tops`` that are not inside another of them, sorted."""
    kept = set()
    for path in sorted(set(tops), key=lambda p: p.count("/")):
        if not any(ancestor in kept for ancestor in ancestors(path)):
            kept.add(path)
    return sorted(kept)


def relative_from_disk(root: str, absolute: str):
    """The canonical relative path of an on-disk name under ``root``, or ``None``.

    Used by scans and watchers: names that cannot be addressed through the API
    (undecodable bytes, non-NFC spellings, the state directory, anything outside the
    root) give ``None`` and are left alone.
    """
    prefix = root.rstrip(os.sep) + os.sep
    tail = absolute[len(prefix) - 1:]
    if absolute.startswith(prefix) and not (os.sep + "." in tail or os.sep * 2 in tail or tail.endswith(os.sep)):
        rel = tail[1:]  # already normal below the root: relpath would give the same, slower
    else:
        rel = os.path.relpath(absolute, root)
    if rel in (".", "") or rel.startswith(".." + os.sep) or rel == "..":
        return None
    rel = rel.replace(os.sep, "/")
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return rel if is_valid(rel) else None
