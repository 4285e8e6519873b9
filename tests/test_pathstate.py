"""The per-path job states: the transition table and what a path remembers (pure)."""

import itertools

import pytest

from quantum_sync.client.pathstate import (
    FETCH,
    TRANSITIONS,
    UNKNOWN,
    UNSEEN,
    Event,
    InvalidTransition,
    PathStates,
    Phase,
)


def test_a_path_goes_queued_running_idle_and_idle_paths_take_no_memory():
    states = PathStates()
    assert states.phase("a") is Phase.IDLE
    assert states.request("a", FETCH) is Phase.IDLE
    assert states.phase("a") is Phase.QUEUED and len(states) == 1
    taken = states.take("a")
    assert (taken.hint, taken.seen) == (FETCH, UNSEEN)
    assert states.phase("a") is Phase.RUNNING
    states.finish("a")
    assert states.phase("a") is Phase.IDLE and len(states) == 0 and "a" not in states


def test_a_request_while_running_makes_the_job_look_again():
    states = PathStates()
    states.request("a")
    states.take("a")
    assert states.request("a", None, "stat") is Phase.RUNNING
    assert states.phase("a") is Phase.QUEUED
    taken = states.take("a")
    assert (taken.hint, taken.seen) == (None, "stat")


def test_a_known_server_version_is_not_forgotten_by_a_later_unknown_request():
    states = PathStates()
    states.request("a", "metadata")
    states.request("a", UNKNOWN, "stat")
    assert states.hint("a") == "metadata"
    taken = states.take("a")
    assert (taken.hint, taken.seen) == ("metadata", "stat")
    assert states.hint("a") is UNKNOWN  # taken: the next round starts from nothing known


def test_a_request_without_a_stat_clears_the_one_seen_before():
    states = PathStates()
    states.request("a", UNKNOWN, "stat")
    states.request("a", UNKNOWN)
    assert states.take("a").seen is UNSEEN


def test_a_job_is_attached_to_its_path_and_let_go_when_it_ends():
    states = PathStates()
    states.request("a")
    states.attach("a", "job")
    assert states.job("a") == "job" and states.jobs() == ["job"]
    states.take("a")
    states.finish("a")
    assert states.job("a") is None and states.jobs() == []


@pytest.mark.parametrize("phase,event", [
    (p, e) for p, e in itertools.product(Phase, Event) if (p, e) not in TRANSITIONS
])
def test_every_event_the_table_does_not_allow_is_refused(phase, event):
    states = PathStates()
    if phase is not Phase.IDLE:
        states.request("a")
    if phase is Phase.RUNNING:
        states.take("a")
    assert states.phase("a") is phase
    step = {Event.REQUEST: states.request, Event.TAKE: states.take, Event.FINISH: states.finish}[event]
    with pytest.raises(InvalidTransition):
        step("a")
    assert states.phase("a") is phase


def test_refetch_turns_a_waiting_server_version_into_a_question():
    states = PathStates()
    states.refetch("idle.txt")  # nothing waiting: nothing to do
    assert "idle.txt" not in states
    states.request("a.txt", None)  # a Delete heard...
    states.refetch("a.txt")  # ...before this client's own change to a.txt was applied
    assert states.take("a.txt").hint is FETCH
    states.request("a.txt")
    states.refetch("a.txt")
    assert states.take("a.txt").hint is UNKNOWN  # no server version waiting: the base is assumed
