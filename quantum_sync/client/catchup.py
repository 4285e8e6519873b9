"""Remote changes: FileOperations from the WebSocket, catch-up from ``/api/changes``, and a
server whose journal started over.

Seqs are tracked by :class:`~quantum_sync.client.journal.JournalCursor`: the stored cursor
moves only once a change is applied. A gap in the seqs heard means a catch-up from the
last seq heard. A journal id that is not the known one, or a 410 CURSOR_EXPIRED, means the
cursor no longer points into the server's journal: a full reconcile runs, then the client
takes the journal's id and head. When the id changed (a restored or new server state),
that reconcile uploads again what the server lost instead of deleting it here.
"""

import collections
import stat

import attrs
from twisted.internet import defer
from twisted.logger import Logger

from quantum_sync.client import localfs
from quantum_sync.client.fullsync import LARGE_FILES, Progress, Reported
from quantum_sync.errors import SyncError
from quantum_sync.resolve import resolve_and_lstat
from quantum_sync.client.inflight import InFlight
from quantum_sync.client.journal import Heard, Identity, JournalCursor
from quantum_sync.client.pathstate import FETCH
from quantum_sync.client.state import tmp_dir
from quantum_sync.client.transfer import CursorExpired
from quantum_sync.client.waiting import DOWN, remote_change
from quantum_sync.paths import is_inside
from quantum_sync.protocol import Create, Delete, Move, Update


#: How many of the latest Creates/Updates and Moves are remembered (to follow a move).
RECENT = 1024


