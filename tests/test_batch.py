"""quantum_sync.batch without a reactor: the framing both ways, every whole-request
refusal of an upload batch and of a download request, hostile paths refused item by
item, and the client's checks of the server's answers (tests/test_batch_api.py sends
the same bodies to a real server)."""

import json
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quantum_sync import batch, paths
from quantum_sync.batch import ItemError
from quantum_sync.errors import SyncError
from quantum_sync.protocol import FileMetadata
from tests.hostile import json_values
from tests.hostile import paths as hostile_paths
from tests.test_api import sha
from tests.test_api_paths import ATTACKS


def entry(path, data: bytes, **extra) -> dict:
    """One file of an upload manifest for ``data``."""
    return {"path": path, "size": len(data), "sha256": sha(data), **extra}


def body(files, contents=()) -> bytes:
    return batch.encode({"files": files}, list(contents))


def meta(path, data: bytes = b"", directory: bool = False) -> FileMetadata:
    if directory:
        return FileMetadata.directory(path, 1_700_000_000.5)
    return FileMetadata(path, len(data), 1_700_000_000.25, sha(data))


def invalid(call, *args) -> SyncError:
    with pytest.raises(SyncError) as refused:
        call(*args)
    assert refused.value.code == "INVALID_REQUEST", refused.value
    return refused.value


# -- framing ---------------------------------------------------------------------------


def test_encode_puts_one_line_of_json_before_the_contents_and_split_takes_it_apart():
    manifest = {"files": [{"path": "line\nbreak\r", "note": "caf\u00e9 \u2028"}], "n": 1}
    contents = [b"first\n", b"", b"\n\nthird", bytes(range(256))]
    encoded = batch.encode(manifest, contents)
    line, _, rest = encoded.partition(b"\n")
    assert json.loads(line) == manifest and rest == b"".join(contents)
    parsed, after = batch.split(encoded)
    assert parsed == manifest and isinstance(after, memoryview) and bytes(after) == b"".join(contents)
    assert batch.split(bytearray(b'{"a": 1}\n')) == ({"a": 1}, memoryview(b""))
    assert bytes(batch.split(b'{"a": 1}\r\nxyz')[1]) == b"xyz"  # a CRLF line still ends there


@settings(max_examples=200, deadline=None)
@given(manifest=json_values, contents=st.lists(st.binary(max_size=40), max_size=6))
def test_framing_round_trips_any_manifest_and_contents(manifest, contents):
    encoded = batch.encode(manifest, contents)
    parsed, after = batch.split(encoded)
    assert parsed == manifest and bytes(after) == b"".join(contents)
    assert encoded.count(b"\n") >= 1 and b"\n" not in encoded[:encoded.index(b"\n")]


@pytest.mark.parametrize("framed", [
    b"", b'{"files": []}', b"no newline at all",  # no manifest line
    b"\n", b"not json\n", b"{\n\"files\": []}\n", b"\xff\xfe\n", b'{"files": [}\nx',
    b"[" * 100_000 + b"\n",  # nested past the parser's recursion limit
])
def test_a_body_without_a_line_of_json_first_is_refused(framed):
    invalid(batch.split, framed)
    invalid(batch.parse_upload, framed)
    invalid(batch.parse_download_answer, framed, ["a"])


# -- upload batches (client → server) --------------------------------------------------


def upload_files():
    return [("a.txt", b"alpha", None), ("dir/b.bin", bytes(range(256)), sha(b"old")),
            ("empty", b"", None), ("caf\u00e9/\u00e9.txt", b"\n\n", sha(b"x"))]


def test_an_upload_batch_is_parsed_into_its_files_in_order():
    files = upload_files()
    manifest = batch.upload_manifest([(p, len(d), sha(d), m) for p, d, m in files])
    assert manifest["files"][0] == {"path": "a.txt", "size": 5, "sha256": sha(b"alpha"), "if_none_match": "*"}
    assert manifest["files"][1] == {"path": "dir/b.bin", "size": 256, "sha256": sha(bytes(range(256))),
                                    "if_match": sha(b"old")}
    items, contents = batch.parse_upload(batch.encode(manifest, [d for _, d, _ in files]))
    assert [(i.path, i.size, i.sha256, i.if_match, i.if_none_match, i.error) for i in items] == [
        (p, len(d), sha(d), m, None if m else "*", None) for p, d, m in files]
    assert [i.content(contents) for i in items] == [d for _, d, _ in files]
    assert [i.offset for i in items] == [0, 5, 261, 261]


