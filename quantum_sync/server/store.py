"""Files on disk under the server root: safe writes, hashing, scans.

Everything here is blocking file-system work meant to run in a thread
(the server's pool, :mod:`quantum_sync.threads`); upload bodies arrive in
:mod:`quantum_sync.server.spools`.
:class:`FileOperations` decides *what* to do, this module only knows *how* to do it
without ever leaving a partial file visible: temp file in ``<root>/.quantum-sync/tmp/``
(nameless for a small body kept in memory) → hash while writing → fsync(file) → rename
(or link) → fsync(directory).
"""

import errno
import hashlib
import itertools
import os
import shutil
import stat

import attrs

from quantum_sync import paths, resolve
from quantum_sync.diskio import (CHUNK, Budget, NamelessFiles, OwnWrites, fsync_all, fsync_directory, open_regular,
                                 sha256_file)
from quantum_sync.errors import SyncError

TEMP_PREFIX = "upload-"
#: Named temp files :meth:`Store.stage_many` holds open at once at most.
STAGE_TURN = 128
#: Nameless temp files (each an open descriptor until its install) the staged uploads may
#: hold together at most, and at most this share of the process's descriptor limit; a
#: batch past it is staged in named files, closed once durable.
HELD_TEMPS, HELD_TEMPS_SHARE = 1024, 4


def _held_temps_limit() -> int:
    try:
        import resource
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):
        return 0
    return HELD_TEMPS if soft == resource.RLIM_INFINITY else min(HELD_TEMPS, soft // HELD_TEMPS_SHARE)


class NamelessTemp:
    """A staged nameless file (:meth:`Store.stage_many`): its descriptor, open until
    :meth:`Store.discard` closes it, once; a second discard does nothing, so whoever
    releases it last cannot close another file's descriptor that took the number."""

    __slots__ = ("fd",)

    def __init__(self, fd: int):
        self.fd = fd

    def __repr__(self):
        return f"NamelessTemp({self.fd})"


@attrs.frozen
class DiskEntry:
    """What ``lstat`` says about one path under the root."""

    path: str
    is_directory: bool
    size: int
    mtime_ns: int
    #: inode and ctime (0: unknown), compared with an index row's, not between entries
    ino: int = attrs.field(default=0, eq=False)
    ctime_ns: int = attrs.field(default=0, eq=False)


def storage_error(error: OSError) -> SyncError:
    """A contract error for a failed write: 507 on a full disk, else 500."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return SyncError("INSUFFICIENT_STORAGE", "not enough space on the server")
    return SyncError("INTERNAL_ERROR", f"storage error: {error.strerror}")



def _staged(fd: int, name, st, error):
    """A written temp file's :meth:`Store.stage_many` outcome once fsynced (``error``:
    what its fsync raised, or None): ``(temp, stat)``, or the error with the file gone.
    Only a nameless one's descriptor stays open."""
    if name is not None or error is not None:
        os.close(fd)
    if error is not None:
        if name is not None:
            os.unlink(name)
        return error
    return (NamelessTemp(fd) if name is None else name, st)


def _is_nameless(outcome) -> bool:
    return not isinstance(outcome, OSError) and isinstance(outcome[0], NamelessTemp)

