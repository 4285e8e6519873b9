"""The engine: keeps one local folder converged with the server.

Three ways in, one way through:

- :meth:`Engine.local_changed` / :meth:`Engine.local_moved` (from the watcher),
- :meth:`Engine.remote_operation` (a FileOperation from the WebSocket, or a journal
  entry from :meth:`Engine.catch_up`),
- :meth:`Engine.reconcile` (a full, or subtree, three-way reconcile: on start, every
  ``--interval`` while the WebSocket is down, after a 410 CURSOR_EXPIRED, and as a
  periodic safety net).

Every one of them ends in :meth:`Engine._execute`, which carries out one
:class:`~quantum_sync.client.reconcile.Decision` under that path's lock. Every local
write is conditional on the local file still being the version the decision was made
on (``localfs``), every upload on the server still holding the base version
(``If-Match``/``If-None-Match``), so a race turns into a conflict, never into a loss.
"""

import functools
import os
import time

import attrs
from twisted.internet import defer, task
from twisted.internet.threads import deferToThread
from twisted.logger import Logger

from quantum_sync.client import localfs
from quantum_sync.client.batches import ThreadBatcher
from quantum_sync.client.conflicts import conflict_name
from quantum_sync.client.deletegate import DeleteGate
from quantum_sync.client.ignore import IGNORE_FILE, IgnoreRules
from quantum_sync.client.locks import PathLocks
from quantum_sync.client.prehash import GrowingHashes
from quantum_sync.client.reconcile import Action, Decision, Entry, decide, plan
from quantum_sync.client.state import Base, tmp_dir
from quantum_sync.client.transferlog import TransferLog
from quantum_sync.client.transfer import (
    CursorExpired,
    DownloadCorrupt,
    PreconditionFailed,
    RequestRefused,
    SMALL_TRANSFER,
    ServerUnavailable,
)
from quantum_sync.diskio import Budget, OwnWrites
from quantum_sync.paths import is_inside, normalize, resolve
from quantum_sync.protocol import Create, Delete, FileMetadata, Move, Update
from quantum_sync.errors import SyncError

#: Hint for a path's server version: not known, assume the base (uploads are conditional).
UNKNOWN = object()
#: Hint: ask the server (``/api/metadata``) before deciding.
FETCH = object()
#: A local change reported without the stat the watcher saw.
UNSEEN = object()
#: Files up to this size are read with their hash and uploaded from memory...
INLINE_UPLOAD = 64 * 1024
#: ...while the bytes held that way stay below this (beyond it, uploads stream from disk).
INLINE_BUDGET = 16 << 20

PROGRESS_EVERY = 2.0
PLAN_CONCURRENCY = 16


def entry_of(meta):
    """The reconcile :class:`Entry` of a FileMetadata (None stays None)."""
    return None if meta is None else Entry(meta.hash, meta.size, meta.is_directory)


@attrs.define
class Progress:
    """Counts for the steady progress line of a large reconcile."""

    files_total: int = 0
    bytes_total: int = 0
    files_done: int = 0
    bytes_done: int = 0
    started: float = attrs.field(factory=time.monotonic)


