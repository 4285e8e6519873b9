"""Versions: the retention plan (pure, hypothesis), the index's versions table and the
files' source clients, and the version area's blocking side on a real directory."""

import collections
import hashlib
import os

import pytest
import pytest_twisted
from hypothesis import given, settings
from hypothesis import strategies as st

from quantum_sync.config import VersionsConfig
from quantum_sync.protocol import Delete, FileMetadata
from quantum_sync.server.index import Index
from quantum_sync.server.store import Store
from quantum_sync.server.versions import (DAY, Version, VersionArea, _over_limits, create_schema,
                                          plan_prune, rekey)

NOW = 100 * DAY


def version(vid, path="a", size=1, kept=NOW):
    return Version(vid, path, 0, size, "0" * 64, "", False, kept)


def test_age_count_and_bytes():
    policy = VersionsConfig(keep_days=30, keep_per_file=2, max_bytes=None)
    versions = [version("old", kept=NOW - 31 * DAY), version("new1", kept=NOW - 1),
                version("new2", kept=NOW - 2), version("new3", kept=NOW - 3),
                version("other", path="b", kept=NOW - 29 * DAY)]
    assert plan_prune(versions, NOW, policy) == {"old", "new3"}
    capped = VersionsConfig(keep_days=30, keep_per_file=None, max_bytes=25)
    sized = [version("v1", size=10, kept=NOW - 1), version("v2", path="b", size=10, kept=NOW - 2),
             version("v3", path="c", size=10, kept=NOW - 3)]
    assert plan_prune(sized, NOW, capped) == {"v3"}  # the oldest go first
    assert plan_prune(sized, NOW, capped, busy={"v3"}) == {"v2"}
    assert plan_prune(sized, NOW, VersionsConfig(keep_days=0)) == {"v1", "v2", "v3"}  # keeping off
    assert plan_prune(sized, NOW, VersionsConfig(keep_days=0), busy={"v1"}) == {"v2", "v3"}


versions_lists = st.lists(
    st.builds(version, st.uuids().map(lambda u: u.hex), st.sampled_from(["a", "b", "c/d"]),
              st.integers(0, 1000), st.floats(0, NOW)),
    max_size=40, unique_by=lambda v: v.id)
policies = st.builds(VersionsConfig, st.sampled_from([0, 0.5, 30, 1000]),
                     st.one_of(st.none(), st.integers(1, 5)), st.one_of(st.none(), st.integers(0, 5000)))


@settings(max_examples=300, deadline=None)
@given(versions_lists, policies, st.data())
def test_the_plan_keeps_exactly_what_the_policy_allows(versions, policy, data):
    busy = set(data.draw(st.lists(st.sampled_from([v.id for v in versions]), max_size=3))) if versions else set()
    doomed = plan_prune(versions, NOW, policy, busy)
    assert not doomed & busy
    kept = [v for v in versions if v.id not in doomed]
    free = [v for v in kept if v.id not in busy]
    # nothing kept breaks a rule, save what a restore reads
    assert all(v.kept >= NOW - policy.keep_days * DAY and policy.keep_days > 0 for v in free)
    if policy.keep_per_file is not None:
        for path in {v.path for v in free}:
            newer = sorted((v for v in versions if v.path == path), key=lambda v: (v.kept, v.id), reverse=True)
            allowed = {v.id for v in newer[:policy.keep_per_file]}
            assert all(v.id in allowed for v in free if v.path == path)
    if policy.max_bytes is not None and free:
        assert sum(v.size for v in kept) <= policy.max_bytes
    # and nothing went that the rules let stay: the cap takes the oldest first
    age_or_count = plan_prune(versions, NOW, VersionsConfig(policy.keep_days, policy.keep_per_file, None), busy)
    capped = doomed - age_or_count
    if capped and free:
        assert max(v.kept for v in versions if v.id in capped) <= min(v.kept for v in free)


@settings(max_examples=200, deadline=None)
@given(versions_lists, policies, st.data())
def test_limits_at_keep_time_choose_what_the_plan_would(versions, policy, data):
    """The keep-time check (a count of each path's rows, the tracked space total, the
    oldest rows read a page at a time) chooses what the full plan chooses by count and
    size."""
    import sqlite3

    busy = frozenset(data.draw(st.lists(st.sampled_from([v.id for v in versions]), max_size=3))) if versions else frozenset()
    txn = sqlite3.connect(":memory:").cursor()
    create_schema(txn)
    txn.executemany("INSERT INTO versions VALUES (?, ?, 0, ?, '', '', 0, ?)",
                    [(v.id, v.path, v.size, v.kept) for v in versions])
    txn.execute("UPDATE versions_space SET total = ?", (sum(v.size for v in versions),))
    by_count_and_size = VersionsConfig(keep_days=1e9, keep_per_file=policy.keep_per_file,
                                       max_bytes=policy.max_bytes)
    doomed = _over_limits(txn, by_count_and_size, {"a", "b", "c/d"}, busy)
    assert set(doomed) == plan_prune(versions, NOW, by_count_and_size, busy)
    assert doomed == {v.id: v.size for v in versions if v.id in doomed}