def test_paths_are_normalized_and_both_preconditions_are_optional():
    items, _ = batch.parse_upload(body([entry("cafe\u0301.txt", b"x"),
                                        entry("b", b"", if_match='"h"', if_none_match="*"),
                                        entry("c", b"", if_none_match=None, if_match=None)], [b"x"]))
    assert items[0].path == "caf\u00e9.txt" and items[0].if_match is None and items[0].if_none_match is None
    assert (items[1].if_match, items[1].if_none_match) == ('"h"', "*")
    assert (items[2].if_match, items[2].if_none_match) == (None, None)


@st.composite
def upload_batches(draw):
    segment = st.text(alphabet=string.ascii_letters + string.digits + "-_. \u00e9\u4e2d", min_size=1, max_size=8)
    path = st.lists(segment, min_size=1, max_size=3).map("/".join).filter(paths.is_valid)
    return draw(st.lists(st.tuples(path, st.binary(max_size=64), st.one_of(st.none(), st.just("0" * 64))),
                         min_size=1, max_size=12))


@settings(max_examples=150, deadline=None)
@given(files=upload_batches())
def test_upload_batches_round_trip(files):
    encoded = batch.encode(batch.upload_manifest([(p, len(d), sha(d), m) for p, d, m in files]),
                           [d for _, d, _ in files])
    items, contents = batch.parse_upload(encoded)
    assert [(i.path, i.content(contents), i.sha256, i.if_match, i.if_none_match, i.error) for i in items] == [
        (p, d, sha(d), m, None if m else "*", None) for p, d, m in files]


def _thousand_and_one():
    return body([entry(f"f{i}", b"") for i in range(batch.MAX_FILES + 1)])


#: Upload batch bodies that are refused whole (INVALID_REQUEST), each naming only paths
#: ``never-*`` (tests/test_batch_api.py checks that none of them is ever created).
INVALID_UPLOAD_BODIES = {
    "no manifest line": b'{"files": [{"path": "never-1", "size": 0, "sha256": "' + sha(b"").encode() + b'"}]}',
    "empty body": b"",
    "manifest not JSON": b"{'files': []}\n",
    "manifest not UTF-8": b'{"files": "\xff"}\n',
    "manifest a list": batch.encode([entry("never-2", b"x")], [b"x"]),
    "manifest without files": batch.encode({"paths": []}, []),
    "files not a list": batch.encode({"files": {"never-3": 1}}, []),
    "no files": body([]),
    "more than 1000 files": _thousand_and_one(),
    "a file not an object": batch.encode({"files": ["never-4"]}, []),
    "a file without sha256": batch.encode({"files": [{"path": "never-5", "size": 1}]}, [b"x"]),
    "a file without size": batch.encode({"files": [{"path": "never-6", "sha256": sha(b"x")}]}, [b"x"]),
    "a file without path": batch.encode({"files": [{"size": 1, "sha256": sha(b"x")}]}, [b"x"]),
    "an unknown field": body([entry("never-7", b"x", mode=0o755)], [b"x"]),
    "a negative size": body([dict(entry("never-8", b""), size=-1)]),
    "a size as text": body([dict(entry("never-9", b"x"), size="1")], [b"x"]),
    "a float size": body([dict(entry("never-10", b"x"), size=1.0)], [b"x"]),
    "a boolean size": body([dict(entry("never-11", b"x"), size=True)], [b"x"]),
    "a null size": body([dict(entry("never-12", b""), size=None)]),
    "an uppercase sha256": body([dict(entry("never-13", b"x"), sha256=sha(b"x").upper())], [b"x"]),
    "a short sha256": body([dict(entry("never-14", b"x"), sha256=sha(b"x")[:63])], [b"x"]),
    "an empty sha256": body([dict(entry("never-15", b"x"), sha256="")], [b"x"]),
    "a sha256 not text": body([dict(entry("never-16", b"x"), sha256=7)], [b"x"]),
    "if_match not text": body([entry("never-17", b"x", if_match=5)], [b"x"]),
    "if_none_match not *": body([entry("never-18", b"x", if_none_match="etag")], [b"x"]),
    "contents shorter than the sizes": body([entry("never-19", b"abc")], [b"ab"]),
    "contents longer than the sizes": body([entry("never-20", b"a")], [b"ab"]),
    "sizes of two files not adding up": body([entry("never-21", b"ab"), entry("never-22", b"c")], [b"ab"]),
    "a huge size": body([dict(entry("never-23", b"x"), size=2**70)], [b"x"]),
    "a good file before a bad one": body([entry("never-24", b"ok"), dict(entry("never-25", b"x"), size=-5)],
                                         [b"ok", b"x"]),
}


