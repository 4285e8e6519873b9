"""watchdog's inotify observer, with the state directory left unwatched.

A recursive watch covers every directory below it, the state directory included, so
every temp file written in ``.quantum-sync/tmp`` and every SQLite commit made inotify
events that watchdog's three threads handled before our handlers dropped them: three of
the four events of each download a client installs, half of the server's events for an
upload. :func:`observer` gives an observer that never adds a watch on
``<watched directory>/.quantum-sync`` or below.

It builds on watchdog 7.1's inotify classes, details without a public API:
``InotifyWatchGroup._add_callback`` (where a watch is added), the emitter's
``on_thread_start`` and ``_inotify``/``_inotify_fd`` (which group it makes), and
``InotifyFD.run`` with its ``_closed`` (a reader that hands the events of each read over
at once, in its own thread, without watchdog's dispatcher thread: see ``ReadingFD.run``).
setup.cfg pins watchdog to the tested range and tests/test_adapters_watchdog.py pins
these details, watchdog's ``run`` among them; with a watchdog that lacks them, or off
Linux, it is watchdog's own ``Observer`` (which watches everything).
"""

import os

from watchdog.observers import Observer

from quantum_sync.paths import STATE_DIR_NAME

_STATE = os.fsencode(STATE_DIR_NAME)


def observer(timeout: float = 1.0, ignore=None, direct=None):
    """A new observer (not started) that leaves the state directory of every watched
    directory unwatched where watchdog allows; ``timeout``: how often its threads wake
    (a quicker stop).

    ``ignore(name)``, called in watchdog's inotify reading thread for each file that appears at
    ``name`` (created, or renamed into place), may answer True to drop that event there:
    the process's own installs then cost no hand-off through watchdog's other threads
    (the handler would have dropped them anyway).

    ``direct(events)``, also called in that thread, receives the plain events of files
    (created, modified, attributes, closed after writing, deleted) as watchdog's event
    objects, a list of them once per read from inotify (in order; a burst's create,
    modify and close of one file then come together), instead of through watchdog's two
    further threads (each event crossed two queues, and a burst of new files queued up
    there for a second); moves and everything about directories still go through them,
    and to the handler. A change
    may then reach ``direct`` before an earlier move it follows reaches the handler: the
    handler of a sync client copes (it decides on what the disk shows), a handler that
    needs the strict order must not take ``direct``."""
    if _ExcludingObserver is None:
        return Observer(timeout=timeout)
    return _ExcludingObserver(timeout=timeout, ignore=ignore, direct=direct)


def _unwatched(top: bytes, path: bytes) -> bool:
    """Whether ``path`` is the state directory of ``top``, or inside it."""
    state = os.path.join(top, _STATE)
    return path == state or path.startswith(state + b"/")


def _build():
    try:
        from watchdog.observers.api import BaseObserver
        from watchdog.observers.inotify import InotifyEmitter, InotifyObserver, InotifyWatchGroup
        from watchdog.observers.inotify_c import InotifyFD
    except ImportError:  # not Linux, or another watchdog
        return None
    if not all(hasattr(InotifyWatchGroup, name) for name in
               ("_add_callback", "_add_all_callbacks", "_build_event_source_path", "on_event", "is_active")) \
            or not hasattr(InotifyEmitter, "get_event_mask_from_filter") \
            or not all(hasattr(InotifyFD, name) for name in ("read_events", "handle_event", "should_keep_running")):
        return None

    from watchdog.events import FileAttribEvent, FileClosedEvent, FileCreatedEvent, FileDeletedEvent, FileModifiedEvent

    def file_event(event):
        """The watchdog event class of a plain file event (watchdog's own order), or None."""
        if event.is_directory or event.is_moved_from or event.is_moved_to:
            return None
        for test, cls in (("is_attrib", FileAttribEvent), ("is_modify", FileModifiedEvent),
                          ("is_delete", FileDeletedEvent), ("is_create", FileCreatedEvent),
                          ("is_close_write", FileClosedEvent)):
            if getattr(event, test):
                return cls
        return None

    class ReadingFD(InotifyFD):
        """watchdog's inotify reader, telling ``after_read`` hooks when the events of one
        read have all been handled."""

        def __init__(self):
            super().__init__()
            self.after_read = []

        def run(self) -> None:
            """watchdog 7.1's ``InotifyFD.run`` (which tests/test_adapters_watchdog.py pins)
            reads in this thread and hands each read to a dispatcher thread, joining the
            reads of a burst that come within a millisecond. Here the events of each read
            are handled in this thread and then the hooks run; the rest is watchdog's own:
            the reads and their stop on close (``_read_event_buffer`` through
            ``read_events``), the parsing and ``handle_event``. The second thread is left
            out on purpose: each event woke two threads that contend for the GIL with the
            reactor (bench/README.md, adapters: a 1,000-client broadcast's p50 18.9 → 23.7
            ms, a file's close reached ``direct`` 0.46 → 1.47 ms). An exception from a
            callback ends this thread, as it ends watchdog's."""
            while self.should_keep_running() and not self._closed:
                for event in self.read_events():
                    self.handle_event(event)
                for hook in tuple(self.after_read):
                    hook()

    class WatchGroup(InotifyWatchGroup):
        ignore = direct = None  # set on a subclass per observer

        def __post_init__(self) -> None:
            self.held = []  # the direct events of the read being handled (reading thread only)
            super().__post_init__()

        def _add_callback(self, path: bytes) -> None:
            if not _unwatched(self.path, path):
                super()._add_callback(path)

        def on_event(self, event) -> None:
            cls = file_event(event) if self.direct is not None else None
            appears = (event.is_create or event.is_moved_to) and not event.is_directory
            if (cls is not None or (appears and self.ignore is not None)) and self.is_active:
                name = self._build_event_source_path(event)
                if name is None:
                    return
                path = os.fsdecode(name)
                if appears and self.ignore is not None and self.ignore(path):
                    return
                if cls is not None:
                    self.held.append(cls(path))
                    return
            super().on_event(event)

        def end_of_read(self) -> None:
            if self.held:
                held, self.held = self.held, []
                self.direct(held)

    class Emitter(InotifyEmitter):
        def __init__(self, *args, group=WatchGroup, **kwargs):
            super().__init__(*args, **kwargs)
            self.group = group

        def on_thread_start(self) -> None:  # InotifyEmitter's, with the group above
            self._inotify = self.group(
                self._inotify_fd,
                os.fsencode(self.watch.path),
                is_recursive=self.watch.is_recursive,
                event_mask=self.get_event_mask_from_filter(),
                follow_symlink=self.watch.follow_symlink,
            )
            self._inotify_fd.after_read.append(self._inotify.end_of_read)

        def on_thread_stop(self) -> None:
            group = self._inotify
            if group is not None and group.end_of_read in self._inotify_fd.after_read:
                self._inotify_fd.after_read.remove(group.end_of_read)
            super().on_thread_stop()

    class ExcludingObserver(InotifyObserver):
        def __init__(self, *, timeout: float, ignore=None, direct=None):
            self._inotify_fd = ReadingFD()
            self._inotify_fd.start()
            group = type("ObserverWatchGroup", (WatchGroup,), {"ignore": staticmethod(ignore) if ignore else None,
                                                                "direct": staticmethod(direct) if direct else None})
            BaseObserver.__init__(self, Emitter, timeout=timeout, inotify_fd=self._inotify_fd, group=group)

    return ExcludingObserver


_ExcludingObserver = _build()
