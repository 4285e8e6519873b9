"""Pure three-way reconcile: every combination of side states, moves, directories, guards."""

import itertools

import pytest
from hypothesis import given, strategies as st

from quantum_sync.client.reconcile import (
    MASS_DELETE_MIN,
    Action,
    Entry,
    Side,
    classify,
    decide,
    is_mass_delete,
    plan,
)

BASE = Entry("b" * 64, 3)
MINE = Entry("1" * 64, 4)
THEIRS = Entry("2" * 64, 5)
DIR = Entry("", 0, True)


def version(state, base, edit):
    """The version a side holds when it is in ``state`` relative to ``base``."""
    return {"absent": None, "deleted": None, "unchanged": base, "changed": edit}[state]


# (local state, remote state) → action, for a file that has a base
WITH_BASE = {
    ("unchanged", "unchanged"): Action.NOTHING,
    ("unchanged", "changed"): Action.DOWNLOAD,
    ("unchanged", "deleted"): Action.DELETE_LOCAL,
    ("changed", "unchanged"): Action.UPLOAD,
    ("changed", "changed"): Action.CONFLICT,
    ("changed", "deleted"): Action.UPLOAD,  # edit beats delete
    ("deleted", "unchanged"): Action.DELETE_REMOTE,
    ("deleted", "changed"): Action.DOWNLOAD,  # edit beats delete
    ("deleted", "deleted"): Action.FORGET,
}
# … and for a path never synced (no base)
WITHOUT_BASE = {
    ("absent", "absent"): Action.NOTHING,
    ("absent", "changed"): Action.DOWNLOAD,
    ("changed", "absent"): Action.UPLOAD,
    ("changed", "changed"): Action.CONFLICT,
}


@pytest.mark.parametrize("states,expected", sorted(WITH_BASE.items(), key=str))
@pytest.mark.parametrize("kind", ["file", "directory-vs-file"])
def test_every_combination_with_a_base(states, expected, kind):
    local_state, remote_state = states
    base = BASE if kind == "file" else DIR
    local = version(local_state, base, MINE)
    remote = version(remote_state, base, THEIRS)
    assert classify(local, base).value == local_state
    assert classify(remote, base).value == remote_state
    assert decide(local, remote, base) is expected


@pytest.mark.parametrize("states,expected", sorted(WITHOUT_BASE.items(), key=str))
def test_every_combination_without_a_base(states, expected):
    local = version(states[0], None, MINE)
    remote = version(states[1], None, THEIRS)
    assert decide(local, remote, None) is expected


def test_the_table_covers_every_consistent_pair():
    with_base = set(itertools.product(["unchanged", "changed", "deleted"], repeat=2))
    without = set(itertools.product(["absent", "changed"], repeat=2))
    assert set(WITH_BASE) == with_base and set(WITHOUT_BASE) == without


@pytest.mark.parametrize("base", [None, BASE])
def test_the_same_change_on_both_sides_is_recorded_not_a_conflict(base):
    assert decide(MINE, MINE, base) is Action.RECORD
    assert decide(DIR, DIR, None) is Action.RECORD


@pytest.mark.parametrize(
    "strategy,expected",
    [("rename", Action.CONFLICT), ("keep-client", Action.UPLOAD), ("keep-server", Action.DOWNLOAD)],
)
@pytest.mark.parametrize("base", [None, BASE])
def test_conflict_strategies(strategy, expected, base):
    assert decide(MINE, THEIRS, base, strategy) is expected


def test_file_replaced_by_directory_on_both_sides_is_a_conflict():
    assert decide(DIR, THEIRS, BASE) is Action.CONFLICT
    assert decide(MINE, DIR, None) is Action.CONFLICT


def test_a_suspect_local_file_is_held_never_sent():
    empty = Entry("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", 0)
    assert decide(empty, BASE, BASE, suspect=True) is Action.HOLD
    assert decide(empty, THEIRS, BASE, suspect=True) is Action.HOLD
    # a suspect file that matches the server is still just recorded
    assert decide(empty, empty, BASE, suspect=True) is Action.RECORD


# -- whole-tree plans -------------------------------------------------------------------


def actions(result):
    return {d.path: d.action for d in result.decisions if d.action is not Action.NOTHING}


def test_plan_of_a_new_folder_deletes_nothing():
    # a folder without state (no base): the server's files are pulled, local ones pushed
    result = plan({"a": MINE}, {"b": THEIRS, "c": BASE}, {})
    assert actions(result) == {"a": Action.UPLOAD, "b": Action.DOWNLOAD, "c": Action.DOWNLOAD}


def test_local_move_is_sent_as_move():
    result = plan({"new/name": BASE}, {"old": BASE}, {"old": BASE})
    assert actions(result) == {"new/name": Action.MOVE_REMOTE}
    (move,) = result.of(Action.MOVE_REMOTE)
    assert move.source == "old" and move.base == BASE


def test_remote_move_is_applied_as_rename():
    result = plan({"old": BASE}, {"new": BASE}, {"old": BASE})
    assert actions(result) == {"new": Action.MOVE_LOCAL}
    assert result.of(Action.MOVE_LOCAL)[0].source == "old"


def test_move_of_an_edited_file_is_not_a_move():
    # the source changed on the other side: edit beats delete, so no move folding
    result = plan({"new": BASE}, {"old": THEIRS}, {"old": BASE})
    assert actions(result) == {"new": Action.UPLOAD, "old": Action.DOWNLOAD}


