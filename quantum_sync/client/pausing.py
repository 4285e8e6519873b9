"""Pausing a folder: transfers held, the folder still watched, everything caught up on resume.

While paused, the engine starts no new work: what the watcher reports, what the server
announces and every reconcile asked for are only noted here. Work already running when
the pause came finishes. On resume the noted paths are synced again, each decided on the
server's current version, the journal is caught up from the cursor (the changes heard
while paused were not taken), and a reconcile asked for meanwhile runs.
"""

import attrs


@attrs.frozen
class Held:
    """What was asked while paused."""

    paths: frozenset = frozenset()
    reconcile: bool = False
    catch_up: bool = False


class PauseHold:
    """The pause switch of one folder and what it holds."""

    def __init__(self):
        self.paused = False
        self._paths = set()
        self._reconcile = False
        self._catch_up = False

    def hold_path(self, path: str) -> None:
        self._paths.add(path)

    def hold_reconcile(self) -> None:
        self._reconcile = True

    def hold_catch_up(self) -> None:
        self._catch_up = True

    def holds(self, path: str) -> bool:
        """Whether ``path`` waits for the resume."""
        return path in self._paths

    @property
    def holding(self) -> int:
        """How many paths wait for the resume."""
        return len(self._paths)

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> Held:
        """Unpause; what was held, to be replayed."""
        held = Held(frozenset(self._paths), self._reconcile, self._catch_up)
        self.paused = False
        self._paths, self._reconcile, self._catch_up = set(), False, False
        return held
