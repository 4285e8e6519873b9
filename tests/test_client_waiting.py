"""The count of changes waiting to go up and down one by one (client/waiting.py, pure)."""

from quantum_sync.client.localfs import LocalStat
from quantum_sync.client.pathstate import UNSEEN
from quantum_sync.client.waiting import DOWN, UP, Waiting, local_change, remote_change
from quantum_sync.protocol import Create, Delete, FileMetadata, Move, Update


def meta(path, size, is_directory=False):
    return FileMetadata(path, size, 1.0, "" if is_directory else "0" * 64, is_directory)


def test_entries_add_up_and_leave_when_done():
    w = Waiting()
    assert w.totals(UP) == w.totals(DOWN) == (0, 0)
    w.note("a.txt", UP, 300)
    w.note("b.txt", UP, 200)
    w.note("c.txt", DOWN, 50)
    w.note("gone.txt", DOWN)
    assert w.totals(UP) == (2, 500) and w.totals(DOWN) == (2, 50)
    w.drop("a.txt")
    w.drop("a.txt")  # (again: nothing)
    w.drop("never.txt")
    assert w.totals(UP) == (1, 200) and "a.txt" not in w and "b.txt" in w
    for path in ("b.txt", "c.txt", "gone.txt"):
        w.drop(path)
    assert w.totals(UP) == w.totals(DOWN) == (0, 0)


def test_a_path_counts_once_its_latest_change():
    w = Waiting()
    w.note("a.txt", UP, 100)
    w.note("a.txt", UP, 4000)  # written again before its upload
    assert w.totals(UP) == (1, 4000)
    w.note("a.txt", DOWN, 7)  # a remote change of it heard since: decided as one
    assert w.totals(UP) == (0, 0) and w.totals(DOWN) == (1, 7)


def test_remote_changes_heard_while_paused_are_apart_until_the_resume():
    w = Waiting()
    w.note("retry.txt", DOWN, 10)  # a download waiting for its retry
    w.hold_down("new.txt", 30)
    w.hold_down("new.txt", 40)  # changed twice while paused
    w.hold_down("old.txt")
    assert w.totals(DOWN) == (3, 50)
    w.resumed()  # the catch-up on resume notes them again as it applies them
    assert w.totals(DOWN) == (1, 10) and "retry.txt" in w


def test_a_sweep_keeps_what_still_waits():
    w = Waiting()
    for i in range(5):
        w.note(f"f{i}", UP, i)
    w.keep(lambda path: path in ("f1", "f3"))
    assert w.totals(UP) == (2, 4) and "f1" in w and "f0" not in w


def test_what_a_local_change_waits_to_send():
    assert local_change(LocalStat(1234, 1, False)) == (UP, 1234)
    assert local_change(None) == (UP, 0)  # a delete
    assert local_change(LocalStat(4096, 1, True)) is None  # a folder: not a file
    assert local_change(UNSEEN) is None


def test_what_a_remote_change_waits_to_bring():
    assert remote_change(Create(meta("a.txt", 300))) == ("a.txt", 300)
    assert remote_change(Update(meta("a.txt", 301))) == ("a.txt", 301)
    assert remote_change(Delete("a.txt")) == ("a.txt", 0)
    assert remote_change(Move("a.txt", "b.txt")) == ("b.txt", 0)
    assert remote_change(Create(meta("d", 0, is_directory=True))) is None
    # a long catch-up's Progress counts its file transfers; deletes and moves it does not
    assert remote_change(Update(meta("a.txt", 301)), counted=True) is None
    assert remote_change(Delete("a.txt"), counted=True) == ("a.txt", 0)
