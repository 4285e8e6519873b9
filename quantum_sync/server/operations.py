"""FileOperations: THE one place where changes to the root are applied and journalled.

REST uploads and ``/api/sync``, WebSocket ``FileOperation`` messages and the root watcher
all come through here. Changes are serialised by one lock, so the journal order is the
order in which the disk changed, and every journalled change is handed to
``hub.publish`` exactly once, in journal order, before the lock is released.
"""

import contextlib
import queue
import threading

import attrs
from twisted.internet import defer
from twisted.internet.defer import Deferred, DeferredLock, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from quantum_sync import paths
from quantum_sync.errors import SyncError, is_unavailable
from quantum_sync.protocol import Create, Delete, FileMetadata, Move, Update, now
from quantum_sync.server.diskdiff import item_path, journal_items, matches, metadata_of, stale_files
from quantum_sync.server.install import GroupInstall, StaleTarget, WaitingUpload
from quantum_sync.server.recentbodies import RecentBodies
from quantum_sync.server.store import DiskEntry, storage_error
from quantum_sync.server.versions import KeepNothing
from quantum_sync.threads import ReactorThreads

#: The ``source_client`` of changes found on disk (other programs, changes while down).
DISK_SOURCE = "server"
#: Changes found on disk are journalled this many to a transaction.
RECORD_BATCH = 500
#: Uploads installed and journalled together at most (one lock hold, one transaction).
UPLOAD_BATCH = 256
#: A file written by another program is hashed once it has been quiet this many seconds,
#: when it has at least this many bytes (a smaller one is hashed at once: a write caught
#: half-way is noticed by the re-check after hashing, and its next event follows).
QUIET_SECONDS, QUIET_SIZE = 1.0, 1024 * 1024
#: Seconds a request waits while the server checks its files at start; then it is
#: refused, told to come back after RETRY_AFTER seconds (``Retry-After``).
READY_WAIT, RETRY_AFTER = 5.0, 1


MAX_CLIENT_ID = 200


def check_client_id(value) -> str:
    """``value`` if it can be a client id (a string of printable text, at most
    :data:`MAX_CLIENT_ID` characters), else INVALID_REQUEST."""
    if not isinstance(value, str):
        raise SyncError("INVALID_REQUEST", "a client id must be a string")
    if len(value) > MAX_CLIENT_ID or not value.isprintable():  # lone surrogates are not
        raise SyncError("INVALID_REQUEST", "a client id is at most 200 printable characters")
    return value


def etag_value(header) -> str | None:
    """The hash inside an ``If-Match``/``ETag`` value (quotes and ``W/`` removed)."""
    if header is None:
        return None
    value = header.strip()
    if value.startswith("W/"):
        value = value[2:]
    return value.strip('"')


def _stat_key(entry: DiskEntry) -> tuple:
    return entry.size, entry.mtime_ns, entry.ino, entry.ctime_ns


class SerialThread:
    """Runs blocking calls one after the other on one daemon thread of its own, which
    ends after :attr:`IDLE` seconds without work (and starts again when needed)."""

    IDLE = 5.0

    def __init__(self, reactor):
        self._reactor = reactor
        self._calls = queue.SimpleQueue()
        self._guard = threading.Lock()
        self._running = False

    def run(self, function, *args) -> Deferred:
        """A Deferred firing (in the reactor thread) with ``function(*args)``'s result."""
        answer = Deferred()
        with self._guard:
            self._calls.put((answer, function, args))
            if not self._running:
                self._running = True
                threading.Thread(target=self._loop, name="quantum-sync-operations", daemon=True).start()
        return answer

    def _loop(self) -> None:
        while True:
            try:
                answer, function, args = self._calls.get(timeout=self.IDLE)
            except queue.Empty:
                with self._guard:
                    if self._calls.empty():
                        self._running = False
                        return
                continue
            try:
                result = function(*args)
            except BaseException:
                self._reactor.callFromThread(answer.errback, Failure())
            else:
                self._reactor.callFromThread(answer.callback, result)


class NoFence:
    """The embedded server's fence: the node's own lock is all there is to hold (a
    cluster node's fence, :class:`quantum_sync.server.cluster.fence.ClusterFence`, also
    holds locks across nodes)."""

    def held(self, paths=None, intending=False):
        """Nothing to hold; gives no rows (the index is asked for them)."""
        return contextlib.nullcontext()

    def close(self) -> None:
        pass


