"""Conflict copy names (contract section 7): pure, no I/O.

``NAME.sync-conflict-YYYYMMDD-HHMMSS-CLIENTID.EXT``: the timestamp is UTC, the extension
is the last suffix only (``a.tar.gz`` → ``a.tar.sync-conflict-…-ID.gz``) and a name
without one (``Makefile``, ``.bashrc``) gets the marker appended.
"""

import re
import time

_MARKER = ".sync-conflict-"


def _split_suffix(name: str):
    """``(stem, ext)`` where ext is the last suffix with its dot, or ``""``."""
    dot = name.rfind(".")
    if dot <= 0 or dot == len(name) - 1:
        # no dot, a leading dot only (.bashrc) or a trailing dot (foo.): no extension
        return name, ""
    return name[:dot], name[dot:]


def conflict_name(path: str, epoch: float, client_id: str) -> str:
    """The conflict-copy path for canonical ``path``, made at ``epoch`` by ``client_id``."""
    directory, slash, name = path.rpartition("/")
    stem, ext = _split_suffix(name)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(epoch))
    safe_id = re.sub(r"[^A-Za-z0-9_-]", "_", client_id) or "client"
    return f"{directory}{slash}{stem}{_MARKER}{stamp}-{safe_id}{ext}"


def is_conflict_copy(path: str) -> bool:
    """Whether ``path`` names a conflict copy."""
    return _MARKER in path.rpartition("/")[2]
