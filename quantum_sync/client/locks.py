"""Per-path locks: one operation at a time on any path, several paths taken in order."""

from twisted.internet import defer


class PathLocks:
    """A :class:`~twisted.internet.defer.DeferredLock` per path, created on demand and
    dropped when nobody holds or waits for it."""

    def __init__(self):
        self._locks = {}

    def locked(self, path: str) -> bool:
        lock = self._locks.get(path)
        return lock is not None and lock.locked

    def held(self) -> list:
        """The paths locked now (being worked on)."""
        return [path for path, lock in self._locks.items() if lock.locked]

    def held_below(self, prefix: str) -> list:
        """The paths strictly below ``prefix`` whose lock is held now."""
        start = prefix + "/"
        return [path for path, lock in self._locks.items() if lock.locked and path.startswith(start)]

    async def wait_below(self, prefix: str) -> bool:
        """Wait until every operation running below ``prefix`` now has ended (for a
        directory's move or delete: an upload inside it that read its bytes before must
        land first, so that the move or delete covers it); True when there were some."""
        held = self.held_below(prefix)
        if held:
            self.release(await self.acquire(held))
        return bool(held)

    async def acquire(self, paths) -> list:
        """Take the locks of ``paths`` (sorted, so two callers never deadlock); the list to release."""
        taken = []
        for path in sorted(set(paths)):
            lock = self._locks.get(path)
            if lock is None:
                lock = self._locks[path] = defer.DeferredLock()
            await lock.acquire()
            taken.append(path)
        return taken

    def release(self, taken) -> None:
        for path in taken:
            lock = self._locks.get(path)
            if lock is None:
                continue
            lock.release()
            # release() may have run a waiter to completion already, and it dropped
            # the entry (or replaced it): only drop our own, idle lock.
            if not lock.locked and not lock.waiting and self._locks.get(path) is lock:
                del self._locks[path]

    def hold(self, *paths):
        """``async with locks.hold(a, b):`` — the locks of ``a`` and ``b`` for the block."""
        return _Held(self, paths)


class _Held:
    def __init__(self, locks, paths):
        self._locks, self._paths, self._taken = locks, paths, []

    async def __aenter__(self):
        self._taken = await self._locks.acquire(self._paths)

    async def __aexit__(self, *exc):
        self._locks.release(self._taken)
        return False
