"""One :class:`~quantum_sync.client.reconcile.Decision` carried out.

Every local write is conditional on the local file still being the version the decision
was made on (``localfs``), every upload on the server still holding the base version
(``If-Match``/``If-None-Match``), so a race turns into a conflict, never into a loss. A
download the server refuses (a 4xx other than 404) or that fails on the local disk is
retried with backoff (:class:`DownloadRetries`), and stays in the offline queue until it
succeeds.
"""

import os
import posixpath
import time

from twisted.logger import Logger

from quantum_sync.blocklists import BlockLists
from quantum_sync.client import localfs
from quantum_sync.client.conflicts import conflict_name
from quantum_sync.client.deletegate import DeleteGate
from quantum_sync.client.delta import Deltas
from quantum_sync.client.ignore import IGNORE_FILE
from quantum_sync.client.pathstate import FETCH, UNKNOWN
from quantum_sync.client.reconcile import Action, Decision, decide, entry_of
from quantum_sync.client.state import state_dir, tmp_dir
from quantum_sync.client.transfer import DownloadCorrupt, PreconditionFailed, RequestRefused, SMALL_TRANSFER
from quantum_sync.protocol import Create, Delete, FileMetadata, Move

#: A failed download is tried again this many times, the delay doubling from the first...
DOWNLOAD_RETRIES = 5
#: ...up to this many seconds.
DOWNLOAD_RETRY_CAP = 60.0


class DownloadRetries:
    """Per path, the failed downloads in a row, and when to try the next one."""

    def __init__(self, first_delay: float, retries: int = DOWNLOAD_RETRIES, cap: float = DOWNLOAD_RETRY_CAP):
        self.first_delay, self.retries, self.cap = first_delay, retries, cap
        self._failures = {}

    def failed(self, path):
        """The delay before the next try, or None when the tries are used up (forgotten)."""
        failures = self._failures.get(path, 0) + 1
        if failures > self.retries:
            self._failures.pop(path, None)
            return None
        self._failures[path] = failures
        return min(self.first_delay * 2 ** (failures - 1), self.cap)

    def succeeded(self, path) -> None:
        self._failures.pop(path, None)

    def __len__(self):
        return len(self._failures)


