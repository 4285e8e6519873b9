"""Shared pieces of the hostile-input tests: hypothesis strategies for paths and JSON,
and a fixture tree with things outside the root to protect."""

import hashlib
import os

from hypothesis import strategies as st

from tests.test_api_paths import ATTACKS

#: Pieces that path tricks are built from: traversal, encodings, separators, NUL and
#: control characters, the state directory, symlinks out, Unicode look-alikes and NFD.
SEGMENTS = [
    "..", ".", "", "a", "b.txt", "%2e%2e", "%2f", "..%2f", "%00", "\\", "..\\..", "\x00",
    "\r\n", "\t", ".quantum-sync", ".quantum-sync/tmp", "link-out", "link-sib", "etc",
    "passwd", "caf\u00e9", "cafe\u0301", "\u202e", "\u200b", "\ufeff", "\uff0e\uff0e",
    "\u2024\u2024", "\u2215", "\ud800", "CON", "a" * 256, "~", "$HOME", "*", "?", ":", "/",
]


def _joined(parts, separator):
    return separator.join(parts)


#: Paths from the S6 list, from the pieces above, and from arbitrary text.
paths = st.one_of(
    st.sampled_from(ATTACKS),
    st.builds(
        _joined,
        st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=6),
        st.sampled_from(["/", "\\", "//", "/./"]),
    ),
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec="utf-8", exclude_categories=()), max_size=300),
    st.just("x/" * 2050),
)

_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=30), paths,
)

#: Arbitrary JSON values (nested lists and objects of scalars and paths).
json_values = st.recursive(
    _scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(max_size=12), children, max_size=4),
    ),
    max_leaves=12,
)

_metadata = st.fixed_dictionaries(
    {"path": paths},
    optional={
        "size": _scalars, "modified": st.one_of(st.just("2024-01-21T12:00:00Z"), _scalars),
        "hash": st.one_of(st.just("0" * 64), st.just(""), _scalars),
        "is_directory": st.one_of(st.booleans(), _scalars),
    },
)

#: SyncOperations of the right shape with hostile contents, and of wrong shapes.
operations = st.one_of(
    st.builds(lambda m: {"Create": {"metadata": m}}, _metadata),
    st.builds(lambda m: {"Update": {"metadata": m}}, _metadata),
    st.builds(lambda p: {"Delete": {"path": p}}, paths),
    st.builds(lambda a, b: {"Move": {"from": a, "to": b}}, paths, paths),
    st.dictionaries(st.sampled_from(["Create", "Update", "Delete", "Move", "create"]), json_values,
                    max_size=2),
    json_values,
)


def build_tree(tmp_path):
    """``root`` with a file and a directory, and outside it ``root-evil/canary``,
    ``outside/passwd``, with symlinks ``root/link-out -> outside`` and
    ``root/link-sib -> ../root-evil``. Returns the root's path."""
    root = tmp_path / "root"
    (root / "dir").mkdir(parents=True)
    (root / "a.txt").write_bytes(b"alpha")
    (tmp_path / "root-evil").mkdir()
    (tmp_path / "root-evil" / "canary").write_bytes(b"canary: never served or changed\n")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "passwd").write_bytes(b"root:x:0:0:fake\n")
    os.symlink(tmp_path / "outside", root / "link-out")
    os.symlink("../root-evil", root / "link-sib")
    return root


def outside_snapshot(tmp_path):
    """Every name and content hash under ``tmp_path`` but outside ``root`` (and outside
    pytest's own files): what no request may change."""
    snapshot = {}
    for directory, dirs, files in os.walk(tmp_path):
        if os.path.abspath(directory).startswith(os.path.abspath(tmp_path / "root")):
            dirs[:] = []
            continue
        for name in files + dirs:
            full = os.path.join(directory, name)
            if full == str(tmp_path / "root"):
                continue
            if os.path.isfile(full) and not os.path.islink(full):
                snapshot[full] = hashlib.sha256(open(full, "rb").read()).hexdigest()
            else:
                snapshot[full] = "dir"
    return snapshot
