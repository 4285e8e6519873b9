"""A full (or subtree) three-way reconcile: planned, then carried out in phases.

The server's listing, a scan of the folder and the bases go to
:func:`~quantum_sync.client.reconcile.plan` in a thread (for a large folder, matching
and sorting every path would hold the reactor for seconds); the plan is then carried out
in phases: directories and moves one by one (parents first), transfers and the rest in
parallel (bounded), deletes last (files in parallel, then directories deepest first).
Each decision runs under its locks and only if the base is still what it was planned on.
"""

import errno
import os
import stat
import time

import attrs
from twisted.internet import defer, task
from twisted.logger import Logger

from quantum_sync.client import localfs
from quantum_sync.client.pathstate import FETCH
from quantum_sync.client.reconcile import Action, entry_of, plan
from quantum_sync.paths import is_inside

PROGRESS_EVERY = 2.0
PLAN_CONCURRENCY = 16
#: A worker that finds nothing to wait for gives the reactor a turn after this long.
TURN = 0.02

_PULLS = frozenset((Action.DOWNLOAD, Action.MOVE_LOCAL, Action.DELETE_LOCAL, Action.RECORD, Action.FORGET))
_TRANSFERS = frozenset((Action.UPLOAD, Action.DOWNLOAD))
_MOVES = frozenset((Action.MOVE_LOCAL, Action.MOVE_REMOTE))
_DELETES = frozenset((Action.DELETE_LOCAL, Action.DELETE_REMOTE))


@attrs.define
class Progress:
    """Counts for the steady progress line of a large reconcile (and ``status``); the
    ``up_*`` and ``down_*`` counts are what is left to upload and download."""

    files_total: int = 0
    bytes_total: int = 0
    files_done: int = 0
    bytes_done: int = 0
    started: float = attrs.field(factory=time.monotonic)
    up_files: int = 0
    up_bytes: int = 0
    down_files: int = 0
    down_bytes: int = 0

    @property
    def rate(self) -> float:
        """Bytes a second so far."""
        return self.bytes_done / max(time.monotonic() - self.started, 1e-6)

    @property
    def seconds_left(self):
        """The time left at the rate so far (files when no bytes move); None: unknown."""
        elapsed = max(time.monotonic() - self.started, 1e-6)
        if self.bytes_total and self.bytes_done:
            return (self.bytes_total - self.bytes_done) / (self.bytes_done / elapsed)
        if self.files_done:
            return (self.files_total - self.files_done) / (self.files_done / elapsed)
        return None

    @classmethod
    def of(cls, todo, bytes_total):
        """The progress of carrying out the decisions ``todo``."""
        moves = [t for t in map(_transfer, todo) if t is not None]
        uploads = [size for direction, size in moves if direction == "up"]
        downloads = [size for direction, size in moves if direction == "down"]
        return cls(files_total=len(todo), bytes_total=bytes_total, up_files=len(uploads), up_bytes=sum(uploads),
                   down_files=len(downloads), down_bytes=sum(downloads))

    def finished(self, d) -> None:
        """Decision ``d`` was carried out."""
        self.came(*(_transfer(d) or ()))

    def coming(self, direction=None, size=0) -> None:
        """One more change to carry out (``direction`` "up" or "down": a file of ``size``
        bytes to move that way), for work learnt page by page (a journal catch-up)."""
        self.files_total += 1
        if direction is not None:
            self.bytes_total += size
            self._waiting(direction, 1, size)

    def came(self, direction=None, size=0) -> None:
        """One change carried out (as :meth:`coming` announced it)."""
        self.files_done += 1
        if direction is not None:
            self.bytes_done += size
            self._waiting(direction, -1, -size)

    def left(self, direction) -> tuple:
        """``(files, bytes)`` left to move ``direction`` ("up" or "down")."""
        return (self.up_files, self.up_bytes) if direction == "up" else (self.down_files, self.down_bytes)

    def _waiting(self, direction, files, size):
        if direction == "up":
            self.up_files, self.up_bytes = self.up_files + files, self.up_bytes + size
        else:
            self.down_files, self.down_bytes = self.down_files + files, self.down_bytes + size


