"""Files on disk under the server root: safe writes, hashing, scans.

Everything here is blocking file-system work meant to run in a thread
(``deferToThread``); :class:`FileOperations` decides *what* to do, this module only
knows *how* to do it without ever leaving a partial file visible:
temp file in ``<root>/.quantum-sync/tmp/`` → hash while writing → fsync(file) →
rename → fsync(directory).
"""

import errno
import hashlib
import os
import shutil
import stat
import tempfile

import attrs

from quantum_sync import paths
from quantum_sync.errors import SyncError

CHUNK = 1024 * 1024
TEMP_PREFIX = "upload-"


@attrs.frozen
class DiskEntry:
    """What ``lstat`` says about one path under the root."""

    path: str
    is_directory: bool
    size: int
    mtime_ns: int


def hash_file(path: str) -> str:
    """SHA-256 hex of the file at ``path`` (blocking)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def fsync_directory(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def storage_error(error: OSError) -> SyncError:
    """A contract error for a failed write: 507 on a full disk, else 500."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return SyncError("INSUFFICIENT_STORAGE", "not enough space on the server")
    return SyncError("INTERNAL_ERROR", f"storage error: {error.strerror}")


class UploadSpool:
    """A temp file inside the state directory that hashes what is written to it.

    Used as the request body of uploads (see :mod:`quantum_sync.server.site`) so
    the body is never held in memory and its SHA-256 is known when it ends.
    ``read()`` answers ``b""`` so Twisted's form parsing never loads it.
    """

    def __init__(self, temp_dir: str):
        fd, self.path = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=temp_dir)
        self._file = os.fdopen(fd, "wb", buffering=0)
        self._digest = hashlib.sha256()
        self.size = 0
        self.error = None

    def write(self, data: bytes) -> None:
        if self.error is not None or self._file is None:
            return
        self.size += len(data)
        self._digest.update(data)
        try:
            self._file.write(data)
        except OSError as e:
            self.error = storage_error(e)

    @property
    def sha256(self) -> str:
        return self._digest.hexdigest()

    def read(self, *args) -> bytes:
        return b""

    def seek(self, *args) -> int:
        return 0

    def tell(self) -> int:
        return self.size

    def finish(self) -> None:
        """fsync and close the temp file (blocking); the spool keeps its path."""
        if self._file is not None:
            try:
                os.fsync(self._file.fileno())
            except OSError as e:
                self.error = self.error or storage_error(e)
            self._file.close()
            self._file = None

    def close(self) -> None:
        """Close and forget the temp file (abandoned or already renamed away)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


class Store:
    """The root directory and its temp area; every method is blocking (use a thread)."""

    def __init__(self, root: str):
        self.root = os.path.realpath(root)
        self.state_dir = os.path.join(self.root, paths.STATE_DIR_NAME)
        self.temp_dir = os.path.join(self.state_dir, "tmp")

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
        return paths.resolve(self.root, path)

    def entry(self, path: str) -> DiskEntry | None:
        """The on-disk state of canonical ``path`` (symlinks and specials count as absent)."""
        try:
            st = os.lstat(self.resolve(path))
        except (FileNotFoundError, NotADirectoryError):
            return None
        return _entry(path, st)

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
        stack = [self.resolve(top) if top else self.root]
        while stack:
            directory = stack.pop()
            try:
                items = list(os.scandir(directory))
            except (FileNotFoundError, NotADirectoryError, PermissionError):
                continue
            for item in items:
                rel = paths.relative_from_disk(self.root, item.path)
                if rel is None:
                    continue
                try:
                    entry = _entry(rel, item.stat(follow_symlinks=False))
                except FileNotFoundError:
                    continue
                if entry is None:
                    continue
                found.append(entry)
                if entry.is_directory:
                    stack.append(item.path)
        return found

    def hash(self, path: str) -> str:
        return hash_file(self.resolve(path))

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

    def install(self, temp_path: str, path: str) -> list:
        """Rename a finished (fsynced) temp file onto ``path`` and fsync the directory.
        Returns the parent directories it had to create."""
        created = self.make_parents(path)
        target = self.resolve(path)
        if os.path.isdir(target) and not os.path.islink(target):
            raise SyncError("CONFLICT", f"{path} is a directory")
        os.chmod(temp_path, 0o644)
        os.replace(temp_path, target)
        fsync_directory(os.path.dirname(target))
        return created

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
        else:
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

    def disk_usage(self):
        return shutil.disk_usage(self.root)


def _entry(path: str, st) -> DiskEntry | None:
    if stat.S_ISDIR(st.st_mode):
        return DiskEntry(path, True, 0, st.st_mtime_ns)
    if stat.S_ISREG(st.st_mode):
        return DiskEntry(path, False, st.st_size, st.st_mtime_ns)
    return None
