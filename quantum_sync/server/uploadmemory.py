"""The memory all upload bodies together may hold: one budget for the whole process."""

import threading


class MemoryBudget:
    """Bytes of upload bodies waiting in the pipelines of all spools together, and the
    spools that were told to pause until there is room again."""

    def __init__(self, limit: int):
        self.limit = limit
        self.lock = threading.Lock()
        self.total = 0
        self.paused = set()

    def ready(self) -> list:
        """The paused spools that may go on now (call with the lock held)."""
        if self.total > self.limit // 2:
            return []
        ready = [spool for spool in self.paused if spool._in_flight <= spool.LOW_WATER]
        for spool in ready:
            spool._paused = False
            self.paused.discard(spool)
        return ready


#: All uploads together keep at most about this many body bytes in memory.
UPLOAD_MEMORY = MemoryBudget(64 * 1024 * 1024)