class RemoteChanges:
    """Applies the server's changes in journal order for an engine; owns the cursor."""

    log = Logger()

    def __init__(self, engine):
        self.engine = engine
        state = engine.state
        self.journal = JournalCursor(state.cursor, state.journal_id)
        self._running = None
        self._again = False
        self._start_over_due = False
        self._in_flight = InFlight()  # changes being applied since the last Move began
        self._move = None  # the Move being applied: later changes wait for it
        #: the progress of a large catch-up being carried out (None: none is)
        self.progress = None
        self._reported = None
        self._forget_seqs()

    def _forget_seqs(self):
        """What is remembered by seq, of one journal (its seqs mean nothing in another)."""
        self._recent = collections.deque(maxlen=RECENT)  # (seq, path, hash) of Creates/Updates heard
        self._moves = collections.deque(maxlen=RECENT)  # (seq, source, destination) applied, any client's
        self._refused_moves = set()  # (source, destination) of Moves not taken (symlinks)
        self._last_move = 0  # the highest seq of those

    # -- what the link tells -------------------------------------------------------------

    def upload_started(self, announced):
        """Another client began a large upload: fetch it from its relay while it arrives,
        staged, so that the FileOperation that follows finds it ready. Nothing is installed."""
        engine = self.engine
        base = engine.state.base(announced.path)
        if engine.is_ignored(announced.path) or (base is not None and base.entry.hash == announced.hash):
            return
        engine.server.prefetch(announced.path, announced.hash, announced.size, tmp_dir(engine.folder))

    def journal_named(self, journal_id) -> bool:
        """The server named its journal (Ack, broadcast or answer); False when it is not
        the one the cursor points into (a start over is then due)."""
        identity = self.journal.check(journal_id)
        if identity is Identity.ADOPT:
            self.log.info("server journal {id}", id=journal_id)
            self._store()
        elif identity is Identity.CHANGED:
            if not self._start_over_due:
                self.log.warn("the server's journal is not the one this folder followed (its state was restored "
                              "or started anew): full reconcile")
            self._start_over_due = True
            self.catch_up_soon()
            return False
        return True

    def operation(self, seq, operation, journal_id=None):
        """A FileOperation (``seq`` None when it carries none); a Deferred fired when applied."""
        if not self.journal_named(journal_id):
            return defer.succeed(None)  # the full reconcile that follows covers it
        if seq is not None:
            heard = self.journal.hear(seq)
            if heard is Heard.OLD:
                return defer.succeed(None)
            if heard is Heard.GAP:
                self.catch_up_soon()
        return self._apply(seq, operation)

    # -- applying ------------------------------------------------------------------------

    def _apply(self, seq, operation, counted=False):
        """Apply ``operation`` in its turn (``counted``: a catch-up's Progress counts its
        file transfer); a Deferred."""
        if seq is not None and isinstance(operation, (Create, Update, Move)):
            operation = self._followed(seq, operation)
        if seq is not None and isinstance(operation, (Create, Update)):
            self._recent.append((seq, operation.metadata.path, operation.metadata.hash))
        if seq is not None and not self.journal.in_order(operation.paths, seq):
            done = defer.succeed(None)  # an older change than one already applied
        else:
            done = self._apply_in_turn(seq, operation, counted)
        if seq is not None:
            done.addBoth(self._applied, seq, self.journal.generation)
        return done

    def _apply_in_turn(self, seq, operation, counted):
        """Count ``operation`` as waiting to come down, and apply it in its turn."""
        waits = remote_change(operation, counted)
        if waits is not None:  # until its path's job ends (a Move's own end, for a Move)
            self.engine.waiting.note(waits[0], DOWN, waits[1])
        elif counted and isinstance(operation, (Create, Update)):
            self.engine.waiting.drop(operation.metadata.path)  # the Progress counts the path now
        done = self._in_turn(operation)
        if isinstance(operation, Move):
            done.addBoth(_passing, self.engine.job_ended, operation.destination)
            if seq is not None:
                done.addBoth(self._passed, seq, operation, self.journal.generation)
        return done

    def _passed(self, result, seq, operation, generation):
        if generation != self.journal.generation:
            return result  # a Move of a journal that has started over since
        if (operation.source, operation.destination) in self._refused_moves:
            self._refused_moves.discard((operation.source, operation.destination))
        else:
            self.moved(seq, operation.source, operation.destination)
        return result

    def moved(self, seq, source, destination) -> None:
        """The Move ``seq`` (this client's or another's) is applied. A file created or
        changed inside ``source`` just before it (heard with a lower seq) was moved with
        it on the server, where its download at the old path found nothing: it is
        looked for at the new one, unless the Move brought that version there (asked,
        the server may answer from after a later Move not applied here yet, and a
        "nothing there" would delete the file the next Move is to carry)."""
        if seq is None:
            return
        self._moves.append((seq, source, destination))
        self._last_move = max(self._last_move, seq)
        engine = self.engine
        for heard, path, digest in list(self._recent):
            if heard < seq and is_inside(path, source):
                moved_to = destination + path[len(source):]
                base = engine.state.base(moved_to)
                if base is None or base.entry.hash != digest:
                    engine.request(moved_to, FETCH)

    def _followed(self, seq, operation):
        """``operation`` (a Create, Update or Move ``seq``) at the paths where the Moves
        applied since (with higher seqs) put them."""
        if seq > self._last_move:
            return operation  # the usual case: no Move after it yet
        later = [(source, destination) for move_seq, source, destination in sorted(self._moves) if move_seq > seq]

        def follow(path):
            for source, destination in later:
                if is_inside(path, source):
                    path = destination + path[len(source):]
            return path

        if isinstance(operation, Move):
            return Move(follow(operation.source), follow(operation.destination))
        path = follow(operation.metadata.path)
        if path == operation.metadata.path:
            return operation
        return type(operation)(attrs.evolve(operation.metadata, path=path))

    def _applied(self, result, seq, generation):
        self.journal.applied(seq, generation)
        self._store()
        return result

    def _store(self):
        state = self.engine.state
        state.set_cursor(self.journal.value)
        if self.journal.journal_id is not None and state.journal_id != self.journal.journal_id:
            state.set_journal_id(self.journal.journal_id)

    def _in_turn(self, operation):
        """Dispatch ``operation`` in its turn: changes run at once, but a Move waits for
        every change before it, and every change after it waits for the Move (a file
        created in a folder just before the folder moved must be there to move with it;
        one created in its new place must not land before the folder does)."""
        if isinstance(operation, Move):
            before = self._in_flight.take() + ([self._move] if self._move is not None else [])
            done = self._move = defer.ensureDeferred(self._after(before, operation))

            def moved(result):
                if self._move is done:
                    self._move = None
                return result

            done.addBoth(moved)
            return done
        if self._move is not None:
            done = defer.ensureDeferred(self._after([self._move], operation))
        else:
            done = self._dispatch(operation)
        return self._in_flight.add(done)

    async def _after(self, before, operation):
        if before:
            await defer.DeferredList(before, consumeErrors=True)
        await self._dispatch(operation)

    def _dispatch(self, operation):
        engine = self.engine
        if isinstance(operation, (Create, Update)):
            meta = operation.metadata
            return engine.request(meta.path, meta)
        if isinstance(operation, Delete):
            return engine.request(operation.path, None)
        if isinstance(operation, Move):
            moving = self._remote_move(operation.source, operation.destination)
            return defer.ensureDeferred(engine.guard(moving, operation.destination))
        return defer.succeed(None)

    async def _remote_move(self, source, destination):
        engine = self.engine
        if await engine.threads.defer(_through_a_link, engine.folder, source, destination):
            # a symlink here is never synced: a move of it, or through it, is not taken
            # as a hint to fetch what the server claims is at the destination either
            self.log.warn("a move from the server of {source} to {destination} was refused: it goes "
                          "through a symbolic link in the folder", source=source, destination=destination)
            self._refused_moves.add((source, destination))  # nothing is followed to its destination
            return
        await engine.locks.wait_below(source)  # an upload into the folder in flight lands first
        async with engine.locks.hold(source, destination):
            base = engine.state.base(source)
            local = await engine.local_version(source)
            target = await engine.threads.defer(localfs.lstat, engine.abspath(destination))
            directory = any(v is not None and v.entry.is_directory for v in (base, local))
            moved = self._moves_here(base, local, target, destination)
            if moved:
                await self._rename(source, destination, local)
                if not directory:
                    return
        if moved:
            # an upload of ours that landed in the old folder after the server moved it
            # re-created it there: then both places are reconciled
            if await engine.server.metadata(source) is None:
                return
        await self._not_renamed(source, destination, moved or directory)

    async def _not_renamed(self, source, destination, directory):
        """A Move that a rename here did not carry out (whole): each place synced."""
        engine = self.engine
        remote = FETCH
        if not directory:
            # no folder here (never synced, or already taken away): the server's destination
            # may still be one, with files inside that no Create of theirs names
            remote = await engine.server.metadata(destination)
            directory = remote is not None and remote.is_directory
        if directory:
            await engine.reconcile(prefix=source)
            await engine.reconcile(prefix=destination)
        else:
            await defer.DeferredList([engine.request(source, None), engine.request(destination, remote)])

    def _moves_here(self, base, local, target, destination) -> bool:
        """The source is the synced version and nothing is at the destination: rename it."""
        engine = self.engine
        return (
            base is not None
            and local is not None
            and local.entry.same_content(base.entry)
            and target is None
            and engine.state.base(destination) is None
            and not engine.is_ignored(destination, base.entry.is_directory)
        )

    async def _rename(self, source, destination, local):
        engine = self.engine
        await engine.threads.defer(localfs.rename, engine.folder, engine.abspath(source), engine.abspath(destination), local.stat)
        engine.state.move(source, destination)
        self.log.info("moved {source} to {destination} (moved on the server)", source=source, destination=destination)
        if local.entry.is_directory:
            await engine.intake.check_children(destination)

    # -- catching up ---------------------------------------------------------------------

    def catch_up_soon(self):
        """Catch up from the journal (coalesced); a Deferred."""
        if self._running is not None:
            self._again = True
            return self._running
        d = defer.ensureDeferred(self.engine.guard(self._catch_up_loop(), None))

        def done(result):
            self._running = None
            return result

        if not d.called:
            self._running = d
            d.addBoth(done)
        return d

    async def _catch_up_loop(self):
        self._again = True
        while self._again and not self.engine.stopped:
            self._again = False
            await self.catch_up()

    async def catch_up(self):
        """Apply every journal entry after the last seq heard; a full reconcile when the
        cursor no longer points into the server's journal. A long one (more than a page,
        or :data:`LARGE_FILES` changes) reports its progress as a full reconcile does."""
        engine = self.engine
        try:
            while not engine.stopped:
                if self._start_over_due:
                    return await self.start_over()
                try:
                    page = await engine.server.changes(self.journal.heard, self.journal.journal_id)
                except CursorExpired:
                    self.log.warn("journal cursor {cursor} expired on the server: full reconcile", cursor=self.journal.heard)
                    return await self.start_over()
                engine.went_online()
                if not self.journal_named(page.journal_id):
                    continue  # start over (next round)
                await self._apply_page(page)
                if not page.has_more or not page.changes:
                    if self._reported is not None:
                        self._reported.finished()
                    return
        finally:
            self._end_progress()

    def _counting(self, page, fresh):
        """The progress of a long catch-up, begun when ``page`` (``fresh``: the ``(change,
        operation)`` of it to apply) shows it is one; None: not one."""
        if self.progress is None and (page.has_more or len(fresh) >= LARGE_FILES):
            self.progress = Progress()
            self._reported = Reported(self.engine, self.log, self.progress, True, "catch-up").start()
        return self.progress

    def _counted(self, progress, fresh, jobs):
        """Count the ``jobs`` applying ``fresh`` in ``progress`` (None: not counted)."""
        if progress is None:
            return
        for (_, operation), job in zip(fresh, jobs):
            transfer = isinstance(operation, (Create, Update)) and not operation.metadata.is_directory
            direction, size = ("down", operation.metadata.size) if transfer else (None, 0)
            progress.coming(direction, size)
            job.addBoth(_passing, progress.came, direction, size)

    def _end_progress(self):
        reported, self._reported, self.progress = self._reported, None, None
        if reported is not None:
            reported.stop()

    async def _apply_page(self, page):
        # the client's own changes are in the journal too (the WebSocket never sends them):
        # they are already in the folder and its state, and replaying an old one (a
        # directory's Create, say, read before the Move that followed it was journalled)
        # would bring back what the folder has since moved or removed
        own = self.engine.client_id
        for change in page.changes:
            if change.source_client == own:
                # newer than another client's change to the same path before it (a Delete
                # that landed before this client's upload, heard only now): that one is not
                # applied over it (the WebSocket never sends this client's own change back)
                self.journal.in_order(change.operation.paths, change.seq)
        fresh = carried_by_moves([c for c in page.changes if c.source_client != own
                                  and self.journal.hear(c.seq) is not Heard.OLD])
        progress = self._counting(page, fresh)
        jobs = [self._apply(change.seq, operation, progress is not None) for change, operation in fresh]
        self._counted(progress, fresh, jobs)
        self.journal.delivered(page.cursor)
        self._store()
        if jobs:
            await defer.DeferredList(jobs)

    def reconciled(self, head, journal_id, starting_over: bool) -> None:
        """A full reconcile covered the journal up to ``head`` (``starting_over``: the
        cursor is dropped for ``head`` of the journal ``journal_id``)."""
        if starting_over:
            self.journal.start_over(head or 0, journal_id)
            self._forget_seqs()  # a Move of the old journal is not followed by seq in the new one
            self._start_over_due = False
        elif head is not None:
            self.journal.delivered(head)
        self._store()

    async def start_over(self):
        """The cursor means nothing in the server's journal: a full reconcile, then the
        journal's id and head are taken."""
        engine = self.engine
        head = await engine.server.journal_head()
        journal_id = None
        if head is not None:
            journal_id = (await engine.server.changes(head)).journal_id
        known = self.journal.journal_id
        restored = known is not None and journal_id is not None and journal_id != known
        await engine.fullsync.full(head=head, journal_id=journal_id, restored=restored)