class Reported:
    """While a piece of work runs (:meth:`start` to :meth:`stop`): its progress logged
    every :data:`PROGRESS_EVERY` seconds; when it is ``large``, the transfer lines at the
    debug level meanwhile and a last line once it is :meth:`finished`. ``what``: the words of the lines (``sync``: ``sync progress``,
    ``sync finished``)."""

    def __init__(self, engine, log, progress, large: bool, what: str = "sync"):
        self.engine, self.log, self.progress, self.large, self.what = engine, log, progress, large, what
        self._ticker = task.LoopingCall(self.line)
        self._ticker.clock = engine.reactor

    def start(self) -> "Reported":
        self._ticker.start(PROGRESS_EVERY, now=False)
        if self.large:
            self.engine.transfers.quiet += 1  # the progress line instead of a line per batch
        return self

    def stop(self) -> None:
        if self._ticker.running:
            self._ticker.stop()
            if self.large:
                self.engine.transfers.quiet -= 1

    def finished(self) -> None:
        """The work is done: its last line (when large)."""
        if self.large:
            self.line(final=True)

    def line(self, final=False):
        progress = self.progress
        elapsed = max(time.monotonic() - progress.started, 1e-6)
        left = progress.seconds_left
        self.log.info(
            "{what}: {files_done}/{files_total} files, {bytes_done}/{bytes_total} bytes, {rate:.1f} MB/s, "
            "{files_rate:.0f} files/s{left}",
            what=f"{self.what} finished" if final else f"{self.what} progress",
            files_done=progress.files_done,
            files_total=progress.files_total,
            bytes_done=progress.bytes_done,
            bytes_total=progress.bytes_total,
            rate=progress.bytes_done / elapsed / 1e6,
            files_rate=progress.files_done / elapsed,
            left="" if final or left is None else f", about {left:.0f} s left",
        )


@attrs.frozen
class Scope:
    """What one reconcile covers: ``prefix`` (None: everything); ``listing`` replaces the
    server's (``[]``: the server deleted the subtree); ``held``: paths whose locks the
    caller holds; ``journal``: set when the cursor is dropped (:class:`JournalStart`)."""

    prefix: str = None
    listing: list = None
    held: frozenset = frozenset()
    pull_first: bool = False
    journal: object = None

    @property
    def restored(self) -> bool:
        """A full reconcile with a journal that started over (see :class:`JournalStart`)."""
        return self.journal is not None and self.journal.restored


@attrs.frozen
class JournalStart:
    """The journal a full reconcile starts the cursor in: its head and id, and whether it
    is a journal that started over (then what the server lost is uploaded again)."""

    head: int = None
    journal_id: str = None
    restored: bool = False


@attrs.frozen
class Planned:
    """A plan and what its execution needs (made in a thread)."""

    result: object
    remote: dict
    synced: int
    todo: list
    bytes_total: int


def make_plan(scope, listing, trusted, bases_all, local, is_ignored, strategy, allow_mass_delete,
              special=frozenset()) -> Planned:
    """The plan for ``scope`` (pure; run in a thread): ``bases_all`` is a copy of every base;
    ``special``: paths left alone (:func:`special_paths`), neither deleted nor downloaded."""
    remote, bases = _in_scope(scope.prefix, listing, bases_all, is_ignored, special)
    synced = sum(1 for b in bases_all.values() if not b.entry.is_directory)
    result = plan(
        {p: v.entry for p, v in local.items()},
        {p: entry_of(m) for p, m in remote.items()},
        {p: b.entry for p, b in bases.items()},
        strategy,
        suspects={p for p, v in local.items() if v.suspect},
        allow_mass_delete=allow_mass_delete,
        # an empty listing where files were synced is more likely a fault than a wipe
        trust_remote_deletes=trusted or bool(listing) or not bases,
        synced_files=synced,
        restore_remote_deletes=scope.restored,
    )
    todo = result.actionable
    return Planned(result, remote, synced, todo, _bytes_moved(todo))


