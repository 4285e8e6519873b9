"""What a narrower selection does to the local folder (blocking: run it in a thread).

A synced path that left this client's selection (:mod:`quantum_sync.client.selection`)
loses its local copy only while that copy is unchanged since it was last synced: its
content hashes to the synced version (so a local edit is never lost: such a file stays,
with its base, and is reported). A directory that left the selection is removed once
empty. Nothing here touches the server: outside the selection, nothing is deleted there.
"""


import attrs

from quantum_sync.client import localfs
from quantum_sync.resolve import resolve


@attrs.frozen
class Deselected:
    """``removed``: paths whose local copy is gone (their bases can be forgotten);
    ``kept``: synced files left in place because they changed since; ``outside``: the
    outermost local paths outside the selection that were never synced (left alone)."""

    removed: tuple = ()
    kept: tuple = ()
    outside: tuple = ()


def leave_selection(folder: str, bases: dict, outside, ignored) -> Deselected:
    """Remove the unchanged local copies of the synced paths for which ``outside(path,
    is_directory)`` holds, and list the local paths outside never synced (paths that
    ``ignored`` by ``.syncignore`` are never touched nor listed)."""
    leaving = {p: b for p, b in bases.items() if outside(p, b.entry.is_directory) and not ignored(p, b.entry.is_directory)}
    removed, kept = [], []
    for path, base in sorted(leaving.items()):
        if not base.entry.is_directory:
            (removed if _remove_if_unchanged(resolve(folder, path), base) else kept).append(path)
    removed.extend(_remove_empty_directories(folder, [p for p, b in leaving.items() if b.entry.is_directory]))
    present = localfs.stats_below(folder, ignored, None)
    return Deselected(tuple(removed), tuple(kept), tuple(_never_synced(present, bases, outside)))


def _remove_empty_directories(folder: str, directories) -> list:
    """Of the synced ``directories`` leaving the selection, the empty ones removed
    (deepest first); one not a directory any more, or not removable, is left alone."""
    removed = []
    for path in sorted(directories, key=lambda p: p.count("/"), reverse=True):
        try:
            if localfs.remove(resolve(folder, path), None):
                removed.append(path)
        except (OSError, localfs.LocalChanged):
            pass
    return removed


def _never_synced(present: dict, bases: dict, outside) -> list:
    """The outermost ``present`` paths outside the selection that were never synced."""
    return sorted(
        p for p, st in present.items()
        if p not in bases and outside(p, st.is_directory) and not _parent_outside(p, present, outside)
    )


def _remove_if_unchanged(abspath, base) -> bool:
    """True when the file is gone (now or already); False when it changed and stays."""
    before = localfs.lstat(abspath)
    if before is None:
        return True
    if before.is_directory:
        return False
    try:
        if localfs.sha256_file(abspath) != base.entry.hash:
            return False
        return localfs.remove(abspath, before)  # still the file that was hashed
    except (OSError, localfs.LocalChanged):
        return False


def _parent_outside(path, present, outside) -> bool:
    parent = path.rpartition("/")[0]
    return bool(parent) and outside(parent, True)
