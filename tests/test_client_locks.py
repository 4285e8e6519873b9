"""PathLocks: waiting for the operations running below a directory (no reactor needed:
DeferredLocks fire synchronously)."""

from twisted.internet import defer

from quantum_sync.client.locks import PathLocks


def test_wait_below_waits_for_what_runs_inside_the_directory_only():
    locks = PathLocks()
    inside = defer.ensureDeferred(locks.acquire(["d/f.bin", "d/e/g.bin", "dx/h.bin", "d"]))
    taken = []
    inside.addCallback(taken.extend)
    assert sorted(locks.held_below("d")) == ["d/e/g.bin", "d/f.bin"]
    waited = defer.ensureDeferred(locks.wait_below("d"))
    assert not waited.called  # an upload inside d is in flight
    locks.release(["d/f.bin"])
    assert not waited.called
    locks.release(["d/e/g.bin"])
    assert waited.called  # d itself and the sibling dx are not waited for
    assert not locks.locked("d/f.bin") and locks.locked("dx/h.bin") and locks.locked("d")
    assert defer.ensureDeferred(locks.wait_below("empty")).called
