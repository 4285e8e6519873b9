"""Data shapes (contract section 3): parsing, validation and serialisation, pure."""

import json
from datetime import datetime, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quantum_sync.errors import SyncError
from quantum_sync.protocol import (
    Change, Create, Delete, FileMetadata, Move, Update, UploadStarted, format_time, operation_text,
    parse_change, parse_metadata, parse_operation, parse_time, parse_upload_started,
)

HASH = "a" * 64
META = {"path": "docs/a.txt", "size": 1024, "modified": "2024-01-21T12:00:00Z",
        "hash": HASH, "is_directory": False}


def test_metadata_round_trip():
    metadata = parse_metadata(META)
    assert metadata == FileMetadata("docs/a.txt", 1024, 1705838400.0, HASH, False)
    assert metadata.to_json() == META
    directory = FileMetadata.directory("docs", 1705838400.5)
    assert directory.to_json() == {"path": "docs", "size": 0, "modified": "2024-01-21T12:00:00.500000Z",
                                   "hash": "", "is_directory": True}


@pytest.mark.parametrize("changes,code", [
    ({"path": "../x"}, "INVALID_PATH"),
    ({"path": "/x"}, "INVALID_PATH"),
    ({"path": 5}, "INVALID_REQUEST"),
    ({"size": -1}, "INVALID_REQUEST"),
    ({"size": True}, "INVALID_REQUEST"),
    ({"size": 1.5}, "INVALID_REQUEST"),
    ({"hash": "A" * 64}, "INVALID_REQUEST"),
    ({"hash": ""}, "INVALID_REQUEST"),
    ({"modified": "yesterday"}, "INVALID_REQUEST"),
    ({"modified": 12}, "INVALID_REQUEST"),
    ({"is_directory": "no"}, "INVALID_REQUEST"),
    ({"is_directory": True}, "INVALID_REQUEST"),  # a directory has hash ""
])
def test_metadata_errors(changes, code):
    with pytest.raises(SyncError) as info:
        parse_metadata(dict(META, **changes))
    assert info.value.code == code


def test_metadata_missing_field():
    for key in META:
        broken = dict(META)
        del broken[key]
        with pytest.raises(SyncError):
            parse_metadata(broken)


def test_operations_are_externally_tagged():
    cases = [
        ({"Create": {"metadata": META}}, Create),
        ({"Update": {"metadata": META}}, Update),
        ({"Delete": {"path": "a.txt"}}, Delete),
        ({"Move": {"from": "a.txt", "to": "b/c.txt"}}, Move),
    ]
    for document, kind in cases:
        operation = parse_operation(document)
        assert type(operation) is kind
        assert operation.to_json() == document
    assert parse_operation({"Move": {"from": "a", "to": "b"}}).paths == ("a", "b")


@pytest.mark.parametrize("document", [
    None, [], {}, {"Delete": {"path": "a"}, "Move": {"from": "a", "to": "b"}}, {"Rename": {}},
    {"Delete": "a"}, {"Delete": {}}, {"Move": {"from": "a"}}, {"Create": {"metadata": "x"}},
    {"delete": {"path": "a"}},
])
def test_bad_operations(document):
    with pytest.raises(SyncError) as info:
        parse_operation(document)
    assert info.value.code == "INVALID_REQUEST"


def test_operation_paths_are_validated():
    for document in ({"Delete": {"path": "../a"}}, {"Move": {"from": "a", "to": ".quantum-sync/x"}}):
        with pytest.raises(SyncError) as info:
            parse_operation(document)
        assert info.value.code == "INVALID_PATH"


def test_change_round_trip():
    change = Change(7, Delete("a"), "client-1", "2024-01-21T12:00:00Z")
    assert parse_change(change.to_json()) == change
    for broken in ({"seq": 0, "operation": {"Delete": {"path": "a"}}},
                   {"seq": "1", "operation": {"Delete": {"path": "a"}}},
                   {"seq": 1, "operation": {"Delete": {"path": "a"}}, "source_client": 5}):
        with pytest.raises(SyncError):
            parse_change(broken)


def test_time_format():
    assert format_time(0) == "1970-01-01T00:00:00Z"
    assert parse_time("2024-01-21T12:00:00Z") == 1705838400.0
    assert parse_time("2024-01-21T13:00:00+01:00") == 1705838400.0
    with pytest.raises(SyncError):
        parse_time("x" * 100)


_names = st.text(alphabet=st.characters(whitelist_categories=("Ll", "Lu", "Nd")), min_size=1, max_size=8)
_paths = st.lists(_names, min_size=1, max_size=4).map("/".join)


@given(path=_paths, size=st.integers(0, 2**40), seconds=st.integers(0, 2**32),
       micros=st.integers(0, 999999), digest=st.binary(min_size=32, max_size=32))
