"""A Delete that names what its sender saw (``if_match``) deletes nothing it did not see:
an edit beats a delete (contract section 7), on a real server over real sockets."""

import hashlib
import os

import pytest
import pytest_twisted

from quantum_sync.errors import SyncError
from quantum_sync.protocol import Delete, parse_operation


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def upload(http, server, path, data, client="c1"):
    return await http.json("POST", f"{server.url}/api/upload", params={"path": path}, data=data,
                           headers={"X-Client-Id": client})


async def sync(http, server, *operations, client="c2"):
    _, result = await http.json("POST", f"{server.url}/api/sync",
                                json={"operations": list(operations), "client_id": client})
    return [(r["status"], r.get("code")) for r in result["results"]]


def test_delete_parses_and_writes_its_precondition():
    digest = sha(b"x")
    assert parse_operation({"Delete": {"path": "a", "if_match": digest}}) == Delete("a", digest)
    assert parse_operation({"Delete": {"path": "d", "if_match": ""}}) == Delete("d", "")
    assert parse_operation({"Delete": {"path": "a"}}) == Delete("a")
    assert Delete("a", digest).to_json() == {"Delete": {"path": "a", "if_match": digest}}
    assert Delete("a").to_json() == {"Delete": {"path": "a"}}
    assert Delete("a", digest).bare == Delete("a")
    for wrong in ("ABC", 5, None, "g" * 64):
        with pytest.raises(SyncError) as caught:
            parse_operation({"Delete": {"path": "a", "if_match": wrong}})
        assert caught.value.code == "INVALID_REQUEST"


@pytest_twisted.ensureDeferred
async def test_a_file_changed_since_it_was_seen_is_not_deleted(server, http):
    await upload(http, server, "a.txt", b"old")
    await upload(http, server, "a.txt", b"new")  # another client's edit the deleter never saw
    assert await sync(http, server, {"Delete": {"path": "a.txt", "if_match": sha(b"old")}}) == [
        ("conflict", "PRECONDITION_FAILED")]
    with open(os.path.join(server.root, "a.txt"), "rb") as f:
        assert f.read() == b"new"
    _, changes = await http.json("GET", f"{server.url}/api/changes")
    assert [list(c["operation"]) for c in changes["changes"]] == [["Create"], ["Update"]]
    # what it saw is deleted, and journalled and broadcast without the precondition
    assert await sync(http, server, {"Delete": {"path": "a.txt", "if_match": sha(b"new")}}) == [
        ("applied", None)]
    assert not os.path.exists(os.path.join(server.root, "a.txt"))
    _, changes = await http.json("GET", f"{server.url}/api/changes", params={"since": "2"})
    assert [c["operation"] for c in changes["changes"]] == [{"Delete": {"path": "a.txt"}}]


@pytest_twisted.ensureDeferred
async def test_a_directory_is_deleted_only_with_no_file_left_below(server, http):
    await upload(http, server, "d/e/new.bin", b"uploaded after the deleter looked")
    await http.json("POST", f"{server.url}/api/sync", json={"operations": [
        {"Create": {"metadata": {"path": "d/empty", "size": 0, "modified": "2024-01-21T12:00:00Z",
                                 "hash": "", "is_directory": True}}}], "client_id": "c1"})
    assert await sync(http, server, {"Delete": {"path": "d", "if_match": ""}},
                      {"Delete": {"path": "d/e/new.bin", "if_match": ""}},
                      {"Delete": {"path": "d/e", "if_match": sha(b"x")}}) == [
        ("conflict", "PRECONDITION_FAILED")] * 3
    with open(os.path.join(server.root, "d", "e", "new.bin"), "rb") as f:
        assert f.read() == b"uploaded after the deleter looked"
    assert await sync(http, server, {"Delete": {"path": "d/empty", "if_match": ""}}) == [("applied", None)]
    os.unlink(os.path.join(server.root, "d", "e", "new.bin"))  # only empty directories below now
    assert await sync(http, server, {"Delete": {"path": "d", "if_match": ""}}) == [("applied", None)]
    assert os.listdir(server.root) == [".quantum-sync"]


@pytest_twisted.ensureDeferred
async def test_a_bare_delete_stays_unconditional(server, http):
    await upload(http, server, "d/a.txt", b"a")
    assert await sync(http, server, {"Delete": {"path": "d"}}) == [("applied", None)]
    assert os.listdir(server.root) == [".quantum-sync"]
