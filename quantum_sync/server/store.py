"""Files on disk under the server root: safe writes, hashing, scans.

Everything here is blocking file-system work meant to run in a thread
(the server's pool, :mod:`quantum_sync.threads`), except the spools' network side and :class:`RecentBodies`;
:class:`FileOperations` decides *what* to do, this module only knows *how* to do it
without ever leaving a partial file visible: temp file in ``<root>/.quantum-sync/tmp/``
(nameless for a small body kept in memory) → hash while writing → fsync(file) → rename
(or link) → fsync(directory).
"""

import collections
import errno
import hashlib
import itertools
import os
import queue
import shutil
import stat
import tempfile
import threading

import attrs

from quantum_sync import paths
from quantum_sync.compression import Inflater
from quantum_sync.delta import DELTA_MIN
from quantum_sync.diskio import (CHUNK, Budget, NamelessFiles, OwnWrites, Writeback, fsync_all, fsync_directory,
                                 open_regular, sha256_file)
from quantum_sync.errors import SyncError

#: Longest absolute name the OS accepts (Linux PATH_MAX, terminating NUL included).
PATH_MAX = os.pathconf("/", "PC_PATH_MAX") if hasattr(os, "pathconf") else 4096
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


class _MemoryBudget:
    """Bytes of upload bodies waiting in the pipelines of all spools together, and the
    spools that were told to pause until there is room again."""

    def __init__(self, limit: int):
        self.limit = limit
        self.lock = threading.Lock()
        self.total = 0
        self.paused = set()

    def ready(self) -> list:
        """The paused spools that may go on now (call with the lock held)."""
        if self.total > self.limit // 2:
            return []
        ready = [spool for spool in self.paused if spool._in_flight <= spool.LOW_WATER]
        for spool in ready:
            spool._paused = False
            self.paused.discard(spool)
        return ready


#: All uploads together keep at most about this many body bytes in memory.
UPLOAD_MEMORY = _MemoryBudget(64 * 1024 * 1024)


class _Body:
    """What Twisted sees of a spooled request body (``read()`` answers ``b""``, so its
    form parsing never loads the body), and the digest of everything written."""

    size = 0
    compressed = False

    @property
    def sha256(self) -> str:
        """The hex digest of everything written; only meaningful after ``finish()``."""
        return self._digest.hexdigest()

    def read(self, *args) -> bytes:
        return b""

    def seek(self, *args) -> int:
        return 0

    def tell(self) -> int:
        return self.size