@pytest_twisted.ensureDeferred
async def test_the_space_total_follows_what_is_kept_and_forgotten(index, tmp_path):
    from quantum_sync.server.versions import _forget, _forget_and_recount

    store, area = area_of(tmp_path)
    area.policy = VersionsConfig()
    for name, data in (("x", b"12345"), ("y", b"123")):
        with open(os.path.join(store.root, name), "wb") as f:
            f.write(data)
    kept = area.trash("", [])
    await index.record([], [], None, "", "", area.recorder(kept))

    def total(txn):
        return txn.execute("SELECT total FROM versions_space").fetchone()[0]

    assert await index.interaction(total) == 8
    await index.interaction(_forget, {v.id: v.size for v in kept if v.path == "x"})
    assert await index.interaction(total) == 3
    await index.interaction(lambda txn: txn.execute("UPDATE versions_space SET total = 99"))
    await index.interaction(_forget_and_recount, [], area.reads)
    assert await index.interaction(total) == 3


async def limits_hold_for_a_group_of_many_paths(index, area) -> None:
    """Record a version of each of more paths than one keep-time query takes (and than a
    compound SELECT of SQLite may join), each path at ``keep_per_file`` already, the
    space cap reached too: every path keeps only its newest, then the cap takes the
    oldest; what went is handed on for its file's removal."""
    from quantum_sync.server.versions import _PATHS_A_QUERY

    paths = [f"d/f{n:04d}" for n in range(_PATHS_A_QUERY * 5 + 7)]  # > 500
    forgotten = []
    area.on_forgotten = forgotten.append
    area.policy = VersionsConfig(keep_per_file=1)
    old = [version(f"{n:024x}", path, size=10, kept=NOW) for n, path in enumerate(paths)]
    await index.record([], [], None, "", "", area.recorder(old))
    assert forgotten == []
    area.policy = VersionsConfig(keep_per_file=1, max_bytes=10 * (len(paths) - 3))
    new = [version(f"{n + len(paths):024x}", path, size=10, kept=NOW + 1 + n) for n, path in enumerate(paths)]
    await index.record([], [], None, "", "", area.recorder(new))

    def rows(txn):
        txn.execute("SELECT id FROM versions")
        ids = {row[0] for row in txn.fetchall()}
        txn.execute("SELECT total FROM versions_space")
        return ids, txn.fetchone()[0]

    ids, total = await index.interaction(rows)
    assert ids == {v.id for v in new[3:]}  # one a path, then the three oldest for the cap
    assert total == 10 * (len(paths) - 3)
    assert set().union(*forgotten) == {v.id for v in old + new[:3]}


@pytest_twisted.ensureDeferred
async def test_limits_hold_for_a_group_of_many_paths_on_sqlite(index, tmp_path):
    await limits_hold_for_a_group_of_many_paths(index, area_of(tmp_path)[1])


@pytest_twisted.async_yield_fixture
async def index(reactor, tmp_path):
    index = Index(str(tmp_path / "state"), retention=100, reactor=reactor)
    index.startService()
    index.start()
    await index.open()
    await index.interaction(create_schema)
    yield index
    index.stopService()


def meta(path, digest):
    return FileMetadata(path, 1, 2.0, digest, False), 2_000_000_000


class Clock:
    def seconds(self):
        return 5.0


def area_of(tmp_path):
    store = Store(str(tmp_path / "root"))
    store.prepare()
    area = VersionArea(store, Clock())
    area.prepare()
    return store, area


class WalkCountingStore(Store):
    """Counts the walks of each path from the root (the resolver's lstats)."""

    def __init__(self, root):
        super().__init__(root)
        self.walks = collections.Counter()

    def walk(self, path):
        self.walks[path] += 1
        return super().walk(path)


