"""Blocking disk helpers shared by the server store and the client folder.

Call them from a thread (a service's pool, :mod:`quantum_sync.threads`), never on the reactor.
"""

import ctypes
import ctypes.util
import errno
import hashlib
import os
import stat
import threading
from concurrent.futures import ThreadPoolExecutor

#: Read size for hashing: large enough to keep SHA-256 busy, small enough for memory.
CHUNK = 1024 * 1024


class Budget:
    """How much of something may be held at once: bytes of file contents in memory, open
    descriptors of staged files (thread-safe)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.held = 0
        self._lock = threading.Lock()

    def take(self, size: int) -> bool:
        """Count ``size`` more as held, if they fit."""
        with self._lock:
            if self.held + size > self.limit:
                return False
            self.held += size
            return True

    def give(self, size: int) -> None:
        with self._lock:
            self.held -= size


def open_regular(path: str, follow_symlinks: bool = True) -> tuple:
    """``(descriptor, fstat)`` of the regular file at ``path`` opened for reading; OSError(EINVAL)
    for anything else. Opened non-blocking, then checked with ``fstat``: opening a FIFO
    plainly waits for a writer, and a device may do anything."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow_symlinks else os.O_NOFOLLOW)
    fd = os.open(path, flags)
    try:
        st = os.fstat(fd)
    except BaseException:
        os.close(fd)
        raise
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file", path)
    return fd, st