class UploadSpool(_Body):
    """A temp file inside the state directory that hashes what is written to it.

    Used as the request body of uploads (see :mod:`quantum_sync.server.site`), so a
    body is never held in memory and its SHA-256 is known when it ends. :meth:`write`
    never blocks: chunks are gathered into blocks of :data:`BLOCK` bytes that a hashing
    thread and a writing thread process in a pipeline.

    Memory is bounded per upload and for all of them together: when this spool holds
    more than :data:`HIGH_WATER` bytes, or the pipelines of all spools more than
    :data:`UPLOAD_MEMORY`'s limit, ``write`` answers True (the caller should stop
    reading from the network) and ``on_drained()`` is called, from a writing thread,
    once there is room again. Besides that, each spool gathers at most one
    :data:`BLOCK` before handing it on.
    """

    BLOCK = 1024 * 1024
    HIGH_WATER = 4 * BLOCK
    LOW_WATER = BLOCK

    def __init__(self, temp_dir: str, on_drained=None, budget: _MemoryBudget = UPLOAD_MEMORY,
                 datasync=os.fdatasync, blocks=None, inflate_limit=False):
        self._fd, self.path = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=temp_dir)
        #: A zstd body (``Content-Encoding: zstd``) is inflated by the hashing thread, which
        #: then also writes it (``inflate_limit``: the most bytes it may inflate to, None
        #: for no limit; False: not compressed). ``size`` is the inflated size once finished.
        self.compressed = inflate_limit is not False
        self._inflater = Inflater(self._inflated, inflate_limit or None) if self.compressed else None
        #: A :class:`~quantum_sync.blocklists.ListWriter` given the body as it is hashed
        #: (in a pipeline stage of its own), committed under the body's hash at the end.
        self.blocks = blocks
        self._to_block = None
        self._datasync = datasync  # the writeback's sync (a seam for injected faults)
        self._digest = hashlib.sha256()
        self._pending = []
        self._pending_size = 0
        self._in_flight = 0  # submitted to the pipeline, counted in the budget
        self._paused = False
        self._budget = budget
        self._on_drained = on_drained
        self._to_hash = None
        self._to_write = None
        self._threads = []
        self._aborted = False
        self._finished = False
        self._written = 0  # bytes in the file (the writing thread's count)
        self.size = 0
        self.error = None
        #: The :class:`~quantum_sync.server.relay.Relay` following this upload, if any:
        #: told of every block written and of the end.
        self.relay = None

    # -- the network side (reactor thread) ------------------------------------------

    def write(self, data: bytes) -> bool:
        """Queue ``data``; True when the caller should pause until ``on_drained``."""
        if self._aborted or self._finished:
            return False
        self.size += len(data)
        self._pending.append(data)
        self._pending_size += len(data)
        if self._pending_size >= self.BLOCK:
            self._submit()
        budget = self._budget
        with budget.lock:
            if self._in_flight + self._pending_size > self.HIGH_WATER or budget.total > budget.limit:
                self._paused = True
                budget.paused.add(self)
            paused = self._paused
        if paused:
            self._submit()  # a paused spool holds nothing back, so it always drains
        return paused

    def _submit(self) -> None:
        block, size = self._pending, self._pending_size
        self._pending, self._pending_size = [], 0
        if not size:
            return
        if not self._threads:
            self._to_hash, self._to_write = queue.SimpleQueue(), queue.SimpleQueue()
            self._threads = [
                threading.Thread(target=self._hash_loop, name="upload-hash", daemon=True),
                threading.Thread(target=self._write_loop, name="upload-write", daemon=True),
            ]
            if self.blocks is not None and self._inflater is None:
                self._to_block = queue.SimpleQueue()
                self._threads.append(threading.Thread(target=self._block_loop, name="upload-blocks", daemon=True))
            for thread in self._threads:
                thread.start()
        with self._budget.lock:
            self._in_flight += size
            self._budget.total += size
        self._to_hash.put((block, size))

    def _release(self, size: int) -> list:
        """Give ``size`` written bytes back to the budget; the spools that may resume."""
        budget = self._budget
        with budget.lock:
            self._in_flight -= size
            budget.total -= size
            return budget.ready()

    # -- the pipeline (its own threads) -----------------------------------------------

    def _hash_loop(self) -> None:
        following = self._to_write if self._to_block is None else self._to_block
        while (item := self._to_hash.get()) is not None:
            if self._inflater is not None:
                self._inflate(item[0])
                item = ([], item[1])  # written already: only given back to the budget
            elif not self._aborted:
                for chunk in item[0]:
                    self._digest.update(chunk)
            following.put(item)
        following.put(None)

    def _inflate(self, chunks) -> None:
        """Inflate compressed ``chunks``: each inflated piece hashed, cut into blocks and
        written here (:meth:`_inflated`); a bad or too large stream fails the upload."""
        for chunk in chunks:
            if self._aborted or self.error is not None:
                return
            try:
                self._inflater.feed(chunk)
            except SyncError as error:
                self.error = self.error or error

    def _inflated(self, piece) -> None:
        self._digest.update(piece)
        self._feed_blocks([piece])
        if not self._write_block([piece]):
            raise SyncError("INTERNAL_ERROR", "the upload could not be written")

    def _block_loop(self) -> None:
        while (item := self._to_block.get()) is not None:
            self._feed_blocks(item[0])
            self._to_write.put(item)
        self._to_write.put(None)

    def _feed_blocks(self, chunks) -> None:
        """Give ``chunks`` to the block list; a failure only means the file has none."""
        if self.blocks is not None and not self._aborted:
            try:
                self.blocks.feed(b"".join(chunks))
            except (OSError, ValueError):
                self._drop_blocks()

    def _drop_blocks(self) -> None:
        blocks, self.blocks = self.blocks, None
        if blocks is not None:
            blocks.abort()

    def _write_loop(self) -> None:
        flusher = Writeback(self._fd, self._datasync)
        while (item := self._to_write.get()) is not None:
            block, size = item
            if self._write_block(block):
                self._count_written(size)
            flusher.wrote(size)
            self._lost(flusher.error)
            for spool in self._release(size):
                spool._notify_drained()
        self._lost(flusher.stop())
        if self._aborted:
            os.close(self._fd)
            self._drop_blocks()

    def _notify_drained(self) -> None:
        if self._on_drained is not None:
            try:
                self._on_drained()
            except Exception:  # never let a callback stop a pipeline
                pass

    def _count_written(self, size: int) -> None:
        """``size`` more bytes are in the file: the relay following it, if any, is told."""
        self._written += size
        if self.relay is not None:
            self.relay.grew(self._written)

    def _lost(self, error) -> None:
        """A writeback error (``error``, or None) fails the upload: nothing more is
        written, and the handler refuses it."""
        if error is not None and self.error is None:
            self.error = storage_error(error)

    def _write_block(self, block) -> bool:
        """Write ``block`` (a list of chunks) whole; False when nothing was (an error)."""
        if self.error is not None or self._aborted:
            return False
        try:
            written = os.writev(self._fd, block)
            total = sum(len(chunk) for chunk in block)
            if written < total:  # short write: finish the rest plainly
                view = memoryview(b"".join(block))[written:]
                while view:
                    view = view[os.write(self._fd, view):]
            return True
        except OSError as e:
            self.error = storage_error(e)
            return False

    # -- the end ----------------------------------------------------------------------

    def finish(self) -> None:
        """Hash and write what is left, fsync and close the file (blocking: run it in a
        thread). The spool keeps its path for the rename."""
        if self._finished or self._aborted:
            return
        self._finished = True
        if self._threads:
            self._submit()
            self._to_hash.put(None)
            for thread in self._threads:
                thread.join()
        elif self._pending and self._inflater is not None:
            self._inflate(self._pending)
            self._pending, self._pending_size = [], 0
        elif self._pending:
            block, size = self._pending, self._pending_size
            self._pending, self._pending_size = [], 0
            for chunk in block:
                self._digest.update(chunk)
            self._feed_blocks(block)
            if self._write_block(block):
                self._count_written(size)
        if self._inflater is not None:
            self.size = self._inflater.size
            if self.size < DELTA_MIN:
                self._drop_blocks()  # (the compressed length did not tell)
        try:
            os.fsync(self._fd)
        except OSError as e:
            self.error = self.error or storage_error(e)
        os.close(self._fd)
        if self.blocks is not None:
            try:
                self.blocks.commit(self.sha256)
            except OSError:
                pass  # (aborted by commit) the list is made again when asked for
            self.blocks = None

    def close(self) -> None:
        """Forget the temp file (abandoned, or already renamed away). Never blocks: a
        running pipeline stops by itself and closes the file."""
        if not self._finished and not self._aborted:
            self._aborted = True
            self._pending, self._pending_size = [], 0
            with self._budget.lock:
                self._budget.paused.discard(self)
            if self._threads:
                self._to_hash.put(None)  # the writing thread closes the descriptor
            else:
                os.close(self._fd)
            if self._to_block is None:
                self._drop_blocks()  # (else the block thread may still feed it: dropped once it ends)
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        if self.relay is not None:
            self.relay.spool_closed()


