"""What waits to go up and down, change by change (pure, no I/O).

A full reconcile or a long journal catch-up counts its own work
(:class:`~quantum_sync.client.fullsync.Progress`); the changes that arrive one by one
are counted here: a local change taken in by the watcher waits to go up from then until
its path's job ends, a remote change heard waits to come down likewise. One entry a path
(the latest change of it counts), with running totals: noting and dropping are O(1) on
the reactor, and a status sums nothing.
"""

from quantum_sync.client.pathstate import UNSEEN
from quantum_sync.protocol import Create, Delete, Move, Update

UP, DOWN = "up", "down"


class _Tally:
    """Entries ``path -> (direction, bytes)`` and their running totals per direction."""

    def __init__(self):
        self.entries = {}
        self.files = {UP: 0, DOWN: 0}
        self.bytes = {UP: 0, DOWN: 0}

    def note(self, path, direction, size) -> None:
        self.drop(path)
        self.entries[path] = (direction, size)
        self.files[direction] += 1
        self.bytes[direction] += size

    def drop(self, path) -> None:
        entry = self.entries.pop(path, None)
        if entry is not None:
            direction, size = entry
            self.files[direction] -= 1
            self.bytes[direction] -= size


class Waiting:
    """The changes of one folder waiting to go up or down, outside a reconcile's or
    catch-up's own count. Remote changes heard while paused are kept apart: the
    catch-up on resume hears them again (at the paths where they then apply)."""

    def __init__(self):
        self._jobs = _Tally()
        self._held = _Tally()

    def note(self, path: str, direction: str, size: int = 0) -> None:
        """``path`` waits to move ``size`` bytes ``direction`` (replacing what it waited for)."""
        self._jobs.note(path, direction, size)

    def drop(self, path: str) -> None:
        """``path`` waits no more (its job is over)."""
        self._jobs.drop(path)

    def hold_down(self, path: str, size: int = 0) -> None:
        """A remote change of ``path`` heard while paused (not taken: the catch-up on
        resume brings it)."""
        self._held.note(path, DOWN, size)

    def resumed(self) -> None:
        """The pause is over: the changes heard meanwhile count again as the catch-up applies them."""
        self._held = _Tally()

    def keep(self, waits) -> None:
        """Drop every entry whose path ``waits(path)`` says no longer waits (a sweep after a
        full reconcile: O(entries), not per event)."""
        for path in [p for p in self._jobs.entries if not waits(p)]:
            self._jobs.drop(path)

    def totals(self, direction: str) -> tuple:
        """``(files, bytes)`` waiting to go ``direction``."""
        jobs, held = self._jobs, self._held
        return jobs.files[direction] + held.files[direction], jobs.bytes[direction] + held.bytes[direction]

    def __contains__(self, path) -> bool:
        return path in self._jobs.entries


def local_change(stat):
    """``(direction, bytes)`` a local change seen as ``stat`` (its lstat just after; None:
    gone) waits to send up; None when nothing is counted (no stat seen, a folder)."""
    if stat is UNSEEN or (stat is not None and stat.is_directory):
        return None
    return UP, 0 if stat is None else stat.size


def remote_change(operation, counted: bool = False):
    """``(path, bytes)`` a remote ``operation`` waits to bring down (a delete or a move: 0
    bytes, at the move's destination); None when nothing is counted: a folder made, or
    (``counted``) a file transfer that a catch-up's Progress already counts."""
    if isinstance(operation, (Create, Update)):
        meta = operation.metadata
        return None if meta.is_directory or counted else (meta.path, meta.size)
    if isinstance(operation, Delete):
        return operation.path, 0
    if isinstance(operation, Move):
        return operation.destination, 0
    return None

