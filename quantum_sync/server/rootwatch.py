"""Watches the root for files written by other programs and journals them.

watchdog's thread drops the events of the state directory and those of the server's
own installs (recognised by name and stat, :meth:`Store.own_write`) and hands the other
event paths to the reactor, a burst at a time (``callFromThread``); there they are
collected for ``delay`` seconds and then passed to :meth:`FileOperations.refresh`, which
compares the disk with the index. The server's other writes are already in the index
when their events arrive (refresh waits for the operation lock), so they journal nothing.

inotify does not see everything: its queue overflows under a burst (watchdog then
delivers an ``EventsLostEvent``), and writes made over NFS or by other hosts make no
event at all. An overflow starts a full rescan of the root at once (logged and counted
as ``events_lost``), and a full rescan runs every ``rescan_interval`` seconds anyway.
A refresh or a rescan that meets the index away (a cluster's database) is tried again
every :data:`RETRY` seconds, with one log line each try.
"""

import os
import threading

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    EventsLostEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEventHandler,
)
from watchdog.observers.polling import PollingObserver

from quantum_sync import paths
from quantum_sync.adapters import watchdog as observers
from quantum_sync.errors import is_unavailable
from quantum_sync.threads import ReactorThreads

#: The events asked of watchdog (and of inotify: the others are never even read). Every
#: change of content or name shows as one of these; opening, reading and closing a file
#: (each download) does not. A directory's own 'modified' event only says that an entry
#: inside changed, and that entry has its own event (refreshing the whole directory for
#: it made every write rescan its siblings).
_EVENTS = [FileCreatedEvent, DirCreatedEvent, FileModifiedEvent, FileDeletedEvent,
           DirDeletedEvent, FileMovedEvent, DirMovedEvent, EventsLostEvent]
#: Events by which a rename of the server's own (:meth:`Store.install_staged`) shows.
_INSTALL_EVENTS = ("moved", "created", "modified")
#: Seconds between snapshots when inotify is unavailable and the root is polled.
POLL_INTERVAL = 2.0
#: Seconds before changed paths whose refresh, or a rescan, met the index away (a
#: cluster's database) are looked at again.
RETRY = 2.0


class _Bridge(FileSystemEventHandler):
    """Runs in watchdog's thread: drops the events of the state directory and of the
    server's own installs (``own_write``), and hands the other event paths to the
    reactor in batches: one ``callFromThread`` per burst, not per event."""

    def __init__(self, reactor, sink, state_dir: str, own_write, lost=None):
        self._reactor = reactor
        self._sink = sink
        self._lost = lost
        self._state_prefix = state_dir + os.sep
        self._own_write = own_write
        self._lock = threading.Lock()
        self._names = []

    def on_any_event(self, event):
        names = self._names_of(event)
        if not names:
            return
        with self._lock:
            first = not self._names
            self._names.extend(names)
        if first:
            self._reactor.callFromThread(self._deliver)

    def _names_of(self, event) -> list:
        """The names ``event`` is about, but those in the state directory and the
        server's own installs."""
        names = [name for name in (event.src_path, getattr(event, "dest_path", ""))
                 if name and isinstance(name, str) and not name.startswith(self._state_prefix)]
        if names and not event.is_directory and event.event_type in _INSTALL_EVENTS:
            names = [name for name in names if not self._own_write(name)]
        return names

    def on_events_lost(self, event):
        if self._lost is not None:
            self._reactor.callFromThread(self._lost)

    def _deliver(self):
        with self._lock:
            names, self._names = self._names, []
        self._sink(names)