#: Upload bodies of at most this many bytes (Content-Length) are kept in memory.
SMALL_BODY = 256 * 1024


class MemorySpool(_Body):
    """A small upload body kept in memory and hashed as it arrives (on the reactor: a few
    microseconds a chunk). The group commit writes, fsyncs and renames it (see
    :meth:`Store.stage_many`), so a small upload costs no temp file or thread of its own.

    Counts its ``length`` in ``budget`` from creation until :meth:`close`; use
    :meth:`reserve` to get one only when the budget has room.
    """

    path = None
    error = None

    def __init__(self, length: int, budget: _MemoryBudget = UPLOAD_MEMORY):
        self._chunks = []
        self._digest = hashlib.sha256()
        self._budget = budget
        self._reserved = length
        self.size = 0

    @classmethod
    def reserve(cls, length: int, budget: _MemoryBudget = UPLOAD_MEMORY):
        """A spool for a body of ``length`` bytes, or None when all uploads together
        would hold more than the budget's limit."""
        with budget.lock:
            if budget.total + length > budget.limit:
                return None
            budget.total += length
        return cls(length, budget)

    def write(self, data: bytes) -> bool:
        self.size += len(data)
        self._chunks.append(data)
        self._digest.update(data)
        return False

    @property
    def body(self) -> bytes:
        if len(self._chunks) != 1:
            self._chunks = [b"".join(self._chunks)]
        return self._chunks[0]

    def finish(self) -> None:
        """Nothing left to do: the body is written by the group commit."""

    def close(self) -> None:
        """Forget the body and give its memory back to the budget."""
        self._chunks = []
        reserved, self._reserved = self._reserved, 0
        if reserved:
            with self._budget.lock:
                self._budget.total -= reserved


