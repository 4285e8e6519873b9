"""Delta transfers on the server: block lists of stored files, and delta uploads.

- :meth:`Deltas.block_list`: the block list of a stored version (kept when its upload
  streamed in, see :class:`~quantum_sync.server.spools.UploadSpool`; else made once, in a
  thread, and kept), for ``GET /api/blocks``.
- :meth:`Deltas.offering`: a new version's block list, when short, held for the
  ``FileOperation`` broadcast of its change (:attr:`Deltas.offered`, read by the hub), so
  that receivers need not ask for it.
- :meth:`Deltas.build`: a delta upload's new file, made in a temp file from the stored
  base (its reused ranges copied with ``copy_file_range``) and the bytes sent, its
  SHA-256 checked; the group commit then installs it as any upload
  (:meth:`~quantum_sync.server.operations.FileOperations.upload`).
"""

import contextlib
import os
import tempfile
import time

import attrs
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from quantum_sync import delta
from quantum_sync.deltafile import assemble
from quantum_sync.errors import SyncError
from quantum_sync.server.store import TEMP_PREFIX, storage_error
from quantum_sync.threads import ReactorThreads


@attrs.frozen
class BuiltFile:
    """A delta upload's finished temp file (fsynced, mode 0644), for the group commit."""

    path: str
    stat: os.stat_result
    body: None = None


class Deltas:
    """Block lists and delta builds of one store (``block_lists``: its
    :class:`~quantum_sync.blocklists.BlockLists`)."""

    def __init__(self, store, block_lists, reactor, threads=None):
        self.store = store
        self.block_lists = block_lists
        self._reactor = reactor
        self._threads = threads if threads is not None else ReactorThreads(reactor)
        self._making = {}  # sha256 -> the Deferreds waiting for its list being made
        self._offered = {}  # sha256 -> [compact list, uploads offering it]

    def offered(self, sha256: str):
        """The compact block list of content ``sha256`` while an upload of it offers it
        to its broadcast (:meth:`offering`), else None."""
        held = self._offered.get(sha256)
        return None if held is None else held[0]

    @contextlib.asynccontextmanager
    async def offering(self, sha256: str, size: int):
        """While the body runs (the upload's install, journal entry and broadcast), the
        list of the new version ``sha256`` (``size`` bytes) is :meth:`offered`, when
        the server keeps one of at most :data:`~quantum_sync.delta.BROADCAST_LIST`
        bytes."""
        data = None
        if size >= delta.DELTA_MIN and sha256 not in self._offered:
            data = await self._thread(self.block_lists.read, sha256, delta.BROADCAST_LIST)
        if data is not None:
            self._offered.setdefault(sha256, [data, 0])
        held = self._offered.get(sha256)
        if held is not None:
            held[1] += 1
        try:
            yield
        finally:
            if held is not None:
                held[1] -= 1
                if not held[1]:
                    del self._offered[sha256]

    def _thread(self, function, *args) -> Deferred:
        return self._threads.defer(function, *args)

    async def block_list(self, metadata, opened_fd: int) -> bytes:
        """The compact block list of the stored version ``metadata`` (open as
        ``opened_fd``). NOT_FOUND below :data:`~quantum_sync.delta.DELTA_MIN` bytes;
        CONFLICT when the file changed while its list was being made."""
        return await self._kept(metadata, opened_fd, self.block_lists.read)

    async def _kept(self, metadata, opened_fd: int, take):
        """``take(sha256)`` (in a thread: the list read, or opened) of the kept list of
        the stored version ``metadata``, made first when none is kept (see
        :meth:`block_list`)."""
        if metadata.size < delta.DELTA_MIN:
            raise SyncError("NOT_FOUND", f"files below {delta.DELTA_MIN} bytes have no block list")
        found = await self._thread(take, metadata.hash)
        if found is not None:
            return found
        waiters = self._making.get(metadata.hash)
        if waiters is None:  # one thread makes it, every request for it waits for that one
            waiters = self._making[metadata.hash] = []
            # on a descriptor of its own: the request's may be closed before the thread ends
            self._thread(_closing, self.block_lists.keep_file, os.dup(opened_fd), metadata.hash).addBoth(
                self._made, metadata.hash)
        waiter = Deferred()
        waiters.append(waiter)
        found = await self._thread(take, metadata.hash) if await waiter else None
        if found is None:
            raise SyncError("CONFLICT", f"{metadata.path} changed while its block list was made; try again")
        return found

    async def prune(self, index) -> int:
        """Remove the lists of contents no file in ``index`` has any more (replaced or
        deleted files'); returns how many went."""
        keep = {metadata.hash for metadata, _ in await index.list_all() if metadata.size >= delta.DELTA_MIN}
        return await self._thread(self.block_lists.forget_all_but, keep, time.time())

    def _made(self, result, sha256) -> None:
        for waiter in self._making.pop(sha256):
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)

    async def build(self, open_body, metadata, base_fd: int, expected: str) -> BuiltFile:
        """The new file a delta body (``open_body()`` opens it for reading) makes from the
        stored version ``metadata`` (open as ``base_fd``); it must hash to ``expected``.
        Raises INVALID_REQUEST (not a delta body), CONFLICT (it reuses a block the
        base does not have), HASH_MISMATCH (the result is not ``expected``: nothing kept)."""
        # the base's list read from its file (only its offsets held), closed by _build
        base_blocks = await self._kept(metadata, base_fd, self.block_lists.open)
        return await self._thread(_closing, self._build, os.dup(base_fd), open_body, base_blocks, expected)

    def _build(self, base_fd, open_body, base_blocks, expected) -> BuiltFile:
        plan = _HeadPlan(open_body)
        with contextlib.closing(base_blocks), open_body() as body:
            plan.check(body, base_blocks)
            fd, temp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=self.store.temp_dir)
            try:
                try:
                    digest, _ = assemble(plan, base_fd, body, fd)
                    if digest != expected:
                        raise SyncError("HASH_MISMATCH", f"the delta builds a file hashing to {digest}, not {expected}")
                    os.fchmod(fd, 0o644)
                    os.fsync(fd)
                    st = os.fstat(fd)
                    # the new list from the base's and the few sent blocks: no second read
                    self.block_lists.keep_blocks(digest, delta.rebuilt_blocks(
                        plan, base_blocks,
                        lambda step: self.block_lists.blocks_of_range(fd, step.offset, step.length)))
                finally:
                    os.close(fd)
            except ValueError as error:
                os.unlink(temp)
                raise SyncError("INVALID_REQUEST", f"the delta does not fit its base: {error}") from None
            except OSError as error:
                os.unlink(temp)
                raise storage_error(error) from None
            except BaseException:
                os.unlink(temp)
                raise
        return BuiltFile(temp, st)


