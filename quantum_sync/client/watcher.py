"""watchdog on the folder, brought into the reactor and debounced per path.

watchdog's observer thread turns each event into a relative path (the state directory
and names that cannot be synced are dropped there) and an lstat taken right after the
event (the create, writes and close of one file read from inotify together: one item,
one lstat after them all), and hands a whole burst of them to the reactor in one
``callFromThread``. A finished write (inotify's close-after-write, ``FileClosedEvent``)
is reported at once with that lstat, and so is a path found gone (a delete); any other
change is reported once the path has been quiet for the settle time and its size and mtime have stopped moving, so a file still being written
is not sent half-written. Renames inside the folder are reported as moves. Events of
FIFOs, sockets and devices are dropped: only regular files and directories are synced.
When the kernel drops events (inotify's queue overflowed: watchdog's ``EventsLostEvent``),
the watcher says so once per overflow, counts it, and asks for a full reconcile.
"""

import os
import stat as stat_module
import threading

from twisted.application.service import Service
from twisted.logger import Logger
from twisted.python.failure import Failure
from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    EventsLostEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEventHandler,
)
from watchdog.observers.polling import PollingObserver

from quantum_sync.adapters import watchdog as observers
from quantum_sync.client.localfs import local_stat
from quantum_sync.paths import STATE_DIR_NAME, relative_from_disk
from quantum_sync.threads import ReactorThreads

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
    EventsLostEvent,
]


#: What the bridge hands to the reactor: ``(CHANGE, path, stat)`` (report now),
#: ``(SETTLE, path, stat)`` (report once quiet), ``(MOVE, source, destination)`` and
#: ``(LOST, None, None)`` (events were dropped: look at everything).
CHANGE, SETTLE, MOVE, LOST = "change", "settle", "move", "lost"


#: :func:`_stat`'s answer for a FIFO, socket or device: its events are dropped.
SPECIAL = object()


def _stat(folder, path):
    """The path's :class:`~quantum_sync.client.localfs.LocalStat`, None when it is gone (or
    a symlink), :data:`SPECIAL` for a FIFO, socket or device."""
    try:
        st = os.lstat(os.path.join(folder, path))
    except OSError:
        return None
    seen = local_stat(st)
    if seen is None and not stat_module.S_ISLNK(st.st_mode):
        return SPECIAL
    return seen


log = Logger()


class _Bridge(FileSystemEventHandler):
    """Runs in watchdog's thread: names and stats each event, and hands what is waiting to
    the reactor in one call (a burst of events costs one wake-up, not one per event)."""

    def __init__(self, reactor, folder, sink, on_grow=None):
        self._reactor, self._folder, self._sink = reactor, folder, sink
        self._on_grow = on_grow
        self._state_dir = os.path.join(folder, STATE_DIR_NAME)
        self._lock = threading.Lock()
        self._waiting = []

    def _relative(self, name):
        if isinstance(name, bytes):
            try:
                name = os.fsdecode(name)
            except UnicodeDecodeError:
                return None
        if name.startswith(self._state_dir) and name[len(self._state_dir) : len(self._state_dir) + 1] in ("", os.sep):
            return None  # staged downloads come and go in here: the cheap test first
        return relative_from_disk(self._folder, name)

    def on_any_event(self, event):
        item = self._translate(event)
        if item is not None:
            self._hand_over([item])

    def on_file_events(self, events):
        """The plain file events of one read from inotify: one item a path, with one lstat
        taken after them all, in the order of each path's last event. That item reports at
        once only when the path's last event is a finished write; a write after a close
        in the same read waits for quiet, as any write does.

        Whatever goes wrong here is logged, never raised: it would end watchdog's reading
        thread, and with it every later event."""
        try:
            items = self._file_items(events)
        except Exception:
            failure = Failure()
            self._reactor.callFromThread(
                log.failure, "the watcher lost {count} file event(s); the next full rescan finds their changes",
                failure, count=len(events))
            return
        if items:
            self._hand_over(items)

    def _file_items(self, events) -> list:
        last = {}  # path -> (at once?, modified?), in the order of each path's last event
        names = {}  # on-disk name -> relative path (a file's events share its name)
        for event in events:
            if event.src_path not in names:
                names[event.src_path] = self._relative(event.src_path)
            path = names[event.src_path]
            if path is None:
                continue
            earlier = last.pop(path, None)
            modified = isinstance(event, FileModifiedEvent) or (earlier is not None and earlier[1])
            last[path] = (isinstance(event, FileClosedEvent), modified)
        items = (self._item(CHANGE if at_once else SETTLE, path, modified) for path, (at_once, modified) in last.items())
        return [item for item in items if item is not None]

    def _item(self, kind, path, modified):
        """``(kind, path, lstat)``, None for a special file; a file that was written to is
        reported to ``on_grow``."""
        stat = _stat(self._folder, path)
        if stat is SPECIAL:
            return None
        if stat is None:
            kind = CHANGE  # gone: nothing is being written, and a delete is final at once
        if modified and self._on_grow is not None and stat is not None:
            self._on_grow(path, stat.size)  # from this thread: it only takes note
        return (kind, path, stat)

    def _hand_over(self, items):
        with self._lock:
            first = not self._waiting
            self._waiting.extend(items)
        if first:
            self._reactor.callFromThread(self._deliver)

    def _translate(self, event):
        if isinstance(event, EventsLostEvent):
            return (LOST, None, None)
        if getattr(event, "is_synthetic", False):
            # watchdog adds a moved event for everything inside a moved directory; the
            # directory's own Move covers them (and the engine checks its children)
            return None
        path = self._relative(event.src_path)
        if isinstance(event, (FileMovedEvent, DirMovedEvent)):
            return self._translate_move(event, path)
        if path is None:
            return None
        kind = CHANGE if isinstance(event, (FileClosedEvent, DirCreatedEvent)) else SETTLE
        return self._item(kind, path, isinstance(event, FileModifiedEvent))

    def _translate_move(self, event, path):
        """A rename inside the folder (not of a special file); a change of the side that
        is inside when the other is not (or is not synced)."""
        destination = self._relative(event.dest_path)
        if path is not None and destination is not None:
            special = not event.is_directory and _stat(self._folder, destination) is SPECIAL
            return None if special else (MOVE, path, destination)
        changed = path if path is not None else destination
        return None if changed is None else self._item(CHANGE, changed, False)

    def _deliver(self):
        with self._lock:
            items, self._waiting = self._waiting, []
        self._sink(items)


