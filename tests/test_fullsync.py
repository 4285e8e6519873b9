"""A plan's decisions sorted into the phases they run in (pure)."""

from quantum_sync.client.fullsync import Scope, make_plan, phases
from quantum_sync.client.reconcile import Action, Decision, Entry
from quantum_sync.client.state import Base
from quantum_sync.protocol import FileMetadata

FILE = Entry("1" * 64, 1)
DIR = Entry("", 0, True)


def test_each_decision_goes_to_its_phase_in_order():
    decisions = [
        Decision("d", Action.DOWNLOAD, remote=DIR),
        Decision("a", Action.DOWNLOAD, remote=FILE),
        Decision("m", Action.MOVE_LOCAL, remote=FILE, source="old"),
        Decision("x", Action.DELETE_REMOTE, base=FILE),
        Decision("e", Action.UPLOAD, local=DIR),
        Decision("gone", Action.DELETE_LOCAL, local=DIR, base=DIR),
        Decision("b", Action.RECORD, local=FILE, remote=FILE),
    ]
    grouped = phases(decisions)
    assert {k: [d.path for d in v] for k, v in grouped.items()} == {
        "directories": ["d", "e"], "moves": ["m"], "rest": ["a", "b"], "file_deletes": ["x"],
        "directory_deletes": ["gone"],
    }


def test_a_plan_is_made_for_the_scope_only_and_counts_what_it_moves():
    def meta(path):
        return FileMetadata(path, FILE.size, 0.0, FILE.hash, False)

    listing = [meta("in/a"), meta("out/b"), meta("in/skip.tmp")]
    bases = {"out/c": Base(FILE, 0.0, 1, 0)}
    planned = make_plan(Scope(prefix="in"), listing, False, bases, {}, lambda p, d=False: p.endswith(".tmp"),
                        "rename", False)
    assert [(d.path, d.action) for d in planned.todo] == [("in/a", Action.DOWNLOAD)]
    assert set(planned.remote) == {"in/a"} and planned.synced == 1 and planned.bytes_total == 1