def _in_scope(prefix, listing, bases_all, is_ignored, special=frozenset()):
    """The server's entries and the bases inside ``prefix`` (None: all), ignored ones and
    ``special`` ones left out."""

    def inside(path):
        return prefix is None or is_inside(path, prefix)

    remote = {m.path: m for m in listing if inside(m.path) and not is_ignored(m.path, m.is_directory)}
    # a directory's own metadata is not part of an empty subtree listing
    bases = {p: b for p, b in bases_all.items() if inside(p) and not is_ignored(p, b.entry.is_directory)}
    return _without(remote, special), _without(bases, special)


def _without(found: dict, special) -> dict:
    return {p: v for p, v in found.items() if p not in special} if special else found


def special_paths(folder, prefix, listing, bases, local) -> tuple:
    """``(paths, names)``: the synced or listed paths inside ``prefix`` (None: all) that the
    scan ``local`` did not find because a FIFO, socket, device or symlink is in their place
    (or in place of a folder above them), and those special names themselves. Such a path
    is never synced, and no reason to delete the server's file or to download over it
    (blocking: a thread; one lstat per path the scan did not find)."""
    candidates = {m.path for m in listing} | set(bases)
    paths, names = set(), set()
    for path in candidates:
        if path in local or (prefix is not None and not is_inside(path, prefix)):
            continue
        name = _special_at(folder, path)
        if name is not None:
            paths.add(path)
            names.add(name)
    return paths, names


def _special_at(folder, path):
    """The path of the special entry at ``path`` or above it; None when there is none."""
    try:
        st = os.lstat(os.path.join(folder, path))
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno != errno.ENOTDIR:
            return None
        parts = path.split("/")  # something above is not a folder: which one
        for end in range(1, len(parts)):
            above = "/".join(parts[:end])
            try:
                st = os.lstat(os.path.join(folder, above))
            except OSError:
                return None
            if not stat.S_ISDIR(st.st_mode):
                return None if stat.S_ISREG(st.st_mode) else above
        return None
    return None if stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode) else path


def _transfer(d):
    """``(direction, bytes)`` of a decision that moves a file ("up" or "down"); None
    for any other."""
    if d.action not in _TRANSFERS or d.is_directory:
        return None
    return ("up", d.local.size) if d.action is Action.UPLOAD else ("down", d.remote.size)


def _bytes_moved(todo) -> int:
    """The bytes the file transfers of a plan move."""
    return sum(t[1] for t in map(_transfer, todo) if t is not None)


def _phase_of(d) -> str:
    if d.action in _DELETES:
        return "directory_deletes" if d.is_directory else "file_deletes"
    if d.action in _MOVES:
        return "moves"
    if d.is_directory and d.action in _TRANSFERS:
        return "directories"
    return "rest"


def phases(decisions) -> dict:
    """``decisions`` sorted into the phases they run in (one pass, order kept)."""
    grouped = {"directories": [], "moves": [], "rest": [], "file_deletes": [], "directory_deletes": []}
    for d in decisions:
        grouped[_phase_of(d)].append(d)
    return grouped


