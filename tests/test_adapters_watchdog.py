"""The watchers' observer (quantum_sync.adapters.watchdog): watchdog's inotify observer with the
state directory left unwatched and the process's own installs dropped in its reading
thread. Real inotify on a real folder; every wait is bounded."""

import os
import threading
import time

from watchdog.events import FileSystemEventHandler

from quantum_sync.adapters import watchdog as observers
from quantum_sync.diskio import OwnWrites


class _Seen(FileSystemEventHandler):
    def __init__(self):
        self.paths = []
        self.kinds = []
        self.event = threading.Event()

    def on_any_event(self, event):
        self.kinds.append((type(event).__name__, event.src_path))
        self.paths.append(event.src_path)
        if getattr(event, "dest_path", ""):
            self.paths.append(event.dest_path)
        self.event.set()


def _watch(folder, **options):
    seen = _Seen()
    observer = observers.observer(timeout=0.1, **options)
    observer.schedule(seen, str(folder), recursive=True)
    observer.start()
    return observer, seen


def _settle(seen, marker, timeout=5.0):
    """Wait until the event of ``marker`` (written last) is seen."""
    deadline = time.monotonic() + timeout
    while marker not in seen.paths and time.monotonic() < deadline:
        seen.event.wait(0.05)
        seen.event.clear()
    assert marker in seen.paths


def test_the_state_directory_is_not_watched(tmp_path):
    state = tmp_path / ".quantum-sync"
    (state / "tmp").mkdir(parents=True)
    (tmp_path / "sub").mkdir()
    observer, seen = _watch(tmp_path)
    try:
        (state / "tmp" / "staged").write_bytes(b"x")
        (state / "state.db").write_bytes(b"x")
        (state / "new").mkdir()
        (state / "new" / "deeper").write_bytes(b"x")
        (tmp_path / ".quantum-syncx").write_bytes(b"a name that only starts the same")
        (tmp_path / "sub" / "f").write_bytes(b"y")
        _settle(seen, str(tmp_path / "sub" / "f"))
    finally:
        observer.stop()
        observer.join(5)
    assert not [p for p in seen.paths if p.startswith(str(state) + os.sep)]
    assert str(tmp_path / ".quantum-syncx") in seen.paths


def test_an_own_install_is_dropped_once_and_anything_else_is_reported(tmp_path):
    own = OwnWrites()
    (tmp_path / ".quantum-sync").mkdir()
    observer, seen = _watch(tmp_path, ignore=own.claim)
    try:
        staged = tmp_path / ".quantum-sync" / "staged"  # renamed from the unwatched state dir
        staged.write_bytes(b"ours")
        (tmp_path / "before").write_bytes(b"m")  # reported after whatever the write above caused
        _settle(seen, str(tmp_path / "before"))
        seen.paths.clear()
        target = tmp_path / "landed"
        own.expect(str(target), os.stat(staged))
        os.rename(staged, target)
        (tmp_path / "theirs").write_bytes(b"someone else")
        _settle(seen, str(tmp_path / "theirs"))
        assert str(target) not in seen.paths  # our own install: dropped
        with open(target, "ab") as f:  # a later write to our file is someone's change
            f.write(b" and more")
        _settle(seen, str(target))
    finally:
        observer.stop()
        observer.join(5)
    assert [p for p in seen.paths if p == str(target)]  # the write after it is reported
    assert own.claim(str(target)) is False  # recognised once


def test_file_events_go_straight_to_direct_and_moves_and_directories_to_the_handler(tmp_path):
    direct, reads = [], []

    def take(events):  # one call a read from inotify
        reads.append(len(events))
        direct.extend((type(event).__name__, event.src_path) for event in events)

    (tmp_path / "d").mkdir()
    observer, seen = _watch(tmp_path, direct=take)
    try:
        (tmp_path / "a").write_bytes(b"x")
        (tmp_path / "e").mkdir()
        os.rename(tmp_path / "a", tmp_path / "d" / "b")
        _settle(seen, str(tmp_path / "d" / "b"))
        os.unlink(tmp_path / "d" / "b")
        deadline = time.monotonic() + 5
        while ("FileDeletedEvent", str(tmp_path / "d" / "b")) not in direct and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        observer.stop()
        observer.join(5)
    a, b = str(tmp_path / "a"), str(tmp_path / "d" / "b")
    assert ("FileCreatedEvent", a) in direct and ("FileClosedEvent", a) in direct
    assert ("FileDeletedEvent", b) in direct
    handled = {kind for kind in seen.kinds}
    for kind in ("FileCreatedEvent", "FileModifiedEvent", "FileClosedEvent"):
        assert (kind, a) not in handled  # went to direct only
    assert ("FileDeletedEvent", b) not in handled
    assert ("DirCreatedEvent", str(tmp_path / "e")) in seen.kinds  # the directory and the move did
    assert ("FileMovedEvent", a) in seen.kinds and b in seen.paths
    assert not [path for _, path in direct if path in (str(tmp_path / "d"), str(tmp_path / "e"))]
    assert reads and 0 not in reads and sum(reads) == len(direct)  # never an empty call


#: SHA-256 of the source of watchdog 7.1.1's ``InotifyFD.run``, which ``ReadingFD.run``
#: stands in for. A watchdog whose ``run`` changed fails here: read what it does now
#: and carry into ReadingFD.run what matters (see its docstring) before moving the pin.
WATCHDOG_RUN = "65d94ea9e91860cd63ad5be583fe47cd52d8411cc91227ae1507745fd5124faa"


def test_the_reader_stands_in_for_the_run_it_was_written_against():
    import hashlib
    import inspect

    from watchdog.observers.inotify_c import InotifyFD

    assert hashlib.sha256(inspect.getsource(InotifyFD.run).encode()).hexdigest() == WATCHDOG_RUN


def test_direct_is_called_in_the_reading_thread_which_ends_on_close(tmp_path):
    """The events of a read are handled where they were read (no dispatcher thread), and
    closing watchdog's inotify reader (``InotifyFD.close``) ends that thread."""
    threads, direct = [], []

    def take(events):
        threads.append(threading.current_thread())
        direct.extend((type(event).__name__, event.src_path) for event in events)

    observer, seen = _watch(tmp_path, direct=take)
    try:
        (tmp_path / "f").write_bytes(b"x")
        deadline = time.monotonic() + 5
        while ("FileClosedEvent", str(tmp_path / "f")) not in direct and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not [t for t in threading.enumerate() if t.name == "InotifyFD-Dispatcher"]
        (reader,) = set(threads)  # the reader itself (an InotifyFD is a thread)
        reader.close()
        reader.join(5)
        assert not reader.is_alive()
    finally:
        observer.stop()
        observer.join(5)
    assert ("FileClosedEvent", str(tmp_path / "f")) in direct
    assert not observer.is_alive()
