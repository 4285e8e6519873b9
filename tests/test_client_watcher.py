"""The watcher: real inotify events, brought into the reactor and debounced."""

import os
import time

import pytest
import pytest_twisted
from watchdog.events import FileClosedEvent, FileCreatedEvent, FileDeletedEvent, FileModifiedEvent

from twisted.internet.task import deferLater

from quantum_sync.client.watcher import CHANGE, SETTLE, FolderWatcher, _Bridge
from support import wait_for
from tests.logcapture import LogCapture


#: A settle time far above any scheduling delay of a loaded 2-core machine, for the tests
#: whose outcome depends on "a quiet period" being told apart from "the test's next step".
LONG_SETTLE = 2.0


@pytest.fixture
def watched(reactor, tmp_path, request):
    """A started watcher on ``tmp_path`` recording its events; settle 0.2 s unless the test
    asks for another (``@pytest.mark.parametrize("watched", [seconds], indirect=True)``)."""
    events = []
    watcher = FolderWatcher(
        reactor, str(tmp_path), lambda p, stat: events.append(("change", p, time.monotonic())),
        lambda a, b: events.append(("move", (a, b), time.monotonic())),
        settle=getattr(request, "param", 0.2),
    )
    os.makedirs(tmp_path / ".quantum-sync")
    watcher.startService()
    yield tmp_path, events
    pytest_twisted.blockon(watcher.stopService())


@pytest.mark.parametrize("watched", [LONG_SETTLE], indirect=True)
@pytest_twisted.ensureDeferred
async def test_a_finished_write_is_reported_at_once(reactor, watched):
    folder, events = watched
    start = time.monotonic()
    (folder / "a.txt").write_bytes(b"hello")
    await wait_for(reactor, lambda: ("change", "a.txt") in [(k, p) for k, p, _ in events], timeout=5)
    first = next(t for k, p, t in events if p == "a.txt")
    # close-after-write does not wait for the settle time (half of it is still far off)
    assert first - start < LONG_SETTLE / 2


@pytest.mark.parametrize("watched", [LONG_SETTLE], indirect=True)
@pytest_twisted.ensureDeferred
async def test_a_file_still_being_written_waits_until_it_is_quiet(reactor, watched):
    folder, events = watched
    with open(folder / "slow.bin", "wb") as f:
        for _ in range(6):
            f.write(b"x" * 1000)
            f.flush()
            await deferLater(reactor, 0.05, lambda: None)  # the writer's pace, far below the settle time
        closing = time.monotonic()
    await wait_for(reactor, lambda: any(p == "slow.bin" for _, p, _ in events), timeout=LONG_SETTLE + 5,
                   what="the change once the file is closed")
    # every report came after the writes: nothing while it kept changing
    assert all(t >= closing for _, p, t in events if p == "slow.bin")


@pytest_twisted.ensureDeferred
async def test_moves_are_moves_and_the_state_dir_is_silent(reactor, watched):
    folder, events = watched
    (folder / "old.txt").write_bytes(b"x")
    await wait_for(reactor, lambda: events, timeout=5)
    (folder / ".quantum-sync" / "state.db").write_bytes(b"private")
    os.rename(folder / "old.txt", folder / "new.txt")
    await wait_for(reactor, lambda: any(k == "move" for k, _, _ in events), timeout=5)
    # written after the state dir's file: once its change is reported, so would that one be
    (folder / "marker.txt").write_bytes(b"m")
    await wait_for(reactor, lambda: any(p == "marker.txt" for _, p, _ in events), timeout=5, what="the marker")
    assert ("move", ("old.txt", "new.txt")) in [(k, p) for k, p, _ in events]
    assert not [p for _, p, _ in events if isinstance(p, str) and p.startswith(".quantum-sync")]


@pytest_twisted.ensureDeferred
async def test_a_change_comes_with_the_stat_seen_after_it(reactor, tmp_path):
    seen = []
    watcher = FolderWatcher(reactor, str(tmp_path), lambda p, stat: seen.append((p, stat)), lambda a, b: None)
    watcher.startService()
    try:
        for i in range(50):
            (tmp_path / f"f{i}.txt").write_bytes(b"x" * i)
        await wait_for(reactor, lambda: {p for p, _ in seen} >= {f"f{i}.txt" for i in range(50)}, timeout=5)
        for path, stat in seen:
            assert stat.size == int(path[1:-4]) and not stat.is_directory
        os.unlink(tmp_path / "f3.txt")
        await wait_for(reactor, lambda: ("f3.txt", None) in seen, timeout=5)
    finally:
        await watcher.stopService()


class _Now:
    """A reactor stand-in for the bridge: what is called from a thread runs at once."""

    def callFromThread(self, function, *args, **kwargs):
        function(*args, **kwargs)


