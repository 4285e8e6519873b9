"""The local folder on disk: stat, hash, scan and the guarded writes. Blocking; the
engine runs every function here in a thread.

Every write is conditional: a file is replaced, renamed or deleted only when it still
has the size and mtime the caller decided on (``expected``), so a local edit that
lands in between is never lost (it turns into a conflict). Downloads are staged in
``.quantum-sync/tmp/``, fsynced, given the server's mtime and renamed into place, then
the directory is fsynced; :func:`install_many` does the same for downloads held in memory,
with one fsync per directory for the whole batch.
"""

import errno
import hashlib
import os
import posixpath
import stat as stat_module
import tempfile

import attrs

from quantum_sync.client.reconcile import Entry
from quantum_sync.diskio import CHUNK as HASH_CHUNK, NamelessFiles, fsync_all, fsync_directory
from quantum_sync.paths import STATE_DIR_NAME, relative_from_disk
from quantum_sync.resolve import resolve, resolve_and_lstat

#: A restored mtime may come back rounded (float seconds): "not newer" allows this much.
SUSPECT_MTIME_SLACK_NS = 1_000_000


@attrs.frozen
class LocalStat:
    """What identifies a local version without reading it."""

    size: int
    mtime_ns: int
    is_directory: bool


@attrs.frozen
class LocalVersion:
    """A local path as seen now: its entry (hash known), stat, and whether it is suspect."""

    entry: Entry
    stat: LocalStat
    suspect: bool = False
    #: The file's bytes, read with the hash (when the caller asked, see :func:`version`).
    data: bytes = attrs.field(default=None, eq=False, repr=False)


class LocalChanged(Exception):
    """The local file is no longer the version the decision was made on."""


def lstat(abspath: str):
    """:class:`LocalStat` of a regular file or directory; None when missing or anything else
    (symlinks, sockets, devices are never synced)."""
    try:
        st = os.lstat(abspath)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return local_stat(st)


def open_regular(abspath: str) -> int:
    """A descriptor for reading the regular file at ``abspath``. The open does not block
    and follows no symlink: a FIFO, socket or device put there since it was looked at
    (its open would wait for a writer, or worse) raises :class:`LocalChanged`, as a
    symlink does."""
    try:
        fd = os.open(abspath, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_NOCTTY)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENXIO, errno.ENOENT, errno.ENOTDIR):
            raise LocalChanged(abspath) from None
        raise
    if not stat_module.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise LocalChanged(abspath)
    return fd


def sha256_file(abspath: str) -> str:
    """SHA-256 hex of the regular file at ``abspath`` (opened by :func:`open_regular`)."""
    digest = hashlib.sha256()
    with os.fdopen(open_regular(abspath), "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def local_stat(st):
    """:func:`lstat`'s answer for an ``os.lstat`` result ``st``."""
    if stat_module.S_ISDIR(st.st_mode):
        return LocalStat(0, st.st_mtime_ns, True)
    if stat_module.S_ISREG(st.st_mode):
        return LocalStat(st.st_size, st.st_mtime_ns, False)
    return None




#: :func:`version`'s answer for a file that needs hashing but is above ``hash_limit``.
UNHASHED = object()
#: :func:`version`'s ``seen`` when the caller took no lstat (it looks itself).
_LOOK = object()


def unchanged(st, base) -> bool:
    """Whether the file stat ``st`` is the one recorded with ``base`` (then its content is
    taken to be the base's, unread)."""
    return (
        st is not None
        and base is not None
        and not st.is_directory
        and not base.entry.is_directory
        and (st.size, st.mtime_ns) == (base.local_size, base.local_mtime_ns)
    )


def _read_small(abspath: str, limit: int, expected: int = -1) -> bytes:
    """At most ``limit`` bytes of the file at ``abspath`` (unbuffered: a small file's read
    is then a few system calls, not a file object's). Once the reads bring exactly the
    ``expected`` size, no further read looks for the end: the caller checks that the
    file's size and mtime did not move meanwhile."""
    fd = open_regular(abspath)
    try:
        chunks, size = [], 0
        while size < limit and (chunk := os.read(fd, limit - size)):
            chunks.append(chunk)
            size += len(chunk)
            if size == expected:
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)
    finally:
        os.close(fd)


