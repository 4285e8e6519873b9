"""Selective sync rules (pure) and what a narrower selection does to the local folder."""

import hashlib
import os

from quantum_sync.client.deselect import leave_selection
from quantum_sync.client.ignore import IgnoreRules
from quantum_sync.client.reconcile import Entry
from quantum_sync.client.selection import EVERYTHING, Selection
from quantum_sync.client.state import Base


def test_everything_by_default():
    assert EVERYTHING.everything and EVERYTHING.selects("a/b/c.txt") and EVERYTHING.selects("x", True)


def test_exclude_a_directory_and_what_is_below_it():
    s = Selection(exclude=["/videos/", "*.iso"])
    assert not s.selects("videos", True) and not s.selects("videos/a/b.mp4")
    assert not s.selects("docs/disk.iso") and s.selects("docs/a.txt") and s.selects("docs", True)
    assert s.selects("my-videos/a.mp4")


def test_include_keeps_the_directories_leading_to_it():
    s = Selection(include=["/projects/alpha/"])
    assert s.selects("projects/alpha/src/main.c") and s.selects("projects/alpha", True)
    assert s.selects("projects", True)  # the way to what is included
    assert not s.selects("projects/beta", True) and not s.selects("projects/beta/x.c")
    assert not s.selects("projects/readme.txt") and not s.selects("other.txt") and not s.selects("other", True)


def test_include_minus_exclude_and_the_shared_rules_file():
    s = Selection(include=["/docs/"], exclude=["/docs/private/"])
    assert s.selects("docs/a.txt") and not s.selects("docs/private/key.txt")
    assert s.selects(".syncignore")  # everyone's rules always come down


def test_an_unanchored_include_may_match_at_any_depth():
    s = Selection(include=["*.pdf"])
    assert s.selects("a/b/c.pdf") and s.selects("a/b", True) and not s.selects("a/b/c.txt")


def base_of(path, data=None):
    if data is None:
        return Base(Entry("", 0, True), 0.0, 0, 0)
    st = os.lstat(path)
    return Base(Entry(hashlib.sha256(data).hexdigest(), len(data)), 0.0, st.st_size, st.st_mtime_ns)


def test_narrowing_removes_unchanged_copies_and_keeps_edits(tmp_path):
    folder = str(tmp_path)
    files = {"keep/a.txt": b"stays selected", "gone/b.txt": b"unchanged", "gone/c.txt": b"will be edited",
             "gone/sub/d.txt": b"deep", "ignored/e.txt": b"shared rule"}
    bases = {}
    for rel, data in files.items():
        os.makedirs(os.path.dirname(os.path.join(folder, rel)), exist_ok=True)
        with open(os.path.join(folder, rel), "wb") as f:
            f.write(data)
        bases[rel] = base_of(os.path.join(folder, rel), data)
    for d in ("keep", "gone", "gone/sub", "ignored"):
        bases[d] = base_of(None)
    with open(os.path.join(folder, "gone/c.txt"), "wb") as f:
        f.write(b"edited here")
    os.makedirs(os.path.join(folder, "local-only"))
    with open(os.path.join(folder, "local-only/f.txt"), "wb") as f:
        f.write(b"never synced")
    selection = Selection(include=["/keep/", "/ignored/"])
    rules = IgnoreRules("ignored/\n")
    done = leave_selection(folder, bases, lambda p, d: not selection.selects(p, d), rules.is_ignored)
    assert set(done.removed) == {"gone/b.txt", "gone/sub/d.txt", "gone/sub"}
    assert done.kept == ("gone/c.txt",)
    assert done.outside == ("local-only",)
    assert open(os.path.join(folder, "gone/c.txt"), "rb").read() == b"edited here"
    assert not os.path.exists(os.path.join(folder, "gone/b.txt")) and not os.path.exists(os.path.join(folder, "gone/sub"))
    assert os.path.exists(os.path.join(folder, "ignored/e.txt")) and os.path.exists(os.path.join(folder, "keep/a.txt"))
    assert os.path.exists(os.path.join(folder, "local-only/f.txt"))
