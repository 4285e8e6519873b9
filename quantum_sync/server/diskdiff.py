"""The index against the disk: which rows are stale, and the journal items that bring
the index in line (pure: no I/O, no reactor).

:meth:`FileOperations.refresh` scans the disk, hashes the files :func:`stale_files`
names (outside its lock), and then, under the lock, journals :func:`journal_items` of
the index rows as they are by then.
"""

from quantum_sync import paths
from quantum_sync.protocol import Create, Delete, FileMetadata, Update


class Row(tuple):
    """An index row as ``(FileMetadata, mtime_ns)``, and the inode and ctime of the file
    it was recorded from (:attr:`ino`, :attr:`ctime_ns`; 0 where unknown): a file
    replaced, or rewritten with its mtime put back, keeps size and mtime but not both
    of these (and two writes in one tick of a coarse clock share an mtime)."""

    def __new__(cls, metadata, mtime_ns: int, ino: int = 0, ctime_ns: int = 0):
        row = super().__new__(cls, (metadata, mtime_ns))
        row.ino, row.ctime_ns = ino, ctime_ns
        return row


def metadata_of(entry, digest: str) -> Row:
    """The :class:`Row` of a disk entry (:class:`~quantum_sync.server.store.DiskEntry`)
    with its content hash."""
    metadata = FileMetadata(entry.path, entry.size, entry.mtime_ns / 1e9,
                            "" if entry.is_directory else digest, entry.is_directory)
    return Row(metadata, entry.mtime_ns, entry.ino, entry.ctime_ns)


def matches(cached, entry) -> bool:
    """True when index row ``cached`` (a :class:`Row`, a plain ``(FileMetadata,
    mtime_ns)`` pair, or None) still describes disk entry ``entry`` (or None): no rehash
    needed. Size and mtime must agree, and inode and ctime where both sides know them."""
    if cached is None or entry is None:
        return False
    metadata, mtime_ns = cached
    if metadata.is_directory or entry.is_directory:
        return metadata.is_directory == entry.is_directory
    if metadata.size != entry.size or mtime_ns != entry.mtime_ns:
        return False
    ino, ctime_ns = getattr(cached, "ino", 0), getattr(cached, "ctime_ns", 0)
    return not (ino and entry.ino) or (ino, ctime_ns) == (entry.ino, entry.ctime_ns)


def stale_files(rows: dict, found: dict) -> list:
    """The paths of the files in ``found`` (``{path: DiskEntry}``) that ``rows``
    (``{path: (FileMetadata, mtime_ns)}``) does not describe: those to hash, sorted."""
    return sorted(path for path, entry in found.items()
                  if not entry.is_directory and not matches(rows.get(path), entry))


def journal_items(rows: dict, found: dict, digests: dict) -> list:
    """What brings index ``rows`` in line with the disk entries ``found`` under the same
    tops, as ``(upserts, removals, operation or None)`` in journal order: a Delete for
    each outermost path gone, then per stale path (sorted) a Create or Update, or only
    the row when a file was touched but not changed (same hash), or a Delete and a
    Create when a file became a directory or the other way round.

    ``digests`` holds the hash of each stale file that could be read; a stale file
    without one is left out (it vanished or changed while being hashed: its next event
    or rescan catches it)."""
    gone = {path for path in rows if path not in found}
    items = [([], [path], Delete(path)) for path in sorted(gone)
             if paths.parent(path) not in gone]  # else removed with its parent
    for path in sorted(p for p in found if not matches(rows.get(p), found[p])):
        entry = found[path]
        if entry.is_directory or path in digests:
            items.extend(_changed(path, entry, rows.get(path), digests.get(path, "")))
    return items


def _changed(path: str, entry, row, digest: str) -> list:
    """The journal items of one path whose disk ``entry`` the index ``row`` does not
    describe (``digest``: the file's hash, "" for a directory)."""
    items = []
    if row is not None and row[0].is_directory != entry.is_directory:
        items.append(([], [path], Delete(path)))
        row = None
    stored = metadata_of(entry, digest)
    if row is not None and row[0].hash == stored[0].hash:
        items.append(([stored], [], None))  # touched, not changed
    else:
        items.append(([stored], [], (Update if row is not None else Create)(stored[0])))
    return items


def item_path(item) -> str:
    """The path a journal item of :func:`journal_items` is about."""
    upserts, removals, _ = item
    return upserts[0][0].path if upserts else removals[0]
