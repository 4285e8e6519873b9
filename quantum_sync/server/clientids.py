"""Client ids: one live WebSocket per id, and (with ``auth``) each id bound to the user
that first used it.

A client id decides which broadcasts and catch-up entries a client skips (its own
changes), so two clients sharing one (a folder copied with its state) would each miss
the other's changes, and a user naming another user's id could make that user miss
changes. The hub refuses a second live connection with an id (``CLIENT_ID_IN_USE``,
after probing the first, see :mod:`quantum_sync.server.ws`), and :class:`ClientIdBindings`
refuses an id to any user but its first (``PERMISSION_DENIED``).
"""

import json
import os

from twisted.logger import Logger

from quantum_sync.diskio import fsync_directory
from quantum_sync.errors import SyncError
from quantum_sync.threads import ReactorThreads

FILE_NAME = "client-ids.json"


class ClientIdBindings:
    """``{client id: user}``, kept in ``<state_dir>/client-ids.json`` (written in a
    thread, atomically, after each new binding). :meth:`claim` is synchronous, so a
    binding holds from the first request that made it."""

    log = Logger()

    def __init__(self, state_dir: str, reactor, threads=None):
        self.path = os.path.join(state_dir, FILE_NAME)
        self._reactor = reactor
        self._threads = threads if threads is not None else ReactorThreads(reactor)
        self._users = _load(self.path)
        self._saving = None  # the write in progress
        self._dirty = False

    def claim(self, client_id: str, user: str) -> None:
        """Bind ``client_id`` to ``user`` if it is free; PERMISSION_DENIED when it is
        another user's."""
        if claim(self._users, client_id, user):
            self._save()

    def _save(self) -> None:
        if self._saving is not None:
            self._dirty = True  # written again once the write in progress ends
            return
        self._dirty = False
        document = dict(self._users)
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


def _load(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            document = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: unreadable client id bindings: {error}") from None
    if not isinstance(document, dict) or not all(isinstance(v, str) for v in document.values()):
        raise ValueError(f"{path}: client id bindings must be an object of strings")
    return document


def _write(path: str, document: dict) -> None:
    temp = path + ".new"
    with open(temp, "w", encoding="utf-8") as f:
        json.dump(document, f, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temp, path)
    fsync_directory(os.path.dirname(path))
