"""Passes: a pass at once and every interval on the clock given, failures handed over."""

from twisted.internet.task import Clock

from quantum_sync.server.passes import Passes


def test_a_pass_now_then_every_interval_and_a_failure_does_not_stop_them():
    clock, ran, failures = Clock(), [], []

    async def run():
        ran.append(clock.seconds())
        if len(ran) == 2:
            raise ValueError("the database is away")

    passes = Passes(run, failures.append, clock, 10)
    assert not passes.running and passes.last is None
    passes.start()
    passes.start()  # (already running: no second loop)
    assert passes.running and ran == [0]
    clock.advance(10)
    assert [f.type for f in failures] == [ValueError]
    clock.advance(10)
    assert ran == [0, 10, 20] and passes.last.called
    passes.stop()
    clock.advance(100)
    assert not passes.running and ran == [0, 10, 20]