def version(abspath: str, base=None, keep: int = 0, hash_limit: int = None, prehashed=None, budget=None,
            seen=_LOOK):
    """The :class:`LocalVersion` of ``abspath`` or None; hashing is skipped when size and
    mtime are those recorded with ``base`` (a :class:`~quantum_sync.client.state.Base`).
    A file of at most ``keep`` bytes is read whole and its bytes come with the version
    (when they fit in ``budget``, a :class:`~quantum_sync.diskio.Budget` of bytes the caller gives them back to);
    one above ``hash_limit`` that needs hashing gives :data:`UNHASHED` instead.
    ``prehashed(size)`` may supply the digest of a file hashed while it was written
    (:mod:`~quantum_sync.client.prehash`; the server checks it). ``seen``: the
    :func:`lstat` of ``abspath`` just taken by the caller (else it is taken here)."""
    st = lstat(abspath) if seen is _LOOK else seen
    if st is None:
        return None
    if st.is_directory:
        return LocalVersion(Entry("", 0, True), st)
    if unchanged(st, base):
        return LocalVersion(base.entry, st)
    if hash_limit is not None and st.size > hash_limit:
        return UNHASHED
    digest, data = _digest(abspath, st, keep, prehashed, budget)
    if lstat(abspath) != st:
        if data is not None and budget is not None:
            budget.give(st.size)
        raise LocalChanged(abspath)  # still being written: try again later
    return LocalVersion(Entry(digest, st.size, False), st, _suspect(st, base), data)


def _digest(abspath: str, st, keep: int, prehashed, budget) -> tuple:
    """``(sha256, the file's bytes or None)`` of the file ``st`` describes: read whole
    when it has at most ``keep`` bytes that fit in ``budget``, else hashed from disk
    (or ``prehashed``)."""
    if st.size <= keep and (budget is None or budget.take(st.size)):
        try:
            data = _read_small(abspath, keep + 1, st.size)
            if len(data) != st.size:
                raise LocalChanged(abspath)
        except BaseException:
            if budget is not None:
                budget.give(st.size)
            raise
        return hashlib.sha256(data).hexdigest(), data
    return (prehashed and prehashed(st.size)) or sha256_file(abspath), None


def _suspect(st, base) -> bool:
    """True for a file found empty, synced with content and with no newer mtime since
    (zero bytes, old mtime: held, never sent)."""
    return (
        base is not None
        and st.size == 0
        and base.entry.size > 0
        and not base.entry.is_directory
        and st.mtime_ns <= base.local_mtime_ns + SUSPECT_MTIME_SLACK_NS
    )


def versions(folder: str, items, keep: int, hash_limit: int, budget=None) -> list:
    """:func:`version` of each ``(path, base, with_bytes)`` in ``folder`` (``path`` relative,
    resolved here; ``with_bytes``: read a file of at most ``keep`` bytes whole, within
    ``budget``); an item that fails (INVALID_PATH too) gives its exception."""
    results = []
    for path, base, with_bytes in items:
        try:
            abspath, st = resolve_and_lstat(folder, path)  # the walk's last lstat is the file's
            results.append(version(abspath, base, keep if with_bytes else 0, hash_limit, budget=budget,
                                   seen=_LOOK if st is None else local_stat(st)))
        except Exception as e:
            results.append(e)
    return results


def scan(folder: str, bases: dict, is_ignored, below: str = None, prehashed=None) -> dict:
    """path → :class:`LocalVersion` for the whole folder (or the subtree ``below``).

    Never enters the state directory, never follows symlinks; names that cannot be
    synced (undecodable, non-NFC) are left alone. Files still being written are left out.
    ``prehashed(path, abspath, base)``: the ``prehashed`` given to :func:`version` for
    ``path`` (of base ``base``).
    """
    def look(path, abspath):
        base = bases.get(path)
        return version(abspath, base, prehashed=None if prehashed is None else prehashed(path, abspath, base))

    return _look_below(folder, is_ignored, below, look)


def stats_below(folder: str, is_ignored, below: str) -> dict:
    """path → :class:`LocalStat` of ``below`` and of everything under it, found as
    :func:`scan` finds them, but nothing read or hashed: what is there, for a caller
    that only needs to know which paths to look at."""
    return _look_below(folder, is_ignored, below, lambda path, abspath: lstat(abspath))


