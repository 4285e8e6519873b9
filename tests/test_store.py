"""The file store: atomic installs, temp cleanup, scans (blocking code, run directly)."""

import hashlib
import os

import pytest

from quantum_sync import paths
from quantum_sync.errors import SyncError
from quantum_sync.diskio import sha256_file
from quantum_sync.server.spools import UploadSpool
from quantum_sync.server.store import NamelessTemp, Store


@pytest.fixture
def store(tmp_path):
    store = Store(str(tmp_path / "root"))
    store.prepare()
    return store


def spool_with(store, data: bytes) -> UploadSpool:
    spool = UploadSpool(store.temp_dir)
    for i in range(0, len(data), 7):
        spool.write(data[i:i + 7])
    spool.finish()
    return spool


def test_prepare_creates_root_and_cleans_temps(tmp_path):
    store = Store(str(tmp_path / "root"))
    store.prepare()
    assert os.path.isdir(store.temp_dir)
    with open(os.path.join(store.temp_dir, "upload-crashed"), "wb") as f:
        f.write(b"partial")
    os.mkdir(os.path.join(store.temp_dir, "leftover-dir"))
    Store(str(tmp_path / "root")).prepare()
    assert os.listdir(store.temp_dir) == []


def test_prepare_refuses_unusable_roots(tmp_path):
    with pytest.raises(ValueError, match="parent directory does not exist"):
        Store(str(tmp_path / "no" / "root")).prepare()
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(ValueError, match="not a directory"):
        Store(str(tmp_path / "file")).prepare()


def test_spool_hashes_while_writing(store):
    data = os.urandom(100_000)
    spool = spool_with(store, data)
    assert spool.sha256 == hashlib.sha256(data).hexdigest()
    assert spool.size == len(data)
    assert spool.read() == b"" and spool.tell() == len(data)
    assert os.path.dirname(spool.path) == store.temp_dir
    spool.close()
    assert os.listdir(store.temp_dir) == []


def test_install_is_a_rename_with_parents(store):
    spool = spool_with(store, b"content")
    created = store.install(spool.path, "a/b/c.txt")
    assert created == ["a", "a/b"]
    assert sha256_file(store.resolve("a/b/c.txt")) == hashlib.sha256(b"content").hexdigest()
    assert os.listdir(store.temp_dir) == []
    assert oct(os.stat(store.resolve("a/b/c.txt")).st_mode & 0o777) == "0o644"
    spool.close()  # already renamed away: a no-op


def test_install_conflicts(store):
    store.install(spool_with(store, b"x").path, "file")
    store.make_directory("dir")
    with pytest.raises(SyncError) as info:
        store.install(spool_with(store, b"y").path, "file/below")
    assert info.value.code == "CONFLICT"
    with pytest.raises(SyncError) as info:
        store.install(spool_with(store, b"y").path, "dir")
    assert info.value.code == "CONFLICT"


def test_scan_lists_files_and_directories_only(store, tmp_path):
    store.install(spool_with(store, b"x").path, "d/f.txt")
    store.make_directory("empty")
    os.symlink(str(tmp_path), os.path.join(store.root, "d", "link"))
    os.symlink("f.txt", os.path.join(store.root, "d", "inner-link"))
    os.mkfifo(store.resolve("fifo"))
    found = {e.path: (e.is_directory, e.size) for e in store.scan()}
    assert found == {"d": (True, 0), "d/f.txt": (False, 1), "empty": (True, 0)}
    assert {e.path for e in store.scan("d")} == {"d", "d/f.txt"}
    assert store.scan("missing") == []
    assert store.entry("d/inner-link") is None and store.entry("fifo") is None
    with pytest.raises(SyncError) as info:
        store.entry("d/link")
    assert info.value.code == "INVALID_PATH"


def test_move_and_remove(store):
    store.install(spool_with(store, b"x").path, "a/f.txt")
    assert store.move("a", "x/y/a2") == ["x", "x/y"]
    assert os.path.isfile(store.resolve("x/y/a2/f.txt"))
    store.install(spool_with(store, b"z").path, "other")
    with pytest.raises(SyncError):
        store.move("other", "x")
    store.remove("x")
    assert not os.path.exists(store.resolve("x"))


def test_symlinks_inside_the_root_are_not_followed(store):
    store.install(spool_with(store, b"x").path, "real/f.txt")
    os.symlink("real", os.path.join(store.root, "alias"))
    for path in ("alias/f.txt", "alias/new.txt"):
        with pytest.raises(SyncError) as info:
            store.resolve(path)
        assert info.value.code == "INVALID_PATH"
    assert store.entry("alias") is None  # the link itself counts as absent
    assert {e.path for e in store.scan()} == {"real", "real/f.txt"}


