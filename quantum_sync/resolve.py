"""The one path resolver: a canonical path under a root becomes a name on disk.

Server (:class:`quantum_sync.server.store.Store`) and client (:mod:`quantum_sync.client`)
resolve every path with :func:`walk`, under one rule set:

- the path is first checked and normalised by :func:`quantum_sync.paths.normalize`
  (NFC, no ``.``/``..``/empty segments, never the state directory, ...); names are
  compared byte for byte after NFC, case included (the file system decides case);
- the root's own real path is taken once (a symlinked root is fine); below it, each
  segment is looked at with one ``lstat``, outermost first;
- no symbolic link inside the root is ever gone through: a link as any segment but
  the last refuses the path (INVALID_PATH), as listings and scans never follow one;
- a link as the last segment is not followed either (it counts as absent and may be
  replaced), but one leading outside the root, to the root itself or into the state
  directory refuses the path as a whole;
- the walk stops at the first missing segment (nothing below it can be a link), so
  names still to be created (uploads, downloads) resolve fine;
- a name longer than the OS accepts (``PATH_MAX``) is refused (INVALID_PATH).

The last ``lstat`` is the name's own, handed back so that a caller need not take it again.
"""

import functools
import os
import stat

from quantum_sync import paths
from quantum_sync.errors import SyncError

#: Longest absolute name the OS accepts (Linux PATH_MAX, terminating NUL included).
PATH_MAX = os.pathconf("/", "PC_PATH_MAX") if hasattr(os, "pathconf") else 4096


@functools.lru_cache(maxsize=64)
def real_root(root: str) -> str:
    """The real path of ``root``, taken once per root (not again per path)."""
    return os.path.realpath(root)


def walk(root: str, path: str) -> tuple:
    """``(absolute, lstat, parents exist)`` for ``path`` under ``root``, or INVALID_PATH.

    ``lstat`` is None when a segment is missing, False when one cannot be looked at
    (e.g. unreadable: the caller's own I/O reports it); ``parents exist`` is False when
    the walk stopped before the last segment."""
    top = real_root(root)
    prefix = top.rstrip(os.sep) + os.sep
    absolute = _absolute(prefix, path)
    end = len(prefix) - 1
    while True:
        end = absolute.find(os.sep, end + 1)
        current = absolute if end < 0 else absolute[:end]
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            return absolute, None, end < 0
        except NotADirectoryError:
            return absolute, None, False
        except OSError:
            return absolute, False, False
        if stat.S_ISLNK(st.st_mode):
            if end >= 0:
                raise SyncError("INVALID_PATH", "the path goes through a symbolic link")
            _check_final_link(absolute, top)
        if end < 0:
            return absolute, st, True


def _absolute(prefix: str, path: str) -> str:
    """The on-disk name of ``path`` below ``prefix`` (the real root and a separator);
    INVALID_PATH when the file system cannot hold a name that long."""
    absolute = prefix + paths.normalize(path).replace("/", os.sep)
    if len(absolute) * 4 >= PATH_MAX and len(os.fsencode(absolute)) >= PATH_MAX:  # 4: UTF-8's widest
        raise SyncError("INVALID_PATH", "the path is too long for the file system")
    return absolute


def _check_final_link(absolute: str, top: str) -> None:
    target = os.path.realpath(absolute)
    state_dir = os.path.join(top, paths.STATE_DIR_NAME)
    if (target == top or os.path.commonpath([target, top]) != top
            or os.path.commonpath([target, state_dir]) == state_dir):
        raise SyncError("INVALID_PATH", "the path leads outside the root through a symlink")


def resolve(root: str, path: str) -> str:
    """The on-disk name of ``path`` under ``root`` (the name itself, never a link's
    target, so a rename onto it replaces the name), checked as :func:`walk` says."""
    return walk(root, path)[0]


def resolve_and_lstat(root: str, path: str) -> tuple:
    """``(on-disk name, its lstat)`` of ``path``, the lstat taken on :func:`walk`'s way
    (None when a segment was missing or could not be looked at)."""
    absolute, st, _ = walk(root, path)
    return absolute, st or None
