"""The REST API against a real server on 127.0.0.1 (contract section 4)."""

import hashlib
import os

import pytest
import pytest_twisted

from tests.support import HttpClient, start_server


@pytest_twisted.async_yield_fixture
async def server(reactor, tmp_path):
    running = await start_server(reactor, tmp_path)
    yield running
    await running.stop()


@pytest_twisted.async_yield_fixture
async def http(reactor):
    client = HttpClient(reactor)
    yield client
    await client.close()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def upload(http, server, path, data, expect=200, **headers):
    return await http.json("POST", f"{server.url}/api/upload", expect=expect,
                           params={"path": path}, data=data,
                           headers={k.replace("_", "-"): v for k, v in headers.items()})


@pytest_twisted.ensureDeferred
async def test_upload_then_list_metadata_download(server, http):
    _, meta = await upload(http, server, "docs/a.txt", b"hello")
    assert meta["path"] == "docs/a.txt"
    assert meta["size"] == 5
    assert meta["hash"] == sha(b"hello")
    assert meta["is_directory"] is False
    assert meta["modified"].endswith("Z")
    with open(os.path.join(server.root, "docs", "a.txt"), "rb") as f:
        assert f.read() == b"hello"

    _, listing = await http.json("GET", f"{server.url}/api/list")
    assert {e["path"]: e["is_directory"] for e in listing} == {"docs": True, "docs/a.txt": False}

    _, again = await http.json("GET", f"{server.url}/api/metadata", params={"path": "docs/a.txt"})
    assert again == meta

    response = await http.get(f"{server.url}/api/download", params={"path": "docs/a.txt"})
    assert response.code == 200
    assert response.headers.getRawHeaders("ETag") == [f'"{sha(b"hello")}"']
    assert await response.content() == b"hello"


@pytest_twisted.ensureDeferred
async def test_changes_journal_upload_update_delete(server, http):
    await upload(http, server, "a.txt", b"one", X_Client_Id="c1")
    await upload(http, server, "a.txt", b"two", X_Client_Id="c1")
    _, result = await http.json("POST", f"{server.url}/api/sync", json={
        "operations": [{"Delete": {"path": "a.txt"}}], "client_id": "c2"})
    assert result["results"] == [{"status": "applied", "seq": 3}]
    assert result["cursor"] == 3
    _, changes = await http.json("GET", f"{server.url}/api/changes")
    kinds = [(c["seq"], list(c["operation"])[0], c["source_client"]) for c in changes["changes"]]
    assert kinds == [(1, "Create", "c1"), (2, "Update", "c1"), (3, "Delete", "c2")]
    assert changes["cursor"] == 3 and changes["has_more"] is False
    _, page = await http.json("GET", f"{server.url}/api/changes", params={"since": "1", "limit": "1"})
    assert [c["seq"] for c in page["changes"]] == [2]
    assert page["has_more"] is True and page["cursor"] == 2


@pytest_twisted.ensureDeferred
async def test_unknown_paths_are_json_404(server, http):
    for path in ("/", "/nope", "/api/nope", "/api"):
        code, body = await http.json("GET", server.url + path, expect=404)
        assert body["error"]["code"] == "NOT_FOUND"
    _, health = await http.json("GET", server.url + "/ws/health")
    assert health["status"] == "ok"