class FullSync:
    """Full and subtree reconciles for an engine."""

    log = Logger()

    def __init__(self, engine):
        self.engine = engine
        self.running = None  # the full reconcile running, if any
        #: the :class:`Progress` of the full reconcile being carried out (None: none is)
        self.progress = None
        #: ``(count, synced)`` of the mass delete the last full reconcile held (None: none)
        self.mass_delete_held = None
        #: full reconciles finished since the start (``status``: ``watch.full_reconciles``)
        self.completed = 0
        self._limit = defer.DeferredSemaphore(PLAN_CONCURRENCY)
        self._special_said = set()  # special names already logged

    def reconcile(self, prefix=None, listing=None, held=frozenset(), pull_first=False):
        """Reconcile the folder, or the subtree ``prefix``; a full one is coalesced with
        one already running."""
        scope = Scope(prefix, listing, frozenset(held), pull_first)
        if prefix is None:
            return self.full(scope)
        return defer.ensureDeferred(self._reconcile(scope))

    def full(self, scope=Scope(), **journal):
        """A full reconcile; with ``journal`` (the fields of :class:`JournalStart`) one that
        drops the cursor, run after the one running if any."""
        before = self.running
        if journal:
            scope = attrs.evolve(scope, journal=JournalStart(**journal))
        elif before is not None:
            return before
        d = defer.ensureDeferred(self._after(before, scope))
        self.running = d

        def done(result):
            if self.running is d:
                self.running = None
            return result

        d.addBoth(done)
        return d

    async def _after(self, before, scope):
        if before is not None:
            await defer.DeferredList([before])
        await self._reconcile(scope)

    async def _reconcile(self, scope):
        engine = self.engine
        listing, trusted = scope.listing, scope.listing is not None
        head = scope.journal.head if scope.journal is not None else None
        if listing is None and scope.prefix is None and scope.journal is None:
            scope, head = await self._with_journal(scope)
        listing, trusted = await self._fresh_listing(scope, listing, trusted)
        bases_all = dict(engine.state.bases)
        local = await engine.threads.defer(localfs.scan, engine.folder, bases_all, engine.is_ignored, scope.prefix,
                                           engine.prehashed)
        special, names = await engine.threads.defer(special_paths, engine.folder, scope.prefix, listing, bases_all,
                                                    local)
        self._say_special(names, scope.prefix)
        planned = await engine.threads.defer(make_plan, scope, listing, trusted, bases_all, local, engine.is_ignored,
                                      engine.strategy, engine.allow_mass_delete, special)
        self._warn(planned)
        if scope.prefix is None:
            held = planned.result.mass_delete_held
            self.mass_delete_held = (held, planned.synced) if held else None
        await self._execute_plan(planned, local, scope)
        if scope.prefix is None:
            self._after_full(scope, head, local, planned.remote)

    async def _fresh_listing(self, scope, listing, trusted):
        """``(listing, trusted)``: the listing given unless stale, else the server's now."""
        engine = self.engine
        if scope.prefix is not None and await engine.locks.wait_below(scope.prefix) and listing is not None:
            # an upload inside that read its bytes first landed first: the listing given is stale
            listing, trusted = None, False
        if listing is None:
            listing = await engine.server.list()
            engine.went_online()
        return listing, trusted

    async def _with_journal(self, scope):
        """``(scope, head)``: the journal's head, and when the server's journal is not the
        one the cursor points into (its state restored while this client was away), a
        scope that starts the cursor over and uploads what the server lost."""
        engine = self.engine
        head = await engine.server.journal_head()
        known = engine.remote.journal.journal_id
        if head is None or known is None:
            return scope, head
        current = (await engine.server.changes(head)).journal_id
        if current is None or current == known:
            return scope, head
        self.log.warn("the server's journal is not the one this folder followed (its state was restored or "
                      "started anew): what it lost is sent again")
        return attrs.evolve(scope, journal=JournalStart(head, current, restored=True)), head

    def _after_full(self, scope, head, local, remote):
        engine = self.engine
        engine.last_full_reconcile = engine.reactor.seconds()
        self.completed += 1
        journal = scope.journal
        engine.remote.reconciled(head, journal.journal_id if journal else None, journal is not None)
        state = engine.state
        for path in list(state.pending):
            if path not in state.bases and path not in local and path not in remote:
                state.unqueue(path)
        engine.sweep_waiting()

    def _say_special(self, names, prefix):
        """One line per special name found where a synced or listed path is (once while
        it stays: a full reconcile forgets the names gone)."""
        for name in sorted(names - self._special_said):
            self.log.warn("{path} is a FIFO, socket, device or symlink where the server has a file or folder: "
                          "left alone (the server's copy is kept, nothing is downloaded over it)", path=name)
        self._special_said = set(names) if prefix is None else self._special_said | names

    def _warn(self, planned):
        result = planned.result
        if result.mass_delete_held:
            self.log.warn(
                "mass delete held: this reconcile would delete {count} of {synced} synced files; nothing was "
                "deleted. Restore the files, or restart the client with --allow-mass-delete to confirm",
                count=result.mass_delete_held,
                synced=planned.synced,
            )
        if result.remote_deletes_distrusted:
            self.log.warn(
                "the server listed nothing although {count} files were synced; not deleting anything locally",
                count=result.remote_deletes_distrusted,
            )

    async def _execute_plan(self, planned, local, scope):
        todo = planned.todo
        if not todo:
            return
        progress = Progress.of(todo, planned.bytes_total)
        reported = Reported(self.engine, self.log, progress, is_large(progress)).start()
        run = _Run(self, local, planned.remote, scope.held, progress)
        if scope.prefix is None:
            self.progress = progress
            for d in todo:  # the transfers it counts are no longer counted one by one
                if d.action in _TRANSFERS and not d.is_directory:
                    self.engine.waiting.drop(d.path)
        try:
            await self._run_todo(todo, run, scope.pull_first)
        finally:
            if self.progress is progress:
                self.progress = None
            reported.stop()
        reported.finished()

    async def _run_todo(self, todo, run, pull_first):
        """Run the decisions ``todo``; with ``pull_first``, those of :data:`_PULLS` first."""
        if pull_first:
            pulls = [d for d in todo if d.action in _PULLS]
            await self._run_phases(pulls, run)
            todo = [d for d in todo if d.action not in _PULLS]
        await self._run_phases(todo, run)

    async def _run_phases(self, decisions, run):
        grouped = phases(decisions)
        for d in grouped["directories"] + grouped["moves"]:
            await run.one(d)
        await self._parallel(grouped["rest"], run)
        await self._parallel(grouped["file_deletes"], run)
        for d in grouped["directory_deletes"]:
            await run.one(d)

    async def _parallel(self, decisions, run):
        """Up to PLAN_CONCURRENCY decisions at once (shared by all reconciles running)."""
        pending = iter(decisions)
        clock = self.engine.reactor

        async def worker():
            turn_started = time.monotonic()
            for d in pending:
                await self._limit.run(lambda d=d: defer.ensureDeferred(run.one(d)))
                if time.monotonic() - turn_started > TURN:
                    await task.deferLater(clock, 0, lambda: None)
                    turn_started = time.monotonic()

        workers = [defer.ensureDeferred(worker()) for _ in range(min(PLAN_CONCURRENCY, len(decisions)))]
        if workers:
            await defer.DeferredList(workers)


