"""Conflict copy names (contract section 7) and .syncignore rules."""

import calendar

import pytest

from quantum_sync.client.conflicts import conflict_name
from quantum_sync.client.ignore import IgnoreRules

WHEN = calendar.timegm((2024, 1, 21, 12, 34, 56))


@pytest.mark.parametrize(
    "path,expected",
    [
        ("a.txt", "a.sync-conflict-20240121-123456-C1.txt"),
        ("a.tar.gz", "a.tar.sync-conflict-20240121-123456-C1.gz"),
        ("Makefile", "Makefile.sync-conflict-20240121-123456-C1"),
        (".bashrc", ".bashrc.sync-conflict-20240121-123456-C1"),
        ("docs/sub/report.pdf", "docs/sub/report.sync-conflict-20240121-123456-C1.pdf"),
        ("dir.d/noext", "dir.d/noext.sync-conflict-20240121-123456-C1"),
    ],
)
def test_conflict_names(path, expected):
    assert conflict_name(path, WHEN, "C1") == expected


def test_conflict_name_time_is_utc_and_id_is_made_path_safe():
    name = conflict_name("x.txt", 0, "a/b c")
    assert name == "x.sync-conflict-19700101-000000-a_b_c.txt"


def test_syncignore_patterns():
    rules = IgnoreRules("*.tmp\nbuild/\n/top.log\n!keep.tmp\n# comment\n")
    assert rules.is_ignored("x.tmp") and rules.is_ignored("a/b/x.tmp")
    assert not rules.is_ignored("keep.tmp")
    assert rules.is_ignored("build", is_directory=True)
    assert rules.is_ignored("build/out/x.o") and rules.is_ignored("src/build/x")
    assert rules.is_ignored("top.log") and not rules.is_ignored("sub/top.log")
    assert not rules.is_ignored("src/main.c")


def test_syncignore_itself_and_state_dir():
    rules = IgnoreRules("*\n")
    assert not rules.is_ignored(".syncignore")
    assert IgnoreRules("").is_ignored(".quantum-sync/state.db")
    assert not IgnoreRules("").is_ignored("anything/at/all")


def test_missing_ignore_file_means_no_rules(tmp_path):
    assert not IgnoreRules.from_file(str(tmp_path / "nope")).is_ignored("a")
