"""Periodic passes: work run now and then every interval while this process leads.

The versions area and the cluster's client-id bindings are pruned this way (on a cluster,
by the leader only). A pass is a coroutine; the last one's Deferred is kept so that a
stop can wait for it, and a failed pass goes to the owner's handler while the next one
runs all the same.
"""

from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall


class Passes:
    """``run()`` (a coroutine function, looked up by the owner at each pass) at once and then every ``interval`` seconds of
    ``clock`` between :meth:`start` and :meth:`stop`; a pass's failure goes to
    ``failed(failure)``."""

    def __init__(self, run, failed, clock, interval: float):
        self._run = run
        self._failed = failed
        self._clock = clock
        self._interval = interval
        self._loop = None
        #: the Deferred of the last pass started (None: none yet)
        self.last = None

    @property
    def running(self) -> bool:
        """Whether passes are being run."""
        return self._loop is not None and self._loop.running

    def start(self) -> None:
        """A pass now, then every interval (nothing when already running)."""
        if not self.running:
            self._loop = LoopingCall(self._pass)
            self._loop.clock = self._clock
            self._loop.start(self._interval, now=True)

    def stop(self) -> None:
        """No more passes (the one under way goes on: :attr:`last`)."""
        if self.running:
            self._loop.stop()

    def _pass(self):
        self.last = Deferred.fromCoroutine(self._run())
        self.last.addErrback(self._failed)
        return self.last
