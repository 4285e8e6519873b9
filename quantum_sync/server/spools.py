"""Upload bodies as they arrive from the network: spooled to a temp file through a
hashing and writing pipeline (:class:`UploadSpool`, which also feeds a relay following
the upload), or kept in memory when small (:class:`MemorySpool`, :class:`BatchSpool`),
all within the process's :data:`~quantum_sync.server.uploadmemory.UPLOAD_MEMORY`."""

import hashlib
import os
import queue
import tempfile
import threading

from quantum_sync.compression import Inflater
from quantum_sync.delta import DELTA_MIN
from quantum_sync.diskio import Writeback
from quantum_sync.errors import SyncError
from quantum_sync.server.store import TEMP_PREFIX, storage_error
from quantum_sync.server.uploadmemory import UPLOAD_MEMORY, MemoryBudget


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

    def __init__(self, temp_dir: str, on_drained=None, budget: MemoryBudget = UPLOAD_MEMORY,
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
        self._write_rest()
        if self._inflater is not None:
            self.size = self._inflater.size
            if self.size < DELTA_MIN:
                self._drop_blocks()  # (the compressed length did not tell)
        try:
            os.fsync(self._fd)
        except OSError as e:
            self.error = self.error or storage_error(e)
        os.close(self._fd)
        self._commit_blocks()

    def _write_rest(self) -> None:
        """Hash and write what is still pending (the pipeline's threads: ended once
        they have)."""
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

    def _commit_blocks(self) -> None:
        """Keep the block list made while the body streamed in, under the body's hash."""
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

    def __init__(self, length: int, budget: MemoryBudget = UPLOAD_MEMORY):
        self._chunks = []
        self._digest = hashlib.sha256()
        self._budget = budget
        self._reserved = length
        self.size = 0

    @classmethod
    def reserve(cls, length: int, budget: MemoryBudget = UPLOAD_MEMORY):
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


class BatchSpool(MemorySpool):
    """The body of a batch upload (:mod:`quantum_sync.batch`), held in memory within the
    uploads' budget. Not hashed as it arrives: each file in it is hashed on its own."""

    def write(self, data: bytes) -> bool:
        self.size += len(data)
        self._chunks.append(data)
        return False


#: What an upload body can be spooled into.
SPOOLS = (UploadSpool, MemorySpool)