def test_a_replaced_file_is_walked_to_once_for_its_version_and_its_rename(tmp_path):
    from twisted.internet.defer import Deferred

    from quantum_sync.server.diskdiff import metadata_of
    from quantum_sync.server.install import GroupInstall, WaitingUpload

    store = WalkCountingStore(str(tmp_path / "root"))
    store.prepare()
    area = VersionArea(store, Clock())
    area.prepare()
    os.makedirs(os.path.join(store.root, "d"))
    with open(os.path.join(store.root, "d", "f"), "wb") as f:
        f.write(b"old")
    indexed = {"d/f": metadata_of(store.entry("d/f"), hashlib.sha256(b"old").hexdigest())}
    store.walks.clear()
    body = b"new"
    upload = WaitingUpload("d/f", None, body, hashlib.sha256(body).hexdigest(), "c", None, None, Deferred())
    [result] = GroupInstall(store, area).install_all([upload], indexed, 1 << 20)
    version = result[4]
    with open(area.name_of(version.id), "rb") as f:
        assert f.read() == b"old"
    with open(os.path.join(store.root, "d", "f"), "rb") as f:
        assert f.read() == b"new"
    assert store.walks["d/f"] == 2  # its current state looked at; its version linked and it renamed


@pytest_twisted.ensureDeferred
async def test_rows_remember_who_wrote_the_content(index):
    await index.record([meta("a", "1" * 64)], [], None, "writer", "")
    await index.record([meta("a", "1" * 64)], [], None, "server", "")  # touched: same content
    row = await index.interaction(lambda txn: txn.execute("SELECT source_client FROM files").fetchall())
    assert row == [("writer",)]
    await index.record([meta("a", "2" * 64)], [], None, "other", "")
    row = await index.interaction(lambda txn: txn.execute("SELECT source_client FROM files").fetchall())
    assert row == [("other",)]


@pytest_twisted.ensureDeferred
async def test_an_index_made_before_source_clients_is_migrated(reactor, tmp_path):
    import sqlite3
    os.makedirs(tmp_path / "s")
    old = sqlite3.connect(str(tmp_path / "s" / "index.sqlite3"))
    old.executescript("CREATE TABLE files (path TEXT PRIMARY KEY, is_directory INTEGER NOT NULL,"
                      " size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, hash TEXT NOT NULL);"
                      "INSERT INTO files VALUES ('x', 0, 1, 2, 'h');")
    old.commit()
    old.close()
    index = Index(str(tmp_path / "s"), retention=10, reactor=reactor)
    index.start()
    await index.open()
    try:
        assert (await index.get("x"))[0].hash == "h"
        await index.record([meta("y", "3" * 64)], [], None, "c", "")
        assert [m.path for m, _ in await index.list_all()] == ["x", "y"]
    finally:
        index.stopService()


@pytest_twisted.ensureDeferred
async def test_versions_recorded_with_the_journal_and_rekeyed_by_moves(index, tmp_path):
    store, area = area_of(tmp_path)
    os.makedirs(os.path.join(store.root, "d"))
    for name, data in [("d/x", b"x"), ("d/y", b"y")]:
        with open(os.path.join(store.root, name), "wb") as f:
            f.write(data)
    await index.record([meta("d/x", "1" * 64)], [], None, "author", "")
    kept = area.trash("d", [])  # no matching rows: hashed from the bytes
    assert sorted(v.path for v in kept) == ["d/x", "d/y"] and all(v.deleted and v.kept == 5.0 for v in kept)
    assert area.listed(0)[1] == {v.id for v in kept}  # not yet recorded
    change = await index.record([], ["d"], Delete("d"), "remover", "t", area.recorder(kept))
    assert change.seq == 1 and area.listed(0)[1] == set()
    rows = await index.interaction(lambda txn: txn.execute(
        "SELECT path, source_client, deleted FROM versions ORDER BY path").fetchall())
    assert rows == [("d/x", "", 1), ("d/y", "", 1)]  # the row's hash was not the content's
    await index.rename("d", "e/d", None, "", "", rekey("d", "e/d"))
    rows = await index.interaction(lambda txn: txn.execute("SELECT path FROM versions ORDER BY path").fetchall())
    assert rows == [("e/d/x",), ("e/d/y",)]


@pytest_twisted.ensureDeferred
async def test_a_failed_journal_entry_leaves_its_versions_to_the_orphan_sweep(index, tmp_path):
    store, area = area_of(tmp_path)
    with open(os.path.join(store.root, "f"), "wb") as f:
        f.write(b"old")
    current = (FileMetadata("f", 3, 0, "x" * 64), 0)
    kept = area.keep_replaced("f", current, "w")
    assert os.path.exists(area.name_of(kept.id)) and os.path.exists(os.path.join(store.root, "f"))

    def fails(txn):
        area.recorder([kept])(txn)
        raise RuntimeError("disk gone")

    with pytest.raises(RuntimeError):
        await index.interaction(fails)
    names, unrecorded = area.listed(0)
    assert kept.id in names and kept.id not in unrecorded  # an orphan now: swept
    assert await index.interaction(lambda txn: txn.execute("SELECT * FROM versions").fetchall()) == []