class Actions:
    """Carries out decisions for an :class:`~quantum_sync.client.engine.Engine`."""

    log = Logger()

    def __init__(self, engine):
        self.engine = engine
        state = engine.state
        held = frozenset(p for p in state.held_deletes if p in state.bases)  # (the ones still synced)
        state.set_held_deletes(held)
        self.deletes = DeleteGate(engine.reactor, self._count_missing, self._count_synced, allow=engine.allow_mass_delete,
                                  held=held, on_held=state.set_held_deletes)
        self.download_retries = DownloadRetries(max(engine.retry_delay, 0.05) * 2)
        #: delta transfers of large files (block lists kept in the folder's state)
        self.deltas = Deltas(engine.server, BlockLists(os.path.join(state_dir(engine.folder), "blocks")), engine.threads)
        self._run = {
            Action.NOTHING: self._nothing,
            Action.RECORD: self._record,
            Action.FORGET: self._forget,
            Action.HOLD: self._hold,
            Action.UPLOAD: self._upload_decided,
            Action.DOWNLOAD: self._download_decided,
            Action.DELETE_LOCAL: self._delete_local_decided,
            Action.DELETE_REMOTE: self._delete_remote_decided,
            Action.CONFLICT: self._conflict_decided,
            Action.MOVE_LOCAL: self._move_local_decided,
            Action.MOVE_REMOTE: self._move_remote_decided,
        }

    async def decide_and_execute(self, path, local, remote, base, attempt=0):
        """Decide on the three versions of ``path`` and carry the decision out."""
        strategy = self.engine.strategy
        action = decide(local.entry if local else None, entry_of(remote), base.entry if base else None, strategy,
                        bool(local and local.suspect))
        decision = Decision(path, action, local.entry if local else None, entry_of(remote), base.entry if base else None)
        await self.execute(decision, local, remote, attempt)

    async def execute(self, d, local, remote, attempt=0):
        """Carry out ``d`` (``local``/``remote``: the versions it was decided on)."""
        await self._run[d.action](d, local, remote, attempt)

    # -- the actions, one by one ---------------------------------------------------------

    async def _nothing(self, d, local, remote, attempt):
        base = self.engine.state.base(d.path)
        if local is not None and base is not None:
            self.engine.refresh_stat(d.path, base, local)

    async def _record(self, d, local, remote, attempt):
        self.engine.record(d.path, remote, local.stat)

    async def _forget(self, d, local, remote, attempt):
        self.engine.state.forget(d.path)
        self.engine.state.unqueue(d.path)

    async def _hold(self, d, local, remote, attempt):
        self.log.warn(
            "suspect file {path} (zero bytes, not newer than the synced copy) is not uploaded; "
            "touch or rewrite it to send it",
            path=d.path,
        )

    async def _upload_decided(self, d, local, remote, attempt):
        await self.upload(d.path, local, remote, attempt)

    async def _download_decided(self, d, local, remote, attempt):
        await self.download(d.path, local, remote)

    async def _delete_local_decided(self, d, local, remote, attempt):
        await self._delete_local(d.path, local)

    async def _delete_remote_decided(self, d, local, remote, attempt):
        seen = d.remote or d.base  # the server's version the decision saw (unchanged since the base)
        await self._delete_remote(d.path, d.is_directory, "" if d.is_directory else seen.hash)

    async def _conflict_decided(self, d, local, remote, attempt):
        await self._conflict(d.path, local, remote)

    async def _move_local_decided(self, d, local, remote, attempt):
        await self._move_local(d.source, d.path)

    async def _move_remote_decided(self, d, local, remote, attempt):
        await self.move_remote(d.source, d.path)

    # -- uploads -------------------------------------------------------------------------

    async def upload(self, path, local, remote, attempt):
        engine = self.engine
        if local.entry.is_directory:
            return await self._create_remote_directory(path, local)
        if_match = remote.hash if remote is not None and not remote.is_directory else None
        base = engine.state.base(path)
        try:
            meta = await self._send(path, local, if_match)
        except PreconditionFailed:
            if attempt >= 2:
                raise
            # someone else changed the server's copy meanwhile: decide again on the real one
            real = await engine.server.metadata(path)
            return await self.decide_and_execute(path, local, real, base, attempt + 1)
        except RequestRefused as e:
            if e.code == "HASH_MISMATCH":
                raise localfs.LocalChanged(path) from None  # it changed while being sent
            raise
        engine.went_online()
        engine.record(path, meta, local.stat)
        engine.transfers.add("uploaded", path, meta.size)
        await self._after_upload(path, local)

    async def _send(self, path, local, if_match):
        """Upload ``local`` onto the server's version ``if_match``: as a delta when worth
        it, else whole (its bytes when read already). The stored FileMetadata."""
        engine = self.engine
        abspath = None if local.data is not None else engine.abspath(path)
        meta = None
        if abspath is not None and self.deltas.applies(local.entry.size):
            meta = await self.deltas.upload(path, abspath, local.entry.hash, if_match, local.entry.size,
                                            tmp_dir(engine.folder))
        if meta is None:
            meta = await engine.server.upload(path, abspath, local.entry.hash, if_match, local.entry.size,
                                              local.data)
        return meta

    async def _after_upload(self, path, local):
        engine = self.engine
        if path == IGNORE_FILE:
            await engine.intake.reload_rules()
        if not engine.watched:
            # the watcher reports a write made after the read; without it, look once more
            after = await engine.threads.defer(localfs.lstat, engine.abspath(path))
            if after != local.stat:
                engine.retry_later(path)

    async def _create_remote_directory(self, path, local):
        engine = self.engine
        meta = FileMetadata.directory(path, local.stat.mtime_ns / 1e9)
        (result,) = await engine.server.sync([Create(meta)])
        engine.went_online()
        status = result.get("status") if isinstance(result, dict) else None
        if status == "applied" or (status == "conflict" and (await engine.server.metadata(path) or meta).is_directory):
            engine.record(path, meta, local.stat)
            self.log.info("created directory {path} on the server", path=path)
            await engine.intake.check_children(path)
        else:
            raise RequestRefused(409, str(result.get("code")), str(result.get("message")))

    # -- downloads -----------------------------------------------------------------------

    async def download(self, path, local, remote):
        """Download ``remote`` onto ``local`` (the version the decision saw). LocalChanged
        goes up (decided again later); a refusal or a local disk error is retried."""
        try:
            await self._download(path, local, remote)
        except localfs.LocalChanged:
            raise
        except (OSError, RequestRefused) as e:
            self._download_failed(path, e)
        else:
            self.download_retries.succeeded(path)

    def _download_failed(self, path, error):
        engine = self.engine
        engine.state.queue(path)  # remembered across a restart, until a download succeeds
        delay = self.download_retries.failed(path)
        if delay is None:
            self.log.error("download of {path} failed again ({error}); it stays queued for the next reconnect "
                           "or reconcile", path=path, error=str(error))
            return
        self.log.warn("download of {path} failed ({error}); retrying in {delay:.1f} s", path=path, error=str(error),
                      delay=delay)
        engine.retry_later(path, delay, FETCH)

    async def _download(self, path, local, remote):
        engine = self.engine
        expected = local.stat if local else None
        if remote.is_directory:
            return await self._download_directory(path, remote)
        small = remote.size <= SMALL_TRANSFER
        try:
            if small:
                data = await engine.server.download_bytes(path, remote.hash, remote.size)
            else:
                staged = await self._download_staged(path, local, remote)
        except (DownloadCorrupt, RequestRefused) as e:
            if isinstance(e, RequestRefused) and e.status != 404:
                raise
            # the announcement was stale (the file changed or went away since): ask what is there now
            engine.request(path, FETCH)
            return
        engine.went_online()
        # LocalChanged: decided again later (then a conflict); OSError: retried, base untouched
        if small:
            st = await engine.installs.submit(localfs.Install(path, data, expected, remote.modified))
        else:
            st = await self._install_staged(path, staged, expected, remote)
        engine.record(path, remote, st)
        self._parents_synced(path, remote.modified)
        engine.transfers.add("downloaded", path, remote.size)
        if path == IGNORE_FILE:
            await engine.intake.reload_rules()

    async def _download_directory(self, path, remote):
        """Make the server's folder ``remote`` here, unless a synced folder above it is gone."""
        engine = self.engine
        missing = await engine.threads.defer(localfs.missing_ancestors, engine.folder, path)
        if any(engine.state.base(parent) is not None for parent in missing):
            # a synced folder above it was moved or deleted here and that change is on its
            # way: re-creating the folder would undo it; the server's outcome comes back
            return
        st = await engine.threads.defer(localfs.make_directory, engine.folder, engine.abspath(path))
        engine.record(path, remote, st)

    async def _download_staged(self, path, local, remote):
        """The server's version ``remote`` of ``path`` in a staged file: as a delta onto
        ``local`` when worth it, else whole. The staged file's name."""
        engine = self.engine
        staged = None
        # (a version already coming from the relay is claimed, not fetched again)
        if local is not None and self.deltas.applies(remote.size) \
                and not engine.server.prefetching(path, remote.hash):
            staged = await self.deltas.download(path, engine.abspath(path), local.entry.hash, local.stat,
                                                remote, tmp_dir(engine.folder))
        if staged is None:
            staged = await engine.server.download(path, remote.hash, tmp_dir(engine.folder), remote.size)
        return staged

    def _parents_synced(self, path, modified):
        """The folders above a file just downloaded are on the server too (it lists the
        parents it made for an upload): one that the install made here is synced from
        now on, not taken for a new local folder (sent back as a Create, it would bring
        back a folder another client deleted meanwhile)."""
        state = self.engine.state
        parent = posixpath.dirname(path)
        while parent and state.base(parent) is None:
            self.engine.record(parent, FileMetadata.directory(parent, modified), None)
            parent = posixpath.dirname(parent)

    async def _install_staged(self, path, staged, expected, remote):
        engine = self.engine
        try:
            return await engine.threads.defer(localfs.install, engine.folder, staged, engine.abspath(path), expected,
                                       remote.modified)
        except BaseException:
            await engine.threads.defer(localfs.unlink_quietly, staged)
            raise

    # -- deletes -------------------------------------------------------------------------

    async def _delete_local(self, path, local):
        engine = self.engine
        if local is not None:
            removed = await engine.threads.defer(localfs.remove, engine.abspath(path), local.stat)
            if not removed:
                return  # a directory with something new inside stays
            self.log.info("deleted {path} locally (deleted on the server)", path=path)
        engine.state.forget(path, recursive=True)

    def _count_missing(self, passed=frozenset()):
        """``(missing, synced)``: synced files gone from the folder now, of all synced
        files, leaving out ``passed`` (deletes sent whose base may not be forgotten yet)."""
        engine = self.engine
        files = [p for p, b in engine.state.bases.items() if not b.entry.is_directory and p not in passed]
        is_ignored, folder = engine.is_ignored, engine.folder

        def count():  # matching and stat of every synced file: off the reactor
            synced = [p for p in files if not is_ignored(p, False)]
            return sum(1 for p in synced if localfs.lstat(os.path.join(folder, p)) is None), len(synced)

        return engine.threads.defer(count)

    def _count_synced(self):
        return sum(1 for b in self.engine.state.bases.values() if not b.entry.is_directory)

    def _files_below(self, path):
        prefix = path + "/"
        return [p for p, b in self.engine.state.bases.items() if p.startswith(prefix) and not b.entry.is_directory]

    async def _delete_remote(self, path, is_directory, seen):
        """Delete ``path`` on the server if it still holds ``seen`` (a file's hash; ``""``:
        a directory with no file left below). Refused: the path is decided again on the
        server's version, so a change this client never saw comes back (edit beats delete)."""
        engine = self.engine
        # a directory deleted on the server takes every synced file below it along
        if not await self.deletes.admit(path, self._files_below(path) if is_directory else None):
            return  # a mass delete: held (logged); the base stays, so nothing is forgotten
        if is_directory and not engine.selection.everything and await self._holds_unselected(path):
            engine.state.forget(path)
            self.log.info("kept directory {path} on the server: it holds files outside this client's selection",
                          path=path)
            return
        (result,) = await engine.server.sync([Delete(path, seen)])
        engine.went_online()
        self._delete_answered(path, is_directory, result)

    def _delete_answered(self, path, is_directory, result):
        """Act on the server's ``result`` of a Delete of ``path``: forget it when gone,
        sync it again when it changed there; RequestRefused for anything else."""
        engine = self.engine
        status = result.get("status") if isinstance(result, dict) else None
        if status == "applied" or (status == "error" and result.get("code") == "NOT_FOUND"):
            engine.state.forget(path, recursive=is_directory)
            engine.state.unqueue(path)
            engine.paths.refetch(path)
            self.log.info("deleted {path} on the server", path=path)
        elif status == "conflict" and result.get("code") == "PRECONDITION_FAILED":
            self.log.info("not deleted on the server: {path} changed there since this client saw it; "
                          "it is synced again", path=path)
            engine.request(path, FETCH)
        else:
            raise RequestRefused(409, str(result.get("code")), str(result.get("message")))

    async def _holds_unselected(self, directory) -> bool:
        """Whether the server holds something below ``directory`` that this client does not
        sync (deleting the directory there would take it along)."""
        selects, prefix = self.engine.selection.selects, directory + "/"
        listing = await self.engine.server.list()
        return any(m.path.startswith(prefix) and not selects(m.path, m.is_directory) for m in listing)

    # -- conflicts and moves -------------------------------------------------------------

    async def _conflict(self, path, local, remote):
        engine = self.engine
        copy = conflict_name(path, time.time(), engine.client_id)
        await engine.threads.defer(localfs.rename, engine.folder, engine.abspath(path), engine.abspath(copy), local.stat)
        self.log.warn(
            "conflict on {path}: changed on both sides; the local version is kept as {copy}",
            path=path,
            copy=copy,
        )
        await self.download(path, None, remote)
        engine.request(copy, UNKNOWN)

    async def _move_local(self, source, destination):
        engine = self.engine
        base = engine.state.base(source)
        local = await engine.local_version(source)
        if base is None or local is None or not local.entry.same_content(base.entry):
            raise localfs.LocalChanged(source)
        await engine.threads.defer(localfs.rename, engine.folder, engine.abspath(source), engine.abspath(destination), local.stat)
        engine.state.move(source, destination)
        self.log.info("moved {source} to {destination} locally (moved on the server)", source=source,
                      destination=destination)

    async def move_remote(self, source, destination):
        """Send a Move; refused (the target exists, the source changed): each path synced."""
        engine = self.engine
        (result,) = await engine.server.sync([Move(source, destination)])
        engine.went_online()
        status = result.get("status") if isinstance(result, dict) else None
        if status == "applied":
            engine.state.move(source, destination)
            engine.state.unqueue(destination)
            engine.state.unqueue(source)
            engine.paths.refetch(source)
            engine.paths.refetch(destination)
            engine.remote.moved(result.get("seq"), source, destination)
            self.log.info("moved {source} to {destination} on the server", source=source, destination=destination)
        else:
            engine.request(source, FETCH)
            engine.request(destination, FETCH)