class RecentBodies:
    """The bodies of the small uploads stored last (at most ``limit`` bytes together), so
    the downloads that follow each of them (every other client fetches a new file) need
    no thread, file read or index lookup. Used on the reactor only.

    An entry answers only while the name still has the inode, size, mtime and ctime it was
    stored with: a later write, rename or removal by anyone makes it a miss."""

    def __init__(self, limit: int = 8 * 1024 * 1024):
        self.limit = limit
        self._entries = collections.OrderedDict()  # path -> (FileMetadata, key, body)
        self._size = 0

    def add(self, metadata, st_key: tuple, body: bytes) -> None:
        """Remember ``body``, stored as ``metadata`` in a file with ``st_key``
        (``(st_ino, st_size, st_mtime_ns, st_ctime_ns)``: an inode number is reused once
        freed, and a file replaced within one tick of the clock keeps its mtime)."""
        old = self._entries.pop(metadata.path, None)
        if old is not None:
            self._size -= len(old[2])
        self._entries[metadata.path] = (metadata, st_key, body)
        self._size += len(body)
        while self._size > self.limit:
            self._size -= len(self._entries.popitem(last=False)[1][2])

    def get(self, path: str, st) -> tuple | None:
        """``(FileMetadata, body)`` when ``st`` (an lstat of ``path`` now, or None) is
        still the file that was stored, else None."""
        entry = self._entries.get(path)
        if entry is None or st is None or not stat.S_ISREG(st.st_mode):
            return None
        metadata, key, body = entry
        if (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns) != key:
            return None
        return metadata, body


class BatchSpool(MemorySpool):
    """The body of a batch upload (:mod:`quantum_sync.batch`), held in memory within the
    uploads' budget. Not hashed as it arrives: each file in it is hashed on its own."""

    def write(self, data: bytes) -> bool:
        self.size += len(data)
        self._chunks.append(data)
        return False


#: What an upload body can be spooled into.
SPOOLS = (UploadSpool, MemorySpool)


