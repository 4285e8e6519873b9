"""InFlight: the Deferreds started and not fired yet (no reactor: plain Deferreds)."""

from twisted.internet import defer

from quantum_sync.client.inflight import InFlight


def test_a_deferred_is_held_until_it_fires_and_its_result_passes_through():
    running, d = InFlight(), defer.Deferred()
    assert running.add(d) is d
    assert list(running) == [d] and len(running) == 1
    seen = []
    d.addCallback(seen.append)
    d.callback("result")
    assert list(running) == [] and seen == ["result"]


def test_a_failure_leaves_too_and_is_not_swallowed():
    running, d = InFlight(), defer.Deferred()
    running.add(d)
    d.errback(ValueError("boom"))
    assert list(running) == []
    failures = []
    d.addErrback(failures.append)
    assert failures[0].check(ValueError)


def test_a_deferred_fired_already_is_not_held():
    running = InFlight()
    running.add(defer.succeed(None))
    assert len(running) == 0


def test_take_hands_over_what_is_in_flight_and_holds_nothing_after():
    running = InFlight()
    first, second = defer.Deferred(), defer.Deferred()
    running.add(first)
    running.add(second)
    taken = running.take()
    assert set(taken) == {first, second} and list(running) == []
    later = running.add(defer.Deferred())
    first.callback(None)  # a taken one firing leaves the new ones alone
    assert list(running) == [later]


def test_iterating_while_one_fires_sees_a_copy():
    running, d = InFlight(), defer.Deferred()
    running.add(d)
    for each in running:
        each.callback(None)
    assert list(running) == []