def _look_below(folder: str, is_ignored, below, look) -> dict:
    """path → ``look(path, abspath)`` (when not None) of every entry :func:`scan`
    visits; an entry whose look raises LocalChanged or OSError is left out."""
    def looked(path, abspath):
        try:
            return look(path, abspath)
        except (LocalChanged, OSError):
            return None

    found = {}
    start = folder if below is None else os.path.join(folder, below)
    stack = [start]
    while stack:
        current = stack.pop()
        for child, rel, is_dir in _children(folder, current, is_ignored):
            v = looked(rel, child.path)
            if v is None:
                continue
            found[rel] = v
            if is_dir:
                stack.append(child.path)
    if below is not None:
        v = looked(below, start)
        if v is not None:
            found[below] = v
    return found


def _children(folder: str, current: str, is_ignored) -> list:
    """``(entry, path, is a directory)`` of each entry of the directory ``current``
    that can be synced and is not ignored (none when it cannot be listed)."""
    try:
        with os.scandir(current) as it:
            children = list(it)
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return []
    kept = []
    for child in children:
        if current == folder and child.name == STATE_DIR_NAME:
            continue
        rel = relative_from_disk(folder, child.path)
        if rel is None:
            continue
        is_dir = child.is_dir(follow_symlinks=False)
        if not is_ignored(rel, is_dir):
            kept.append((child, rel, is_dir))
    return kept


def _matches(abspath: str, expected) -> bool:
    current = lstat(abspath)
    if expected is None:
        return current is None and not os.path.lexists(abspath)
    if expected.is_directory:
        return current is not None and current.is_directory
    return current == expected




def make_parents(folder: str, abspath: str, known=()) -> None:
    """Create the missing parents of ``abspath``; ``known``: directories known to exist
    (a batch's earlier installs), not looked at again."""
    parent = os.path.dirname(abspath)
    # one stat where the parent is there (os.makedirs takes three system calls even then)
    if parent != folder and parent not in known and not os.path.isdir(parent):
        os.makedirs(parent, exist_ok=True)


def _place(folder: str, staged: str, abspath: str, expected, modified: float) -> LocalStat:
    """Give ``staged`` the server's mtime and rename it onto ``abspath`` if that is still
    ``expected``; the stat it was installed with (the directory is not fsynced yet)."""
    os.utime(staged, (modified, modified))
    return _rename_if(folder, staged, abspath, expected)


def _link_new(folder: str, fd: int, abspath: str, st, known=()) -> LocalStat:
    """Give the nameless file ``fd`` (whose fstat is ``st``) the name ``abspath``, which
    must not exist (else LocalChanged: something appeared there meanwhile); the stat it
    was installed with. ``known``: as :func:`make_parents` takes it."""
    make_parents(folder, abspath, known)
    try:
        NAMELESS.link(fd, abspath)
    except FileExistsError:
        raise LocalChanged(abspath) from None
    return LocalStat(st.st_size, st.st_mtime_ns, False)


def _rename_if(folder: str, staged: str, abspath: str, expected, known=()) -> LocalStat:
    """Rename ``staged`` onto ``abspath`` if that is still ``expected``; the stat it was
    installed with. ``known``: as :func:`make_parents` takes it."""
    make_parents(folder, abspath, known)
    if not _matches(abspath, expected):
        raise LocalChanged(abspath)
    st = lstat(staged)
    os.replace(staged, abspath)
    return st


def install(folder: str, staged: str, abspath: str, expected, modified: float) -> LocalStat:
    """Rename the verified ``staged`` file onto ``abspath`` if that is still ``expected``
    (None: must not exist). Sets the server's mtime; fsyncs the directory."""
    st = _place(folder, staged, abspath, expected, modified)
    fsync_directory(os.path.dirname(abspath))
    return st


@attrs.frozen
class Install:
    """A verified download held in memory, for :func:`install_many`."""

    path: str  # relative to the folder
    data: bytes = attrs.field(repr=False)
    expected: object  # the LocalStat the decision saw (None: must not exist)
    modified: float


NAMELESS = NamelessFiles()
#: Files :func:`install_many` holds open at once at most (it works through more in turns).
INSTALL_TURN = 128


