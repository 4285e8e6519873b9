"""The order remote changes are applied in around a Move (catchup.py), without a reactor:
a fake engine whose jobs end when the test says so."""

from twisted.internet import defer

from quantum_sync.client.catchup import RemoteChanges, carried_by_moves
from quantum_sync.client.waiting import DOWN, Waiting
from quantum_sync.protocol import Change, Create, Delete, FileMetadata, Move

DIGEST = "ab" * 32


def create(path):
    return Create(FileMetadata(path, 1, 0.0, DIGEST, False))


class _State:
    cursor, journal_id = 0, None

    def set_cursor(self, value):
        self.cursor = value

    def set_journal_id(self, value):
        self.journal_id = value

    def base(self, path):
        return None  # nothing synced: a moved file's version is looked for


class _Engine:
    """Records what is started; every job is a Deferred the test fires. Stopped: a gap in
    the seqs starts no catch-up."""

    stopped = True

    def __init__(self):
        self.state, self.started, self.jobs = _State(), [], {}
        self.waiting = Waiting()

    def job_ended(self, path):
        self.waiting.drop(path)

    def request(self, path, hint):
        self.started.append(path)
        return self.jobs.setdefault(path, defer.Deferred())

    async def guard(self, coroutine, path):
        await coroutine


def test_a_move_waits_for_the_changes_before_it_and_the_later_ones_wait_for_it():
    engine = _Engine()
    remote = RemoteChanges(engine)

    def remote_move(source, destination):
        engine.started.append(f"{source}->{destination}")
        return engine.jobs.setdefault("move", defer.Deferred())

    remote._remote_move = remote_move
    remote.operation(1, create("d/x.bin"))
    remote.operation(2, Move("d", "d2"))
    remote.operation(3, create("d2/y.bin"))
    remote.operation(4, create("other.bin"))
    assert engine.started == ["d/x.bin"]
    assert engine.waiting.totals(DOWN)[0] == 4  # every change heard waits, its turn come or not
    engine.jobs["d/x.bin"].callback(None)
    assert engine.started == ["d/x.bin", "d->d2"]
    engine.jobs["move"].callback(None)
    assert "d2" not in engine.waiting  # the Move applied
    # d/x.bin was moved with d on the server: looked for at its new path too
    assert engine.started == ["d/x.bin", "d->d2", "d2/x.bin", "d2/y.bin", "other.bin"]
    for path in ("d2/y.bin", "other.bin"):
        engine.jobs[path].callback(None)
    assert engine.state.cursor == 4


def test_a_create_heard_after_a_later_move_of_its_folder_is_applied_where_the_move_put_it():
    engine = _Engine()
    remote = RemoteChanges(engine)
    remote.moved(5, "d", "d2")  # this client's own Move of d, applied as seq 5
    remote.moved(7, "d2/e", "f")
    remote.operation(4, create("d/e/x.bin"))  # a Create made before it, heard after
    remote.operation(6, create("d2/e/y.bin"))
    remote.operation(8, create("d/z.bin"))  # made after the moves: stays where it is
    assert engine.started == ["f/x.bin", "f/y.bin", "d/z.bin"]


def test_a_page_applies_a_moved_files_create_after_the_move_at_its_new_path():
    changes = [Change(1, create("d/a.bin"), "b", "t"), Change(2, create("e.bin"), "b", "t"),
               Change(3, Move("d", "d2"), "b", "t"), Change(4, create("d2/b.bin"), "b", "t"),
               Change(5, Delete("d2/a.bin"), "b", "t"), Change(6, create("d2x/c.bin"), "b", "t"),
               Change(7, Move("d2x", "z"), "b", "t")]
    order = [(change.seq, operation) for change, operation in carried_by_moves(changes)]
    assert order == [(2, create("e.bin")), (3, Move("d", "d2")), (1, create("d2/a.bin")), (4, create("d2/b.bin")),
                     (5, Delete("d2/a.bin")), (7, Move("d2x", "z")), (6, create("z/c.bin"))]


def test_a_move_into_a_folder_heard_after_the_folder_moved_lands_in_its_new_place():
    engine = _Engine()
    remote = RemoteChanges(engine)
    moves = []

    def remote_move(source, destination):
        moves.append((source, destination))
        return defer.succeed(None)

    remote._remote_move = remote_move
    remote.moved(5, "d", "d2")  # this client's own Move of d, applied as seq 5
    remote.operation(4, Move("x.bin", "d/y.bin"))  # another client's, made before it
    remote.operation(6, Move("d2/y.bin", "z.bin"))
    assert moves == [("x.bin", "d2/y.bin"), ("d2/y.bin", "z.bin")]
