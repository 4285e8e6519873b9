"""Work in flight: the Deferreds started and not fired yet, for a caller that waits on
them (a local move that :meth:`Engine.idle` waits for; the remote changes a Move waits
for before it is applied)."""


class InFlight:
    """The Deferreds added and not fired yet; each one leaves as it fires."""

    def __init__(self):
        self._running = set()

    def add(self, d):
        """Hold ``d`` until it fires (one fired already is not held); returns ``d``."""
        if not d.called:
            self._running.add(d)
            d.addBoth(self._landed, d)
        return d

    def _landed(self, result, d):
        self._running.discard(d)
        return result

    def take(self) -> list:
        """The Deferreds in flight now, no longer held (they fire as they would)."""
        taken, self._running = list(self._running), set()
        return taken

    def __iter__(self):
        return iter(list(self._running))

    def __len__(self):
        return len(self._running)