@pytest.mark.parametrize("name", list(INVALID_UPLOAD_BODIES))
def test_a_malformed_upload_batch_is_refused_whole(name):
    invalid(batch.parse_upload, INVALID_UPLOAD_BODIES[name])


def test_one_to_a_thousand_files_make_a_batch():
    items, _ = batch.parse_upload(body([entry(f"f{i}", b"") for i in range(batch.MAX_FILES)]))
    assert len(items) == batch.MAX_FILES and items[-1].path == "f999"
    assert len(batch.parse_upload(body([entry("one", b"1")], [b"1"]))[0]) == 1


def _check_items(raw_paths, contents):
    """Each raw path is refused on its own exactly when paths.normalize refuses it;
    the files around it keep their bytes."""
    files = [entry("before.txt", b"before")]
    files += [{"path": raw, "size": len(c), "sha256": sha(c)} for raw, c in zip(raw_paths, contents)]
    files.append(entry("after.txt", b"after"))
    items, data = batch.parse_upload(body(files, [b"before", *contents, b"after"]))
    assert [items[0].path, items[-1].path] == ["before.txt", "after.txt"]
    assert (items[0].content(data), items[-1].content(data)) == (b"before", b"after")
    for item, raw, content in zip(items[1:-1], raw_paths, contents):
        assert item.content(data) == content
        try:
            expected = paths.normalize(raw)
        except SyncError:
            assert item.error is not None and item.error.code == "INVALID_PATH", raw
            assert item.path == raw  # as received, for the security alert
        else:
            assert item.error is None and item.path == expected, raw


def test_hostile_paths_refuse_only_their_own_items():
    _check_items(ATTACKS, [b"%d" % i for i in range(len(ATTACKS))])
    refused = [p for p in ATTACKS if _normalizes(p) is None]
    assert "../etc/passwd" in refused and ".quantum-sync/tmp/x" in refused and "" in refused
    # not a string at all: that item's path is refused, not the batch
    _check_items([5, None, ["a"], {"a": "b"}, True, 1.5], [b"", b"1", b"", b"22", b"", b"3"])


def _normalizes(path):
    try:
        return paths.normalize(path)
    except SyncError:
        return None


@settings(max_examples=200, deadline=None)
@given(raw=st.lists(hostile_paths, min_size=1, max_size=4), data=st.data())
def test_any_path_refuses_at_most_its_own_item(raw, data):
    _check_items(raw, [data.draw(st.binary(max_size=8)) for _ in raw])


# -- the server's answer to an upload batch (checked by the client) --------------------


def test_an_upload_answer_gives_each_file_its_metadata_or_its_error():
    answer = {"results": [
        {"status": 200, "metadata": meta("a.txt", b"a").to_json()},
        batch.result_json(SyncError("PRECONDITION_FAILED", "a.txt changed")),
        {"status": 507, "error": {"code": "INSUFFICIENT_STORAGE", "message": "full"}},
        {"status": 418, "error": {"code": "TEAPOT", "message": 7}},  # unknown code, odd message
    ], "cursor": 9}
    results = batch.parse_upload_answer(answer, ["a.txt", "b.txt", "c.txt", "d.txt"])
    assert results == [meta("a.txt", b"a"), ItemError(412, "PRECONDITION_FAILED", "a.txt changed"),
                       ItemError(507, "INSUFFICIENT_STORAGE", "full"), ItemError(418, "UNKNOWN", "")]
    assert ItemError.of(SyncError("HASH_MISMATCH", "m")).to_json() == {
        "status": 422, "error": {"code": "HASH_MISMATCH", "message": "m"}}
    assert batch.result_json(meta("x", b"x")) == {"status": 200, "metadata": meta("x", b"x").to_json()}