def _closing(function, fd: int, *args):
    """``function(fd, *args)``, then close ``fd``."""
    try:
        return function(fd, *args)
    finally:
        os.close(fd)


class _HeadPlan:
    """The plan at the start of a delta body (``open_body()`` opens the body), read from
    it again each time it is iterated, a few thousand steps at a time: a plan of any
    length is never held (a head may announce half a million steps)."""

    def __init__(self, open_body):
        self._open_body = open_body
        self._count = None

    def check(self, body, base_blocks) -> None:
        """Read the head of ``body`` (left at the sent bytes): INVALID_REQUEST when it is
        not a delta head, CONFLICT when it reuses what is not whole blocks of
        ``base_blocks``."""
        try:
            self._count = delta.head_steps(body.read(delta.HEAD_FIXED))
            for _ in delta.read_steps(body, self._count):
                pass
        except ValueError as error:
            raise SyncError("INVALID_REQUEST", f"not a delta body: {error}") from None
        missing = delta.unheld_reuse(self, base_blocks)
        if missing is not None:
            raise SyncError("CONFLICT", f"the plan reuses {missing.length} bytes at {missing.base_offset},"
                            " which are not whole blocks of the base", reason="BLOCK_NOT_HELD")

    def __iter__(self):
        with self._open_body() as body:
            body.seek(delta.HEAD_FIXED)
            yield from delta.read_steps(body, self._count)
