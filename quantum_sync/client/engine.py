"""The engine: keeps one local folder converged with the server.

Three ways in, one way through:

- :meth:`Engine.local_changed` / :meth:`Engine.local_moved` (from the watcher; intake.py),
- :meth:`Engine.remote_operation` (a FileOperation from the WebSocket, or a journal
  entry from :meth:`Engine.catch_up`; catchup.py),
- :meth:`Engine.reconcile` (a full, or subtree, three-way reconcile: on start, every
  ``--interval`` while the WebSocket is down, after the journal was lost, and as a
  periodic safety net; fullsync.py).

All of them end in per-path jobs (:meth:`Engine.request`): the path's life is the state
machine of pathstate.py, and its job carries out one
:class:`~quantum_sync.client.reconcile.Decision` at a time under that path's lock
(actions.py).
"""

import functools
import os

import attrs
from twisted.internet import defer
from twisted.logger import Logger

from quantum_sync.client import localfs
from quantum_sync.client.actions import Actions
from quantum_sync.client.batches import ThreadBatcher
from quantum_sync.client.catchup import RemoteChanges
from quantum_sync.client.fullsync import FullSync
from quantum_sync.client.ignore import IGNORE_FILE, IgnoreRules
from quantum_sync.client.intake import LocalIntake
from quantum_sync.client.locks import PathLocks
from quantum_sync.client.pathstate import FETCH, UNKNOWN, UNSEEN, PathStates, Phase
from quantum_sync.client.pausing import PauseHold
from quantum_sync.client.prehash import GrowingHashes
from quantum_sync.client.selection import EVERYTHING
from quantum_sync.client.reconcile import entry_of
from quantum_sync.client.state import Base, tmp_dir
from quantum_sync.client.transferlog import TransferLog
from quantum_sync.client.transfer import RequestRefused, SMALL_TRANSFER, ServerUnavailable
from quantum_sync.client.waiting import UP, Waiting, remote_change
from quantum_sync.diskio import Budget, OwnWrites
from quantum_sync.errors import SyncError
from quantum_sync.paths import normalize
from quantum_sync.resolve import resolve
from quantum_sync.protocol import FileMetadata
from quantum_sync.threads import ReactorThreads

__all__ = ["Engine", "FETCH", "UNKNOWN", "UNSEEN", "entry_of"]

#: Files up to this size are read with their hash and uploaded from memory...
INLINE_UPLOAD = 64 * 1024
#: ...while the bytes held that way stay below this (beyond it, uploads stream from disk).
INLINE_BUDGET = 16 << 20


@attrs.frozen
class _Assumed:
    """No news from the server: decide on ``remote``, the base taken as its version."""

    remote: object


#: A local look found nothing to do.
_SETTLED = object()


