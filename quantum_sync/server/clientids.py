"""Client ids: one live WebSocket per id, and (with ``auth``) each id bound to the user
that first used it.

A client id decides which broadcasts and catch-up entries a client skips (its own
changes), so two clients sharing one (a folder copied with its state) would each miss
the other's changes, and a user naming another user's id could make that user miss
changes. The hub refuses a second live connection with an id (``CLIENT_ID_IN_USE``,
after probing the first, see :mod:`quantum_sync.server.ws`), and :class:`ClientIdBindings`
refuses an id to any user but its first (``PERMISSION_DENIED``).

Bindings are not kept for ever: an id not seen (no request, no WebSocket holding it)
for :data:`FORGET_AFTER` seconds is forgotten by a pass every :data:`PRUNE_EVERY`
seconds, and beyond :data:`MAX_IDS` ids the least recently seen go first, so the file
stays bounded however many ids clients make up. A forgotten id is free again.
"""

import json
import os

from twisted.application.service import Service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from quantum_sync.diskio import fsync_directory
from quantum_sync.errors import SyncError
from quantum_sync.threads import ReactorThreads

FILE_NAME = "client-ids.json"
#: Seconds an id may go unseen before it is forgotten (180 days).
FORGET_AFTER = 180 * 86400
#: The most ids kept; beyond, the least recently seen are forgotten.
MAX_IDS = 100_000
#: Seconds between pruning passes (each also records when the ids were last seen).
PRUNE_EVERY = 3600.0


class ClientIdBindings(Service):
    """``{client id: user}`` and when each id was last seen, kept in
    ``<state_dir>/client-ids.json`` (written in a thread, atomically, after each new
    binding and after a pruning pass). :meth:`claim` is synchronous, so a binding holds
    from the first request that made it. ``live(client_id)``: whether a connection holds
    the id now (it is then seen, however long ago its last request was)."""

    log = Logger()

    def __init__(self, state_dir: str, clock, threads=None, live=None, forget_after: float = FORGET_AFTER,
                 max_ids: int = MAX_IDS, prune_every: float = PRUNE_EVERY):
        self.path = os.path.join(state_dir, FILE_NAME)
        self._clock = clock
        self._threads = threads if threads is not None else ReactorThreads(clock)
        self._live = live if live is not None else (lambda client_id: False)
        self.forget_after, self.max_ids = forget_after, max_ids
        self._users, self._seen = _load(self.path, clock.seconds())
        self._seen_moved = bool(self._users)  # seen times not written yet (written by the first pass)
        self._saving = None  # the write in progress
        self._dirty = False
        self._pruning = LoopingCall(self.prune)
        self._pruning.clock = clock
        self._prune_every = prune_every

    def startService(self):
        super().startService()
        self._pruning.start(self._prune_every, now=True)

    def stopService(self):
        super().stopService()
        if self._pruning.running:
            self._pruning.stop()
        if self._seen_moved:
            self._save()

    def claim(self, client_id: str, user: str) -> None:
        """Bind ``client_id`` to ``user`` if it is free; PERMISSION_DENIED when it is
        another user's."""
        bound = claim(self._users, client_id, user)
        if client_id:
            self._seen[client_id] = self._clock.seconds()
            self._seen_moved = True
        if bound:
            self._save()

    def prune(self) -> None:
        """Forget the ids not seen for :attr:`forget_after` seconds, and the least recently
        seen beyond :attr:`max_ids`; write when anything changed."""
        now = self._clock.seconds()
        for client_id in self._users:
            if self._live(client_id):
                self._seen[client_id] = now
        gone = forgotten(self._seen, now, self.forget_after, self.max_ids)
        for client_id in gone:
            del self._users[client_id], self._seen[client_id]
        if gone:
            self.log.info("forgot {count} client ids unseen for {days:.0f} days or beyond the {most} kept",
                          count=len(gone), days=self.forget_after / 86400, most=self.max_ids)
        if gone or self._seen_moved:
            self._save()

    def _save(self) -> None:
        if self._saving is not None:
            self._dirty = True  # written again once the write in progress ends
            return
        self._dirty = self._seen_moved = False
        document = {"ids": {client_id: {"user": user, "seen": round(self._seen[client_id])}
                            for client_id, user in self._users.items()}}
        self._saving = self._threads.defer(_write, self.path, document)
        self._saving.addErrback(lambda failure: self.log.failure("cannot save {path}", failure, path=self.path))
        self._saving.addBoth(self._saved)

    def _saved(self, _) -> None:
        self._saving = None
        if self._dirty:
            self._save()

    async def flush(self) -> None:
        """Wait until every binding made so far is on disk."""
        while self._saving is not None:
            await self._saving


def claim(users: dict, client_id: str, user: str) -> bool:
    """The one rule of bindings (``users``: client id -> user): an empty id is not bound,
    a free id becomes ``user``'s (True: a new binding to record), another user's is
    PERMISSION_DENIED."""
    if not client_id:
        return False
    owner = users.get(client_id)
    if owner == user:
        return False
    if owner is not None:
        raise SyncError("PERMISSION_DENIED", f"client id {client_id!r} belongs to another user;"
                        " use an id of your own")
    users[client_id] = user
    return True


def forgotten(seen: dict, now: float, forget_after: float, max_ids: int) -> list:
    """The ids of ``seen`` (id -> when last seen) to forget: those unseen for longer than
    ``forget_after`` seconds, then the least recently seen beyond ``max_ids``."""
    gone = [client_id for client_id, when in seen.items() if now - when > forget_after]
    over = len(seen) - len(gone) - max_ids
    if over > 0:
        kept = sorted((when, client_id) for client_id, when in seen.items() if now - when <= forget_after)
        gone.extend(client_id for _, client_id in kept[:over])
    return gone


def _load(path: str, now: float) -> tuple:
    """``(users, seen)`` from the file; ids of a file without seen times (written by an
    older server) are taken as seen ``now``."""
    try:
        with open(path, encoding="utf-8") as f:
            document = json.load(f)
    except FileNotFoundError:
        return {}, {}
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: unreadable client id bindings: {error}") from None
    if isinstance(document, dict) and all(isinstance(v, str) for v in document.values()):
        return dict(document), dict.fromkeys(document, now)
    ids = _ids(document)
    if ids is None:
        raise ValueError(f'{path}: client id bindings must be {{"ids": {{id: {{"user": ..., "seen": ...}}}}}}')
    return {k: v["user"] for k, v in ids.items()}, {k: float(v["seen"]) for k, v in ids.items()}


def _ids(document):
    """The ``ids`` object of a well-formed document, else None."""
    ids = document.get("ids") if isinstance(document, dict) else None
    return ids if isinstance(ids, dict) and all(map(_well_formed, ids.values())) else None


def _well_formed(entry) -> bool:
    return isinstance(entry, dict) and isinstance(entry.get("user"), str) \
        and isinstance(entry.get("seen"), (int, float)) and not isinstance(entry.get("seen"), bool)


def _write(path: str, document: dict) -> None:
    temp = path + ".new"
    with open(temp, "w", encoding="utf-8") as f:
        json.dump(document, f, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temp, path)
    fsync_directory(os.path.dirname(path))