#: A piece of work this large (files, or bytes) logs progress lines, not a line per batch.
LARGE_FILES, LARGE_BYTES = 50, 50 << 20


def is_large(progress) -> bool:
    """A piece of work worth progress lines (and a progress bar)."""
    return progress.files_total >= LARGE_FILES or progress.bytes_total >= LARGE_BYTES


class _Run:
    """One plan being carried out: the versions it was made on, and its progress."""

    def __init__(self, fullsync, local, remote, held, progress):
        self.engine = fullsync.engine
        self.local, self.remote, self.held, self.progress = local, remote, held, progress

    async def one(self, d):
        """One planned decision, under its locks, if the base is still what it was planned on."""
        engine = self.engine
        if engine.pause.paused:
            engine.pause.hold_reconcile()  # the rest of the plan: planned again on resume
            return
        paths = {d.path} | ({d.source} if d.source else set())
        taken = await engine.locks.acquire(paths - self.held)
        try:
            current = engine.state.base(d.path)
            if (current.entry if current else None) != d.base and d.source is None:
                engine.request(d.path, FETCH)  # something happened meanwhile: decide again
                return
            await engine.guard(self._execute(d), d.path)
        finally:
            engine.locks.release(taken)

    async def _execute(self, d):
        await self.engine.actions.execute(d, self.local.get(d.path), self.remote.get(d.path))
        self.progress.finished(d)