class FolderWatcher(Service):
    """Reports local changes to ``on_change(path, stat)`` (``stat``: the path's
    :class:`~quantum_sync.client.localfs.LocalStat` just after the change, None when it is
    gone) and renames to ``on_move(src, dst)``; ``on_lost()`` when the kernel dropped
    events (then everything must be looked at: a full reconcile). ``threads``: the
    :class:`~quantum_sync.threads.ThreadPoolService` that waits for watchdog's thread to end."""

    log = Logger()

    def __init__(self, reactor, folder, on_change, on_move, settle: float = 0.2, on_grow=None, is_synced=None,
                 own_write=None, on_lost=None, threads=None):
        self._reactor = reactor
        self._threads = threads if threads is not None else ReactorThreads(reactor)
        self._on_lost = on_lost
        #: Times the kernel dropped events (inotify queue overflows) since the start.
        self.events_lost = 0
        #: ``own_write(name)`` (watchdog's thread): the client's own download just landed
        #: at ``name``, its event is dropped before it goes further
        self._own_write = own_write
        #: ``is_synced(path, stat)``: the stat shows the version already synced (the
        #: client's own download landing), so a change to wait out is not worth a timer
        self._is_synced = is_synced
        self._on_grow = on_grow
        self.folder = os.path.realpath(folder)
        self._on_change = on_change
        self._on_move = on_move
        self.settle = settle
        self._timers = {}
        self._observer = None

    def startService(self):
        super().startService()
        bridge = _Bridge(self._reactor, self.folder, self._events, self._on_grow)
        try:
            # .quantum-sync unwatched; file events straight from watchdog's reading thread
            self._observer = observers.observer(ignore=self._own_write, direct=bridge.on_file_events)
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
        return self._threads.defer(observer.join, 5)

    # -- in the reactor -----------------------------------------------------------------

    def _events(self, items):
        if not self.running:
            return
        # a change reported at once (a finished write) makes the same path's earlier
        # "report once quiet" moot: skip those instead of arming timers to cancel
        last_at_once = {item[1]: i for i, item in enumerate(items) if item[0] is CHANGE}
        for i, item in enumerate(items):
            if item[0] is SETTLE and (last_at_once.get(item[1], -1) > i or self._synced(item[1], item[2])):
                continue
            try:
                self._dispatch(*item)
            except Exception:
                self.log.failure("error while handling a file system event")

    def _dispatch(self, kind, path, other):
        if kind is LOST:
            self.events_lost += 1
            self.log.warn("the kernel dropped file events (inotify queue overflow; {count} so far): "
                          "full reconcile", count=self.events_lost)
            if self._on_lost is not None:
                self._on_lost()
        elif kind is MOVE:
            self._cancel(path)
            self._cancel(other)
            self._on_move(path, other)
        elif kind is CHANGE:
            self._cancel(path)
            self._on_change(path, other)
        else:
            self._debounce(path, other)

    def _synced(self, path, stat) -> bool:
        return self._is_synced is not None and path not in self._timers and self._is_synced(path, stat)

    def _cancel(self, path):
        pending = self._timers.pop(path, None)
        if pending is not None and pending[0].active():
            pending[0].cancel()

    def _debounce(self, path, stat):
        pending = self._timers.get(path)
        if pending is not None and pending[0].active():
            pending[0].reset(self.settle)
            self._timers[path] = (pending[0], stat)
            return
        call = self._reactor.callLater(self.settle, self._settled, path)
        self._timers[path] = (call, stat)

    def _settled(self, path):
        previous = self._timers.pop(path, (None, None))[1]
        now = _stat(self.folder, path)
        if now is SPECIAL:
            return  # a FIFO, socket or device took the file's place: not synced
        if now != previous and now is not None and not now.is_directory:
            # still moving: wait for another quiet period
            call = self._reactor.callLater(self.settle, self._settled, path)
            self._timers[path] = (call, now)
            return
        self._on_change(path, now)