class FileOperations:
    """Applies operations to the store, records them in the index, publishes them."""

    log = Logger()

    def __init__(self, store, index, hub, reactor, enable_upload: bool, versions=None, threads=None):
        self.store = store
        self.index = index
        self.hub = hub
        #: where replaced and deleted files are kept (:mod:`quantum_sync.server.versions`)
        self.versions = versions or KeepNothing()
        self._install = GroupInstall(store, self.versions)
        self.enable_upload = enable_upload
        self._reactor = reactor
        self._threads = threads if threads is not None else ReactorThreads(reactor)
        self._lock = DeferredLock()
        #: The newest journal seq (kept here so synchronous callers can read it).
        self.head = 0
        self._uploads = []  # WaitingUpload, in arrival order
        self._serial = SerialThread(reactor)
        self._installing = False
        #: Small bodies just stored, for the downloads that follow them.
        self.recent = RecentBodies()
        #: Locks held across nodes with the node's own (``held(paths)``; see NoFence).
        self.fence = NoFence()
        #: Where journalled changes go, in journal order (a cluster node's feed orders
        #: its own with the other nodes'; it keeps :attr:`head` itself).
        self.feed = None
        #: A file of at least ``quiet_size`` bytes written by another program less than
        #: ``quiet_seconds`` ago is hashed once it has been quiet that long.
        self.quiet_seconds, self.quiet_size = QUIET_SECONDS, QUIET_SIZE
        self._later = set()  # paths whose refresh waits for them to be quiet
        self._later_calls = []
        self._closed = False  # close() was called: nothing more is scheduled
        #: False until :meth:`recover` has looked at the uploads a crash interrupted:
        #: until then the index may describe files that were replaced (see wait_ready).
        self.ready = False
        self._ready_waiters = []
        #: Seconds a request waits for :attr:`ready` before it is refused.
        self.ready_wait = READY_WAIT

    def when_ready(self) -> Deferred:
        """Fires once :attr:`ready`."""
        if self.ready:
            return succeed(None)
        waiter = Deferred()
        self._ready_waiters.append(waiter)
        return waiter

    async def wait_ready(self) -> None:
        """Return once :attr:`ready`; SERVICE_UNAVAILABLE (with ``retryAfter``) when that
        takes more than :attr:`ready_wait` seconds."""
        if self.ready:
            return
        try:
            await self.when_ready().addTimeout(self.ready_wait, self._reactor)
        except defer.TimeoutError:
            raise SyncError("SERVICE_UNAVAILABLE", "the server is checking its files after a"
                            " restart; try again in a moment", retryAfter=RETRY_AFTER) from None

    def _set_ready(self) -> None:
        self.ready = True
        waiters, self._ready_waiters = self._ready_waiters, []
        for waiter in waiters:
            if not waiter.called:  # (timed out meanwhile)
                waiter.callback(None)

    async def recover(self) -> None:
        """At start, once the index is open: bring in line first the paths whose uploads
        were intended and never journalled (a crash between their rename and their
        journal entry), then answer requests (:attr:`ready`). The full comparison of the
        root with the index follows (``refresh(None)``), while requests are answered."""
        if self.feed is None:  # (a cluster node's feed keeps it)
            self.head = max(self.head, await self.index.head())
        intents = await self.index.intents()
        if intents:
            self.log.info("looking at {count} upload(s) interrupted by a stop", count=len(intents))
            await self.refresh(paths.outermost(intents), settle=False)
            await self.index.forget_intents(intents)
        self._set_ready()

    def _thread(self, function, *args):
        """Run blocking ``function`` for work done under the lock: on a thread of its
        own, so the lock is never held while waiting behind unrelated work (fsyncs of
        upload bodies, downloads) in the service's shared pool."""
        return self._serial.run(function, *args)

    def _shared_thread(self, function, *args):
        return self._threads.defer(function, *args)

    def reject_path(self, path, error: SyncError, source_client: str, address: str = "") -> None:
        """Report a refused hostile path to the ``alerts`` topic."""
        self.hub.alert("security_alert", {
            "event": "rejected_path", "path": repr(path)[:300], "message": error.message,
            "source_client": source_client, "address": address,
        })

    async def _locked(self, function, *args):
        await self._lock.acquire()
        try:
            async with self.fence.held():
                return await function(*args)
        finally:
            self._lock.release()

    async def idle(self) -> None:
        """Wait until no operation is in progress."""
        await self._lock.acquire()
        self._lock.release()

    async def _journal(self, operation, source_client, upserts=(), removals=(), also=None):
        change = await self.index.record(list(upserts), list(removals), operation,
                                         source_client, now(), also)
        if change is not None:
            self._published(change)
        return change

    @property
    def journal_id(self):
        """The journal's identity (None until the index is open)."""
        return self.index.journal_id

    def _published(self, change):
        if self.feed is not None:
            self.feed.offer(change)
            return
        self.head = max(self.head, change.seq)
        self.hub.publish(change)

    async def _current(self, path: str):
        """``(FileMetadata, mtime_ns)`` of what is on disk at ``path`` now (rehashing only
        when the cached row is stale), or None."""
        return await self._thread(self._install.current, path, await self.index.get(path))

    async def metadata(self, path: str) -> FileMetadata:
        """The stored metadata of ``path`` (checked against the disk), or NOT_FOUND."""
        return (await self.stored(path))[0]

    async def stored(self, path: str) -> tuple:
        """``(FileMetadata, mtime_ns)`` of ``path`` as indexed after checking it against
        the disk (a stale row is refreshed and journalled first), or NOT_FOUND."""
        try:
            entry = await self._shared_thread(self.store.entry, path)
            cached = await self.index.get(path)
            if entry is not None and matches(cached, entry):
                return cached
            if entry is not None or cached is not None:
                await self.refresh([path], settle=False)
                cached = await self.index.get(path)
        except OSError as error:
            self.log.error("cannot read {path}: {error}", path=path, error=str(error))
            raise storage_error(error) from error
        if cached is None:
            raise SyncError("NOT_FOUND", f"{path} does not exist")
        return cached

    def _check_writable(self):
        if not self.enable_upload:
            raise SyncError("UPLOAD_DISABLED", "uploads and changes are disabled on this server")

    # -- operations ----------------------------------------------------------------

    async def apply(self, operation, source_client: str):
        """Apply a parsed SyncOperation and return its journal :class:`Change`.

        Delete, Move and directory Create change the disk; a file Create/Update is only
        an announcement and is accepted when the server holds exactly that content at
        that path. Raises SyncError (UPLOAD_DISABLED, INVALID_PATH, NOT_FOUND, CONFLICT).
        """
        self._check_writable()
        check_client_id(source_client)
        await self.wait_ready()
        try:
            for path in operation.paths:
                self.store.resolve(path)
        except SyncError as error:
            self.reject_path(operation.paths, error, source_client)
            raise
        return await self._locked(self._apply, operation, source_client)

    async def _apply(self, operation, source_client):
        try:
            if isinstance(operation, Delete):
                return await self._delete(operation, source_client)
            if isinstance(operation, Move):
                return await self._move(operation, source_client)
            if operation.metadata.is_directory:
                return await self._make_directory(operation, source_client)
            return await self._announce(operation, source_client)
        except OSError as error:
            raise storage_error(error) from error

    async def _delete(self, operation: Delete, source_client):
        entry = await self._thread(self.store.entry, operation.path)
        if entry is None:
            raise SyncError("NOT_FOUND", f"{operation.path} does not exist")
        if operation.if_match is not None:
            await self._check_delete(operation, entry)
            operation = operation.bare
        rows = await self.index.list_under(operation.path) if self.versions.enabled else []
        kept = await self._thread(self.versions.trash, operation.path, rows)
        try:
            await self._thread(self.store.remove, operation.path)
        except BaseException:
            if kept:  # moved out of the root already: kept as versions of a partial delete
                await self.index.record([], [], None, "", "", self.versions.recorder(kept))
                self._reactor.callLater(0, self._refresh_quietly, [operation.path])
            raise
        return await self._journal(operation, source_client, removals=[operation.path],
                                   also=self.versions.recorder(kept))

    async def _check_delete(self, operation: Delete, entry) -> None:
        """PRECONDITION_FAILED unless ``operation.path`` still holds what its sender saw:
        a file with the content ``if_match``, or (``""``) a directory with no file below
        it (what is left was made or changed by someone the sender did not hear from)."""
        path, expected = operation.path, operation.if_match
        if expected == "":
            if not entry.is_directory:
                raise SyncError("PRECONDITION_FAILED", f"{path} is no longer a directory")
            if await self._thread(self.store.holds_a_file, path):
                raise SyncError("PRECONDITION_FAILED",
                                f"files below {path} were not deleted by this client; nothing changed")
            return
        current = await self._current(path)
        if current is None or current[0].is_directory or current[0].hash != expected:
            raise SyncError("PRECONDITION_FAILED", f"{path} changed since this client saw it; nothing changed")

    async def _move(self, operation: Move, source_client):
        source, destination = operation.source, operation.destination
        if await self._thread(self.store.entry, source) is None:
            raise SyncError("NOT_FOUND", f"{source} does not exist")
        if paths.is_inside(destination, source):
            raise SyncError("CONFLICT", f"cannot move {source} into itself")
        if await self._thread(self.store.entry, destination) is not None:
            raise SyncError("CONFLICT", f"{destination} already exists")
        created = await self._thread(self.store.move, source, destination)
        await self._record_directories(created)
        change = await self.index.rename(source, destination, operation, source_client, now(),
                                         self.versions.rekey(source, destination))
        self._published(change)
        moved = await self._thread(self.store.entry, destination)
        row = await self.index.get(destination)
        if moved is not None and not moved.is_directory and row is not None and not matches(row, moved) \
                and (row[0].size, row[1], row.ino) == (moved.size, moved.mtime_ns, moved.ino):
            # the rename changed the file's ctime, not its content: keep the row current
            await self.index.record([metadata_of(moved, row[0].hash)], [], None, "", "")
        return change

    async def _record_directories(self, created):
        entries = [await self._thread(self.store.entry, path) for path in created]
        if entries:
            await self.index.record([metadata_of(e, "") for e in entries if e], [], None, "", "")

    async def _make_directory(self, operation, source_client):
        path = operation.metadata.path
        created = await self._thread(self.store.make_directory, path)
        entries = [await self._thread(self.store.entry, p) for p in created or [path]]
        upserts = [metadata_of(e, "") for e in entries if e]
        metadata = upserts[-1][0] if upserts else operation.metadata
        return await self._journal(Create(metadata), source_client, upserts=upserts)

    async def _announce(self, operation, source_client):
        path = operation.metadata.path
        current = await self._current(path)
        if current is None or current[0].is_directory or current[0].hash != operation.metadata.hash:
            raise SyncError("NOT_FOUND", f"the server does not hold that content at {path}; upload it first")
        return await self._journal(type(operation)(current[0]), source_client, upserts=[current])

    async def upload(self, path: str, tempfile, sha256, size, source_client: str,
                     if_match=None, if_none_match=None, release_temp: bool = False):
        """Install a finished upload (``tempfile``: an UploadSpool holding ``size`` bytes
        hashing to ``sha256``, already fsynced, a MemorySpool whose body is written and
        fsynced by the group commit, or anything with the ``path`` of a finished temp
        file (mode 0644; a name or a NamelessTemp), its ``stat`` and the ``body`` it
        holds) at ``path``. Returns
        ``(FileMetadata, Change)``.

        ``if_match``: the hash the current file must have; ``if_none_match == "*"``: the
        path must not exist. Raises PRECONDITION_FAILED, CONFLICT, UPLOAD_DISABLED, ...

        Uploads that arrive while the lock is held are installed together (group
        commit, see :meth:`_install_uploads`); each is answered once its rename, the
        fsync of its directory and its journal entry are done.

        ``release_temp``: the finished temp file is the operations' from this call on
        (installed, or released when refused), so its caller never touches it again,
        even if it stops waiting for the answer.
        """
        try:
            self._check_writable()
            check_client_id(source_client)
        except SyncError:
            if release_temp:
                await self._thread(self.store.discard, tempfile.path)
            raise
        body = getattr(tempfile, "body", None)  # kept for the downloads that follow
        waiting = WaitingUpload(path, tempfile.path, body, sha256, source_client,
                                 etag_value(if_match), if_none_match, Deferred(),
                                 getattr(tempfile, "stat", None), release_temp=release_temp)
        self._uploads.append(waiting)
        self._start_installing()
        return await waiting.answer

    def _start_installing(self) -> None:
        if not self._installing:
            # on the reactor's next turn: the uploads of a whole batch request, which arrive
            # in this one, then go in one group instead of the first going alone
            self._installing = True
            self._reactor.callLater(0, lambda: Deferred.fromCoroutine(self._drain_uploads()))

    async def _drain_uploads(self):
        """Install the waiting uploads, up to :data:`UPLOAD_BATCH` a lock hold, until
        none is left."""
        try:
            while self._uploads:
                await self._lock.acquire()
                batch = self._uploads[:UPLOAD_BATCH]
                del self._uploads[:UPLOAD_BATCH]
                try:
                    async with self.fence.held([w.path for w in batch], intending=True) as cached:
                        outcomes = await self._install_uploads(batch, cached)
                except Exception:
                    outcomes = [Failure()] * len(batch)
                    # files may be in place without their journal entries (and the root
                    # watcher skips the server's own installs): compare them with the disk
                    self._reactor.callLater(0, self._refresh_quietly, [w.path for w in batch])
                    await self._thread(self._install.release_temps, [w for w in batch if w.release_temp])
                finally:
                    self._lock.release()
                self._answer(batch, outcomes)
        finally:
            self._installing = False

    def _answer(self, batch, outcomes) -> None:
        """Answer each upload of ``batch`` with its outcome; those whose target was stale
        are tried again."""
        again = []
        for waiting, outcome in zip(batch, outcomes):
            if outcome is StaleTarget:
                again.append(attrs.evolve(waiting, attempts=waiting.attempts + 1))
            elif isinstance(outcome, Failure):
                waiting.answer.errback(outcome)
            else:
                waiting.answer.callback(outcome)
        if again:
            Deferred.fromCoroutine(self._retry_stale(again))

    async def _retry_stale(self, uploads) -> None:
        """Hash the large stale targets of ``uploads`` without the lock (journalling what
        the other program wrote; other uploads go on meanwhile), then queue the uploads
        again, first, in order."""
        try:
            await self.refresh(sorted({waiting.path for waiting in uploads}), settle=False)
        except Exception:
            self.log.failure("refreshing the targets of uploads failed")
        self._uploads[:0] = uploads
        self._start_installing()

    async def _install_uploads(self, batch, cached=None) -> list:
        """Under the lock: check preconditions and rename every upload of ``batch`` in
        order (one thread call), fsync each touched directory once, journal them in one
        transaction and publish in seq order. Returns per upload ``(FileMetadata,
        Change)`` or a Failure."""
        targets = sorted({waiting.path for waiting in batch})
        if cached is None:  # (else the fence read them, intents recorded, with its locks)
            cached = await self.index.get_many_intending(targets)  # durable before any rename
        installed = await self._thread(self._install.install_all, batch, cached, self.quiet_size)
        outcomes = [None] * len(batch)
        items, journalled, kept = [], [], []
        for position, result in enumerate(installed):
            if result is StaleTarget:
                outcomes[position] = StaleTarget
                continue
            if isinstance(result, SyncError):
                outcomes[position] = Failure(result)
                continue
            current, stored, directories, _, version = result
            operation = (Update if current is not None else Create)(stored[0])
            items.append((directories + [stored], [], operation, batch[position].source_client))
            journalled.append(position)
            kept.append(version)
        changes = await self.index.record_each(items, now(), self.versions.recorder(kept),
                                               done_intents=targets)
        with self.hub.burst():  # the group's broadcasts in one write per subscriber
            for position, change in zip(journalled, changes):
                self._published(change)
                outcomes[position] = (change.operation.metadata, change)
                if batch[position].body is not None:
                    self.recent.add(change.operation.metadata, installed[position][3],
                                    batch[position].body)
        return outcomes

    def _refresh_quietly(self, tops, wait: float = 1.0) -> None:
        """Refresh ``tops`` (a failed group's paths); while the index is unavailable (a
        cluster's database away), again after ``wait`` seconds, doubling up to a minute."""
        def failed(failure):
            if is_unavailable(failure) and not self._closed:
                self._later_calls.append(self._reactor.callLater(
                    wait, self._refresh_quietly, tops, min(wait * 2, 60.0)))
                return None
            self.log.failure("refreshing {tops} failed", failure, tops=tops)

        Deferred.fromCoroutine(self.refresh(paths.outermost(tops))).addErrback(failed)

    # -- the disk as the truth -----------------------------------------------------

    def _hash_files(self, entries) -> dict:
        """``{path: sha256}`` for the file entries that could be read and did not change
        while being hashed (blocking)."""
        digests = {}
        for entry in entries:
            try:
                digest = self.store.hash_if_unchanged(entry)
            except (OSError, SyncError):
                continue
            if digest is not None:
                digests[entry.path] = digest
        return digests

    async def _rows(self, tops) -> dict:
        """``{path: (FileMetadata, mtime_ns)}`` of the index at and under ``tops``."""
        if tops is None:
            rows = await self.index.list_all()
        else:
            rows = [row for top in tops for row in await self.index.list_under(top)]
        return {row[0].path: row for row in rows}

    def _settling(self, stale, found) -> tuple:
        """``(to hash now, still being written)``: a large file written within
        :attr:`quiet_seconds` may still be growing, so it waits until it is quiet."""
        recent = self._reactor.seconds() - self.quiet_seconds
        later = [p for p in stale if found[p].size >= self.quiet_size and found[p].mtime_ns / 1e9 > recent]
        if not later:
            return stale, later
        waiting = set(later)
        return [p for p in stale if p not in waiting], later

    def _refresh_later(self, tops) -> None:
        """Refresh ``tops`` once :attr:`quiet_seconds` have passed (once for each path)."""
        tops = [top for top in tops if top not in self._later]
        if not tops:
            return
        self._later.update(tops)

        def due():
            self._later.difference_update(tops)
            self._refresh_quietly(tops)

        call = self._reactor.callLater(self.quiet_seconds, due)
        self._later_calls = [c for c in self._later_calls if c.active()] + [call]

    def close(self) -> None:
        """Cancel the refreshes waiting for files to become quiet (the server stops)."""
        self._closed = True
        for call in self._later_calls:
            if call.active():
                call.cancel()
        self._later_calls, self._later = [], set()

    async def refresh(self, tops=None, settle: bool = True) -> list:
        """Bring the index in line with the disk at and under each of ``tops`` (None: the
        whole root), journalling what other programs changed. Returns the changes.

        The disk is scanned and the stale files hashed without the operations lock (a
        large file written by another program holds up no upload); a file that changes
        while being hashed is left for its next event. With ``settle``, a large file
        written in the last :attr:`quiet_seconds` is refreshed once it is quiet. Under
        the lock, the journal items are taken from the index as it is by then, and each
        path is looked at once more: one that changed since the scan is left out."""
        rows = await self._rows(tops)
        found = {}
        for top in [""] if tops is None else tops:
            for entry in await self._shared_thread(self.store.scan, top):
                found[entry.path] = entry
        stale = stale_files(rows, found)
        if settle:
            stale, later = self._settling(stale, found)
            self._refresh_later(later)
        digests = await self._shared_thread(self._hash_files, [found[p] for p in stale]) if stale else {}
        return await self._locked(self._journal_found, tops, set(rows), found, digests)

    def _still_found(self, items, found) -> list:
        """The ``items`` whose path the disk still shows as ``found`` did (blocking)."""
        kept = []
        for item in items:
            path = item_path(item)
            expected, now = found.get(path), self.store.entry(path)
            if expected is None or now is None:
                same = expected is None and now is None
            elif expected.is_directory or now.is_directory:
                same = expected.is_directory == now.is_directory
            else:
                same = _stat_key(now) == _stat_key(expected)
            if same:
                kept.append(item)
        return kept

    async def _unchanged_since(self, items, found) -> list:
        """The journal ``items`` whose path the disk still shows as the scan ``found``
        it; the others changed since: they are looked at again once quiet."""
        checked = await self._thread(self._still_found, items, found)
        if len(checked) < len(items):
            self._refresh_later(sorted({item_path(i) for i in items} - {item_path(i) for i in checked}))
        return checked

    async def _journal_found(self, tops, scanned, found, digests) -> list:
        """Under the lock: journal what the scan ``found`` (and ``digests``) show against
        the index as it is now; ``scanned``: the paths indexed when the scan began (one
        indexed since then is the server's own write, not a file gone)."""
        if self.feed is None:
            self.head = max(self.head, await self.index.head())
        rows = {path: row for path, row in (await self._rows(tops)).items() if path in scanned or path in found}
        items = journal_items(rows, found, digests)
        if items:
            items = await self._unchanged_since(items, found)
        changes = []
        for start in range(0, len(items), RECORD_BATCH):
            batch = await self.index.record_many(items[start:start + RECORD_BATCH], DISK_SOURCE, now())
            with self.hub.burst():
                for change in batch:
                    self._published(change)
            changes.extend(batch)
        if changes:
            self.log.info("journalled {count} change(s) found on disk", count=len(changes))
        return changes