def _ok(path, data=b"x"):
    return {"status": 200, "metadata": meta(path, data).to_json()}


@pytest.mark.parametrize("answer", [
    None, [], "results", {}, {"results": None}, {"results": {"0": _ok("a")}},
    {"results": []},  # shorter than the batch
    {"results": [_ok("a")]},
    {"results": [_ok("a"), _ok("b"), _ok("c")]},  # longer
    {"results": [_ok("a"), _ok("c")]},  # names another path
    {"results": [_ok("b"), _ok("a")]},  # out of order
    {"results": [_ok("a"), "ok"]},
    {"results": [_ok("a"), {"status": 200}]},
    {"results": [_ok("a"), {"status": 200, "metadata": dict(_ok("b")["metadata"], hash="nope")}]},
    {"results": [_ok("a"), {"status": 201, "metadata": _ok("b")["metadata"]}]},
    {"results": [_ok("a"), {"status": 302, "error": {"code": "NOT_FOUND", "message": ""}}]},
    {"results": [_ok("a"), {"status": 600, "error": {"code": "NOT_FOUND", "message": ""}}]},
    {"results": [_ok("a"), {"status": True, "error": {"code": "NOT_FOUND", "message": ""}}]},
    {"results": [_ok("a"), {"status": "404", "error": {"code": "NOT_FOUND", "message": ""}}]},
    {"results": [_ok("a"), {"status": 404}]},
    {"results": [_ok("a"), {"status": 404, "error": "NOT_FOUND"}]},
])
def test_a_malformed_upload_answer_is_refused(answer):
    invalid(batch.parse_upload_answer, answer, ["a", "b"])


def test_an_upload_answer_naming_a_hostile_path_is_refused():
    for hostile in ("../etc/passwd", "/etc/passwd", ".quantum-sync/x", "a//b"):
        answer = {"results": [{"status": 200, "metadata": dict(_ok("a")["metadata"], path=hostile)}]}
        with pytest.raises(SyncError) as refused:
            batch.parse_upload_answer(answer, ["a"])
        assert refused.value.code in ("INVALID_PATH", "INVALID_REQUEST")


# -- download batches (server → client) ------------------------------------------------


def test_a_download_request_is_its_paths_as_received():
    assert batch.parse_download_request({"paths": ["a", "../b", 5, "a"]}) == ["a", "../b", 5, "a"]
    assert len(batch.parse_download_request({"paths": ["x"] * batch.MAX_FILES})) == batch.MAX_FILES


#: Download request bodies (JSON) refused whole with INVALID_REQUEST.
INVALID_DOWNLOAD_REQUESTS = {
    "not an object": ["a"],
    "null": None,
    "no paths": {},
    "paths not a list": {"paths": "a"},
    "paths an object": {"paths": {"a": 1}},
    "no paths listed": {"paths": []},
    "more than 1000 paths": {"paths": ["a"] * (batch.MAX_FILES + 1)},
    "an unknown field": {"paths": ["a"], "client_id": "c"},
}


@pytest.mark.parametrize("name", list(INVALID_DOWNLOAD_REQUESTS))
def test_a_malformed_download_request_is_refused(name):
    invalid(batch.parse_download_request, INVALID_DOWNLOAD_REQUESTS[name])