def sha256_file(path: str, follow_symlinks: bool = True) -> str:
    """SHA-256 hex of the regular file at ``path`` (see :func:`open_regular`)."""
    digest = hashlib.sha256()
    with open(open_regular(path, follow_symlinks)[0], "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def fsync_directory(path: str) -> None:
    """Make a rename or unlink inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class NamelessFiles:
    """New files without a name (Linux's ``O_TMPFILE``) in a directory, each given its
    name in one step once written and fsynced (``linkat`` through ``/proc/self/fd``):
    nothing half-written is ever visible, nothing is left behind by a crash, and the
    name appears with a single "created" event (no rename for watchers to pair).
    :meth:`open` answers None where the system or the file system cannot."""

    def __init__(self):
        self.available = hasattr(os, "O_TMPFILE") and os.path.isdir("/proc/self/fd")
        self._fd_dir = None  # (pid, /proc/self/fd opened by it)

    def open(self, directory: str, mode: int):
        """A descriptor open for writing on a new nameless file in ``directory``, or None."""
        if not self.available:
            return None
        try:
            return os.open(directory, os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, mode)
        except OSError as error:
            if error.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                raise
            self.available = False  # this file system cannot: named temps from now on
            return None

    def link(self, fd: int, name: str) -> None:
        """Give the nameless file ``fd`` the name ``name`` (FileExistsError if taken)."""
        if self._fd_dir is None or self._fd_dir[0] != os.getpid():  # "self" of this process
            self._fd_dir = (os.getpid(), os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
        os.link(str(fd), name, src_dir_fd=self._fd_dir[1], follow_symlinks=True)


class OwnWrites:
    """The files this process just put in place, each recognised once by the watcher's
    thread (:meth:`claim`) so that its event is dropped there: the process's own write
    is not a change to act on. Thread-safe."""

    #: Installs never claimed (no watcher, or its events lost) are forgotten beyond this.
    LIMIT = 100_000

    def __init__(self):
        self._expected = {}  # absolute name -> (st_ino, st_size, st_mtime_ns)
        self._lock = threading.Lock()

    def expect(self, absolute: str, st) -> None:
        """``absolute`` is about to become the file whose stat is ``st``."""
        with self._lock:
            if len(self._expected) >= self.LIMIT:
                self._expected.clear()
            self._expected[absolute] = (st.st_ino, st.st_size, st.st_mtime_ns)

    def forget(self, absolute: str) -> None:
        """The install of ``absolute`` did not happen."""
        with self._lock:
            self._expected.pop(absolute, None)

    def claim(self, absolute: str) -> bool:
        """True (once) when ``absolute`` is still the file expected there."""
        with self._lock:
            key = self._expected.pop(absolute, None)
        if key is None:
            return False
        try:
            st = os.lstat(absolute)
        except OSError:
            return False
        return stat.S_ISREG(st.st_mode) and (st.st_ino, st.st_size, st.st_mtime_ns) == key


def fsync_all(fds, one_directory: bool = False) -> list:
    """Make many just-written files durable: per descriptor None, or the OSError that
    stopped it. ``one_directory``: the caller created every file in one directory, so
    they share a file system and only the first descriptor's is looked up (a system call
    a file saved); otherwise each descriptor's device is checked.

    :data:`SYNCFS_FILES` files or more on one file system that :func:`syncfs_trusted`
    are made durable by one ``syncfs``: a fixed cost (about 4 ms on an idle ext4) where
    fsyncing each costs more the more there are (12 ms for 64 files of 4 KiB, 40 ms for
    256; three times that under load). A failure of it counts for every file.

    Otherwise writeback of every file is started first (``sync_file_range``, where Linux
    has it), then each is fsynced: the first fsync's journal commit then covers the blocks
    of all of them, and the others mostly find their work done. A file fsynced right after
    it is written, one after the other, costs a journal commit each (measured: about half
    the time for 256 files of 4 KiB, and far less when other writers share the disk)."""
    if len(fds) >= SYNCFS_FILES and _one_trusted_file_system(fds[:1] if one_directory else fds):
        return [_syncfs(fds[0])] * len(fds)
    if _START_WRITEBACK is not None:
        for fd in fds:
            _START_WRITEBACK(fd, 0, 0, SYNC_FILE_RANGE_WRITE)  # a failure shows in the fsync
    if len(fds) < PARALLEL_FSYNCS:
        return [_fsync(fd) for fd in fds]
    return list(_fsync_threads().map(_fsync, fds))


#: With this many files or more, :func:`fsync_all` fsyncs them from this many threads at
#: once (the file system then waits for their writes together).
PARALLEL_FSYNCS = 8
#: With this many files or more on one trusted file system, :func:`fsync_all` uses
#: ``syncfs`` (below this, fsyncing them is as quick: measured on ext4, 32 files alike).
SYNCFS_FILES = 32
_FSYNC_THREADS = []
_FSYNC_THREADS_LOCK = threading.Lock()

#: ``statfs`` magic numbers of the local file systems whose ``syncfs`` writes every dirty
#: file and commits the journal (ext2/3/4, XFS, Btrfs, F2FS). A network or FUSE file
#: system may answer ``syncfs`` without writing anything: there each file is fsynced.
SYNCFS_FILE_SYSTEMS = frozenset({0xEF53, 0x58465342, 0x9123683E, 0xF2F52010})
#: Linux reports writeback errors through ``syncfs`` from 5.8 on; before, only fsync does.
SYNCFS_KERNEL = (5, 8)


def _libc_function(name: str, argtypes):
    try:
        function = getattr(ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True), name)
    except (OSError, AttributeError):
        return None
    function.argtypes = argtypes
    function.restype = ctypes.c_int
    return function


_START_WRITEBACK = _libc_function("sync_file_range", (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint))
SYNC_FILE_RANGE_WRITE = 2
_SYNCFS = _libc_function("syncfs", (ctypes.c_int,))
_FSTATFS = _libc_function("fstatfs", (ctypes.c_int, ctypes.c_void_p))
_TRUSTED_DEVICES = {}  # st_dev -> bool


def kernel_release() -> tuple:
    """The running kernel's ``(major, minor)`` release; ``(0, 0)`` when it cannot be read."""
    try:
        return tuple(int(part) for part in os.uname().release.split("-")[0].split(".")[:2])
    except (AttributeError, ValueError):
        return (0, 0)


_SYNCFS_REPORTS_ERRORS = kernel_release() >= SYNCFS_KERNEL


def syncfs_trusted(fd: int) -> bool:
    """True when ``syncfs`` makes the files of ``fd``'s file system durable and reports
    their writeback errors (see :data:`SYNCFS_FILE_SYSTEMS`, :data:`SYNCFS_KERNEL`);
    remembered per device."""
    return _trusted_device(os.fstat(fd).st_dev, fd)


def _trusted_device(device: int, fd: int) -> bool:
    """:func:`syncfs_trusted` for ``fd``, whose device is ``device``."""
    trusted = _TRUSTED_DEVICES.get(device)
    if trusted is None:
        trusted = False
        if _SYNCFS is not None and _SYNCFS_REPORTS_ERRORS:
            trusted = file_system_magic(fd) in SYNCFS_FILE_SYSTEMS
        _TRUSTED_DEVICES[device] = trusted
    return trusted


def file_system_magic(fd: int) -> int | None:
    """The ``statfs`` type number of ``fd``'s file system (None where it cannot be read)."""
    if _FSTATFS is None:
        return None
    buffer = ctypes.create_string_buffer(256)  # struct statfs, f_type first
    if _FSTATFS(fd, buffer) != 0:
        return None
    return ctypes.c_long.from_buffer(buffer).value & 0xFFFFFFFF


def _one_trusted_file_system(fds) -> bool:
    try:
        devices = {os.fstat(fd).st_dev for fd in fds}
        return len(devices) == 1 and _trusted_device(devices.pop(), fds[0])
    except OSError:
        return False  # a bad descriptor: each fsync reports its own


def _syncfs(fd: int):
    if _SYNCFS(fd) == 0:
        return None
    code = ctypes.get_errno()
    return OSError(code, f"syncfs: {os.strerror(code)}")


def _fsync_threads():
    with _FSYNC_THREADS_LOCK:
        if not _FSYNC_THREADS:
            _FSYNC_THREADS.append(ThreadPoolExecutor(PARALLEL_FSYNCS, thread_name_prefix="fsync"))
        return _FSYNC_THREADS[0]


def _fsync(fd: int):
    try:
        os.fsync(fd)
    except OSError as error:
        return error
    return None


class Writeback:
    """Starts writeback of a growing file every :data:`EVERY` bytes from a thread of its
    own (``datasync``: ``os.fdatasync``), so that the final fsync of a large file has
    little left to do and the writer never waits for the disk meanwhile.

    Its first error is kept (:attr:`error`, and what :meth:`stop` returns): Linux
    reports a writeback error once per open file, so after this sync has seen it the
    final fsync succeeds, and the file must be treated as lost all the same."""

    EVERY = 8 * 1024 * 1024

    def __init__(self, fd: int, datasync=os.fdatasync):
        self._fd = fd
        self._datasync = datasync
        self._unflushed = 0
        self._wake = threading.Event()
        self._asked = False  # a sync is asked for and not yet done
        self._stopping = False
        self._thread = None
        #: The OSError of a background sync, if one failed (set by its thread).
        self.error = None

    def wrote(self, size: int) -> None:
        """``size`` more bytes were written (called by the one writing thread)."""
        self._unflushed += size
        if self._unflushed < self.EVERY:
            return
        self._unflushed = 0
        self._asked = True
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="writeback", daemon=True)
            self._thread.start()
        self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._asked:  # a sync asked for is done even when stopping: its error counts
                self._asked = False
                try:
                    self._datasync(self._fd)
                except OSError as error:
                    self.error = self.error or error
            if self._stopping:
                return

    def stop(self):
        """Wait for the writeback thread (before the descriptor may be closed); the
        OSError of a background sync that failed, or None."""
        if self._thread is not None:
            self._stopping = True
            self._wake.set()
            self._thread.join()
        return self.error