class Engine:
    """Drives one folder. Owns no network connection of its own: ``server`` is a
    :class:`~quantum_sync.client.transfer.ServerClient`."""

    log = Logger()

    def __init__(self, reactor, folder, state, server, client_id, strategy="rename", allow_mass_delete=False, retry_delay=0.5,
                 selection=EVERYTHING, threads=None):
        self.reactor = reactor
        #: where blocking work runs (a :class:`~quantum_sync.threads.ThreadPoolService`)
        self.threads = threads if threads is not None else ReactorThreads(reactor)
        self.folder = folder
        self.state = state
        self.server = server
        self.client_id = client_id
        self.strategy = strategy
        self.allow_mass_delete = allow_mass_delete
        self.retry_delay = retry_delay
        self.rules = IgnoreRules.from_file(os.path.join(folder, IGNORE_FILE))
        #: this client's own selective-sync rules (a path outside is neither synced nor deleted)
        self.selection = selection
        self.online = None  # unknown until the first answer
        self.last_error = None  # why the server was last unreachable or refusing
        self.last_full_reconcile = None
        self.stopped = False
        self.locks = PathLocks()
        #: paused: no new transfers, what is asked meanwhile replayed by :meth:`resume`
        self.pause = PauseHold()
        self.paths = PathStates()
        #: the changes waiting to go up or down one by one (a reconcile's Progress counts its own)
        self.waiting = Waiting()
        self._retry_calls = {}
        self.growing = GrowingHashes(folder)  # fed by the watcher (FolderWatcher on_grow)
        self._inline = Budget(INLINE_BUDGET)
        self._versions = ThreadBatcher(
            reactor, self.threads,
            lambda items: localfs.versions(folder, items, keep=INLINE_UPLOAD, hash_limit=SMALL_TRANSFER, budget=self._inline),
        )
        #: Downloads just installed, until the watcher's thread recognises their events.
        self.installed = OwnWrites()
        # two at once: a batch's fsyncs overlap the next one's writes (a path is in one at most:
        # its job holds the path's lock until its install is done)
        self.installs = ThreadBatcher(
            reactor, self.threads, lambda items: localfs.install_many(folder, tmp_dir(folder), items, self.installed), concurrency=2)
        self.transfers = TransferLog(reactor)
        #: The watcher is running: a local change after a read is reported to us anyway.
        self.watched = False
        self.actions = Actions(self)
        self.intake = LocalIntake(self)
        self.remote = RemoteChanges(self)
        self.fullsync = FullSync(self)

    # -- the surface the service, the watcher and the link use ---------------------------

    def local_changed(self, path: str, stat=UNSEEN):
        """The watcher saw ``path`` change (created, written, deleted); ``stat`` is its
        :class:`~quantum_sync.client.localfs.LocalStat` seen just after (None: gone)."""
        return self.intake.changed(path, stat)

    def local_moved(self, source: str, destination: str):
        """The watcher saw ``source`` renamed to ``destination`` inside the folder."""
        if not self.is_ignored(destination):
            self.waiting.note(destination, UP)
        if self.pause.paused:
            self.pause.hold_path(source)
            self.pause.hold_path(destination)
            return defer.succeed(None)
        return self.intake.moved(source, destination).addBoth(self._ended, destination)

    def upload_started(self, announced):
        """Another client began a large upload (a :class:`~quantum_sync.protocol.UploadStarted`)."""
        if not self.pause.paused:
            self.remote.upload_started(announced)

    def remote_operation(self, seq, operation, journal_id=None):
        """A FileOperation from the server (``seq`` None when it carries none); a Deferred
        that fires when it has been applied."""
        if self.pause.paused:
            self.pause.hold_catch_up()  # not heard: the catch-up on resume brings it
            waits = remote_change(operation)
            if waits is not None:
                self.waiting.hold_down(*waits)
            return defer.succeed(None)
        return self.remote.operation(seq, operation, journal_id)

    def journal_named(self, journal_id):
        """The server named its journal (the Subscribe Ack)."""
        return self.remote.journal_named(journal_id)

    def catch_up_soon(self):
        """Catch up from the journal (coalesced); a Deferred."""
        if self.pause.paused:
            self.pause.hold_catch_up()
            return defer.succeed(None)
        return self.remote.catch_up_soon()

    async def catch_up(self):
        """Apply every journal entry after the cursor."""
        if self.pause.paused:
            self.pause.hold_catch_up()
            return
        await self.remote.catch_up()

    def reconcile(self, prefix=None, listing=None, held=frozenset(), pull_first=False):
        """Three-way reconcile of the whole folder, or of the subtree ``prefix``;
        ``listing`` replaces the server's listing (``[]``: the server deleted the subtree)."""
        if self.pause.paused:
            self.pause.hold_reconcile()
            return defer.succeed(None)
        return self.fullsync.reconcile(prefix, listing, held, pull_first)

    def pause_transfers(self):
        """Start no new transfer (running ones finish); keep noting what changes. The
        pause is recorded in the state, so it holds after a restart too."""
        self.pause.pause()
        self.state.set_paused(True)

    def resume(self):
        """Sync what changed while paused: the paths noted, the journal, a reconcile."""
        held = self.pause.resume()
        self.state.set_paused(False)
        self.waiting.resumed()
        for path in sorted(held.paths):
            self.request(path, FETCH)
        if held.catch_up:
            self.catch_up_soon()
        if held.reconcile:
            self.reconcile().addErrback(lambda f: self.log.failure("reconcile after resume failed", f))

    def job_ended(self, path):
        """The work on ``path`` is over: it waits to go up or down no more, unless it
        waits again (a job queued, a retry, the queue for the server, the resume)."""
        if not self._waits(path):
            self.waiting.drop(path)

    def _ended(self, result, path):
        self.job_ended(path)
        return result

    def _waits(self, path) -> bool:
        return (path in self.paths or path in self._retry_calls or path in self.state.pending
                or self.pause.holds(path))

    def sweep_waiting(self):
        """Forget what waits on no job any more (after a full reconcile: it went over all)."""
        self.waiting.keep(self._waits)

    @property
    def _reconcile_running(self):
        return self.fullsync.running

    def retry_pending(self):
        """Sync again the paths whose job failed while the server was unreachable.

        Each path is decided on the server's current version (FETCH): a queued path may
        be a remote change whose download failed, which neither the local folder nor the
        base remembers (and the journal cursor has moved past it)."""
        pending = list(self.state.pending.items())
        moved_away = {source for _, source in pending if source}
        for path, source in pending:
            if source:
                self.local_moved(source, path)
            elif path not in moved_away:  # the source of a move waiting: the Move covers it
                self.request(path, FETCH)

    def stop(self):
        self.stopped = True
        self.transfers.flush()
        self.actions.deletes.stop()
        self.growing.stop()
        for call in self._retry_calls.values():
            if call.active():
                call.cancel()
        self._retry_calls.clear()

    @property
    def progress(self):
        """The :class:`~quantum_sync.client.fullsync.Progress` of the full reconcile, or
        else of the large journal catch-up, being carried out (None: none is)."""
        return self.fullsync.progress or self.remote.progress

    async def idle(self):
        """Wait until no per-path job and no local move is running (used when stopping
        and by tests)."""
        while busy := [*self.paths.jobs(), *self.intake.moving]:
            await defer.DeferredList(busy)

    # -- helpers shared by the parts -----------------------------------------------------

    def abspath(self, path: str) -> str:
        """The on-disk name of ``path``; INVALID_PATH for anything outside the folder."""
        return resolve(self.folder, path)

    def is_ignored(self, path: str, is_directory: bool = False) -> bool:
        """Excluded by ``.syncignore`` or outside this client's selection."""
        return self.rules.is_ignored(path, is_directory) or not self.selection.selects(path, is_directory)

    def went_online(self):
        if self.online is not True:
            self.log.info("server {url} reachable", url=self.server.server_url)
        self.online = True

    def went_offline(self, reason):
        self.last_error = reason
        if self.online is not False and not self.stopped:  # (a stop aborts what is in flight)
            self.log.warn("server unavailable or refusing; local changes are queued: {reason}", reason=reason)
        self.online = False

    _went_offline = went_offline  # the service's name for it

    def record(self, path, meta, local_stat):
        """``meta`` is now the version both sides hold."""
        self.state.set_base(
            path, Base(entry_of(meta), meta.modified, local_stat.size if local_stat else 0, local_stat.mtime_ns if local_stat else 0)
        )
        self.state.unqueue(path)
        self.paths.refetch(path)

    def refresh_stat(self, path, base, local):
        """The synced version's local stat changed (a touch): remember the new one."""
        if base is not None and not local.entry.is_directory and (base.local_size, base.local_mtime_ns) != (local.stat.size, local.stat.mtime_ns):
            self.state.set_base(path, attrs.evolve(base, local_size=local.stat.size, local_mtime_ns=local.stat.mtime_ns))

    def is_synced(self, path, stat) -> bool:
        """Whether ``stat``, seen by the watcher, shows the synced version (or no file, and
        none synced): the same size-and-mtime rule that lets a scan skip hashing. Never
        while an operation on the path is in flight (an upload records its base only when
        it lands: a delete seen before that is a change)."""
        return not self.locks.locked(path) and self._matches_base(path, stat)

    def _matches_base(self, path, stat) -> bool:
        base = self.state.base(path)
        return localfs.unchanged(stat, base) or (stat is None and base is None)

    async def local_version(self, path, with_bytes=False):
        """The local version of ``path``; ``with_bytes``: a small file's bytes come with it,
        and the caller gives them back to ``self._inline`` when done."""
        base = self.state.base(path)
        local = await self._versions.submit((path, base, with_bytes))
        if local is localfs.UNHASHED:  # a large file to hash: not in the batch of small ones
            abspath = self.abspath(path)
            local = await self.threads.defer(localfs.version, abspath, base, prehashed=self.prehashed(path, abspath, base))
        return local

    def prehashed(self, path, abspath, base=None):
        """The ``prehashed(size)`` of ``path`` (at ``abspath``, as the caller resolved or
        walked to it: a scan meets symlinks that resolving would refuse) for
        :func:`~quantum_sync.client.localfs.version` against ``base`` (any thread): the
        hash taken while it was written, else for a file deltas apply to its hash and
        block list from one read (the list kept: no second read for a delta).

        A hash taken while written that names ``base``'s version is not used: the file
        was written since it was synced (else it is not hashed), and with that digest
        the change would be taken for none, nothing uploaded for the server to check."""
        take = functools.partial(self.growing.take, path)
        if base is not None and not base.entry.is_directory:
            take = functools.partial(_unless, take, base.entry.hash)
        return self.actions.deltas.prehashed(abspath, take)

    async def guard(self, coroutine, path):
        """Run one job; failures are logged and retried later, never raised."""
        try:
            await coroutine
        except ServerUnavailable as e:
            self.went_offline(str(e))
            if path:
                self.state.queue(path)
        except localfs.LocalChanged:
            self.retry_later(path)
        except RequestRefused as e:
            self.log.warn("server refused an operation on {path}: {error}", path=path, error=str(e))
        except SyncError as e:
            self.log.warn("refused path {path}: {error}", path=path, error=e.message)
        except OSError as e:
            self.log.error("local file error on {path}: {error}", path=path, error=str(e))
        except Exception:
            self.log.failure("unexpected error while syncing {path}", path=path)

    def retry_later(self, path, delay=None, hint=UNKNOWN):
        """Look at ``path`` again in ``delay`` seconds (by default when the local file has
        settled); a retry already waiting is pushed back."""
        if not path or self.stopped:
            return
        delay = delay or self.retry_delay
        old = self._retry_calls.get(path)
        if old is not None and old.active():
            if hint is UNKNOWN:
                old.reset(delay)
                return
            old.cancel()  # this one knows more (ask the server): it replaces the waiting one

        def fire():
            self._retry_calls.pop(path, None)
            self.request(path, hint)

        self._retry_calls[path] = self.reactor.callLater(delay, fire)

    # -- per-path jobs -------------------------------------------------------------------

    def request(self, path: str, hint=UNKNOWN, stat=UNSEEN, waits=None):
        """Sync ``path`` soon (coalesced with a job already queued or running for it);
        ``hint`` is what is known of the server's version, ``stat`` what the watcher saw
        of the local file; ``waits``: the ``(direction, bytes)`` it waits to move until
        its job ends (:attr:`waiting`). A Deferred that fires when done."""
        if self.stopped:
            return defer.succeed(None)
        if self.pause.paused:
            if not self._seen_synced(path, hint, stat):
                self.pause.hold_path(path)
                self._note(path, waits)
            return defer.succeed(None)
        paths = self.paths
        idle = paths.phase(path) is Phase.IDLE
        if idle and self._seen_synced(path, hint, stat):
            return defer.succeed(None)  # the watcher saw the synced version: nothing to do
        self._note(path, waits)
        paths.request(path, hint, stat)
        if not idle:
            return paths.job(path)
        d = defer.ensureDeferred(self._drain(path))
        if not d.called:
            paths.attach(path, d)
        return d

    def _note(self, path, waits):
        if waits is not None:
            self.waiting.note(path, *waits)

    def _seen_synced(self, path: str, hint, stat) -> bool:
        """Whether the watcher saw ``path`` as its synced version, with no news of the server's."""
        return hint is UNKNOWN and stat is not UNSEEN and self.is_synced(path, stat)

    async def _drain(self, path):
        paths = self.paths
        try:
            while paths.phase(path) is Phase.QUEUED and not self.stopped:
                async with self.locks.hold(path):
                    taken = paths.take(path)
                    if taken.hint is UNKNOWN and taken.seen is not UNSEEN and self._matches_base(path, taken.seen):
                        continue  # a change already synced (our own download, or an upload's read)
                    await self.guard(self._sync_one(path, taken.hint, taken.seen), path)
        finally:
            paths.finish(path)
            self.job_ended(path)

    async def _sync_one(self, path, hint, seen=UNSEEN):
        normalize(path)
        base = self.state.base(path)
        if await self._download_onto_base(path, hint, base):
            return
        if seen is None and base is not None and base.entry.is_directory:
            # the watcher saw a synced folder gone (moved out, say): what was inside went with
            # it, even when the folder is back by now (a download into it made it again)
            return await self.reconcile(prefix=path, held={path})
        local = await self.local_version(path, with_bytes=True)
        try:
            return await self._sync_local(path, hint, base, local)
        finally:
            if local is not None and local.data is not None:
                self._inline.give(len(local.data))

    async def _sync_local(self, path, hint, base, local):
        if self.is_ignored(path, bool(local and local.entry.is_directory)):
            return
        if hint is UNKNOWN:
            base = await self._settled_base(path, base, local)
            hint = self._without_news(path, base, local)
            if hint is _SETTLED:
                return
            if isinstance(hint, _Assumed):
                return await self.actions.decide_and_execute(path, local, hint.remote, base)
        if hint is None and local is not None and local.entry.is_directory:
            return await self._sync_folder_deleted_remotely(path, base, local)
        if hint is FETCH:
            hint = await self.server.metadata(path)
            self.went_online()
        return await self._sync_against(path, hint, base, local)

    async def _sync_folder_deleted_remotely(self, path, base, local):
        """A folder deleted on the server, heard before a change of ours inside it may
        have landed there (re-creating it): ask; if it is back, look at all of it."""
        remote = await self.server.metadata(path)
        self.went_online()
        if remote is not None and remote.is_directory:
            return await self.reconcile(prefix=path, held={path})
        return await self._sync_against(path, remote, base, local)

    async def _settled_base(self, path, base, local):
        """The base of ``path``, once the downloads running below a folder that appeared
        here without one have landed: the folder may be the parent such a download made,
        which it records as synced (sent as a new folder instead, it would bring back
        one that another client deleted meanwhile)."""
        if base is None and local is not None and local.entry.is_directory:
            await self.locks.wait_below(path)
            return self.state.base(path)  # (read again: such a download may have ended meanwhile)
        return base

    def _without_news(self, path, base, local):
        """What a local change needs when nothing new is known of the server's version."""
        if local is None:
            return _SETTLED if base is None else FETCH  # a delete: edit beats delete, so look first
        if local.entry.same_content(base.entry if base else None):
            self.refresh_stat(path, base, local)
            return _SETTLED
        if base is None:
            return _Assumed(None)
        if local.entry.is_directory:
            return FETCH  # a kind change: look first
        entry = base.entry
        return _Assumed(FileMetadata(path, entry.size, base.modified, entry.hash, entry.is_directory))

    async def _sync_against(self, path, remote, base, local):
        if remote is not None and self.is_ignored(path, remote.is_directory):
            return
        if _kind_changed(local, remote, base):
            # a directory went away (or changed kind) on one side: reconcile what is below it,
            # so that nothing changed elsewhere in the subtree is deleted with it
            return await self.reconcile(prefix=path, listing=[] if remote is None else None, held={path})
        return await self.actions.decide_and_execute(path, local, remote, base)

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
            await self.actions.download(path, synced, hint)
        except localfs.LocalChanged:
            return False
        return True


def _unless(take, synced, size):
    """``take(size)``, None when that is ``synced``."""
    digest = take(size)
    return None if digest == synced else digest


def _kind_changed(local, remote, base) -> bool:
    """A directory on one side is gone, or not a directory, on another."""
    local_entry = local.entry if local else None
    base_entry = base.entry if base else None
    if not any(e is not None and e.is_directory for e in (local_entry, base_entry)):
        return False
    return local_entry is None or remote is None or not remote.is_directory or not local_entry.is_directory