class Store:
    """The root directory and its temp area; every method is blocking (use a thread)."""

    def __init__(self, root: str, node_id: str | None = None):
        self.root = os.path.realpath(root)
        self.state_dir = os.path.join(self.root, paths.STATE_DIR_NAME)
        # a cluster node's temps in a folder of its own: the others' stay when it starts
        self.temp_dir = os.path.join(self.state_dir, *(("nodes", node_id) if node_id else ()), "tmp")
        self._temp_names = itertools.count()
        #: Files being installed, until the root watcher recognises the event of their
        #: link or rename (see :meth:`own_write`).
        self.installed = OwnWrites()
        self._nameless = NamelessFiles()
        #: the nameless temps staged files hold (see :meth:`stage_many`)
        self._held = Budget(_held_temps_limit())

    def prepare(self) -> None:
        """Create the root (when its parent exists) and the temp area; remove temps left
        by a crash. Raises OSError/ValueError with a reason for an unusable root."""
        if not os.path.isdir(self.root):
            if os.path.lexists(self.root):
                raise ValueError(f"{self.root} exists and is not a directory")
            if not os.path.isdir(os.path.dirname(self.root)):
                raise ValueError(f"{self.root}: its parent directory does not exist")
            os.mkdir(self.root)
        os.makedirs(self.temp_dir, exist_ok=True)
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise ValueError(f"{self.root} is not writable")
        for name in os.listdir(self.temp_dir):
            path = os.path.join(self.temp_dir, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.unlink(path)

    def resolve(self, path: str) -> str:
        """The on-disk name of ``path`` (INVALID_PATH when it cannot live under the root),
        by the one resolver's rules (:mod:`quantum_sync.resolve`)."""
        return self.walk(path)[0]

    def look(self, path: str) -> tuple:
        """``(on-disk name, its lstat or None)`` of ``path``, checked as :meth:`resolve`."""
        absolute, st, _ = self.walk(path)
        return absolute, st or None

    def walk(self, path: str) -> tuple:
        """``(on-disk name, lstat, parents exist)`` of ``path``, as :func:`resolve.walk`
        gives them (once for both a version's link and :meth:`install_staged`)."""
        return resolve.walk(self.root, path)

    def entry(self, path: str) -> DiskEntry | None:
        """The on-disk state of canonical ``path`` (symlinks and specials count as absent)."""
        absolute, st, _ = self.walk(path)
        if st is False:
            try:
                st = os.lstat(absolute)
            except (FileNotFoundError, NotADirectoryError):
                return None
        return None if st is None else _entry(path, st)

    def scan(self, top: str = "") -> list:
        """Every addressable file and directory at and under ``top`` (``""``: the root)."""
        found = []
        if top:
            first = self.entry(top)
            if first is None:
                return found
            found.append(first)
            if not first.is_directory:
                return found
        stack = [(self.resolve(top) if top else self.root, top)]
        while stack:
            directory, prefix = stack.pop()
            for name, entry in self._entries_in(directory, prefix):
                found.append(entry)
                if entry.is_directory:
                    stack.append((name, entry.path))
        return found

    def _entries_in(self, directory: str, prefix: str) -> list:
        """``(on-disk name, DiskEntry)`` of each addressable file and directory in
        ``directory`` (the one of path ``prefix``); none when it cannot be listed."""
        try:
            items = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            return []
        entries = []
        for item in items:
            rel = _child_path(prefix, item.name) or paths.relative_from_disk(self.root, item.path)
            if rel is None:
                continue
            try:
                entry = _entry(rel, item.stat(follow_symlinks=False))
            except FileNotFoundError:
                continue
            if entry is not None:
                entries.append((item.path, entry))
        return entries

    def holds_a_file(self, top: str) -> bool:
        """Whether any regular file lies below the directory ``top`` (stops at the first)."""
        stack = [self.resolve(top)]
        while stack:
            try:
                items = list(os.scandir(stack.pop()))
            except (FileNotFoundError, NotADirectoryError, PermissionError):
                continue
            for item in items:
                try:
                    if item.is_file(follow_symlinks=False):
                        return True
                    if item.is_dir(follow_symlinks=False):
                        stack.append(item.path)
                except OSError:
                    continue
        return False

    def hash(self, path: str) -> str:
        return sha256_file(self.resolve(path), follow_symlinks=False)

    def hash_if_unchanged(self, entry: DiskEntry) -> str | None:
        """The SHA-256 of the file ``entry`` describes, or None when the file is not that
        one any more: its size or mtime differ before or after hashing, or its name
        leads to another file afterwards (it changed while being hashed)."""
        absolute = self.resolve(entry.path)
        fd, before = open_regular(absolute, follow_symlinks=False)
        with open(fd, "rb") as f:
            if (before.st_size, before.st_mtime_ns) != (entry.size, entry.mtime_ns):
                return None
            digest = hashlib.sha256()
            while chunk := f.read(CHUNK):
                digest.update(chunk)
            after = os.fstat(fd)
        now = os.lstat(absolute)
        if _stat_key(after) != _stat_key(before) or _stat_key(now) != _stat_key(before):
            return None
        return digest.hexdigest()

    def make_parents(self, path: str) -> list:
        """Create the missing parent directories of ``path``; returns those created.
        Raises CONFLICT when an ancestor is a file."""
        created = []
        for ancestor in paths.ancestors(path):
            absolute = self.resolve(ancestor)
            if os.path.isdir(absolute):
                continue
            if os.path.lexists(absolute):
                raise SyncError("CONFLICT", f"{ancestor} is a file, not a directory")
            try:
                os.mkdir(absolute)
            except FileExistsError:
                if not os.path.isdir(absolute):
                    raise SyncError("CONFLICT", f"{ancestor} is a file, not a directory") from None
                continue
            fsync_directory(os.path.dirname(absolute))
            created.append(ancestor)
        return created

    def install(self, temp_path: str, path: str, sync_directory: bool = True) -> list:
        """Rename a finished (fsynced) temp file onto ``path`` and fsync the directory
        (unless ``sync_directory`` is False: then the caller must, see
        :meth:`directory_of`, before it reports the file stored).
        Returns the parent directories it had to create."""
        created, target = self.install_staged(temp_path, self.readied(temp_path), path)
        if sync_directory:
            fsync_directory(os.path.dirname(target))
        return created

    def stage_many(self, bodies, named: bool = False) -> list:
        """Write each of ``bodies`` to a new nameless temp file (``O_TMPFILE`` in the temp
        directory), mode 0644, all written first and then made durable together
        (:func:`~quantum_sync.diskio.fsync_all`); per body ``(temp, stat)`` for
        :meth:`install_staged`, ``temp`` being a :class:`NamelessTemp` or the name of a
        named file (release it with :meth:`discard`), or the OSError that stopped it.

        Named files instead where the file system has no ``O_TMPFILE``, when ``named``,
        or when the descriptors held by staged files would pass :data:`HELD_TEMPS`: a
        named one is closed once durable, and they are written :data:`STAGE_TURN` at a
        time, so a large batch never holds more open."""
        if not named and not (self._nameless.available and self._held.take(len(bodies))):
            named = True
        if named:
            return [outcome for start in range(0, len(bodies), STAGE_TURN)
                    for outcome in self._stage(bodies[start:start + STAGE_TURN], named=True)]
        outcomes = self._stage(bodies)
        # held: the nameless ones; the rest (failed, or named after all) given back
        self._held.give(len(bodies) - sum(map(_is_nameless, outcomes)))
        return outcomes

    def _stage(self, bodies, named: bool = False) -> list:
        """:meth:`stage_many`'s outcomes for ``bodies``: all written, then made durable
        together."""
        written, outcomes = self._write_temps(bodies, named)
        synced = iter(fsync_all([fd for fd, _, _ in written], one_directory=True))  # all in temp_dir
        written = iter(written)
        for position, outcome in enumerate(outcomes):
            if outcome is None:
                outcomes[position] = _staged(*next(written), next(synced))
        return outcomes

    def _write_temps(self, bodies, named: bool) -> tuple:
        """``(written, outcomes)``: :meth:`_write_temp`'s result per body written, and per
        body None (written) or the OSError that stopped it."""
        written, outcomes = [], []
        for data in bodies:
            try:
                written.append(self._write_temp(data, named))
                outcomes.append(None)
            except OSError as error:
                outcomes.append(error)
        return written, outcomes

    def _write_temp(self, data: bytes, named: bool = False) -> tuple:
        """``(descriptor, name or None, stat)`` of a new temp file holding ``data``, mode
        0644, not yet fsynced (nameless where the file system can, unless ``named``)."""
        fd, name = None if named else self._nameless.open(self.temp_dir, 0o644), None
        if fd is None:
            name = self._temp_name()
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.writev(fd, [view]):]
            st = os.fstat(fd)
            if stat.S_IMODE(st.st_mode) != 0o644:  # a umask took bits away
                os.fchmod(fd, 0o644)
        except BaseException:
            os.close(fd)
            if name is not None:
                os.unlink(name)
            raise
        return fd, name, st

    @property
    def held_temps(self) -> int:
        """Descriptors held by staged nameless files now (each until its release)."""
        return self._held.held

    def discard(self, temp) -> None:
        """Release a temp :meth:`stage_many` returned (after its install, or instead of it);
        releasing one again does nothing."""
        if isinstance(temp, NamelessTemp):
            fd, temp.fd = temp.fd, None
            if fd is not None:
                os.close(fd)
                self._held.give(1)
            return
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass

    def _temp_name(self) -> str:
        return os.path.join(self.temp_dir, f"{TEMP_PREFIX}{os.getpid()}-{next(self._temp_names)}")

    def readied(self, temp_path: str):
        """Make a finished spool's temp file mode 0644; its stat for :meth:`install_staged`."""
        os.chmod(temp_path, 0o644)
        return os.lstat(temp_path)

    def install_staged(self, temp, temp_stat, path: str, walked=None) -> tuple:
        """Put a finished temp file (``temp_stat``: its stat) at ``path``, without the
        directory fsync; returns ``(created parent directories, on-disk name)``. A
        nameless file (see :meth:`stage_many`) is linked in place when the name is free, else
        named in the temp directory first; a named one is renamed onto ``path``. Either
        way the file appears whole, and the root watcher recognises it as the server's
        own (:meth:`own_write`). ``walked``: :meth:`walk` of ``path``, when just taken."""
        target, st, parents_exist = walked or self.walk(path)
        created = []
        if not parents_exist:
            created = self.make_parents(path)
            target, st, _ = self.walk(path)
        if st and stat.S_ISDIR(st.st_mode):
            raise SyncError("CONFLICT", f"{path} is a directory")
        self.installed.expect(target, temp_stat)
        try:
            if isinstance(temp, NamelessTemp):
                if st is None:
                    try:
                        self._nameless.link(temp.fd, target)
                        return created, target
                    except FileExistsError:
                        pass  # someone else's file appeared meanwhile: replace it, as below
                name = self._temp_name()
                self._nameless.link(temp.fd, name)
                try:
                    os.replace(name, target)
                except BaseException:
                    os.unlink(name)
                    raise
            else:
                os.replace(temp, target)
        except BaseException:
            self.installed.forget(target)
            raise
        return created, target

    def own_write(self, absolute: str) -> bool:
        """True when ``absolute`` is still the file this store just installed there
        (thread-safe, for the root watcher's thread); each install is recognised once."""
        return self.installed.claim(absolute)

    def directory_of(self, path: str) -> str:
        """The on-disk directory that holds ``path`` (the one to fsync after a rename)."""
        return os.path.dirname(self.resolve(path))

    def make_directory(self, path: str) -> list:
        """Create directory ``path`` and its parents; returns the ones created."""
        created = self.make_parents(path)
        target = self.resolve(path)
        if os.path.lexists(target) and not os.path.isdir(target):
            raise SyncError("CONFLICT", f"{path} exists and is a file")
        if not os.path.isdir(target):
            os.mkdir(target)
            fsync_directory(os.path.dirname(target))
            created.append(path)
        return created

    def remove(self, path: str) -> None:
        target = self.resolve(path)
        if os.path.isdir(target) and not os.path.islink(target):
            shutil.rmtree(target)
        elif os.path.lexists(target):  # else moved to the versions area already
            os.unlink(target)
        fsync_directory(os.path.dirname(target))

    def move(self, source: str, destination: str) -> list:
        """Rename ``source`` to ``destination`` (which must not exist); returns the
        parents created for it."""
        src = self.resolve(source)
        created = self.make_parents(destination)
        dst = self.resolve(destination)
        if os.path.lexists(dst):
            raise SyncError("CONFLICT", f"{destination} already exists")
        os.rename(src, dst)
        fsync_directory(os.path.dirname(dst))
        if os.path.dirname(src) != os.path.dirname(dst):
            fsync_directory(os.path.dirname(src))
        return created


def _child_path(prefix: str, name: str) -> str | None:
    """The canonical path of entry ``name`` of directory ``prefix`` (``""``: the root)
    when it is plainly valid (printable ASCII, as most names are), else None: then
    :func:`paths.relative_from_disk` decides (a faster equivalent for scans)."""
    if not (name.isascii() and name.isprintable()) or "\\" in name or name in (".", "..") \
            or len(name) > paths.MAX_SEGMENT_BYTES:
        return None
    if not prefix:
        return None if name == paths.STATE_DIR_NAME else name
    rel = f"{prefix}/{name}"
    return rel if len(rel) <= paths.MAX_PATH_BYTES else None


def _stat_key(st) -> tuple:
    """What says a file is still the same version: inode, size, mtime and ctime."""
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _entry(path: str, st) -> DiskEntry | None:
    if stat.S_ISDIR(st.st_mode):
        return DiskEntry(path, True, 0, st.st_mtime_ns)
    if stat.S_ISREG(st.st_mode):
        return DiskEntry(path, False, st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)
    return None