def test_memory_budget_pauses_and_releases_every_spool(store, monkeypatch):
    """Several uploads against a small shared budget with a slow disk: they are told to
    pause, every paused one is released again, memory stays near the limit, every file
    is exact."""
    import threading
    import time

    from quantum_sync.server.uploadmemory import MemoryBudget

    real_writev = os.writev
    monkeypatch.setattr(os, "writev", lambda fd, blocks: (time.sleep(0.002), real_writev(fd, blocks))[1])
    chunk_size, limit = 256 * 1024, 2 * 1024 * 1024
    budget = MemoryBudget(limit)
    drained = [threading.Event() for _ in range(3)]
    spools = [UploadSpool(store.temp_dir, on_drained=event.set, budget=budget) for event in drained]
    bodies = [os.urandom(chunk_size) * 12 for _ in spools]
    offsets = [0] * len(spools)
    pauses, peak = [0] * len(spools), 0
    while any(offset < len(body) for offset, body in zip(offsets, bodies)):
        for i, spool in enumerate(spools):
            if offsets[i] >= len(bodies[i]):
                continue
            chunk = bodies[i][offsets[i]:offsets[i] + chunk_size]
            offsets[i] += len(chunk)
            paused = spool.write(chunk)
            peak = max(peak, budget.total)
            if paused:
                pauses[i] += 1
                assert drained[i].wait(10), "a paused spool was never released"
                drained[i].clear()
    for spool, body in zip(spools, bodies):
        spool.finish()
        assert spool.sha256 == hashlib.sha256(body).hexdigest()
        with open(spool.path, "rb") as f:
            assert f.read() == body
        spool.close()
    assert sum(pauses) >= 2, pauses  # the budget was hit (timing decides which spool)
    assert peak <= limit + len(spools) * UploadSpool.BLOCK
    assert budget.total == 0 and not budget.paused


def test_scan_names_every_entry_as_the_path_rules_do(store):
    """The scan's quick naming of plain ASCII names agrees with paths.relative_from_disk
    (which it falls back to for everything else)."""
    names = ["plain.txt", "sp ace", "caf\u00e9", "cafe\u0301", "back\\slash", "ctrl\x01",
             "tab\tname", "~$lock", "a" * 255]
    os.makedirs(os.path.join(store.root, "sub", ".quantum-sync"))
    for name in names:
        for parent in ("", "sub"):
            with open(os.path.join(store.root, parent, name), "wb") as f:
                f.write(b"x")
    expected = {"sub", "sub/.quantum-sync"}
    for name in names:
        for parent in ("", "sub"):
            rel = paths.relative_from_disk(store.root, os.path.join(store.root, parent, name))
            if rel is not None:
                expected.add(rel)
    found = {entry.path for entry in store.scan()}
    assert found == expected
    assert "plain.txt" in found and "sub/caf\u00e9" in found and "sub/.quantum-sync" in found
    assert not any("\\" in p or "\x01" in p or "\t" in p or "e\u0301" in p for p in found)
    assert {entry.path for entry in store.scan("sub")} == {p for p in expected if p.startswith("sub")}


@pytest.mark.parametrize("nameless", [True, False])
def test_staged_bodies_install_atomically_and_are_recognised_once(store, nameless):
    """A small body written by :meth:`Store.stage_many` (a nameless O_TMPFILE, or a named
    temp where that is not supported) is mode 0644 and fsynced before it gets its name;
    it is linked in place when the name is free and replaces the file there otherwise.
    The root watcher's check (own_write) says yes to each install once, and never to a
    file another program put there afterwards."""
    store._nameless.available = nameless
    (temp, st), = store.stage_many([b"small body"])
    assert isinstance(temp, NamelessTemp) is nameless and st.st_size == 10
    assert (os.fstat(temp.fd) if nameless else os.stat(temp)).st_mode & 0o777 == 0o644
    assert os.listdir(store.temp_dir) == ([] if nameless else [os.path.basename(temp)])
    created, target = store.install_staged(temp, st, "d/f.bin")
    store.discard(temp)
    assert created == ["d"] and target == os.path.join(store.root, "d", "f.bin")
    assert os.listdir(store.temp_dir) == []
    with open(target, "rb") as f:
        assert f.read() == b"small body"
    assert store.own_write(target) is True
    assert store.own_write(target) is False  # recognised once only
    assert store.own_write(os.path.join(store.root, "never-installed")) is False

    (temp, st), = store.stage_many([b"ours, replacing"])  # the name is taken now
    store.install_staged(temp, st, "d/f.bin")
    store.discard(temp)
    assert os.listdir(store.temp_dir) == []
    with open(target, "rb") as f:
        assert f.read() == b"ours, replacing"
    with open(target + ".other", "wb") as f:
        f.write(b"theirs")
    os.replace(target + ".other", target)  # another program replaces it before the event
    assert store.own_write(target) is False

    (temp, _), = store.stage_many([b"never installed"])
    store.discard(temp)
    assert os.listdir(store.temp_dir) == []