def _passing(result, call, *args):
    """A callback that calls ``call(*args)`` and passes ``result`` on."""
    call(*args)
    return result


def carried_by_moves(changes) -> list:
    """``(change, operation)`` in the order to apply a page of ``changes``: a Create or
    Update of a path that a later Move of the page moved is applied after that Move, at
    the moved path (pure). The server has the file only there now: downloaded at its old
    path it would be gone (404), and the Move would carry nothing."""
    ordered = []
    for change in changes:
        operation = change.operation
        if not isinstance(operation, Move):
            ordered.append((change, operation))
            continue
        kept, carried = [], []
        source, destination = operation.source, operation.destination
        for item in ordered:
            earlier = item[1]
            if isinstance(earlier, (Create, Update)) and is_inside(earlier.metadata.path, source):
                moved_to = destination + earlier.metadata.path[len(source):]
                carried.append((item[0], type(earlier)(attrs.evolve(earlier.metadata, path=moved_to))))
            else:
                kept.append(item)
        ordered = kept + [(change, operation)] + carried
    return ordered


def _through_a_link(folder, *paths) -> bool:
    """Whether any of ``paths`` is, or goes through, a symbolic link in ``folder``."""
    for path in paths:
        try:
            _, st = resolve_and_lstat(folder, path)
        except SyncError:
            return True
        if st is not None and stat.S_ISLNK(st.st_mode):
            return True
    return False