class RootWatcher(Service):
    """Journals changes other programs make under ``root`` within about ``delay`` seconds,
    and rescans the whole root when inotify lost events and every ``rescan_interval``
    seconds (0: never); ``metrics`` counts ``events_lost`` and ``rescans``."""

    log = Logger()

    def __init__(self, root: str, operations, reactor, delay: float = 0.2,
                 rescan_interval: float = 0, metrics=None, threads=None):
        self.root = root
        self.operations = operations
        self.delay = delay
        self.rescan_interval = rescan_interval
        self.metrics = metrics
        self._reactor = reactor
        self._threads = threads if threads is not None else ReactorThreads(reactor)
        #: The running watchdog observer (None when neither inotify nor polling works).
        self.observer = None
        self._pending = set()
        self._call = None
        self._running_refresh = None
        self._periodic = None
        self._rescan = None  # the full rescan running, if any
        self._rescan_again = False  # another one was asked for meanwhile
        self._rescan_retry = None  # the next try of one that met the index away

    def startService(self):
        super().startService()
        # inotify's threads wake every 0.1 s (a quick stop); polling rescans every 2 s
        own_write = self.operations.store.own_write
        for kind, options in ((observers.observer, {"timeout": 0.1, "ignore": own_write}),
                              (PollingObserver, {"timeout": POLL_INTERVAL})):
            observer = kind(**options)
            try:
                bridge = _Bridge(self._reactor, self._changed, self.operations.store.state_dir, own_write,
                                 self.events_lost)
                observer.schedule(bridge, self.root, recursive=True, event_filter=_EVENTS)
                observer.start()
            except OSError as e:  # e.g. the inotify watch limit: poll instead
                observer.unschedule_all()
                self.log.warn("cannot watch {root} with {kind}: {reason}", root=self.root,
                              kind=kind.__name__, reason=str(e))
                continue
            self.observer = observer
            break
        else:
            self.log.error("changes other programs make in {root} are picked up by the"
                           " periodic rescan only", root=self.root)
        if self.rescan_interval:
            self._periodic = LoopingCall(self.rescan)
            self._periodic.clock = self._reactor
            self._periodic.start(self.rescan_interval, now=False)

    def events_lost(self) -> None:
        """inotify dropped events (its queue overflowed): rescan the whole root."""
        self.log.warn("the watch on {root} lost events (inotify queue overflow): rescanning"
                      " the whole root", root=self.root)
        if self.metrics is not None:
            self.metrics.events_lost += 1
        self.rescan()

    def rescan(self) -> None:
        """Compare the whole root with the index (one at a time: asked for while one
        runs, another follows it)."""
        if not self.running:
            return
        if self._rescan is not None:
            self._rescan_again = True
            return
        if self._rescan_retry is not None and self._rescan_retry.active():
            self._rescan_retry.cancel()
        self._rescan_retry = None
        if self.metrics is not None:
            self.metrics.rescans += 1
        self._rescan = Deferred.fromCoroutine(self.operations.refresh(None))
        self._rescan.addErrback(self._rescan_failed)
        self._rescan.addBoth(self._rescanned)

    def _rescan_failed(self, failure) -> None:
        if is_unavailable(failure):
            self.log.warn("rescanning {root} waits for the index: {error}", root=self.root,
                          error=failure.value.message)
            if self.running:
                self._rescan_retry = self._reactor.callLater(RETRY, self.rescan)
            return
        self.log.failure("rescanning {root} failed", failure, root=self.root)

    def _rescanned(self, _):
        self._rescan = None
        if self._rescan_again:
            self._rescan_again = False
            self.rescan()

    def _changed(self, names):
        for name in names:
            rel = paths.relative_from_disk(self.root, name)
            if rel is not None:
                self._pending.add(rel)
        if self._pending and self.running and (self._call is None or not self._call.active()):
            self._call = self._reactor.callLater(self.delay, self._flush)

    def _flush(self):
        tops, self._pending = paths.outermost(self._pending), set()
        self._running_refresh = Deferred.fromCoroutine(self.operations.refresh(tops))
        self._running_refresh.addErrback(self._refresh_failed, tops)

    def _refresh_failed(self, failure, tops) -> None:
        if is_unavailable(failure):  # (a cluster's database away): the paths wait for the next try
            self.log.warn("{count} changed paths wait for the index: {error}", count=len(tops),
                          error=failure.value.message)
            self._pending.update(tops)
            if self.running and (self._call is None or not self._call.active()):
                self._call = self._reactor.callLater(RETRY, self._flush)
            return
        self.log.failure("refreshing {tops} failed", failure, tops=tops)

    async def _stop(self):
        for call in (self._call, self._rescan_retry):
            if call is not None and call.active():
                call.cancel()
        if self._periodic is not None and self._periodic.running:
            self._periodic.stop()
        if self.observer is not None:
            observer, self.observer = self.observer, None
            observer.stop()
            await self._threads.defer(observer.join)
        for running in (self._running_refresh, self._rescan):
            if running is not None:
                await running

    def stopService(self):
        super().stopService()
        return Deferred.fromCoroutine(self._stop())
