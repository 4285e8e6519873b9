"""Watches the root for files written by other programs and journals them.

watchdog's thread only hands event paths to the reactor (``callFromThread``); there
they are collected for ``delay`` seconds and then passed to
:meth:`FileOperations.refresh`, which compares the disk with the index. The server's
own writes are already in the index when their events arrive (refresh waits for the
operation lock), so they journal nothing; the state directory is never addressed.
"""

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from watchdog.events import FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

from quantum_sync import paths

_IGNORED_EVENTS = ("opened", "closed_no_write")
#: Seconds between snapshots when inotify is unavailable and the root is polled.
POLL_INTERVAL = 2.0


class _Bridge(FileSystemEventHandler):
    """Runs in watchdog's thread: forwards event paths to the reactor, nothing else."""

    def __init__(self, reactor, sink):
        self._reactor = reactor
        self._sink = sink

    def on_any_event(self, event):
        if event.event_type in _IGNORED_EVENTS:
            return
        if event.is_directory and event.event_type == "modified":
            # Only says that an entry inside changed, and that entry has its own event;
            # refreshing the whole directory for it made every write rescan its siblings.
            return
        names = [event.src_path, getattr(event, "dest_path", "")]
        self._reactor.callFromThread(self._sink, [n for n in names if n])


def outermost(tops) -> list:
    """The paths of ``tops`` that are not inside another of them, sorted."""
    result = []
    for path in sorted(set(tops)):
        if not any(paths.is_inside(path, kept) for kept in result):
            result.append(path)
    return result


class RootWatcher(Service):
    """Journals changes other programs make under ``root`` within about ``delay`` seconds."""

    log = Logger()

    def __init__(self, root: str, operations, reactor, delay: float = 0.2):
        self.root = root
        self.operations = operations
        self.delay = delay
        self._reactor = reactor
        self._observer = None
        self._pending = set()
        self._call = None
        self._running_refresh = None

    def startService(self):
        super().startService()
        # inotify's threads wake every 0.1 s (a quick stop); polling rescans every 2 s
        for kind, timeout in ((Observer, 0.1), (PollingObserver, POLL_INTERVAL)):
            observer = kind(timeout=timeout)
            try:
                observer.schedule(_Bridge(self._reactor, self._changed), self.root, recursive=True)
                observer.start()
            except OSError as e:  # e.g. the inotify watch limit: poll instead
                observer.unschedule_all()
                self.log.warn("cannot watch {root} with {kind}: {reason}", root=self.root,
                              kind=kind.__name__, reason=str(e))
                continue
            self._observer = observer
            return
        self.log.error("changes other programs make in {root} are picked up at the next"
                       " start only", root=self.root)

    def _changed(self, names):
        for name in names:
            if isinstance(name, bytes):
                continue
            rel = paths.relative_from_disk(self.root, name)
            if rel is not None:
                self._pending.add(rel)
        if self._pending and self.running and (self._call is None or not self._call.active()):
            self._call = self._reactor.callLater(self.delay, self._flush)

    def _flush(self):
        tops, self._pending = outermost(self._pending), set()
        self._running_refresh = Deferred.fromCoroutine(self.operations.refresh(tops))
        self._running_refresh.addErrback(
            lambda failure: self.log.failure("refreshing {tops} failed", failure, tops=tops))

    async def _stop(self):
        if self._call is not None and self._call.active():
            self._call.cancel()
        if self._observer is not None:
            observer, self._observer = self._observer, None
            observer.stop()
            await deferToThreadPool(self._reactor, self._reactor.getThreadPool(), observer.join)
        if self._running_refresh is not None:
            await self._running_refresh

    def stopService(self):
        super().stopService()
        return Deferred.fromCoroutine(self._stop())
