"""Several server blocks with different file_sync handlers in one process: each has its
own root, index, journal and hub (embedded, and one of them a cluster node)."""

import os

import pytest_twisted

from test_ws_support import connect
from tests.support import LOCAL_LISTEN, HttpClient, start_service


def _block(root, **handler):
    return {"listen": [LOCAL_LISTEN], "routes": [{"handle": [
        {"handler": "file_sync", "root": str(root), "enable_upload": True, **handler}]}]}


async def _two_roots(reactor, tmp_path, second):
    document = {"apps": {"http": {"servers": {
        "photos": _block(tmp_path / "photos"), "docs": _block(tmp_path / "docs", **second)}}}}
    return await start_service(reactor, document, str(tmp_path))


async def _check_apart(reactor, tmp_path, service, ports):
    photos, docs = (f"http://127.0.0.1:{port}" for port in ports)
    http = HttpClient(reactor)
    watcher = await connect(reactor, docs.replace("http", "ws") + "/ws")
    try:
        ack = await watcher.request({"type": "Subscribe", "client_id": "w"})
        await http.json("PUT", photos + "/api/upload", params={"path": "cat.jpg"}, data=b"meow")
        await http.json("PUT", docs + "/api/upload", params={"path": "cv.txt"}, data=b"cv")
        assert (tmp_path / "photos" / "cat.jpg").read_bytes() == b"meow"
        assert not os.path.exists(tmp_path / "docs" / "cat.jpg")
        _, listed = await http.json("GET", docs + "/api/list")
        assert [f["path"] for f in listed] == ["cv.txt"]
        journals = [(await http.json("GET", url + "/api/changes"))[1] for url in (photos, docs)]
        assert [[c["seq"] for c in j["changes"]] for j in journals] == [[1], [1]]
        assert journals[0]["journal_id"] != journals[1]["journal_id"]
        message = await watcher.next()  # the docs hub hears its own root's change only
        assert message["type"] == "FileOperation" and message["seq"] == 1
        assert message["journal_id"] == ack["journal_id"] == journals[1]["journal_id"]
        assert "cv.txt" in str(message["operation"])
    finally:
        watcher.transport.abortConnection()
        await http.close()
        await service.stopService()


@pytest_twisted.ensureDeferred
async def test_two_roots_embedded(reactor, tmp_path):
    service, ports = await _two_roots(reactor, tmp_path, {})
    assert len(service.servers) == 2
    await _check_apart(reactor, tmp_path, service, ports)


@pytest_twisted.ensureDeferred
async def test_an_embedded_root_beside_a_cluster_root(reactor, tmp_path, cluster_block):
    service, ports = await _two_roots(reactor, tmp_path, {"cluster": cluster_block("docs-1")})
    assert service.servers[0].node is None and service.servers[1].node.node_id == "docs-1"
    await _check_apart(reactor, tmp_path, service, ports)
