"""The mass-delete guard for deletes that reach the engine one path at a time.

A full reconcile sees all its deletes at once, and :func:`~quantum_sync.client.reconcile.plan`
holds a mass delete. A folder emptied while the client runs (``rm -rf``, an unmounted
disk, a bad script) arrives instead as a stream of single-path watcher events, each of
which alone looks harmless. So every delete the engine would send to the server waits
here until none has arrived for :data:`QUIET` seconds; then the gate counts the synced
files now missing from the folder and lets the whole batch through only when that is
not a mass delete (:func:`~quantum_sync.client.reconcile.is_mass_delete`). A held batch
deletes nothing: the files stay on the server, their base stays recorded, and the next
start with ``--allow-mass-delete`` (or the files coming back) settles them.
"""

from twisted.internet import defer
from twisted.logger import Logger

from quantum_sync.client.reconcile import is_mass_delete

#: Seconds without a new delete before a batch is judged.
QUIET = 0.3


class DeleteGate:
    """Batches remote deletes and holds a mass delete.

    ``count_missing`` returns (a Deferred of) ``(missing, synced)``: how many synced files
    are gone from the folder now, out of how many are synced; it should do its disk work
    off the reactor."""

    log = Logger()

    def __init__(self, clock, count_missing, allow: bool = False, quiet: float = QUIET):
        self._clock = clock
        self._count_missing = count_missing
        self.allow = allow
        self.quiet = quiet
        self._waiting = []  # (path, Deferred) of the batch being gathered
        self._call = None

    def admit(self, path: str):
        """A Deferred that fires True when deleting ``path`` on the server may go ahead,
        False when its batch is held as a mass delete."""
        if self.allow:
            return defer.succeed(True)
        d = defer.Deferred()
        self._waiting.append((path, d))
        if self._call is not None and self._call.active():
            self._call.reset(self.quiet)
        else:
            self._call = self._clock.callLater(self.quiet, self._judge)
        return d

    def stop(self):
        """Hold whatever is waiting (the client is stopping)."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._release(self._take(), False)

    def _take(self):
        batch, self._waiting = self._waiting, []
        self._call = None
        return batch

    def _judge(self):
        batch = self._take()
        d = defer.maybeDeferred(self._count_missing)

        def judged(counts):
            missing, synced = counts
            deletes = max(missing, len(batch))
            if is_mass_delete(deletes, synced):
                self.log.warn(
                    "mass delete held: {count} of {synced} synced files are gone from the folder; nothing was "
                    "deleted on the server. Restore the files, or restart the client with --allow-mass-delete to confirm",
                    count=deletes,
                    synced=synced,
                )
                return False
            return True

        def failed(failure):
            self.log.failure("could not count the missing files; deletes held", failure)
            return False

        d.addCallbacks(judged, failed)
        d.addCallback(lambda verdict: self._release(batch, verdict))

    @staticmethod
    def _release(batch, verdict):
        for _, d in batch:
            d.callback(verdict)