def test_one_read_of_events_makes_one_item_a_path_with_one_stat(tmp_path):
    delivered, grew = [], []
    bridge = _Bridge(_Now(), str(tmp_path), delivered.extend, on_grow=lambda path, size: grew.append((path, size)))
    (tmp_path / "done.bin").write_bytes(b"12345")
    (tmp_path / "open.bin").write_bytes(b"123")
    (tmp_path / "again.bin").write_bytes(b"1")
    done, still, again, gone = (str(tmp_path / name) for name in ("done.bin", "open.bin", "again.bin", "gone.bin"))
    bridge.on_file_events([
        FileCreatedEvent(done), FileCreatedEvent(still), FileModifiedEvent(done), FileModifiedEvent(still),
        FileCreatedEvent(again), FileClosedEvent(done), FileClosedEvent(again), FileModifiedEvent(again),
        FileCreatedEvent(gone), FileDeletedEvent(gone),
        FileCreatedEvent(str(tmp_path / ".quantum-sync" / "tmp" / "x")),  # the state directory: dropped
    ])
    assert [(kind, path) for kind, path, _ in delivered] == [
        (SETTLE, "open.bin"),
        (CHANGE, "done.bin"),
        (SETTLE, "again.bin"),  # written again after its close: wait until it is quiet
        (CHANGE, "gone.bin"),  # gone: a delete is reported at once
    ]
    stats = {path: stat for _, path, stat in delivered}
    assert (stats["done.bin"].size, stats["open.bin"].size, stats["again.bin"].size) == (5, 3, 1)
    assert stats["gone.bin"] is None
    assert sorted(grew) == [("again.bin", 1), ("done.bin", 5), ("open.bin", 3)]  # once a path


def test_a_failure_taking_in_events_is_logged_and_the_reading_thread_goes_on(tmp_path):
    def broken(path, size):
        raise RuntimeError("a bug in a callback")

    delivered = []
    bridge = _Bridge(_Now(), str(tmp_path), delivered.extend, on_grow=broken)
    (tmp_path / "a").write_bytes(b"a")
    with LogCapture() as log:
        bridge.on_file_events([FileModifiedEvent(str(tmp_path / "a"))])  # does not raise
        bridge.on_file_events([FileClosedEvent(str(tmp_path / "a"))])  # and the next read is taken
    assert [f["log_failure"].value.args for f in log.failures()] == [("a bug in a callback",)]
    assert "lost 1 file event" in log.text()
    assert [(kind, path) for kind, path, _ in delivered] == [(CHANGE, "a")]


def lose_events(watcher):
    """What watchdog's inotify emitter queues after the kernel's queue overflowed (an
    overflow cannot be made here without lowering the machine-wide
    ``fs.inotify.max_queued_events``): the event enters the real observer as any other."""
    from watchdog.events import EventsLostEvent

    for emitter in watcher._observer.emitters:
        emitter.queue_event(EventsLostEvent(watcher.folder, is_directory=True))


@pytest_twisted.ensureDeferred
async def test_lost_events_ask_for_a_full_reconcile(reactor, tmp_path):
    lost = []
    os.makedirs(tmp_path / ".quantum-sync")
    watcher = FolderWatcher(reactor, str(tmp_path), lambda p, s: None, lambda a, b: None,
                            on_lost=lambda: lost.append(watcher.events_lost))
    watcher.startService()
    try:
        with LogCapture() as log:
            lose_events(watcher)
            await wait_for(reactor, lambda: lost, what="the loss reported")
            lose_events(watcher)
            await wait_for(reactor, lambda: len(lost) == 2, what="the second loss reported")
        assert lost == [1, 2] and watcher.events_lost == 2
        lines = [line for line in log.text().splitlines() if "dropped file events" in line]
        assert len(lines) == 2 and "full reconcile" in lines[0]
    finally:
        await watcher.stopService()


@pytest_twisted.ensureDeferred
async def test_a_client_reconciles_in_full_when_its_watcher_lost_events(reactor, server, clients):
    a = await clients.start(server, "a", interval=1000)  # no periodic reconcile during the test
    before = a.engine.last_full_reconcile
    lose_events(a.watcher)
    await wait_for(reactor, lambda: a.engine.last_full_reconcile != before, what="a full reconcile")
    assert a.watcher.events_lost == 1
    # what ``quantum-sync-client status`` shows of it
    from quantum_sync.client.cli import describe
    from quantum_sync.client.status import folder_status

    status = await folder_status("a", a, reactor)
    watch = status["watch"]
    assert (watch["events_lost"], watch["full_reconciles"]) == (1, 2)  # the first one's, then the loss's
    assert 0 <= watch["last_full_reconcile_ago"] < 60
    assert "  watch: 1 event overflows (inotify), 2 full reconciles, the last " in describe(status)
