"""The delete gate: deletes go through at once while they cannot make a mass delete;
the rest of a burst waits for a quiet moment, then a mass delete is held."""

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher

from quantum_sync.client.deletegate import QUIET, DeleteGate


def below(directory, count):
    """``count`` synced files in ``directory``."""
    return [f"{directory}/f{i}" for i in range(count)]


def results(ds):
    out = []
    for d in ds:
        d.addCallback(out.append)
    return out


def test_deletes_that_cannot_make_a_mass_delete_go_at_once():
    clock = Clock()
    gate = DeleteGate(clock, lambda passed: (0, 12), lambda: 12)
    assert results([gate.admit(f"f{i}") for i in range(10)]) == [True] * 10  # ten is never a mass delete
    assert gate.waiting == 0
    gate = DeleteGate(clock, lambda passed: (0, 100), lambda: 100)
    assert results([gate.admit(f"f{i}") for i in range(10)]) == [True] * 10
    eleventh = results([gate.admit("f10")])  # past ten it could be one in some folder: it waits
    assert eleventh == [] and gate.waiting == 1
    clock.advance(QUIET)
    assert eleventh == [True]  # 11 of 100 is no mass delete


def test_the_rest_of_a_burst_waits_then_a_mass_delete_is_held_and_logged():
    lines = []

    def observe(event):
        lines.append(formatEvent(event))

    clock = Clock()
    synced = [30]
    gate = DeleteGate(clock, lambda passed: (10, synced[0]), lambda: synced[0])
    first = results([gate.admit(f"f{i}") for i in range(10)])
    assert first == [True] * 10
    synced[0] = 20  # the ones deleted on the server are forgotten
    later = results([gate.admit(f"g{i}") for i in range(15)])  # the eleventh on waits
    assert later == [] and gate.waiting == 15
    clock.advance(QUIET * 0.9)
    assert later == []
    gate.admit("g15")  # a new delete restarts the quiet period
    clock.advance(QUIET * 0.9)
    assert later == []
    globalLogPublisher.addObserver(observe)
    try:
        clock.advance(QUIET * 0.2)
    finally:
        globalLogPublisher.removeObserver(observe)
    assert later == [False] * 15
    assert gate.held == (26, 30)  # 10 sent, and 16 waiting (more than the 10 missing), of 30
    assert any("mass delete held" in line and "26 of 30" in line and "--allow-mass-delete" in line for line in lines)
    assert results([gate.admit("alone")]) == [True]  # a new burst: a single delete goes at once


def test_once_one_waits_every_later_delete_of_the_burst_waits_too():
    clock = Clock()
    gate = DeleteGate(clock, lambda passed: (1, 30), lambda: 30)
    assert results([gate.admit("big", files=below("big", 25))]) == []  # a directory of 25 synced files
    small = results([gate.admit("a")])
    assert small == []
    clock.advance(QUIET)
    assert small == [False]


def test_a_waiting_batch_that_is_no_mass_delete_goes_after_quiet():
    clock = Clock()
    gate = DeleteGate(clock, lambda passed: (0, 20), lambda: 20)
    verdicts = results([gate.admit("dir", files=below("dir", 11))])  # 11 of 20 could be one: counted
    clock.advance(QUIET)
    assert verdicts == [False]
    gate = DeleteGate(clock, lambda passed: (3, 100), lambda: 20)
    verdicts = results([gate.admit("dir", files=below("dir", 11))])
    clock.advance(QUIET)
    assert verdicts == [True]  # 11 of the 100 synced now: no mass delete


def test_counting_off_the_reactor_is_awaited():
    clock = Clock()
    counted = defer.Deferred()
    gate = DeleteGate(clock, lambda passed: counted, lambda: 20)
    verdicts = results([gate.admit("d", files=below("d", 11))])
    clock.advance(QUIET)
    assert verdicts == []
    counted.callback((0, 100))  # many files came in meanwhile: 11 of 100 is no mass delete
    assert verdicts == [True]


def test_a_failed_count_holds_the_batch():
    clock = Clock()
    gate = DeleteGate(clock, lambda passed: defer.fail(OSError("disk gone")), lambda: 12)
    verdicts = results([gate.admit("a", files=below("a", 12))])
    clock.advance(QUIET)
    assert verdicts == [False]


