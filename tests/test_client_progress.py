"""The terminal progress bars (tqdm) of a foreground daemon, driven by a Clock."""

import io
import os

import attrs
from twisted.internet.task import Clock

from quantum_sync.client.fullsync import Progress
from quantum_sync.client.progress import EVERY, ProgressBars, wants_bars


@attrs.define
class _FullSync:
    progress: object = None


@attrs.define
class _Engine:
    fullsync: _FullSync = attrs.Factory(_FullSync)

    @property
    def progress(self):
        return self.fullsync.progress


@attrs.define
class _Service:
    engine: _Engine = attrs.Factory(_Engine)


def test_a_bar_follows_a_large_reconcile_and_goes_when_it_ends():
    clock, stream = Clock(), io.StringIO()
    folder = _Service()
    bars = ProgressBars(clock, {"docs": folder, "idle": _Service(engine=None)}, stream)
    bars.startService()
    clock.advance(EVERY)
    assert stream.getvalue() == ""  # nothing running: no bar
    progress = Progress(files_total=2000, bytes_total=8_000_000)
    folder.engine.fullsync.progress = progress
    progress.files_done, progress.bytes_done = 500, 2_000_000
    clock.advance(EVERY)
    assert bars.showing == ["docs"]
    drawn = stream.getvalue()
    assert "docs" in drawn and "500/2000" in drawn and "2.0/8.0 MB" in drawn
    progress.files_done = 1500
    clock.advance(EVERY)
    assert "1500/2000" in stream.getvalue()
    folder.engine.fullsync.progress = None
    clock.advance(EVERY)
    assert bars.showing == []
    bars.stopService()


def test_a_small_reconcile_draws_nothing():
    clock, stream = Clock(), io.StringIO()
    folder = _Service()
    folder.engine.fullsync.progress = Progress(files_total=3, bytes_total=100)
    bars = ProgressBars(clock, {"docs": folder}, stream)
    bars.startService()
    clock.advance(EVERY * 3)
    bars.stopService()
    assert stream.getvalue() == ""


def test_bars_only_in_the_foreground_on_a_terminal(tmp_path):
    main, terminal = os.openpty()
    try:
        with os.fdopen(terminal, "w", closefd=False) as f:
            assert wants_bars(True, f) and not wants_bars(False, f)
    finally:
        os.close(main)
        os.close(terminal)
    with open(tmp_path / "log", "w") as f:
        assert not wants_bars(True, f)
    assert not wants_bars(True, io.StringIO())
    with open(tmp_path / "log", "w") as f:
        assert not wants_bars(False, f)


def test_a_foreground_daemon_on_a_terminal_gets_bars(tmp_path, monkeypatch):
    import sys

    from quantum_sync.client.tap import Options, makeService

    main, terminal = os.openpty()
    try:
        with os.fdopen(terminal, "w", closefd=False) as f:
            monkeypatch.setattr(sys, "__stderr__", f)
            for nodaemon, expected in ((True, 1), (False, 0)):
                options = Options()
                options.parseOptions(["--server", "http://127.0.0.1:1", "--local-path", str(tmp_path)])
                options.parent = {"nodaemon": nodaemon}
                service = makeService(options, reactor=Clock())
                assert sum(isinstance(s, ProgressBars) for s in service) == expected
    finally:
        os.close(main)
        os.close(terminal)


def test_progress_counts_what_is_left_each_way():
    from quantum_sync.client.reconcile import Action, Decision, Entry

    up = Decision("a.txt", Action.UPLOAD, local=Entry("h1", 100))
    down = Decision("b.txt", Action.DOWNLOAD, remote=Entry("h2", 300))
    folder = Decision("d", Action.DOWNLOAD, remote=Entry("", 0, True))
    gone = Decision("c.txt", Action.DELETE_REMOTE, base=Entry("h3", 5))
    progress = Progress.of([up, down, folder, gone], 400)
    assert (progress.files_total, progress.up_files, progress.up_bytes, progress.down_files, progress.down_bytes) == (
        4, 1, 100, 1, 300)
    assert progress.seconds_left is None  # nothing done yet: no rate to go by
    for d in (folder, down, gone):
        progress.finished(d)
    assert (progress.files_done, progress.bytes_done, progress.down_files, progress.down_bytes, progress.up_files) == (
        3, 300, 0, 0, 1)
    assert progress.seconds_left is not None and progress.seconds_left >= 0


def test_a_pause_holds_what_is_asked_and_gives_it_back_once():
    from quantum_sync.client.pausing import Held, PauseHold

    pause = PauseHold()
    pause.pause()
    pause.hold_path("a")
    pause.hold_path("a")
    pause.hold_catch_up()
    assert pause.paused and pause.holding == 1
    assert pause.resume() == Held(frozenset({"a"}), reconcile=False, catch_up=True)
    assert not pause.paused and pause.resume() == Held()
