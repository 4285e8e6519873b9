"""The delete gate: remote deletes wait for a quiet moment, then a mass delete is held."""

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher

from quantum_sync.client.deletegate import QUIET, DeleteGate


def results(ds):
    out = []
    for d in ds:
        d.addCallback(out.append)
    return out


def test_a_few_deletes_go_through_together_once_quiet():
    clock = Clock()
    gate = DeleteGate(clock, lambda: (2, 30))
    verdicts = results([gate.admit("a"), gate.admit("b")])
    clock.advance(QUIET * 0.9)
    assert verdicts == []
    gate.admit("c")  # a new delete restarts the quiet period
    clock.advance(QUIET * 0.9)
    assert verdicts == []
    clock.advance(QUIET * 0.2)
    assert verdicts == [True, True]


def test_a_mass_delete_is_held_and_logged():
    lines = []

    def observe(event):
        lines.append(formatEvent(event))

    clock = Clock()
    gate = DeleteGate(clock, lambda: (20, 30))
    verdicts = results([gate.admit(f"f{i}") for i in range(3)])
    globalLogPublisher.addObserver(observe)
    try:
        clock.advance(QUIET)
    finally:
        globalLogPublisher.removeObserver(observe)
    assert verdicts == [False, False, False]
    assert any("mass delete" in line and "20 of 30" in line for line in lines)


def test_the_batch_size_counts_even_when_the_files_are_back():
    clock = Clock()
    gate = DeleteGate(clock, lambda: (0, 20))
    verdicts = results([gate.admit(f"f{i}") for i in range(11)])
    clock.advance(QUIET)
    assert verdicts == [False] * 11


def test_counting_off_the_reactor_is_awaited():
    clock = Clock()
    counted = defer.Deferred()
    gate = DeleteGate(clock, lambda: counted)
    verdicts = results([gate.admit("a")])
    clock.advance(QUIET)
    assert verdicts == []
    counted.callback((1, 100))
    assert verdicts == [True]


def test_a_failed_count_holds_the_batch():
    clock = Clock()
    gate = DeleteGate(clock, lambda: defer.fail(OSError("disk gone")))
    verdicts = results([gate.admit("a")])
    clock.advance(QUIET)
    assert verdicts == [False]


def test_allowed_mass_deletes_do_not_wait():
    clock = Clock()
    gate = DeleteGate(clock, lambda: (20, 30), allow=True)
    assert results([gate.admit("a")]) == [True]


def test_stopping_holds_what_waits():
    clock = Clock()
    gate = DeleteGate(clock, lambda: (0, 30))
    verdicts = results([gate.admit("a")])
    gate.stop()
    assert verdicts == [False]
    clock.advance(QUIET)
    assert verdicts == [False]
