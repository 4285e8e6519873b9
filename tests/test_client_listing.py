"""The server's listing decoded item by item (so that a large one never holds the reactor):
the same values as ``json.loads`` for any JSON array, and anything else refused."""

import json

import pytest
from hypothesis import given, strategies as st

from quantum_sync.client.jsonarray import json_array_items
from quantum_sync.client.transfer import ServerUnavailable, _parse_listing

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@given(st.lists(JSON, max_size=8), st.sampled_from([None, 0, 2]))
def test_any_json_array_decodes_as_json_loads_does(items, indent):
    text = json.dumps(items, indent=indent)
    assert json_array_items(text) == json.loads(text)


@pytest.mark.parametrize("text", ["", "{}", "1", "[", "[1,", "[1,]", "[1 2]", "[1]x", "[1]]"])
def test_anything_but_one_json_array_is_refused(text):
    with pytest.raises(ValueError):
        json_array_items(text)
    with pytest.raises(ServerUnavailable):
        _parse_listing(text.encode())


def test_a_listing_keeps_the_good_entries_and_names_the_bad_ones():
    good = {"path": "a.txt", "size": 1, "modified": "2024-01-21T12:00:00Z", "hash": "a" * 64, "is_directory": False}
    entries, problems = _parse_listing(json.dumps([good, dict(good, path="../x")]).encode())
    assert [e.path for e in entries] == ["a.txt"] and len(problems) == 1
    with pytest.raises(ServerUnavailable):
        _parse_listing(b"\xff[]")