def test_a_download_answer_carries_each_file_after_the_manifest():
    one, two = meta("a.txt", b"alpha"), meta("d/b.bin", b"\n" * 3)
    outcomes = [(one, b"alpha"), SyncError("NOT_FOUND", "gone"), (two, b"\n" * 3),
                SyncError("TOO_LARGE", "big"), (meta("empty"), b"")]
    encoded = batch.download_answer(outcomes)
    manifest, contents = batch.split(encoded)
    assert manifest["files"][1] == {"status": 404, "error": {"code": "NOT_FOUND", "message": "gone"}}
    assert bytes(contents) == b"alpha\n\n\n"
    parsed = batch.parse_download_answer(encoded, ["a.txt", "gone", "d/b.bin", "big", "empty"])
    assert parsed == [(one, b"alpha"), ItemError(404, "NOT_FOUND", "gone"), (two, b"\n\n\n"),
                      ItemError(413, "TOO_LARGE", "big"), (meta("empty"), b"")]


@st.composite
def download_outcomes(draw):
    outcomes = []
    for position in range(draw(st.integers(min_value=1, max_value=10))):
        if draw(st.booleans()):
            outcomes.append(SyncError(draw(st.sampled_from(["NOT_FOUND", "INVALID_PATH", "TOO_LARGE"])),
                                      draw(st.text(max_size=10))))
        else:
            data = draw(st.binary(max_size=50))
            outcomes.append((meta(f"f{position}", data), data))
    return outcomes


@settings(max_examples=150, deadline=None)
@given(outcomes=download_outcomes())
def test_download_answers_round_trip(outcomes):
    parsed = batch.parse_download_answer(batch.download_answer(outcomes), [f"f{i}" for i in range(len(outcomes))])
    assert parsed == [ItemError.of(o) if isinstance(o, SyncError) else o for o in outcomes]


def _answer(files, contents=b""):
    return batch.encode({"files": files}, [contents])


A, B = meta("a", b"aa"), meta("b", b"bbb")
GOOD = [batch.result_json(A), batch.result_json(B)]


@pytest.mark.parametrize("answer", [
    _answer(GOOD, b"aabbb")[:-1],  # shorter than its manifest
    _answer(GOOD, b"aabb"),
    _answer(GOOD, b""),
    _answer(GOOD, b"aabbb!"),  # longer
    _answer([GOOD[0], batch.result_json(SyncError("NOT_FOUND", "x"))], b"aabbb"),  # bytes for an error
    _answer(GOOD[:1], b"aa"),  # fewer entries than paths
    _answer(GOOD + [batch.result_json(meta("c", b""))], b"aabbb"),  # more
    _answer([GOOD[1], GOOD[0]], b"bbbaa"),  # out of order
    _answer([GOOD[0], batch.result_json(meta("c", b"bbb"))], b"aabbb"),  # another path
    _answer([GOOD[0], batch.result_json(meta("b", directory=True))], b"aa"),  # a directory
    _answer([GOOD[0], {"status": 200, "metadata": dict(B.to_json(), size=-3)}], b"aa"),
    _answer([GOOD[0], {"status": 200, "metadata": dict(B.to_json(), size="3")}], b"aabbb"),
    _answer([GOOD[0], {"status": 404}], b"aa"),
    _answer([GOOD[0], {"status": 204, "error": {"code": "NOT_FOUND", "message": ""}}], b"aa"),
    _answer([GOOD[0], None], b"aa"),
    batch.encode({"files": "all"}, [b"aabbb"]),
    batch.encode({"results": GOOD}, [b"aabbb"]),
    batch.encode(GOOD, [b"aabbb"]),
    b'{"files": [' + json.dumps(GOOD[0]).encode() + b",\n" + json.dumps(GOOD[1]).encode() + b"]}\naabbb",
])
def test_a_malformed_download_answer_is_refused(answer):
    assert batch.parse_download_answer(_answer(GOOD, b"aabbb"), ["a", "b"]) == [(A, b"aa"), (B, b"bbb")]
    invalid(batch.parse_download_answer, answer, ["a", "b"])


def test_a_download_answer_is_not_checked_against_hashes_here():
    """Bytes that do not hash to their metadata pass: the client checks them against the
    hash it expects (DownloadCorrupt), which may differ from what the server says."""
    encoded = _answer([batch.result_json(A)], b"zz")
    assert batch.parse_download_answer(encoded, ["a"]) == [(A, b"zz")]
