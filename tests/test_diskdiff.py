"""diskdiff: index rows against disk entries → journal items (pure, no reactor)."""

from hypothesis import given, settings
from hypothesis import strategies as st

from quantum_sync.protocol import Create, Delete, FileMetadata, Update
from quantum_sync.server.diskdiff import item_path, journal_items, matches, metadata_of, stale_files
from quantum_sync.server.store import DiskEntry


def row(path, size=1, mtime_ns=5, digest="h", directory=False):
    return FileMetadata(path, size, mtime_ns / 1e9, "" if directory else digest, directory), mtime_ns


def rows(*entries):
    return {r[0].path: r for r in entries}


def disk(*entries):
    return {e.path: e for e in entries}


def test_unchanged_disk_gives_nothing():
    found = disk(DiskEntry("d", True, 0, 1), DiskEntry("d/a", False, 1, 5))
    indexed = rows(row("d", directory=True, mtime_ns=9), row("d/a"))
    assert stale_files(indexed, found) == [] and journal_items(indexed, found, {}) == []


def test_a_removed_directory_is_one_delete():
    indexed = rows(row("d", directory=True), row("d/a"), row("d/b"), row("e"))
    items = journal_items(indexed, disk(DiskEntry("e", False, 1, 5)), {})
    assert items == [([], ["d"], Delete("d"))]


def test_new_changed_touched_and_unreadable_files():
    indexed = rows(row("changed", digest="old"), row("touched", digest="same"))
    found = disk(DiskEntry("changed", False, 2, 6), DiskEntry("touched", False, 1, 7),
                 DiskEntry("new", False, 3, 8), DiskEntry("unreadable", False, 4, 9))
    assert stale_files(indexed, found) == ["changed", "new", "touched", "unreadable"]
    digests = {"changed": "new-hash", "touched": "same", "new": "n"}
    items = journal_items(indexed, found, digests)
    assert items == [
        ([metadata_of(found["changed"], "new-hash")], [], Update(metadata_of(found["changed"], "new-hash")[0])),
        ([metadata_of(found["new"], "n")], [], Create(metadata_of(found["new"], "n")[0])),
        ([metadata_of(found["touched"], "same")], [], None),  # the row only: not a change
    ]  # "unreadable" has no digest: left for its next event
    assert [item_path(i) for i in items] == ["changed", "new", "touched"]


def test_a_file_that_became_a_directory_is_deleted_then_created():
    found = disk(DiskEntry("x", True, 0, 1))
    items = journal_items(rows(row("x")), found, {})
    assert [(i[1], type(i[2]).__name__) for i in items] == [(["x"], "Delete"), ([], "Create")]
    assert items[1][2].metadata.is_directory


names = st.sampled_from(["a", "b", "a/x", "a/y", "b/z"])
entries = st.dictionaries(names, st.tuples(st.booleans(), st.integers(0, 3), st.integers(0, 3)))


@settings(max_examples=300, deadline=None)
@given(indexed=entries, on_disk=entries)
def test_applying_the_items_gives_the_disk(indexed, on_disk):
    """Whatever the index held, its rows after the items describe the disk (hashes
    known for every file)."""
    def plausible(tree):  # a parent of a path is a directory, as on a disk
        return {p: v for p, v in tree.items() if "/" not in p or tree.get(p.split("/")[0], (False,))[0]}

    indexed, on_disk = plausible(indexed), plausible(on_disk)
    current = {p: row(p, size, m, f"h{size}", d) for p, (d, size, m) in indexed.items()}
    found = {p: DiskEntry(p, d, 0 if d else size, m) for p, (d, size, m) in on_disk.items()}
    digests = {p: f"h{e.size}" for p, e in found.items() if not e.is_directory}
    for upserts, removals, _ in journal_items(current, found, digests):
        for gone in removals:
            current = {p: r for p, r in current.items() if p != gone and not p.startswith(gone + "/")}
        current.update({m.path: (m, mtime) for m, mtime in upserts})
    assert set(current) == set(found)
    assert all(matches(current[p], found[p]) for p in found)
