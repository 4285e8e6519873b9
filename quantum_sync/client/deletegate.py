"""The mass-delete guard for deletes that reach the engine one path at a time.

A full reconcile sees all its deletes at once, and :func:`~quantum_sync.client.reconcile.plan`
holds a mass delete. A folder emptied while the client runs (``rm -rf``, an unmounted
disk, a bad script) arrives instead as a stream of single-path watcher events, each of
which alone looks harmless. A delete is final when it happens, so it goes to the server
at once while the deletes of the current burst (the deletes since the last :data:`QUIET`
seconds without one) cannot make a mass delete whatever the folder holds: a mass delete
(:func:`~quantum_sync.client.reconcile.is_mass_delete`) is more than half of the files
synced and more than ten, so the first ten files of a burst go at once. The first delete
past those ten, and every later one of the burst, waits until the burst is over (letting
through up to half of the folder before judging would send half of an ``rm -rf`` to the
server before the guard could hold it); then the gate counts the synced files now missing
from the folder and lets the waiting ones through only when the whole burst is not a mass
delete. A held batch deletes nothing: the files stay on the server, their base stays
recorded, and the next start with ``--allow-mass-delete`` (or the files coming back)
settles them. Until then a held file stays held whoever asks to delete it again (the
reconcile of a directory ``rm -rf`` removed, a periodic reconcile, the reconcile at the
next start: the held files are kept in the folder's state): asked alone, what is left
after the ten that went at once may be ten files or fewer, or half of the synced files
or fewer, no mass delete by itself.
"""

from twisted.internet import defer
from twisted.logger import Logger

from quantum_sync.client.reconcile import MASS_DELETE_MIN, is_mass_delete

#: Seconds without a new delete that end a burst.
QUIET = 0.3

RELEASE_HINT = "Restore the files, or restart the client with --allow-mass-delete to confirm"


class DeleteGate:
    """Lets deletes through at once while they cannot make a mass delete, holds a mass delete.

    ``count_synced()`` returns how many files are synced (cheap: called once a burst, on
    the reactor); ``count_missing(passed)`` returns (a Deferred of) ``(missing, synced)``:
    how many synced files are gone from the folder now, out of how many are synced, both
    leaving out the files in ``passed`` (deleted at once in this burst: some may still be
    recorded as synced while their delete is on its way); it should do its disk work off
    the reactor."""

    log = Logger()

    def __init__(self, clock, count_missing, count_synced, allow: bool = False, quiet: float = QUIET,
                 held=frozenset(), on_held=None):
        self._clock = clock
        self._count_missing = count_missing
        self._count_synced = count_synced
        self.allow = allow
        self.quiet = quiet
        self._waiting = []  # (path, Deferred, weight, files) of the deletes waiting for the burst's end
        self._call = None
        self._passed = set()  # files deleted at once in this burst
        self._synced = None  # synced files when the burst began (None: no burst)
        self._counted = set()  # the files the burst's deletes take along
        #: ``(count, synced)`` of the last batch held, None when none is held
        self.held = None
        self._held_files = set()  # the files of the batches held (and of their bursts)
        #: called with the held files whenever they change (to keep them across a restart)
        self._on_held = on_held or (lambda files: None)
        if held and not allow:  # held before a restart: held still
            self._held_files = set(held)
            self.held = (len(held), count_synced())
            self.log.warn("mass delete still held: {count} files deleted from the folder are kept on the server. "
                          + RELEASE_HINT, count=len(held))
        elif held:
            self._on_held(frozenset())  # confirmed: a mass delete allowed goes ahead

    def admit(self, path: str, files=None):
        """A Deferred that fires True when deleting ``path`` on the server may go ahead,
        False when it is held as part of a mass delete. ``files``: the synced files the
        delete takes along (a directory's files below it; default ``path`` alone); a file
        already counted in this burst (deleted on its own before its directory, as
        ``rm -rf`` does) is not counted again."""
        covered = {path} if files is None else set(files)
        if covered and covered <= self._held_files and not self.allow:
            # part of a mass delete held: it stays held, whoever asks again (a reconcile of
            # the directory rm -rf removed, a periodic one). Asked alone, what is left of it
            # after the ten that went at once may look like no mass delete.
            return defer.succeed(False)
        new = covered - self._counted
        weight = len(new)
        self._counted |= covered
        if self.allow:
            return defer.succeed(True)
        self._burst_goes_on()
        if not self._waiting and len(self._passed) + weight <= MASS_DELETE_MIN:
            self._passed |= new
            return defer.succeed(True)
        d = defer.Deferred()
        self._waiting.append((path, d, weight, covered))
        return d

    def _burst_goes_on(self) -> None:
        """A delete: the burst begins (the synced files counted) or goes on (its end, when
        it is judged, put off by the quiet time)."""
        if self._synced is None:
            self._synced = self._count_synced()
        if self._call is not None and self._call.active():
            self._call.reset(self.quiet)
        else:
            self._call = self._clock.callLater(self.quiet, self._judge)

    def back(self, path: str) -> None:
        """``path`` is in the folder again (restored): a later delete of it is judged anew;
        nothing is held once every held file is back."""
        if path in self._held_files:
            self._held_files.discard(path)
            self._on_held(frozenset(self._held_files))
            if not self._held_files:
                self.held = None

    @property
    def waiting(self) -> int:
        """How many deletes wait for the end of the burst."""
        return len(self._waiting)

    def stop(self):
        """Hold whatever is waiting (the client is stopping)."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        batch, _, _ = self._take()
        self._release(batch, False)

    def _take(self):
        taken = self._waiting, self._passed, self._synced
        self._waiting, self._passed, self._synced, self._call = [], set(), None, None
        self._counted = set()
        return taken

    def _judge(self):
        batch, passed, synced_before = self._take()
        if not batch:
            return
        d = defer.maybeDeferred(self._count_missing, frozenset(passed))

        def judged(counts):
            missing, synced = counts
            deletes = len(passed) + max(missing, sum(weight for _, _, weight, _ in batch))
            synced = max(synced_before, synced + len(passed))
            if is_mass_delete(deletes, synced):
                self.held = (deletes, synced)
                self._held_files.update(*(covered for _, _, _, covered in batch))
                self._on_held(frozenset(self._held_files))
                self.log.warn(
                    "mass delete held: {count} of {synced} synced files are gone from the folder; {held} deletes "
                    "were not sent to the server. " + RELEASE_HINT,
                    count=deletes, synced=synced, held=len(batch),
                )
                return False
            if not self._held_files:  # (a mass delete held before stays held)
                self.held = None
            return True

        def failed(failure):
            self.log.failure("could not count the missing files; deletes held", failure)
            return False

        d.addCallbacks(judged, failed)
        d.addCallback(lambda verdict: self._release(batch, verdict))

    @staticmethod
    def _release(batch, verdict):
        for _, d, _, _ in batch:
            d.callback(verdict)
