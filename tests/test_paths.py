"""The one path validator (contract section 3): pure rules and the on-disk resolver."""

import os
import unicodedata

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quantum_sync import paths, resolve
from quantum_sync.errors import SyncError
from tests.test_api_paths import ATTACKS

#: Hostile names from the S6 list that must be refused outright (before the disk).
REFUSED = [
    "../etc/passwd", "../../../../../../../../etc/passwd", "/etc/passwd", "//etc/passwd",
    "..", ".", "", "a/../../etc/passwd", "a/./../../root-evil/canary", "../root-evil/canary",
    "..\\..\\etc\\passwd", "C:\\Windows\\win.ini", "\\\\server\\share\\x", "..%00/etc/passwd"
    .replace("%00", "\x00"), "ok.txt\x00.jpg", "\x00", "a\r\nSet-Cookie: x=1",
    ".quantum-sync/tmp/x", ".quantum-sync", "a//b", "a/b/", "a" * 256,
    "/".join(["a" * 100] * 41), "evil\u202etxt.exe", "x\u200bz\u0000", "\ud800",
    "a/./b", "./a", "a/..", "tab\there", "\x7f", "bidi\u2066x",
]

#: Names that look odd but are plain files inside the root.
ACCEPTED = [
    "..;/etc/passwd".replace("/", "_"), "%2e%2e", "....", "...", "a..b", "C:/Windows/win.ini",
    "file:/x", "CON", "con.txt", "NUL", "aux.tar.gz", "foo.", "foo ", "file.txt:stream",
    'a*?<>|".txt', ".qsfolder", "a/.quantum-sync", "caf\u00e9.txt", "README.md", "\u00e9/\u00e8",
    "a" * 255, "emoji \U0001F600", "zwj\u200d",
]


@pytest.mark.parametrize("path", REFUSED)
def test_refused(path):
    with pytest.raises(SyncError) as info:
        paths.normalize(path)
    assert info.value.code == "INVALID_PATH"


@pytest.mark.parametrize("path", ACCEPTED)
def test_accepted(path):
    assert paths.normalize(path) == unicodedata.normalize("NFC", path)


def test_at_least_thirty_hostile_paths():
    assert len(REFUSED) >= 30 and len(ATTACKS) >= 50


def test_nfc():
    assert paths.normalize("cafe\u0301.txt") == "caf\u00e9.txt"
    assert not paths.is_valid("cafe\u0301.txt")
    assert paths.is_valid("caf\u00e9.txt")


def test_non_strings():
    for value in (None, 5, b"a", ["a"]):
        with pytest.raises(SyncError):
            paths.normalize(value)


def test_helpers():
    assert paths.parent("a/b/c") == "a/b" and paths.parent("a") == ""
    assert paths.ancestors("a/b/c") == ["a", "a/b"]
    assert paths.is_inside("a/b", "a") and paths.is_inside("a", "a")
    assert not paths.is_inside("ab", "a")


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "root"
    (root / "dir").mkdir(parents=True)
    (root / ".quantum-sync").mkdir()
    (tmp_path / "root2").mkdir()
    (tmp_path / "outside").mkdir()
    os.symlink(str(tmp_path / "outside"), str(root / "link-out"))
    os.symlink("../root2", str(root / "link-sib"))  # preauthChild's string-prefix trap
    os.symlink("dir", str(root / "link-in"))
    os.symlink(".quantum-sync", str(root / "link-state"))
    os.symlink("/", str(root / "link-slash"))
    return root


@pytest.mark.parametrize("path", ["link-out/x", "link-sib/x", "link-state/x", "link-slash/etc",
                                  "link-out", "link-state", "link-sib"])
def test_resolve_refuses_symlinks_out(tree, path):
    with pytest.raises(SyncError) as info:
        resolve.resolve(str(tree), path)
    assert info.value.code == "INVALID_PATH"


def test_resolve_inside(tree):
    assert resolve.resolve(str(tree), "dir/new.txt") == str(tree / "dir" / "new.txt")
    # a link as the last segment is the name itself, never its target
    assert resolve.resolve(str(tree), "link-in") == str(tree / "link-in")
    assert resolve.resolve(str(tree), "missing/deeper/x") == str(tree / "missing" / "deeper" / "x")


def test_resolve_goes_through_no_link_even_one_inside(tree):
    """One rule for server and client: scans never follow a link, so neither does a
    read or a write (the client used to go through links leading inside its folder)."""
    with pytest.raises(SyncError) as info:
        resolve.resolve(str(tree), "link-in/x")
    assert info.value.code == "INVALID_PATH"


def test_walk_hands_back_the_names_own_lstat(tree):
    (tree / "dir" / "f").write_bytes(b"abc")
    absolute, st, parents_exist = resolve.walk(str(tree), "dir/f")
    assert (absolute, st.st_size, st.st_ino, parents_exist) == (str(tree / "dir" / "f"), 3,
                                                                os.lstat(tree / "dir" / "f").st_ino, True)
    assert resolve.walk(str(tree), "dir/missing")[1:] == (None, True)
    assert resolve.walk(str(tree), "missing/deeper/x")[1:] == (None, False)
    assert resolve.walk(str(tree), "dir/f/below")[1:] == (None, False)
    assert resolve.resolve_and_lstat(str(tree), "link-in")[1].st_mode == os.lstat(tree / "link-in").st_mode


def test_relative_from_disk(tree):
    assert paths.relative_from_disk(str(tree), str(tree / "dir" / "a")) == "dir/a"
    assert paths.relative_from_disk(str(tree), str(tree / ".quantum-sync" / "x")) is None
    assert paths.relative_from_disk(str(tree), str(tree)) is None
    assert paths.relative_from_disk(str(tree), str(tree.parent / "root2" / "x")) is None
    assert paths.relative_from_disk(str(tree), str(tree / "cafe\u0301")) is None


_PIECES = st.sampled_from(["..", ".", "", "a", "dir", "link-out", "link-sib", "link-in",
                           "link-state", "link-slash", ".quantum-sync", "root2", "/", "\\",
                           "%2e%2e", "\x00", "\u2024\u2024", "etc"])


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.one_of(st.lists(_PIECES, max_size=6).map("/".join), st.text(max_size=30),
                      st.sampled_from(ATTACKS)))
def test_resolve_never_leaves_the_root(tree, path):
    """Property: whatever the input, a resolved path really lies inside the root and
    outside the state directory, or resolve refuses it with INVALID_PATH."""
    real_root = os.path.realpath(str(tree))
    try:
        resolved = resolve.resolve(str(tree), path)
    except SyncError as error:
        assert error.code == "INVALID_PATH"
        return
    real = os.path.realpath(resolved)
    assert os.path.commonpath([real, real_root]) == real_root
    assert real != real_root
    # the name itself is the root's real path joined with the canonical segments
    assert resolved == os.path.join(real_root, *paths.normalize(path).split("/"))
    state = os.path.join(real_root, ".quantum-sync")
    assert os.path.commonpath([real, state]) != state


@given(path=st.text(max_size=60))
def test_normalize_is_idempotent(path):
    try:
        once = paths.normalize(path)
    except SyncError:
        return
    assert paths.normalize(once) == once
    assert paths.is_valid(once)
    assert not once.startswith("/") and ".." not in once.split("/")