def install_many(folder: str, staging_dir: str, installs, installed=None) -> list:
    """Each :class:`Install` written to a file in ``staging_dir`` with the server's mtime,
    all of them made durable together (:func:`~quantum_sync.diskio.fsync_all`), then each
    installed as :func:`install` does (its path resolved here, just before; renamed only if
    the local file is still the one expected), then each directory written to fsynced once.
    Per item its :class:`LocalStat`, or the exception that stopped it (the others go on).
    ``installed`` (an :class:`~quantum_sync.diskio.OwnWrites`) is told of each file just
    before it appears, so that the watcher drops its event."""
    results, directories = [None] * len(installs), set()
    for start in range(0, len(installs), INSTALL_TURN):
        turn = range(start, min(start + INSTALL_TURN, len(installs)))
        written = []  # (position, descriptor, staged name or None) of the files written whole
        for position in turn:
            try:
                written.append((position, *_write_staged(installs[position], staging_dir)))
            except OSError as e:
                results[position] = e
        synced = fsync_all([fd for _, fd, _ in written], one_directory=True)  # all in staging_dir
        for (position, fd, staged), error in zip(written, synced):
            try:
                if error is not None:
                    raise error
                results[position] = _place_staged(folder, installs[position], fd, staged, installed, directories)
            except Exception as e:
                unlink_quietly(staged)
                results[position] = e
            finally:
                os.close(fd)
    for directory in directories:
        fsync_directory(directory)
    return results


def _write_staged(item, staging_dir: str) -> tuple:
    """``(descriptor, staged name or None)`` of a new file in ``staging_dir`` holding
    ``item``'s bytes with its mtime, not yet fsynced: nameless for a new file (it gets its
    name by a link: one "created" event, no rename for the watcher to pair), named for a
    file replaced (by a rename). OSError, with nothing left behind."""
    fd = NAMELESS.open(staging_dir, 0o600) if item.expected is None else None
    staged = None
    if fd is None:
        fd, staged = tempfile.mkstemp(dir=staging_dir, prefix="dl-")
    try:
        view = memoryview(item.data)
        while view:
            view = view[os.write(fd, view) :]
        os.utime(fd, (item.modified, item.modified))
    except OSError:
        os.close(fd)
        unlink_quietly(staged)
        raise
    return fd, staged


def _place_staged(folder: str, item, fd: int, staged, installed, directories: set):
    """Put the durable staged file (``fd``; ``staged``: its name, or None) at ``item``'s
    path, as :func:`install` does; its :class:`LocalStat`. ``directories`` is told the
    directory written to, ``installed`` (or None) the file just before it appears."""
    abspath = resolve(folder, item.path)
    st = os.fstat(fd)
    if installed is not None:
        installed.expect(abspath, st)
    try:
        if staged is None:
            result = _link_new(folder, fd, abspath, st, directories)
        else:
            result = _rename_if(folder, staged, abspath, item.expected, directories)
    except BaseException:
        if installed is not None:
            installed.forget(abspath)
        raise
    directories.add(os.path.dirname(abspath))
    return result


def unlink_quietly(name):
    if name is None:
        return
    try:
        os.unlink(name)
    except FileNotFoundError:
        pass


def missing_ancestors(folder: str, path: str) -> list:
    """The ancestors of canonical ``path`` that are absent from ``folder``, nearest first."""
    missing = []
    parent = posixpath.dirname(path)
    while parent and not os.path.isdir(os.path.join(folder, parent)):
        missing.append(parent)
        parent = posixpath.dirname(parent)
    return missing


def make_directory(folder: str, abspath: str) -> LocalStat:
    """Create a directory (and its parents); an existing directory is fine."""
    os.makedirs(abspath, exist_ok=True)
    st = lstat(abspath)
    if st is None or not st.is_directory:
        raise LocalChanged(abspath)
    return st


def remove(abspath: str, expected) -> bool:
    """Delete a file that is still ``expected``, or an empty directory. False when a
    directory still has something in it (it is kept)."""
    current = lstat(abspath)
    if current is None:
        return True
    if current.is_directory:
        try:
            os.rmdir(abspath)
        except OSError as e:
            if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
                return False
            raise
        return True
    if current != expected:
        raise LocalChanged(abspath)
    os.unlink(abspath)
    return True


def rename(folder: str, source_abs: str, destination_abs: str, expected) -> LocalStat:
    """Rename ``source`` (still ``expected``) to a ``destination`` that does not exist."""
    if not _matches(source_abs, expected) or os.path.lexists(destination_abs):
        raise LocalChanged(source_abs)
    make_parents(folder, destination_abs)
    os.rename(source_abs, destination_abs)
    return lstat(destination_abs)
