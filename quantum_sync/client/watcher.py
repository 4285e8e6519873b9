"""watchdog on the folder, brought into the reactor and debounced per path.

watchdog's observer thread only calls ``reactor.callFromThread``; everything else runs in
the reactor. A finished write (inotify's close-after-write, ``FileClosedEvent``) is
reported at once; any other change is reported once the path has been quiet for the
settle time and its size and mtime have stopped moving, so a file still being written
is not sent half-written. Renames inside the folder are reported as moves. The state
directory and names that cannot be synced are never reported.
"""

import os

from twisted.application.service import Service
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

from quantum_sync.client.localfs import lstat
from quantum_sync.paths import relative_from_disk

EVENTS = [
    FileCreatedEvent,
    FileModifiedEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileDeletedEvent,
    FileMovedEvent,
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
]


class _Bridge(FileSystemEventHandler):
    """Runs in watchdog's thread: hands every event to the reactor, nothing more."""

    def __init__(self, reactor, sink):
        self._reactor, self._sink = reactor, sink

    def on_any_event(self, event):
        self._reactor.callFromThread(self._sink, event)


class FolderWatcher(Service):
    """Reports local changes to ``on_change(path)`` and renames to ``on_move(src, dst)``."""

    log = Logger()

    def __init__(self, reactor, folder, on_change, on_move, settle: float = 0.2):
        self._reactor = reactor
        self.folder = os.path.realpath(folder)
        self._on_change = on_change
        self._on_move = on_move
        self.settle = settle
        self._timers = {}
        self._observer = None

    def startService(self):
        super().startService()
        bridge = _Bridge(self._reactor, self._event)
        try:
            self._observer = Observer()
            self._observer.schedule(bridge, self.folder, recursive=True, event_filter=EVENTS)
            self._observer.start()
        except OSError as e:
            # inotify watch limit reached: poll instead (slower, but nothing is missed)
            self.log.warn("inotify unavailable ({error}); polling the folder instead", error=str(e))
            self._observer = PollingObserver(timeout=1)
            self._observer.schedule(bridge, self.folder, recursive=True)
            self._observer.start()

    def stopService(self):
        super().stopService()
        for call, _ in self._timers.values():
            if call.active():
                call.cancel()
        self._timers.clear()
        observer, self._observer = self._observer, None
        if observer is None:
            return None
        observer.stop()
        return deferToThread(observer.join, 5)

    # -- in the reactor -----------------------------------------------------------------

    def _relative(self, name):
        if isinstance(name, bytes):
            try:
                name = os.fsdecode(name)
            except UnicodeDecodeError:
                return None
        return relative_from_disk(self.folder, name)

    def _event(self, event):
        if not self.running:
            return
        try:
            self._dispatch(event)
        except Exception:
            self.log.failure("error while handling a file system event")

    def _dispatch(self, event):
        if getattr(event, "is_synthetic", False):
            # watchdog adds a moved event for everything inside a moved directory; the
            # directory's own Move covers them (and the engine checks its children)
            return
        path = self._relative(event.src_path)
        if isinstance(event, (FileMovedEvent, DirMovedEvent)):
            destination = self._relative(event.dest_path)
            if path is not None:
                self._cancel(path)
            if destination is not None:
                self._cancel(destination)
            if path is not None and destination is not None:
                self._on_move(path, destination)
            elif path is not None:
                self._on_change(path)
            elif destination is not None:
                self._on_change(destination)
            return
        if path is None:
            return
        if isinstance(event, (FileClosedEvent, DirCreatedEvent)):
            self._cancel(path)
            self._on_change(path)
        else:
            self._debounce(path)

    def _cancel(self, path):
        pending = self._timers.pop(path, None)
        if pending is not None and pending[0].active():
            pending[0].cancel()

    def _debounce(self, path):
        pending = self._timers.get(path)
        if pending is not None and pending[0].active():
            pending[0].reset(self.settle)
            self._timers[path] = (pending[0], self._stat(path))
            return
        call = self._reactor.callLater(self.settle, self._settled, path)
        self._timers[path] = (call, self._stat(path))

    def _stat(self, path):
        try:
            return lstat(os.path.join(self.folder, path))
        except OSError:
            return None

    def _settled(self, path):
        previous = self._timers.pop(path, (None, None))[1]
        now = self._stat(path)
        if now != previous and now is not None and not now.is_directory:
            # still moving: wait for another quiet period
            call = self._reactor.callLater(self.settle, self._settled, path)
            self._timers[path] = (call, now)
            return
        self._on_change(path)