class Engine:
    """Drives one folder. Owns no network connection of its own: ``server`` is a
    :class:`~quantum_sync.client.transfer.ServerClient`."""

    log = Logger()

    def __init__(self, reactor, folder, state, server, client_id, strategy="rename", allow_mass_delete=False, retry_delay=0.5):
        self.reactor = reactor
        self.folder = folder
        self.state = state
        self.server = server
        self.client_id = client_id
        self.strategy = strategy
        self.allow_mass_delete = allow_mass_delete
        self.retry_delay = retry_delay
        self.rules = IgnoreRules.from_file(os.path.join(folder, IGNORE_FILE))
        self._rules_reads = 0  # reloads started; only the newest one's rules are kept
        self.online = None  # unknown until the first answer
        self.last_full_reconcile = None
        self._locks = PathLocks()
        self._hints = {}
        self._active = {}
        self._path_seq = {}
        self._seen_ahead = set()
        self._catch_up_running = None
        self._catch_up_again = False
        self._reconcile_running = None
        self._retry_calls = {}
        self._stopped = False
        self._limit = defer.DeferredSemaphore(PLAN_CONCURRENCY)
        self._deletes = DeleteGate(reactor, self._count_missing, allow_mass_delete)
        self.growing = GrowingHashes(folder)  # fed by the watcher (FolderWatcher on_grow)
        self._seen = {}  # path → the stat the watcher saw last, until its job looks
        self._inline = Budget(INLINE_BUDGET)
        self._versions = ThreadBatcher(
            reactor,
            lambda items: localfs.versions(folder, items, keep=INLINE_UPLOAD, hash_limit=SMALL_TRANSFER, budget=self._inline),
        )
        #: Downloads just installed, until the watcher's thread recognises their events.
        self.installed = OwnWrites()
        # two at once: a batch's fsyncs overlap the next one's writes (a path is in one at most:
        # its job holds the path's lock until its install is done)
        self._installs = ThreadBatcher(
            reactor, lambda items: localfs.install_many(folder, tmp_dir(folder), items, self.installed), concurrency=2)
        self.transfers = TransferLog(reactor)
        #: The watcher is running: a local change after a read is reported to us anyway.
        self.watched = False

    # -- helpers -------------------------------------------------------------------------

    def abspath(self, path: str) -> str:
        """The on-disk name of ``path``; INVALID_PATH for anything outside the folder."""
        return resolve(self.folder, path)

    def is_ignored(self, path: str, is_directory: bool = False) -> bool:
        return self.rules.is_ignored(path, is_directory)

    def _went_online(self):
        if self.online is not True:
            self.log.info("server {url} reachable", url=self.server.server_url)
        self.online = True

    def _went_offline(self, reason):
        if self.online is not False:
            self.log.warn("server unavailable or refusing; local changes are queued: {reason}", reason=reason)
        self.online = False

    def _record(self, path, meta, local_stat):
        self.state.set_base(
            path, Base(entry_of(meta), meta.modified, local_stat.size if local_stat else 0, local_stat.mtime_ns if local_stat else 0)
        )
        self.state.unqueue(path)

    def stop(self):
        self._stopped = True
        self.transfers.flush()
        self._deletes.stop()
        self.growing.stop()
        for call in self._retry_calls.values():
            if call.active():
                call.cancel()
        self._retry_calls.clear()

    async def idle(self):
        """Wait until no per-path job is running (used when stopping and by tests)."""
        while self._active:
            await defer.DeferredList(list(self._active.values()))

    def retry_pending(self):
        """Sync again the paths whose job failed while the server was unreachable.

        Each path is decided on the server's current version (FETCH): a queued path may
        be a remote change whose download failed, which neither the local folder nor the
        base remembers (and the journal cursor has moved past it)."""
        for path, source in list(self.state.pending.items()):
            if source:
                self.local_moved(source, path)
            else:
                self.request(path, FETCH)

    # -- local events --------------------------------------------------------------------

    def local_changed(self, path: str, stat=UNSEEN):
        """The watcher saw ``path`` change (created, written, deleted); ``stat`` is its
        :class:`~quantum_sync.client.localfs.LocalStat` seen just after (None: gone)."""
        if path == IGNORE_FILE:
            reloaded = defer.ensureDeferred(self._reload_rules())
            return reloaded.addCallback(lambda _: self.request(path, UNKNOWN))
        return self.request(path, UNKNOWN, stat)

    def local_moved(self, source: str, destination: str):
        """The watcher saw ``source`` renamed to ``destination`` inside the folder."""
        return defer.ensureDeferred(self._guard(self._local_move(source, destination), source))

    async def _reload_rules(self):
        self._rules_reads += 1
        mine = self._rules_reads
        rules = await deferToThread(IgnoreRules.from_file, os.path.join(self.folder, IGNORE_FILE))
        if mine == self._rules_reads and rules.text != self.rules.text:
            self.rules = rules
            self.log.info(".syncignore changed; rules reloaded")
            defer.ensureDeferred(self._guard(self.reconcile(), IGNORE_FILE))

    # -- per-path jobs ------------------------------------------------------------------

    def request(self, path: str, hint=UNKNOWN, stat=UNSEEN):
        """Sync ``path`` soon (coalesced with a job already queued or running for it);
        ``hint`` is what is known of the server's version, ``stat`` what the watcher saw
        of the local file. A Deferred that fires when done."""
        if self._stopped:
            return defer.succeed(None)
        if hint is UNKNOWN:
            hint = self._hints.get(path, UNKNOWN)  # what is known of the server stays known
        running = self._active.get(path)
        if stat is UNSEEN:
            self._seen.pop(path, None)
        elif running is None and hint is UNKNOWN and self.is_synced(path, stat):
            return defer.succeed(None)  # the watcher saw the synced version: nothing to do
        else:
            self._seen[path] = stat
        self._hints[path] = hint
        if running is not None:
            return running
        d = defer.ensureDeferred(self._drain(path))
        if not d.called:
            self._active[path] = d
            d.addBoth(self._finished, path)
        return d

    def _finished(self, result, path):
        self._active.pop(path, None)
        return result

    def is_synced(self, path, stat) -> bool:
        """Whether ``stat``, seen by the watcher, shows the synced version (or no file, and
        none synced): the same size-and-mtime rule that lets a scan skip hashing."""
        base = self.state.base(path)
        return localfs.unchanged(stat, base) or (stat is None and base is None)

    async def _drain(self, path):
        while path in self._hints and not self._stopped:
            async with self._locks.hold(path):
                hint = self._hints.pop(path, UNKNOWN)
                seen = self._seen.pop(path, UNSEEN)
                if hint is UNKNOWN and seen is not UNSEEN and self.is_synced(path, seen):
                    continue  # a change already synced (our own download, or an upload's read)
                await self._guard(self._sync_one(path, hint), path)

    async def _guard(self, coroutine, path):
        """Run one job; failures are logged and retried later, never raised."""
        try:
            await coroutine
        except ServerUnavailable as e:
            self._went_offline(str(e))
            if path:
                self.state.queue(path)
        except localfs.LocalChanged:
            self._retry_later(path)
        except RequestRefused as e:
            self.log.warn("server refused an operation on {path}: {error}", path=path, error=str(e))
        except SyncError as e:
            self.log.warn("refused path {path}: {error}", path=path, error=e.message)
        except OSError as e:
            self.log.error("local file error on {path}: {error}", path=path, error=str(e))
        except Exception:
            self.log.failure("unexpected error while syncing {path}", path=path)

    def _retry_later(self, path, delay=None):
        """The local file changed under us: look at it again when it has settled."""
        if not path or self._stopped:
            return
        old = self._retry_calls.get(path)
        if old is not None and old.active():
            old.reset(delay or self.retry_delay)
            return

        def fire():
            self._retry_calls.pop(path, None)
            self.request(path, UNKNOWN)

        self._retry_calls[path] = self.reactor.callLater(delay or self.retry_delay, fire)

    async def _local_version(self, path, with_bytes=False):
        """The local version of ``path``; ``with_bytes``: a small file's bytes come with it,
        and the caller gives them back to ``self._inline`` when done."""
        base = self.state.base(path)
        local = await self._versions.submit((path, base, with_bytes))
        if local is localfs.UNHASHED:  # a large file to hash: not in the batch of small ones
            take = functools.partial(self.growing.take, path)
            local = await deferToThread(localfs.version, self.abspath(path), base, prehashed=take)
        return local

    async def _sync_one(self, path, hint):
        normalize(path)
        base = self.state.base(path)
        if await self._download_onto_base(path, hint, base):
            return
        local = await self._local_version(path, with_bytes=True)
        try:
            return await self._sync_local(path, hint, base, local)
        finally:
            if local is not None and local.data is not None:
                self._inline.give(len(local.data))

    async def _sync_local(self, path, hint, base, local):
        if self.is_ignored(path, bool(local and local.entry.is_directory)):
            return
        base_entry = base.entry if base else None
        local_entry = local.entry if local else None
        is_dir = any(e is not None and e.is_directory for e in (local_entry, base_entry))
        if hint is UNKNOWN:
            if local_entry is None and base_entry is None:
                return
            if local_entry is not None and local_entry.same_content(base_entry):
                self._refresh_stat(path, base, local)
                return
            if local_entry is None or (local_entry.is_directory and base_entry is not None):
                hint = FETCH  # a delete (or a kind change): edit beats delete, so look first
            else:
                remote = None if base is None else FileMetadata(path, base_entry.size, base.modified, base_entry.hash, base_entry.is_directory)
                return await self._decide_and_execute(path, local, remote, base)
        if hint is FETCH:
            hint = await self.server.metadata(path)
            self._went_online()
        remote = hint
        if remote is not None and self.is_ignored(path, remote.is_directory):
            return
        if is_dir and (local_entry is None or remote is None or not remote.is_directory or not local_entry.is_directory):
            # a directory went away (or changed kind) on one side: reconcile what is below it,
            # so that nothing changed elsewhere in the subtree is deleted with it
            return await self.reconcile(prefix=path, listing=[] if remote is None else None, held={path})
        return await self._decide_and_execute(path, local, remote, base)

    async def _download_onto_base(self, path, hint, base):
        """A new remote file version, downloaded without looking at the local file first:
        the install checks that the local file is still the synced one (the same size and
        mtime rule a scan uses), so this saves a thread hop, never a check. False when it
        does not apply, or the local file changed (then the caller looks and decides)."""
        if not isinstance(hint, FileMetadata) or hint.is_directory or hint.size > SMALL_TRANSFER or self.is_ignored(path):
            return False
        if base is not None and (base.entry.is_directory or base.entry.same_content(entry_of(hint))):
            return False
        synced = None if base is None else localfs.LocalVersion(base.entry, localfs.LocalStat(base.local_size, base.local_mtime_ns, False))
        try:
            await self._download(path, synced, hint)
        except localfs.LocalChanged:
            return False
        return True

    def _refresh_stat(self, path, base, local):
        if base is not None and not local.entry.is_directory and (base.local_size, base.local_mtime_ns) != (local.stat.size, local.stat.mtime_ns):
            self.state.set_base(path, attrs.evolve(base, local_size=local.stat.size, local_mtime_ns=local.stat.mtime_ns))

    async def _decide_and_execute(self, path, local, remote, base, attempt=0):
        action = decide(
            local.entry if local else None,
            entry_of(remote),
            base.entry if base else None,
            self.strategy,
            bool(local and local.suspect),
        )
        decision = Decision(path, action, local.entry if local else None, entry_of(remote), base.entry if base else None)
        await self._execute(decision, local, remote, attempt)

    # -- executing one decision ---------------------------------------------------------

    async def _execute(self, d, local, remote, attempt=0, progress=None):
        path, action = d.path, d.action
        if action is Action.NOTHING:
            base = self.state.base(path)
            if local is not None and base is not None:
                self._refresh_stat(path, base, local)
        elif action is Action.RECORD:
            self._record(path, remote, local.stat)
        elif action is Action.FORGET:
            self.state.forget(path)
            self.state.unqueue(path)
        elif action is Action.HOLD:
            self.log.warn(
                "suspect file {path} (zero bytes, not newer than the synced copy) is not uploaded; "
                "touch or rewrite it to send it",
                path=path,
            )
        elif action is Action.UPLOAD:
            await self._upload(path, local, remote, attempt)
        elif action is Action.DOWNLOAD:
            await self._download(path, local, remote)
        elif action is Action.DELETE_LOCAL:
            await self._delete_local(path, local)
        elif action is Action.DELETE_REMOTE:
            await self._delete_remote(path, d.is_directory)
        elif action is Action.CONFLICT:
            await self._conflict(path, local, remote)
        elif action is Action.MOVE_LOCAL:
            await self._move_local(d.source, path)
        elif action is Action.MOVE_REMOTE:
            await self._move_remote(d.source, path)
        if progress is not None:
            progress.files_done += 1
            if action in (Action.UPLOAD, Action.DOWNLOAD):
                progress.bytes_done += (d.local if action is Action.UPLOAD else d.remote).size

    async def _upload(self, path, local, remote, attempt):
        if local.entry.is_directory:
            return await self._create_remote_directory(path, local)
        if_match = remote.hash if remote is not None and not remote.is_directory else None
        base = self.state.base(path)
        try:
            abspath = None if local.data is not None else self.abspath(path)
            meta = await self.server.upload(path, abspath, local.entry.hash, if_match, local.entry.size, local.data)
        except PreconditionFailed:
            if attempt >= 2:
                raise
            # someone else changed the server's copy meanwhile: decide again on the real one
            real = await self.server.metadata(path)
            return await self._decide_and_execute(path, local, real, base, attempt + 1)
        except RequestRefused as e:
            if e.code == "HASH_MISMATCH":
                raise localfs.LocalChanged(path) from None  # it changed while being sent
            raise
        self._went_online()
        self._record(path, meta, local.stat)
        self.transfers.add("uploaded", path, meta.size)
        if path == IGNORE_FILE:
            await self._reload_rules()
        if not self.watched:
            # the watcher reports a write made after the read; without it, look once more
            after = await deferToThread(localfs.lstat, self.abspath(path))
            if after != local.stat:
                self._retry_later(path)

    async def _create_remote_directory(self, path, local):
        meta = FileMetadata.directory(path, local.stat.mtime_ns / 1e9)
        (result,) = await self.server.sync([Create(meta)])
        self._went_online()
        status = result.get("status") if isinstance(result, dict) else None
        if status == "applied" or (status == "conflict" and (await self.server.metadata(path) or meta).is_directory):
            self._record(path, meta, local.stat)
            self.log.info("created directory {path} on the server", path=path)
            await self._check_children(path)
        else:
            raise RequestRefused(409, str(result.get("code")), str(result.get("message")))

    async def _check_children(self, path):
        """After a directory appears on one side, look at what is already inside it locally
        (inotify may have missed files created before the watch was set)."""
        # only which paths to look at: each one's own job reads and hashes it (a burst of
        # new files in a new directory would otherwise be hashed twice)
        found = await deferToThread(localfs.stats_below, self.folder, self.is_ignored, path)
        for child, stat in found.items():
            if child == path:
                continue
            base = self.state.base(child)
            synced_directory = base is not None and stat.is_directory and base.entry.is_directory
            if not (synced_directory or localfs.unchanged(stat, base)):
                self.request(child, UNKNOWN)

    async def _download(self, path, local, remote):
        expected = local.stat if local else None
        if remote.is_directory:
            st = await deferToThread(localfs.make_directory, self.folder, self.abspath(path))
            self._record(path, remote, st)
            return
        small = remote.size <= SMALL_TRANSFER
        try:
            if small:
                data = await self.server.download_bytes(path, remote.hash, remote.size)
            else:
                staged = await self.server.download(path, remote.hash, tmp_dir(self.folder), remote.size)
        except (DownloadCorrupt, RequestRefused) as e:
            if isinstance(e, RequestRefused) and e.status != 404:
                raise
            # the announcement was stale (the file changed or went away since): ask what is there now
            self.request(path, FETCH)
            return
        self._went_online()
        # LocalChanged: decided again later (then a conflict); OSError: logged, base untouched
        if small:
            st = await self._installs.submit(localfs.Install(path, data, expected, remote.modified))
        else:
            try:
                st = await deferToThread(localfs.install, self.folder, staged, self.abspath(path), expected, remote.modified)
            except BaseException:
                await deferToThread(localfs.unlink_quietly, staged)
                raise
        self._record(path, remote, st)
        self.transfers.add("downloaded", path, remote.size)
        if path == IGNORE_FILE:
            await self._reload_rules()

    async def _delete_local(self, path, local):
        if local is not None:
            removed = await deferToThread(localfs.remove, self.abspath(path), local.stat)
            if not removed:
                return  # a directory with something new inside stays
            self.log.info("deleted {path} locally (deleted on the server)", path=path)
        self.state.forget(path, recursive=True)

    def _count_missing(self):
        """``(missing, synced)``: synced files gone from the folder now, of all synced files."""
        files = [p for p, b in self.state.bases.items() if not b.entry.is_directory]
        rules = self.rules

        def count():  # matching and stat of every synced file: off the reactor
            synced = [p for p in files if not rules.is_ignored(p, False)]
            return sum(1 for p in synced if localfs.lstat(os.path.join(self.folder, p)) is None), len(synced)

        return deferToThread(count)

    async def _delete_remote(self, path, is_directory):
        if not await self._deletes.admit(path):
            return  # a mass delete: held (logged); the base stays, so nothing is forgotten
        (result,) = await self.server.sync([Delete(path)])
        self._went_online()
        status = result.get("status") if isinstance(result, dict) else None
        if status == "applied" or (status == "error" and result.get("code") == "NOT_FOUND"):
            self.state.forget(path, recursive=is_directory)
            self.state.unqueue(path)
            self.log.info("deleted {path} on the server", path=path)
        else:
            raise RequestRefused(409, str(result.get("code")), str(result.get("message")))

    async def _conflict(self, path, local, remote):
        copy = conflict_name(path, time.time(), self.client_id)
        await deferToThread(localfs.rename, self.folder, self.abspath(path), self.abspath(copy), local.stat)
        self.log.warn(
            "conflict on {path}: changed on both sides; the local version is kept as {copy}",
            path=path,
            copy=copy,
        )
        await self._download(path, None, remote)
        self.request(copy, UNKNOWN)

    async def _move_local(self, source, destination):
        base = self.state.base(source)
        local = await self._local_version(source)
        if base is None or local is None or not local.entry.same_content(base.entry):
            raise localfs.LocalChanged(source)
        await deferToThread(localfs.rename, self.folder, self.abspath(source), self.abspath(destination), local.stat)
        self.state.move(source, destination)
        self.log.info("moved {source} to {destination} locally (moved on the server)", source=source, destination=destination)

    async def _move_remote(self, source, destination):
        (result,) = await self.server.sync([Move(source, destination)])
        self._went_online()
        status = result.get("status") if isinstance(result, dict) else None
        if status == "applied":
            self.state.move(source, destination)
            self.state.unqueue(destination)
            self.log.info("moved {source} to {destination} on the server", source=source, destination=destination)
        else:
            # refused (the target exists, the source changed): fall back to per-path sync
            self.request(source, FETCH)
            self.request(destination, FETCH)

    # -- local moves ---------------------------------------------------------------------

    async def _local_move(self, source, destination):
        async with self._locks.hold(source, destination):
            base = self.state.base(source)
            local = await self._local_version(destination) if base is None else await deferToThread(
                localfs.version, self.abspath(destination), base
            )
            gone = await deferToThread(localfs.lstat, self.abspath(source))
            movable = (
                base is not None
                and self.state.base(destination) is None
                and gone is None
                and local is not None
                and local.entry.same_content(base.entry)
                and not self.is_ignored(destination, local.entry.is_directory)
            )
            if movable:
                try:
                    await self._move_remote(source, destination)
                except ServerUnavailable:
                    self.state.queue(destination, source)
                    raise
                if local.entry.is_directory:
                    await self._check_children(destination)
                else:
                    self._refresh_stat(destination, self.state.base(destination), local)
                return
        self.request(source, UNKNOWN)
        self.request(destination, UNKNOWN)

    # -- remote operations ---------------------------------------------------------------

    def upload_started(self, announced):
        """Another client began a large upload (a :class:`~quantum_sync.protocol.UploadStarted`):
        fetch it from its relay while it arrives, staged, so that the FileOperation that
        follows finds it ready (:meth:`ServerClient.prefetch`). Nothing is installed here."""
        base = self.state.base(announced.path)
        if self.is_ignored(announced.path) or (base is not None and base.entry.hash == announced.hash):
            return
        self.server.prefetch(announced.path, announced.hash, announced.size, tmp_dir(self.folder))

    def remote_operation(self, seq, operation):
        """A FileOperation from the server (``seq`` None when it carries none). Returns a
        Deferred that fires when it has been applied."""
        if seq is not None:
            cursor = self.state.cursor
            if seq <= cursor or seq in self._seen_ahead:
                return defer.succeed(None)
            if seq == cursor + 1:
                self.state.set_cursor(seq)
                self._absorb_seen_ahead()
            else:
                self._seen_ahead.add(seq)
                self.catch_up_soon()
        return self._apply(seq, operation)

    def _absorb_seen_ahead(self):
        cursor = self.state.cursor
        while cursor + 1 in self._seen_ahead:
            self._seen_ahead.discard(cursor + 1)
            cursor += 1
        self.state.set_cursor(cursor)

    def _apply(self, seq, operation):
        for path in operation.paths:
            if seq is not None:
                if self._path_seq.get(path, 0) > seq:
                    return defer.succeed(None)  # an older change than one already applied
                self._path_seq[path] = seq
        if isinstance(operation, (Create, Update)):
            meta = operation.metadata
            return self.request(meta.path, meta)
        if isinstance(operation, Delete):
            return self.request(operation.path, None)
        if isinstance(operation, Move):
            return defer.ensureDeferred(self._guard(self._remote_move(operation.source, operation.destination), operation.destination))
        return defer.succeed(None)

    async def _remote_move(self, source, destination):
        async with self._locks.hold(source, destination):
            base = self.state.base(source)
            local = await self._local_version(source)
            target = await deferToThread(localfs.lstat, self.abspath(destination))
            if (
                base is not None
                and local is not None
                and local.entry.same_content(base.entry)
                and target is None
                and self.state.base(destination) is None
                and not self.is_ignored(destination, base.entry.is_directory)
            ):
                await deferToThread(localfs.rename, self.folder, self.abspath(source), self.abspath(destination), local.stat)
                self.state.move(source, destination)
                self.log.info("moved {source} to {destination} (moved on the server)", source=source, destination=destination)
                if local.entry.is_directory:
                    await self._check_children(destination)
                return
            directory = (base is not None and base.entry.is_directory) or (local is not None and local.entry.is_directory)
        if directory:
            await self.reconcile(prefix=source)
            await self.reconcile(prefix=destination)
        else:
            self.request(source, None)
            self.request(destination, FETCH)

    # -- catching up from the journal ----------------------------------------------------

    def catch_up_soon(self):
        """Catch up from the journal (coalesced); a Deferred."""
        if self._catch_up_running is not None:
            self._catch_up_again = True
            return self._catch_up_running
        d = defer.ensureDeferred(self._guard(self._catch_up_loop(), None))

        def done(result):
            self._catch_up_running = None
            return result

        if not d.called:
            self._catch_up_running = d
            d.addBoth(done)
        return d

    async def _catch_up_loop(self):
        self._catch_up_again = True
        while self._catch_up_again and not self._stopped:
            self._catch_up_again = False
            await self.catch_up()

    async def catch_up(self):
        """Apply every journal entry after our cursor; a full reconcile only on 410."""
        while not self._stopped:
            since = self.state.cursor
            try:
                changes, cursor, has_more = await self.server.changes(since)
            except CursorExpired:
                self.log.warn("journal cursor {cursor} expired on the server: full reconcile", cursor=since)
                await self.reconcile()
                return
            self._went_online()
            # the client's own changes are in the journal too (the WebSocket never sends them):
            # they are already in the folder and its state, and replaying an old one (a
            # directory's Create, say, read before the Move that followed it was journalled)
            # would bring back what the folder has since moved or removed
            jobs = [
                self._apply(c.seq, c.operation)
                for c in changes
                if c.seq > since and c.seq not in self._seen_ahead and c.source_client != self.client_id
            ]
            if jobs:
                await defer.DeferredList(jobs)
            if cursor >= self.state.cursor:
                self.state.set_cursor(cursor)
            self._seen_ahead = {s for s in self._seen_ahead if s > cursor}
            self._absorb_seen_ahead()
            if not has_more or not changes:
                return

    # -- full (or subtree) reconcile -----------------------------------------------------

    def reconcile(self, prefix=None, listing=None, held=frozenset(), pull_first=False):
        """Three-way reconcile of the whole folder, or of the subtree ``prefix``;
        ``listing`` replaces the server's listing (``[]``: the server deleted the subtree)."""
        if prefix is None:
            if self._reconcile_running is not None:
                return self._reconcile_running
            d = defer.ensureDeferred(self._reconcile(None, listing, held, pull_first))

            def done(result):
                self._reconcile_running = None
                return result

            self._reconcile_running = d
            d.addBoth(done)
            return d
        return defer.ensureDeferred(self._reconcile(prefix, listing, held, pull_first))

    async def _reconcile(self, prefix, listing, held, pull_first):
        head = None
        trusted = listing is not None
        if listing is None:
            if prefix is None:
                head = await self.server.journal_head()
            listing = await self.server.list()
            self._went_online()

        def inside(path):
            return prefix is None or is_inside(path, prefix)

        remote = {m.path: m for m in listing if inside(m.path) and not self.is_ignored(m.path, m.is_directory)}
        # a directory's own metadata is not part of an empty subtree listing
        bases = {p: b for p, b in self.state.bases.items() if inside(p) and not self.is_ignored(p, b.entry.is_directory)}
        local = await deferToThread(localfs.scan, self.folder, dict(self.state.bases), self.is_ignored, prefix)
        trust = trusted or bool(listing) or not bases
        result = plan(
            {p: v.entry for p, v in local.items()},
            {p: entry_of(m) for p, m in remote.items()},
            {p: b.entry for p, b in bases.items()},
            self.strategy,
            suspects={p for p, v in local.items() if v.suspect},
            allow_mass_delete=self.allow_mass_delete,
            trust_remote_deletes=trust,
            synced_files=sum(1 for b in self.state.bases.values() if not b.entry.is_directory),
        )
        if result.mass_delete_held:
            self.log.warn(
                "mass delete held: this reconcile would delete {count} of {synced} synced files; nothing was "
                "deleted. Restore the files, or restart the client with --allow-mass-delete to confirm",
                count=result.mass_delete_held,
                synced=sum(1 for b in self.state.bases.values() if not b.entry.is_directory),
            )
        if result.remote_deletes_distrusted:
            self.log.warn(
                "the server listed nothing although {count} files were synced; not deleting anything locally",
                count=result.remote_deletes_distrusted,
            )
        await self._execute_plan(result, local, remote, held, pull_first)
        if prefix is None:
            self.last_full_reconcile = self.reactor.seconds()
            if head is not None and head > self.state.cursor:
                self.state.set_cursor(head)
                self._seen_ahead = {s for s in self._seen_ahead if s > head}
            for path in list(self.state.pending):
                if path not in self.state.bases and path not in local:
                    self.state.unqueue(path)

    async def _execute_plan(self, result, local, remote, held, pull_first):
        todo = result.actionable
        if not todo:
            return
        transfers = [d for d in todo if d.action in (Action.UPLOAD, Action.DOWNLOAD, Action.CONFLICT) and not d.is_directory]
        progress = Progress(
            files_total=len(todo),
            bytes_total=sum((d.local if d.action is Action.UPLOAD else d.remote).size for d in transfers if d.action is not Action.CONFLICT),
        )
        ticker = task.LoopingCall(self._log_progress, progress)
        ticker.clock = self.reactor
        ticker.start(PROGRESS_EVERY, now=False)
        try:
            if pull_first:
                pulls = [d for d in todo if d.action in (Action.DOWNLOAD, Action.MOVE_LOCAL, Action.DELETE_LOCAL, Action.RECORD, Action.FORGET)]
                await self._run_phases(pulls, local, remote, held, progress)
                todo = [d for d in todo if d not in pulls]
            await self._run_phases(todo, local, remote, held, progress)
        finally:
            ticker.stop()
        if progress.files_total >= 50 or progress.bytes_total >= 50 << 20:
            self._log_progress(progress, final=True)

    async def _run_phases(self, decisions, local, remote, held, progress):
        """Directories and moves one by one (parents first); transfers and the rest in
        parallel (bounded); deletes last, files in parallel, then directories deepest first."""
        sequential_first = [d for d in decisions if d.is_directory and d.action in (Action.UPLOAD, Action.DOWNLOAD)]
        deletes = [d for d in decisions if d.action in (Action.DELETE_LOCAL, Action.DELETE_REMOTE)]
        moves = [d for d in decisions if d.action in (Action.MOVE_LOCAL, Action.MOVE_REMOTE)]
        rest = [d for d in decisions if d not in sequential_first and d not in deletes and d not in moves]
        for d in sequential_first + moves:
            await self._execute_planned(d, local, remote, held, progress)
        await self._parallel(rest, local, remote, held, progress)
        await self._parallel([d for d in deletes if not d.is_directory], local, remote, held, progress)
        for d in [d for d in deletes if d.is_directory]:
            await self._execute_planned(d, local, remote, held, progress)

    async def _parallel(self, decisions, local, remote, held, progress):
        jobs = [self._limit.run(lambda d=d: defer.ensureDeferred(self._execute_planned(d, local, remote, held, progress))) for d in decisions]
        if jobs:
            await defer.DeferredList(jobs)

    async def _execute_planned(self, d, local, remote, held, progress):
        """One planned decision, under its locks, if the base is still what it was planned on."""
        paths = {d.path} | ({d.source} if d.source else set())
        taken = await self._locks.acquire(paths - set(held))
        try:
            current = self.state.base(d.path)
            if (current.entry if current else None) != d.base and d.source is None:
                self.request(d.path, FETCH)  # something happened meanwhile: decide again
                return
            await self._guard(self._execute(d, local.get(d.path), remote.get(d.path), progress=progress), d.path)
        finally:
            self._locks.release(taken)

    def _log_progress(self, progress, final=False):
        elapsed = max(time.monotonic() - progress.started, 1e-6)
        self.log.info(
            "{what}: {files_done}/{files_total} files, {bytes_done}/{bytes_total} bytes, {rate:.1f} MB/s, {files_rate:.0f} files/s",
            what="sync finished" if final else "sync progress",
            files_done=progress.files_done,
            files_total=progress.files_total,
            bytes_done=progress.bytes_done,
            bytes_total=progress.bytes_total,
            rate=progress.bytes_done / elapsed / 1e6,
            files_rate=progress.files_done / elapsed,
        )