def test_directory_move_moves_files_and_creates_and_deletes_directories():
    base = {"d": DIR, "d/x": BASE}
    result = plan({"e": DIR, "e/x": BASE}, dict(base), base)
    assert actions(result) == {"e": Action.UPLOAD, "e/x": Action.MOVE_REMOTE, "d": Action.DELETE_REMOTE}
    order = [d.path for d in result.actionable]
    assert order.index("e") < order.index("e/x") < order.index("d")


def test_directory_deleted_locally_survives_when_the_server_added_to_it():
    base = {"d": DIR, "d/x": BASE}
    result = plan({}, {"d": DIR, "d/x": BASE, "d/new": THEIRS}, base)
    assert actions(result) == {"d/x": Action.DELETE_REMOTE, "d/new": Action.DOWNLOAD, "d": Action.DOWNLOAD}


def test_directory_deleted_remotely_survives_a_local_edit_inside():
    base = {"d": DIR, "d/x": BASE, "d/y": BASE}
    result = plan({"d": DIR, "d/x": MINE, "d/y": BASE}, {}, base)
    assert actions(result) == {"d/x": Action.UPLOAD, "d/y": Action.DELETE_LOCAL, "d": Action.UPLOAD}


def test_empty_and_nested_directories_are_created_parents_first():
    result = plan({"a": DIR, "a/b": DIR, "a/b/c": DIR}, {}, {})
    assert [d.path for d in result.actionable] == ["a", "a/b", "a/b/c"]
    assert set(actions(result).values()) == {Action.UPLOAD}


def test_deletes_run_deepest_first_and_last():
    base = {"d": DIR, "d/e": DIR, "d/e/f": BASE, "g": BASE}
    result = plan({"n": MINE}, dict(base), base | {})
    # local side lost everything but gained n
    order = [d.path for d in result.actionable]
    assert order[0] == "n"
    assert order.index("d/e/f") < order.index("d/e") < order.index("d")


def test_mass_delete_is_held():
    base = {f"f{i}": BASE for i in range(40)}
    remote = dict(base)
    local = {f"f{i}": BASE for i in range(15)}  # 25 of 40 deleted locally
    held = plan(local, remote, base)
    assert held.mass_delete_held == 25
    assert not held.of(Action.DELETE_REMOTE)
    allowed = plan(local, remote, base, allow_mass_delete=True)
    assert len(allowed.of(Action.DELETE_REMOTE)) == 25 and allowed.mass_delete_held == 0


def test_few_or_minor_deletes_are_not_mass_deletes():
    assert not is_mass_delete(MASS_DELETE_MIN, 12)  # not more than 10
    assert not is_mass_delete(11, 22)  # not more than half
    assert is_mass_delete(11, 21)


def test_an_untrusted_empty_listing_deletes_nothing_locally():
    base = {"a": BASE, "b": BASE}
    result = plan({"a": BASE, "b": MINE}, {}, base, trust_remote_deletes=False)
    assert actions(result) == {"b": Action.UPLOAD}
    assert result.remote_deletes_distrusted == 1


entries = st.sampled_from([None, BASE, MINE, THEIRS, DIR])


@given(entries, entries, st.sampled_from([None, BASE, DIR]), st.sampled_from(["rename", "keep-client", "keep-server"]))
def test_no_decision_ever_loses_a_changed_version(local, remote, base, strategy):
    """A side's changed version is never deleted or overwritten without being kept."""
    action = decide(local, remote, base, strategy)
    if classify(local, base) is Side.CHANGED and strategy != "keep-server":
        assert action in (Action.UPLOAD, Action.CONFLICT, Action.RECORD)
    if classify(remote, base) is Side.CHANGED and strategy != "keep-client":
        assert action in (Action.DOWNLOAD, Action.CONFLICT, Action.RECORD)


def test_a_subtree_plan_counts_the_whole_folder_for_the_mass_delete_guard():
    base = {f"d/f{i}": BASE for i in range(12)}
    local = dict(base)
    held = plan(local, {}, base)
    assert held.mass_delete_held == 12
    fine = plan(local, {}, base, synced_files=100)
    assert len(fine.of(Action.DELETE_LOCAL)) == 12 and fine.mass_delete_held == 0


def test_a_restored_server_gets_back_what_it_lost_and_local_deletes_still_go():
    """After the server's journal started over, a synced file the server lacks is sent
    again (not deleted here); a file deleted here is still deleted there."""
    f, g, h = Entry("1" * 64, 1), Entry("2" * 64, 2), Entry("3" * 64, 3)
    base = {"lost": f, "gone-here": g, "dir": DIR, "dir/x": h}
    local = {"lost": f, "dir": DIR, "dir/x": h}
    remote = {"gone-here": g}
    result = plan(local, remote, base, restore_remote_deletes=True)
    actions = {d.path: d.action for d in result.decisions}
    assert actions == {"lost": Action.UPLOAD, "gone-here": Action.DELETE_REMOTE, "dir": Action.UPLOAD,
                       "dir/x": Action.UPLOAD}
    ordinary = {d.path: d.action for d in plan(local, remote, base).decisions}
    assert ordinary["lost"] is Action.DELETE_LOCAL and ordinary["dir"] is Action.DELETE_LOCAL