def test_nameless_temps_held_stay_within_their_budget_and_are_closed_once(store, monkeypatch):
    """Staged nameless files keep a descriptor open until their install: past the budget a
    batch is staged in named files instead (closed once durable), and a temp released
    twice (its install, then its upload's failure) closes its descriptor only once."""
    if not store._nameless.available:
        pytest.skip("this file system has no O_TMPFILE")
    monkeypatch.setattr(store._held, "limit", 5)
    first = store.stage_many([b"a", b"b", b"c"])
    assert all(isinstance(temp, NamelessTemp) for temp, _ in first)
    second = store.stage_many([b"d", b"e", b"f"])  # 3 + 3 > 5: named
    assert all(isinstance(temp, str) for temp, _ in second)
    assert sorted(os.listdir(store.temp_dir)) == sorted(os.path.basename(temp) for temp, _ in second)
    temp = first[0][0]
    store.discard(temp)
    other = os.open(store.root, os.O_RDONLY)  # may take the number just freed
    try:
        store.discard(temp)  # again: does nothing, whatever holds that number now
        os.fstat(other)
    finally:
        os.close(other)
    assert temp.fd is None and store._held.held == 2
    for temp, _ in first[1:] + second:
        store.discard(temp)
    assert store._held.held == 0 and os.listdir(store.temp_dir) == []
    again = store.stage_many([b"1", b"2", b"3", b"4", b"5"])  # all given back: nameless again
    assert all(isinstance(temp, NamelessTemp) for temp, _ in again)
    for temp, _ in again:
        store.discard(temp)


def test_resolve_walks_only_below_the_root(tmp_path):
    """The root itself may be reached through a link; inside it no link is gone through,
    and a final link is refused only when it leads out of the root or into the state
    directory."""
    (tmp_path / "real").mkdir()
    os.symlink(str(tmp_path / "real"), str(tmp_path / "alias"))
    store = Store(str(tmp_path / "alias"))
    store.prepare()
    assert store.resolve("a/b.txt") == os.path.join(str(tmp_path / "real"), "a", "b.txt")
    os.mkdir(os.path.join(store.root, "dir"))
    os.symlink("dir", os.path.join(store.root, "in"))
    os.symlink(".quantum-sync/tmp", os.path.join(store.root, "state"))
    os.symlink(str(tmp_path), os.path.join(store.root, "out"))
    assert store.resolve("in") == os.path.join(store.root, "in")
    for path in ("in/x", "in/x/y", "state", "state/x", "out", "out/real"):
        with pytest.raises(SyncError) as info:
            store.resolve(path)
        assert info.value.code == "INVALID_PATH", path
    with open(os.path.join(store.root, "file"), "wb") as f:
        f.write(b"f")
    assert store.resolve("file/below") == os.path.join(store.root, "file", "below")
    assert store.entry("file/below") is None and store.entry("missing/x") is None


def test_memory_spools_count_in_the_shared_budget():
    """Small bodies kept in memory take their length from the budget until closed; when
    it is spent, the caller gets None (and spools to a file instead)."""
    from quantum_sync.server.spools import MemorySpool
    from quantum_sync.server.uploadmemory import MemoryBudget

    budget = MemoryBudget(100)
    first = MemorySpool.reserve(60, budget)
    assert first is not None and budget.total == 60
    assert MemorySpool.reserve(50, budget) is None
    for chunk in (b"a" * 30, b"b" * 30):
        assert first.write(chunk) is False
    assert first.body == b"a" * 30 + b"b" * 30 and first.size == 60
    assert first.sha256 == hashlib.sha256(first.body).hexdigest()
    first.close()
    first.close()
    assert budget.total == 0
    assert MemorySpool.reserve(100, budget) is not None