class Store:
    """The root directory and its temp area; every method is blocking (use a thread)."""

    def __init__(self, root: str, node_id: str | None = None):
        self.root = os.path.realpath(root)
        self.state_dir = os.path.join(self.root, paths.STATE_DIR_NAME)
        # a cluster node's temps in a folder of its own: the others' stay when it starts
        self.temp_dir = os.path.join(self.state_dir, *(("nodes", node_id) if node_id else ()), "tmp")
        self._prefix = self.root + os.sep
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
        """The on-disk name of ``path`` (INVALID_PATH when it cannot live under the root).

        The server never goes through a symbolic link inside the root either: listings
        and scans do not follow them, so neither do reads and writes (a link itself, as
        the last segment, counts as absent and may be replaced)."""
        return self._walk(path)[0]

    def look(self, path: str) -> tuple:
        """``(on-disk name, its lstat or None)`` of ``path``, checked as :meth:`resolve`."""
        absolute, st, _ = self._walk(path)
        return absolute, st or None

    def _walk(self, path: str) -> tuple:
        """``(absolute, its lstat, parents exist)`` for ``path``, checked as
        :meth:`resolve` says: only the segments below the (once resolved) root are looked
        at, one ``lstat`` each; the walk ends at the first missing one (lstat None) or
        one that cannot be looked at (lstat False)."""
        path = paths.normalize(path)
        absolute = self._prefix + path
        if len(absolute) * 4 >= PATH_MAX and len(os.fsencode(absolute)) >= PATH_MAX:  # 4: UTF-8's widest
            raise SyncError("INVALID_PATH", "the path is too long for the server's file system")
        end = len(self._prefix) - 1
        while True:
            end = absolute.find(os.sep, end + 1)
            current = absolute if end < 0 else absolute[:end]
            try:
                st = os.lstat(current)
            except FileNotFoundError:  # nothing below can be a link
                return absolute, None, end < 0
            except NotADirectoryError:
                return absolute, None, False
            except OSError:  # e.g. unreadable: the caller's own I/O reports it
                return absolute, False, False
            if stat.S_ISLNK(st.st_mode):
                if end >= 0:
                    raise SyncError("INVALID_PATH", "the path goes through a symbolic link")
                self._check_final_link(absolute)
            if end < 0:
                return absolute, st, True

    def _check_final_link(self, absolute: str) -> None:
        """A link as the last segment must not lead outside the root or into the state
        directory (it is never followed, but such a name is refused as a whole)."""
        target = os.path.realpath(absolute)
        for outside in (os.path.commonpath([target, self.root]) != self.root,
                        os.path.commonpath([target, self.state_dir]) == self.state_dir,
                        target == self.root):
            if outside:
                raise SyncError("INVALID_PATH", "the path leads outside the root through a symlink")

    def entry(self, path: str) -> DiskEntry | None:
        """The on-disk state of canonical ``path`` (symlinks and specials count as absent)."""
        absolute, st, _ = self._walk(path)
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
            try:
                items = list(os.scandir(directory))
            except (FileNotFoundError, NotADirectoryError, PermissionError):
                continue
            for item in items:
                rel = _child_path(prefix, item.name)
                if rel is None:
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
                    stack.append((item.path, rel))
        return found

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
        if named and len(bodies) > STAGE_TURN:
            return [outcome for start in range(0, len(bodies), STAGE_TURN)
                    for outcome in self.stage_many(bodies[start:start + STAGE_TURN], named=True)]
        written, outcomes = [], []
        for data in bodies:
            try:
                written.append(self._write_temp(data, named))
                outcomes.append(None)
            except OSError as error:
                outcomes.append(error)
        synced = iter(fsync_all([fd for fd, _, _ in written], one_directory=True))  # all in temp_dir
        written = iter(written)
        for position, outcome in enumerate(outcomes):
            if outcome is not None:
                continue
            fd, name, st = next(written)
            error = next(synced)
            if name is not None or error is not None:
                os.close(fd)
            if error is not None:
                if name is not None:
                    os.unlink(name)
                outcomes[position] = error
            else:
                outcomes[position] = (NamelessTemp(fd) if name is None else name, st)
        if not named:  # held: the nameless ones; the rest (failed, or named after all) given back
            self._held.give(len(bodies) - sum(1 for o in outcomes if not isinstance(o, OSError) and isinstance(o[0], NamelessTemp)))
        return outcomes

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

    def install_staged(self, temp, temp_stat, path: str) -> tuple:
        """Put a finished temp file (``temp_stat``: its stat) at ``path``, without the
        directory fsync; returns ``(created parent directories, on-disk name)``. A
        nameless file (see :meth:`stage_many`) is linked in place when the name is free, else
        named in the temp directory first; a named one is renamed onto ``path``. Either
        way the file appears whole, and the root watcher recognises it as the server's
        own (:meth:`own_write`)."""
        target, st, parents_exist = self._walk(path)
        created = []
        if not parents_exist:
            created = self.make_parents(path)
            target, st, _ = self._walk(path)
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