def test_allowed_mass_deletes_do_not_wait():
    clock = Clock()
    gate = DeleteGate(clock, lambda passed: (20, 30), lambda: 30, allow=True)
    assert results([gate.admit("a", files=below("a", 30))]) == [True]


def test_files_deleted_before_their_directory_are_counted_once():
    """``rm -rf`` reports each file, then each directory: a directory's files that went
    on their own before it are not counted again (5 synced files are no mass delete)."""
    clock = Clock()
    gate = DeleteGate(clock, lambda passed: (4, 5), lambda: 5)
    verdicts = results([gate.admit(path) for path in ("p/a", "p/s/b", "p/s/l/c", "p/d")])
    verdicts += results([gate.admit("p/s/l", files=["p/s/l/c"]), gate.admit("p/s", files=["p/s/b", "p/s/l/c"]),
                         gate.admit("p", files=["p/a", "p/s/b", "p/s/l/c", "p/d"])])
    clock.advance(QUIET)
    assert verdicts == [True] * 7 and gate.held is None


def test_deletes_sent_but_still_recorded_are_counted_once():
    """The deletes that went at once may still be recorded as synced when the burst is
    judged (their answers not in yet): they are counted once, as sent, not also as
    missing and synced (25 of 31 gone, not 35 of 41)."""
    clock = Clock()
    synced = {f"f{i}" for i in range(30)} | {"keep"}
    missing = {f"f{i}" for i in range(25)}  # none forgotten yet

    def count_missing(passed=frozenset()):
        return len(missing - passed), len(synced - passed)

    gate = DeleteGate(clock, count_missing, lambda: len(synced))
    verdicts = results([gate.admit(f"f{i}") for i in range(25)])
    clock.advance(QUIET)
    assert verdicts == [True] * 10 + [False] * 15
    assert gate.held == (25, 31)


def test_what_is_left_of_a_held_rm_rf_stays_held_until_it_comes_back():
    """``rm -rf`` of 15 of 17 synced files: ten go at once, five are held. Asked again
    (the reconcile of the removed directory, a periodic one), those five alone would be
    no mass delete (not more than ten): they stay held, the directory with them, while a
    delete elsewhere goes. A file restored is judged anew when deleted again."""
    clock = Clock()
    files = below("d", 15)
    recorded = set(files) | {"keep", "other"}
    gate = DeleteGate(clock, lambda passed: (len(set(files) - passed), len(recorded - passed)), lambda: len(recorded))
    verdicts = results([gate.admit(path) for path in files])
    clock.advance(QUIET)
    assert verdicts == [True] * 10 + [False] * 5 and gate.held == (15, 17)
    recorded -= set(files[:10])  # the ten sent are forgotten once the server answers
    again = results([gate.admit(path) for path in files[10:]] + [gate.admit("d", files=files[10:])])
    assert again == [False] * 6 and gate.waiting == 0
    assert results([gate.admit("keep")]) == [True]
    clock.advance(QUIET)
    assert gate.held == (15, 17)
    gate.back(files[10])
    assert results([gate.admit(files[10])]) == [True] and results([gate.admit(files[11])]) == [False]
    for path in files[12:]:
        gate.back(path)
    gate.back(files[11])
    assert gate.held is None


def test_a_hold_kept_from_before_a_restart_holds_until_allowed():
    clock, kept = Clock(), []
    gate = DeleteGate(clock, lambda passed: (0, 10), lambda: 10, held=frozenset({"a", "b"}), on_held=kept.append)
    assert gate.held == (2, 10) and results([gate.admit("a"), gate.admit("c")]) == [False, True]
    gate.back("a")
    assert kept == [frozenset({"b"})] and results([gate.admit("a")]) == [True]
    gate.back("b")
    assert kept[-1] == frozenset() and gate.held is None
    cleared = []  # started with --allow-mass-delete: the hold kept is confirmed, and forgotten
    allowed = DeleteGate(clock, lambda passed: (0, 10), lambda: 10, allow=True, held=frozenset({"a"}), on_held=cleared.append)
    assert cleared == [frozenset()] and allowed.held is None and results([allowed.admit("a")]) == [True]