def test_metadata_json_round_trip(path, size, seconds, micros, digest):
    from quantum_sync import paths as path_rules

    path = path_rules.normalize(path)
    metadata = FileMetadata(path, size, seconds + micros / 1e6, digest.hex(), False)
    parsed = parse_metadata(metadata.to_json())
    assert parsed.to_json() == metadata.to_json()
    assert abs(parsed.modified - metadata.modified) < 1e-5


@settings(max_examples=500)
@given(kind=st.sampled_from([Create, Update]), path=st.text(min_size=1, max_size=12),
       size=st.integers(0, 2**63), epoch=st.floats(min_value=0, max_value=4e10, allow_nan=False),
       digest=st.one_of(st.just(""), st.binary(min_size=32, max_size=32).map(bytes.hex), st.text(max_size=4)),
       is_directory=st.booleans())
def test_operation_text_is_json_dumps_to_the_byte(kind, path, size, epoch, digest, is_directory):
    # written by a template for speed: any text at all (quotes, controls, non-ASCII, lone
    # surrogates) comes out exactly as the compact json.dumps the journal always held
    operation = kind(FileMetadata(path, size, epoch, digest, is_directory))
    assert operation_text(operation) == json.dumps(operation.to_json(), separators=(",", ":"))
    for other in (Delete(path), Move(path, path + "x")):
        assert operation_text(other) == json.dumps(other.to_json(), separators=(",", ":"))


@given(st.one_of(st.floats(min_value=-1e10, max_value=4e10, allow_nan=False),
                 st.integers(min_value=0, max_value=4 * 10**15).map(lambda us: us / 1e6)))
def test_format_time_is_what_datetime_formats(epoch):
    """The cached formatting of whole seconds gives datetime's text, its rounding of
    microseconds included."""
    moment = datetime.fromtimestamp(epoch, tz=timezone.utc)
    pattern = "%Y-%m-%dT%H:%M:%S.%fZ" if moment.microsecond else "%Y-%m-%dT%H:%M:%SZ"
    assert format_time(epoch) == moment.strftime(pattern)


# -- upload_started (the relay extension) ------------------------------------------------

UPLOAD_STARTED = {"path": "docs/big.bin", "size": 9 << 20, "hash": HASH, "source_client": "laptop"}


def test_upload_started_parses():
    assert parse_upload_started(UPLOAD_STARTED) == UploadStarted("docs/big.bin", HASH, 9 << 20, "laptop")
    without_source = {k: v for k, v in UPLOAD_STARTED.items() if k != "source_client"}
    assert parse_upload_started(without_source) == UploadStarted("docs/big.bin", HASH, 9 << 20, "")
    # the path in canonical (NFC) form, sizes at both ends of the range, unknown fields ignored
    decomposed = dict(UPLOAD_STARTED, path="caf\u0065\u0301.bin", size=0, extra=1)
    assert parse_upload_started(decomposed) == UploadStarted("caf\u00e9.bin", HASH, 0, "laptop")
    assert parse_upload_started(dict(UPLOAD_STARTED, size=2**63)).size == 2**63


@pytest.mark.parametrize("changes,code", [
    ({"path": "../x"}, "INVALID_PATH"),
    ({"path": "/x"}, "INVALID_PATH"),
    ({"path": ""}, "INVALID_PATH"),
    ({"path": ".quantum-sync/x"}, "INVALID_PATH"),
    ({"path": 5}, "INVALID_REQUEST"),
    ({"path": None}, "INVALID_REQUEST"),
    ({"hash": "A" * 64}, "INVALID_REQUEST"),
    ({"hash": "a" * 63}, "INVALID_REQUEST"),
    ({"hash": ""}, "INVALID_REQUEST"),
    ({"hash": 7}, "INVALID_REQUEST"),
    ({"size": -1}, "INVALID_REQUEST"),
    ({"size": 2**63 + 1}, "INVALID_REQUEST"),
    ({"size": True}, "INVALID_REQUEST"),
    ({"size": 1.5}, "INVALID_REQUEST"),
    ({"size": "9"}, "INVALID_REQUEST"),
    ({"source_client": 5}, "INVALID_REQUEST"),
    ({"source_client": None}, "INVALID_REQUEST"),
])
def test_upload_started_errors(changes, code):
    with pytest.raises(SyncError) as info:
        parse_upload_started(dict(UPLOAD_STARTED, **changes))
    assert info.value.code == code


@pytest.mark.parametrize("missing", ["path", "hash", "size"])
def test_upload_started_missing_field(missing):
    with pytest.raises(SyncError) as info:
        parse_upload_started({k: v for k, v in UPLOAD_STARTED.items() if k != missing})
    assert info.value.code == "INVALID_REQUEST" and missing in info.value.message


@pytest.mark.parametrize("data", [None, [], "x", 5, [UPLOAD_STARTED]])
def test_upload_started_data_must_be_an_object(data):
    with pytest.raises(SyncError) as info:
        parse_upload_started(data)
    assert info.value.code == "INVALID_REQUEST"
