"""The life of one path's sync job, as a state machine (pure, no I/O).

A path is :attr:`Phase.IDLE` (no job), :attr:`Phase.QUEUED` (a job will look at it) or
:attr:`Phase.RUNNING` (its job holds the path's lock and works on what it took). A
request while running sends the path back to QUEUED, so the job looks once more before
it ends. Between a request and the job taking it, the path remembers:

- the *hint*, what is known of the server's version: :data:`UNKNOWN` (assume the base;
  uploads are conditional anyway), :data:`FETCH` (ask the server first), a FileMetadata,
  or None (the server has nothing there). A later request with UNKNOWN does not forget a
  hint already known;
- the *seen* stat, what the watcher saw of the local file (:data:`UNSEEN` when nothing).

:data:`TRANSITIONS` is the whole table; any other event is a programming error.
"""

import attrs

from quantum_sync.enums import IdentityEnum


class _Sentinel:
    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return self.name


#: Hint for a path's server version: not known, assume the base (uploads are conditional).
UNKNOWN = _Sentinel("UNKNOWN")
#: Hint: ask the server (``/api/metadata``) before deciding.
FETCH = _Sentinel("FETCH")
#: A local change reported without the stat the watcher saw.
UNSEEN = _Sentinel("UNSEEN")


class Phase(IdentityEnum):
    """Where a path is in its life."""

    IDLE = "idle"
    QUEUED = "queued"
    RUNNING = "running"


class Event(IdentityEnum):
    """What happens to a path."""

    REQUEST = "request"  # someone wants it synced
    TAKE = "take"  # its job takes the pending hint and starts working
    FINISH = "finish"  # its job ends (done, or stopped while queued)


TRANSITIONS = {
    (Phase.IDLE, Event.REQUEST): Phase.QUEUED,
    (Phase.QUEUED, Event.REQUEST): Phase.QUEUED,
    (Phase.RUNNING, Event.REQUEST): Phase.QUEUED,
    (Phase.QUEUED, Event.TAKE): Phase.RUNNING,
    (Phase.RUNNING, Event.FINISH): Phase.IDLE,
    (Phase.QUEUED, Event.FINISH): Phase.IDLE,
}


class InvalidTransition(Exception):
    """An event that the table does not allow in the path's phase."""


@attrs.define
class PathJob:
    """One path that is not idle: its phase, what its next round is to know, and its
    running job (an opaque handle, a Deferred in the engine)."""

    phase: Phase = Phase.IDLE
    hint: object = UNKNOWN
    seen: object = UNSEEN
    job: object = None


@attrs.frozen
class Taken:
    """What a job round works on: the hint and the stat seen, both cleared on taking."""

    hint: object
    seen: object


class PathStates:
    """The phase of every path; idle paths take no memory."""

    def __init__(self):
        self._jobs = {}

    def phase(self, path) -> Phase:
        job = self._jobs.get(path)
        return Phase.IDLE if job is None else job.phase

    def _step(self, path, event, job=None) -> PathJob:
        """``job``: the path's entry, when the caller has just looked it up."""
        job = job or self._jobs.get(path) or PathJob()
        following = TRANSITIONS.get((job.phase, event))
        if following is None:
            raise InvalidTransition(f"{path}: {event.value} while {job.phase.value}")
        job.phase = following
        if following is Phase.IDLE:
            self._jobs.pop(path, None)
        else:
            self._jobs[path] = job
        return job

    def request(self, path, hint=UNKNOWN, seen=UNSEEN) -> Phase:
        """Record a request; returns the phase the path was in before."""
        job = self._jobs.get(path)
        before = Phase.IDLE if job is None else job.phase
        job = self._step(path, Event.REQUEST, job)
        if hint is not UNKNOWN:
            job.hint = hint
        job.seen = seen
        return before

    def take(self, path) -> Taken:
        """The job starts a round: it gets the pending hint and stat."""
        job = self._step(path, Event.TAKE)
        taken = Taken(job.hint, job.seen)
        job.hint, job.seen = UNKNOWN, UNSEEN
        return taken

    def refetch(self, path) -> None:
        """This client just changed the server's version of ``path``: a server version
        waiting as the hint was heard before that and may be older, so the next round
        asks the server instead (an UNKNOWN hint stays: it assumes the base)."""
        job = self._jobs.get(path)
        if job is not None and job.hint is not UNKNOWN:
            job.hint = FETCH

    def finish(self, path) -> None:
        self._step(path, Event.FINISH)

    def attach(self, path, job) -> None:
        """Remember the running job of a path that is not idle."""
        self._jobs[path].job = job

    def job(self, path):
        """The running job of ``path`` (None when idle or not attached yet)."""
        entry = self._jobs.get(path)
        return None if entry is None else entry.job

    def hint(self, path):
        """The hint waiting for the path's next round (UNKNOWN when none)."""
        entry = self._jobs.get(path)
        return UNKNOWN if entry is None else entry.hint

    def jobs(self) -> list:
        return [entry.job for entry in self._jobs.values() if entry.job is not None]

    def __contains__(self, path) -> bool:
        return path in self._jobs

    def __len__(self) -> int:
        return len(self._jobs)
