"""The REST API against a real server on 127.0.0.1 (contract section 4)."""

import hashlib
import io
import json
import os

import pytest_twisted
from twisted.internet.defer import Deferred, succeed
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

from tests.support import WAIT_TIMEOUT, start_server


@implementer(IBodyProducer)
class UnsizedBody:
    """A request body of unknown length: treq sends it chunked."""

    length = UNKNOWN_LENGTH

    def __init__(self, data: bytes):
        self._stream = io.BytesIO(data)

    def startProducing(self, consumer):
        while chunk := self._stream.read(4096):
            consumer.write(chunk)
        return succeed(None)

    def stopProducing(self):
        pass

    def pauseProducing(self):
        pass

    def resumeProducing(self):
        pass


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
    assert response.headers.getRawHeaders("Content-Type") == ["text/plain"]  # served from memory
    assert await response.content() == b"hello"


@pytest_twisted.ensureDeferred
async def test_downloads_of_just_uploaded_files_follow_the_disk(server, http):
    """A small file just uploaded is served from memory only while the name still holds
    that file: replaced, rewritten or removed by another program, the disk answers."""
    url = f"{server.url}/api/download"

    async def fetch(path, expect=200):
        response = await http.get(url, params={"path": path})
        body = await response.content()
        assert response.code == expect, body
        return response.headers.getRawHeaders("ETag"), body

    await upload(http, server, "r.bin", b"uploaded")
    assert "r.bin" in {p for p in server.service.operations.recent._entries}
    assert await fetch("r.bin") == ([f'"{sha(b"uploaded")}"'], b"uploaded")
    name = os.path.join(server.root, "r.bin")
    with open(name + ".new", "wb") as f:
        f.write(b"replaced")  # same size, another inode
    os.replace(name + ".new", name)
    assert await fetch("r.bin") == ([f'"{sha(b"replaced")}"'], b"replaced")
    with open(name, "ab") as f:
        f.write(b" and grown")  # same inode, written in place
    assert await fetch("r.bin") == ([f'"{sha(b"replaced and grown")}"'], b"replaced and grown")
    await upload(http, server, "r.bin", b"again")
    os.unlink(name)
    await fetch("r.bin", expect=404)


def test_recent_bodies_keep_a_bounded_amount():
    from quantum_sync.protocol import FileMetadata
    from quantum_sync.server.recentbodies import RecentBodies

    recent = RecentBodies(limit=10)
    st = os.stat(__file__)
    key = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    for name in ("a", "b", "c"):
        recent.add(FileMetadata(name, st.st_size, 0.0, "h", False), key, b"1234")
    assert recent.get("a", st) is None  # evicted: 12 bytes > 10
    assert recent.get("c", st)[1] == b"1234" and recent.get("b", st) is not None
    assert recent.get("c", None) is None and recent.get("c", os.stat(os.path.dirname(__file__))) is None


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
    for path in ("/nope", "/api/nope", "/api", "/ui/nope.js"):  # ("/" is the web UI)
        code, body = await http.json("GET", server.url + path, expect=404)
        assert body["error"]["code"] == "NOT_FOUND"
    _, health = await http.json("GET", server.url + "/ws/health")
    assert health["status"] == "ok"


@pytest_twisted.ensureDeferred
async def test_download_range_head_and_etag(server, http):
    data = bytes(range(256)) * 1000
    await upload(http, server, "bin/data.bin", data)
    url = f"{server.url}/api/download"
    response = await http.get(url, params={"path": "bin/data.bin"}, headers={"Range": "bytes=10-19"})
    assert response.code == 206
    assert response.headers.getRawHeaders("Content-Range") == [f"bytes 10-19/{len(data)}"]
    assert await response.content() == data[10:20]
    response = await http.get(url, params={"path": "bin/data.bin"}, headers={"Range": "bytes=-5"})
    assert response.code == 206 and await response.content() == data[-5:]
    response = await http.head(url, params={"path": "bin/data.bin"})
    assert response.code == 200
    assert response.headers.getRawHeaders("Content-Length") == [str(len(data))]
    assert response.headers.getRawHeaders("ETag") == [f'"{sha(data)}"']
    assert await response.content() == b""
    response = await http.get(url, params={"path": "bin/data.bin"},
                              headers={"If-None-Match": f'"{sha(data)}"'})
    assert response.code == 304
    await response.content()
    response = await http.get(url, params={"path": "bin/data.bin"},
                              headers={"Range": f"bytes={len(data) + 10}-"})
    assert response.code == 416
    await response.content()
    response = await http.get(url, params={"path": "bin/data.bin"},
                              headers={"Range": "bytes=0-1,4-5"})
    assert response.code == 206
    assert b"multipart/byteranges" in response.headers.getRawHeaders(b"Content-Type")[0]
    await response.content()
    # not understood (undecodable, absurd, or too many ranges): ignored, the whole file
    for ranges in (b"bytes=0-1,\xff", b"bytes=5-2", b"items=0-1", b"bytes=" + b"0-0," * 500):
        response = await http.get(url, params={"path": "bin/data.bin"}, headers={b"Range": [ranges]})
        assert response.code == 200, ranges
        assert await response.content() == data


@pytest_twisted.ensureDeferred
async def test_download_errors(server, http):
    await upload(http, server, "d/x.txt", b"x")
    url = f"{server.url}/api/download"
    _, body = await http.json("GET", url, params={"path": "missing.txt"}, expect=404)
    assert body["error"]["code"] == "NOT_FOUND"
    _, body = await http.json("GET", url, params={"path": "d"}, expect=400)
    assert body["error"]["code"] == "INVALID_REQUEST"
    _, body = await http.json("GET", url, expect=400)
    assert body["error"]["code"] == "INVALID_REQUEST"
    _, body = await http.json("GET", f"{server.url}/api/metadata", params={"path": "nope"}, expect=404)
    assert body["error"]["code"] == "NOT_FOUND"
    _, body = await http.json("DELETE", f"{server.url}/api/list", expect=405)
    assert body["error"]["code"] == "METHOD_NOT_ALLOWED"


@pytest_twisted.ensureDeferred
async def test_put_is_post_and_update_replaces(server, http):
    _, first = await http.json("PUT", f"{server.url}/api/upload", params={"path": "p.txt"}, data=b"1")
    _, second = await http.json("PUT", f"{server.url}/api/upload", params={"path": "p.txt"}, data=b"22")
    assert (first["size"], second["size"]) == (1, 2)
    with open(os.path.join(server.root, "p.txt"), "rb") as f:
        assert f.read() == b"22"
    _, empty = await upload(http, server, "empty", b"")
    assert empty["hash"] == sha(b"") and empty["size"] == 0


@pytest_twisted.ensureDeferred
async def test_hash_mismatch_changes_nothing(server, http):
    await upload(http, server, "h.txt", b"original")
    _, body = await upload(http, server, "h.txt", b"new", expect=422, X_Content_SHA256=sha(b"other"))
    assert body["error"]["code"] == "HASH_MISMATCH"
    _, body = await upload(http, server, "new.txt", b"new", expect=422, X_Content_SHA256=sha(b"other"))
    with open(os.path.join(server.root, "h.txt"), "rb") as f:
        assert f.read() == b"original"
    assert not os.path.exists(os.path.join(server.root, "new.txt"))
    _, body = await upload(http, server, "h.txt", b"new", expect=400, X_Content_SHA256="xyz")
    assert body["error"]["code"] == "INVALID_REQUEST"
    _, meta = await upload(http, server, "h.txt", b"new", X_Content_SHA256=sha(b"new").upper())
    assert meta["hash"] == sha(b"new")
    assert os.listdir(server.service.store.temp_dir) == []
    _, changes = await http.json("GET", f"{server.url}/api/changes")
    assert [list(c["operation"])[0] for c in changes["changes"]] == ["Create", "Update"]


@pytest_twisted.ensureDeferred
async def test_preconditions(server, http):
    await upload(http, server, "c.txt", b"v1")
    _, body = await upload(http, server, "c.txt", b"v2", expect=412, If_None_Match="*")
    assert body["error"]["code"] == "PRECONDITION_FAILED"
    _, body = await upload(http, server, "c.txt", b"v2", expect=412, If_Match=f'"{sha(b"other")}"')
    assert body["error"]["code"] == "PRECONDITION_FAILED"
    _, body = await upload(http, server, "absent.txt", b"v2", expect=412, If_Match=f'"{sha(b"v1")}"')
    with open(os.path.join(server.root, "c.txt"), "rb") as f:
        assert f.read() == b"v1"
    assert not os.path.exists(os.path.join(server.root, "absent.txt"))
    _, meta = await upload(http, server, "c.txt", b"v2", If_Match=f'"{sha(b"v1")}"')
    assert meta["hash"] == sha(b"v2")
    _, meta = await upload(http, server, "fresh.txt", b"f", If_None_Match="*")
    assert meta["hash"] == sha(b"f")


@pytest_twisted.ensureDeferred
async def test_upload_conflicts_with_directories_and_files(server, http):
    await upload(http, server, "dir/inner.txt", b"x")
    _, body = await upload(http, server, "dir", b"onto a directory", expect=409)
    assert body["error"]["code"] == "CONFLICT"
    _, body = await upload(http, server, "dir/inner.txt/below", b"below a file", expect=409)
    assert body["error"]["code"] == "CONFLICT"
    assert os.path.isdir(os.path.join(server.root, "dir"))


@pytest_twisted.ensureDeferred
async def test_sync_operations(server, http):
    await upload(http, server, "a/one.txt", b"1")
    await upload(http, server, "b.txt", b"b")
    data = sha(b"1")
    ops = [
        {"Create": {"metadata": {"path": "newdir/sub", "size": 0, "modified": "2024-01-21T12:00:00Z",
                                 "hash": "", "is_directory": True}}},
        {"Move": {"from": "a/one.txt", "to": "moved/deeper/one.txt"}},
        {"Move": {"from": "b.txt", "to": "moved/deeper/one.txt"}},
        {"Delete": {"path": "missing.txt"}},
        {"Delete": {"path": "../escape"}},
        {"Create": {"metadata": {"path": "moved/deeper/one.txt", "size": 1,
                                 "modified": "2024-01-21T12:00:00Z", "hash": data, "is_directory": False}}},
        {"Update": {"metadata": {"path": "b.txt", "size": 1,
                                 "modified": "2024-01-21T12:00:00Z", "hash": data, "is_directory": False}}},
        {"Bogus": {}},
        {"Delete": {"path": "a"}},
        {"Create": {"metadata": {"path": "b.txt/x", "size": 0, "modified": "2024-01-21T12:00:00Z",
                                 "hash": "", "is_directory": True}}},
        {"Move": {"from": "moved", "to": "moved/inside"}},
    ]
    _, result = await http.json("POST", f"{server.url}/api/sync",
                                json={"operations": ops, "client_id": "me"})
    statuses = [(r["status"], r.get("code")) for r in result["results"]]
    assert statuses == [
        ("applied", None), ("applied", None), ("conflict", "CONFLICT"), ("error", "NOT_FOUND"),
        ("error", "INVALID_PATH"), ("applied", None), ("error", "NOT_FOUND"),
        ("error", "INVALID_REQUEST"), ("applied", None), ("conflict", "CONFLICT"),
        ("conflict", "CONFLICT"),
    ]
    assert os.path.isdir(os.path.join(server.root, "newdir", "sub"))
    assert os.path.isfile(os.path.join(server.root, "moved", "deeper", "one.txt"))
    assert os.path.isfile(os.path.join(server.root, "b.txt"))
    assert not os.path.exists(os.path.join(server.root, "a"))
    _, listing = await http.json("GET", f"{server.url}/api/list")
    listed = {e["path"] for e in listing}
    assert listed == {"b.txt", "newdir", "newdir/sub", "moved", "moved/deeper", "moved/deeper/one.txt"}
    _, changes = await http.json("GET", f"{server.url}/api/changes", params={"since": "2"})
    assert [c["operation"] for c in changes["changes"]][1] == \
        {"Move": {"from": "a/one.txt", "to": "moved/deeper/one.txt"}}
    assert result["cursor"] == changes["cursor"] == 6
    assert {c["source_client"] for c in changes["changes"]} == {"me"}


@pytest_twisted.ensureDeferred
async def test_sync_malformed_bodies(server, http):
    url = f"{server.url}/api/sync"
    for body in (b"not json", b"[]", b'{"operations": 5}', b'{"operations": [], "x": 1}',
                 b'{"operations": [], "client_id": 7}', b"\xff\xfe"):
        _, answer = await http.json("POST", url, data=body, expect=400)
        assert answer["error"]["code"] == "INVALID_REQUEST"


@pytest_twisted.ensureDeferred
async def test_large_json_bodies_are_parsed_like_small_ones(server, http):
    """Bodies above httpio.JSON_INLINE are parsed in a thread: same answers."""
    from quantum_sync.server.httpio import JSON_INLINE

    url = f"{server.url}/api/sync"
    operations = [{"Create": {"metadata": {"path": f"d{i:05d}", "size": 0, "modified": "2024-01-01T00:00:00Z",
                                           "hash": "", "is_directory": True}}} for i in range(700)]
    body = json.dumps({"operations": operations, "client_id": "big"}).encode()
    assert len(body) > JSON_INLINE
    _, answer = await http.json("POST", url, data=body)
    assert [r["status"] for r in answer["results"]] == ["applied"] * 700
    _, answer = await http.json("POST", url, data=body[:-1] + b" " * JSON_INLINE, expect=400)
    assert answer["error"]["code"] == "INVALID_REQUEST"
    _, answer = await http.json("POST", f"{server.url}/api/v1/auth/login",
                                data=b'{"username": "' + b"u" * JSON_INLINE + b'"', expect=400)
    assert answer["error"]["code"] == "INVALID_REQUEST"


@pytest_twisted.ensureDeferred
async def test_changes_parameters(server, http):
    url = f"{server.url}/api/changes"
    for params in ({"since": "-1"}, {"since": "x"}, {"limit": "0"}, {"limit": "100001"},
                   {"since": "1e3"}):
        _, answer = await http.json("GET", url, params=params, expect=400)
        assert answer["error"]["code"] == "INVALID_REQUEST"
    _, answer = await http.json("GET", url, params={"since": "0"})
    journal_id = server.service.index.journal_id
    assert answer == {"changes": [], "cursor": 0, "has_more": False, "journal_id": journal_id}
    _, answer = await http.json("GET", url, params={"since": "50"}, expect=410)
    assert answer["error"]["code"] == "CURSOR_EXPIRED"
    assert (answer["error"]["cursor"], answer["error"]["journal_id"]) == (0, journal_id)


@pytest_twisted.ensureDeferred
async def test_cursor_expired_after_retention(reactor, tmp_path, http):
    server = await start_server(reactor, tmp_path, journal_retention=3)
    try:
        for i in range(6):
            await upload(http, server, f"f{i}", b"x")
        _, answer = await http.json("GET", f"{server.url}/api/changes", params={"since": "1"}, expect=410)
        assert answer["error"]["code"] == "CURSOR_EXPIRED"
        _, answer = await http.json("GET", f"{server.url}/api/changes", params={"since": "3"})
        assert [c["seq"] for c in answer["changes"]] == [4, 5, 6]
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_uploads_disabled(reactor, tmp_path, http):
    server = await start_server(reactor, tmp_path, enable_upload=False)
    try:
        _, body = await upload(http, server, "x.txt", b"x", expect=403)
        assert body["error"]["code"] == "UPLOAD_DISABLED"
        _, body = await http.json("POST", f"{server.url}/api/sync", expect=403,
                                  json={"operations": [{"Delete": {"path": "x"}}]})
        assert body["error"]["code"] == "UPLOAD_DISABLED"
        assert os.listdir(server.root) == [".quantum-sync"]
        _, listing = await http.json("GET", f"{server.url}/api/list")
        assert listing == []
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_max_upload_size(reactor, tmp_path, http):
    server = await start_server(reactor, tmp_path, max_upload_size=1000)
    try:
        _, meta = await upload(http, server, "ok.bin", b"x" * 1000)
        assert meta["size"] == 1000
        _, body = await upload(http, server, "big.bin", b"x" * 200_000, expect=413)
        assert body["error"]["code"] == "TOO_LARGE"

        response = await http.post(f"{server.url}/api/upload", params={"path": "chunked.bin"},
                                   data=UnsizedBody(b"z" * 50_000))
        assert response.code == 413
        body = json.loads(await response.content())
        assert body["error"]["code"] == "TOO_LARGE"
        assert not os.path.exists(os.path.join(server.root, "big.bin"))
        assert not os.path.exists(os.path.join(server.root, "chunked.bin"))
        assert os.listdir(os.path.join(server.root, ".quantum-sync", "tmp")) == []
        _, listing = await http.json("GET", f"{server.url}/api/list")
        assert [e["path"] for e in listing] == ["ok.bin"]
    finally:
        await server.stop()


@implementer(IBodyProducer)
class EndlessBody:
    """A body that announces ``length`` bytes but sends only the first chunk."""

    def __init__(self, length: int):
        self.length = length
        self.stopped = False

    def startProducing(self, consumer):
        consumer.write(b"x" * 65536)
        return Deferred()  # never finishes by itself

    def stopProducing(self):
        self.stopped = True

    def pauseProducing(self):
        pass

    def resumeProducing(self):
        pass


@pytest_twisted.ensureDeferred
async def test_refusals_come_before_the_body(reactor, tmp_path, http):
    """A too-large or unwelcome upload is answered once its headers are in: the body is
    never waited for and never stored."""
    from quantum_sync.passwords import hash_password

    auth = {"users": {"reader": {"password_hash": hash_password("pw", ln=10), "role": "read"}},
            "secret_file": str(tmp_path / "secret")}
    for overrides, status, code in (({"enable_upload": False}, 403, "UPLOAD_DISABLED"),
                                    ({"max_upload_size": 100_000}, 413, "TOO_LARGE"),
                                    ({"auth": auth}, 401, "AUTH_REQUIRED")):
        server = await start_server(reactor, tmp_path, **overrides)
        try:
            body = EndlessBody(10 * 1024 * 1024)
            response = await http.put(f"{server.url}/api/upload", params={"path": "x.bin"},
                                      data=body)
            assert response.code == status
            assert json.loads(await response.content())["error"]["code"] == code
            assert os.listdir(os.path.join(server.root, ".quantum-sync", "tmp")) == []
            assert not os.path.exists(os.path.join(server.root, "x.bin"))
        finally:
            await server.stop()


@pytest_twisted.ensureDeferred
async def test_several_servers_and_listen_entries(reactor, tmp_path, http):
    """One file tree behind every listener; each server routes by its own patterns and the
    monitoring endpoints answer everywhere."""
    from tests.support import server_document, start_service

    document = server_document(str(tmp_path / "root"))
    servers = document["apps"]["http"]["servers"]
    servers["file_sync_server"]["listen"] = ["tcp:0:interface=127.0.0.1", "127.0.0.1:0"]
    servers["api_only"] = {
        "listen": ["tcp:0:interface=127.0.0.1"],
        "routes": [{"match": [{"path": ["/api/list"]}],
                    "handle": servers["file_sync_server"]["routes"][0]["handle"]}],
    }
    service, ports = await start_service(reactor, document, str(tmp_path))
    try:
        assert len(set(ports)) == 3
        first, second, api_only = (f"http://127.0.0.1:{port}" for port in ports)
        await http.json("PUT", f"{first}/api/upload", params={"path": "shared.txt"}, data=b"s")
        for base in (second, api_only):
            _, listing = await http.json("GET", f"{base}/api/list")
            assert [e["path"] for e in listing] == ["shared.txt"]
            _, health = await http.json("GET", f"{base}/ws/health")
            assert health["status"] == "ok"
        _, body = await http.json("GET", f"{api_only}/api/metadata", params={"path": "shared.txt"},
                                  expect=404)
        assert body["error"]["code"] == "NOT_FOUND"
        _, meta = await http.json("GET", f"{second}/api/metadata", params={"path": "shared.txt"})
        assert meta["size"] == 1
    finally:
        await service.stopService()


@pytest_twisted.ensureDeferred
async def test_full_disk_is_507_and_changes_nothing(server, http, monkeypatch):
    """ENOSPC while spooling (simulated: no small file system can be mounted here)."""
    import errno

    await upload(http, server, "kept.txt", b"old")
    real_writev = os.writev

    def full(fd, buffers):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "writev", full)
    for size in (10, 3 * 1024 * 1024):  # small body (written at the end) and pipelined body
        _, body = await upload(http, server, "kept.txt", b"n" * size, expect=507)
        assert body["error"]["code"] == "INSUFFICIENT_STORAGE"
    monkeypatch.setattr(os, "writev", real_writev)
    with open(os.path.join(server.root, "kept.txt"), "rb") as f:
        assert f.read() == b"old"
    assert os.listdir(os.path.join(server.root, ".quantum-sync", "tmp")) == []
    _, changes = await http.json("GET", f"{server.url}/api/changes")
    assert len(changes["changes"]) == 1


@pytest_twisted.ensureDeferred
async def test_upload_bodies_never_outlive_their_request(reactor, tmp_path, http):
    """A body for /api/upload that no handler takes (wrong method, or not routed) leaves
    no temp file behind."""
    from tests.support import server_document, start_service

    server = await start_server(reactor, tmp_path)
    try:
        _, body = await http.json("PATCH", f"{server.url}/api/upload", params={"path": "a"},
                                  data=b"x" * 200_000, expect=405)
        assert body["error"]["code"] == "METHOD_NOT_ALLOWED"
        _, body = await http.json("GET", f"{server.url}/api/upload", params={"path": "a"},
                                  expect=405)
    finally:
        await server.stop()
    document = server_document(server.root)
    route = document["apps"]["http"]["servers"]["file_sync_server"]["routes"][0]
    route["match"] = [{"path": ["/api/list"]}]
    service, (port,) = await start_service(reactor, document, str(tmp_path))
    try:
        _, body = await http.json("POST", f"http://127.0.0.1:{port}/api/upload",
                                  params={"path": "a"}, data=b"x" * 200_000, expect=404)
        assert body["error"]["code"] == "NOT_FOUND"
    finally:
        await service.stopService()
    tmp = os.path.join(server.root, ".quantum-sync", "tmp")
    assert os.listdir(tmp) == []


@pytest_twisted.ensureDeferred
async def test_large_upload_with_a_slow_disk_pauses_reading(server, http, monkeypatch):
    """A body bigger than the spool's backlog limit, written slower than it arrives:
    reading pauses and resumes, and the stored file is exact. The disk writes nothing
    until the backlog is full (however fast the body arrives), then catches up."""
    import threading

    from quantum_sync.server.spools import UploadSpool

    real_writev = os.writev
    pauses = []
    backlog_full = threading.Event()
    real_write = UploadSpool.write

    def held_writev(fd, buffers):
        backlog_full.wait(WAIT_TIMEOUT)  # bounded: a backlog never full fails below
        return real_writev(fd, buffers)

    def counting_write(self, data):
        paused = real_write(self, data)
        if paused:
            pauses.append(self.size)
            backlog_full.set()
        return paused

    monkeypatch.setattr(os, "writev", held_writev)
    monkeypatch.setattr(UploadSpool, "write", counting_write)
    data = os.urandom(24 * 1024 * 1024)
    _, meta = await upload(http, server, "big.bin", data, X_Content_SHA256=sha(data))
    assert meta["size"] == len(data) and meta["hash"] == sha(data)
    assert pauses, "the backlog never reached its limit"
    with open(os.path.join(server.root, "big.bin"), "rb") as f:
        assert f.read() == data


@pytest_twisted.ensureDeferred
async def test_bad_client_ids_and_header_bytes_are_400(server, http):
    directory = {"Create": {"metadata": {"path": "d", "size": 0, "modified": "2024-01-01T00:00:00Z",
                                         "hash": "", "is_directory": True}}}
    for client in ("\ud800", "x" * 201, "tab\there", 7, None):
        body = json.dumps({"operations": [directory], "client_id": client}).encode()
        _, answer = await http.json("POST", f"{server.url}/api/sync", data=body, expect=400)
        assert answer["error"]["code"] == "INVALID_REQUEST"
    for name in (b"X-Client-Id", b"If-Match", b"If-None-Match", b"X-Content-SHA256"):
        _, answer = await http.json("PUT", f"{server.url}/api/upload", params={"path": "x"},
                                    data=b"x", headers={name: [b"\xff\xfe"]}, expect=400)
        assert answer["error"]["code"] == "INVALID_REQUEST"
    _, answer = await http.json("GET", f"{server.url}/api/metadata", params={"path": "x"},
                                headers={b"X-Client-Id": [b"\xc3\x28"]}, expect=400)
    _, changes = await http.json("GET", f"{server.url}/api/changes")
    assert changes["changes"] == [] and os.listdir(server.root) == [".quantum-sync"]
    _, meta = await upload(http, server, "ok.txt", b"ok", X_Client_Id="caf\u00e9-1")
    _, changes = await http.json("GET", f"{server.url}/api/changes")
    assert changes["changes"][0]["source_client"] == "caf\u00e9-1"


@pytest_twisted.ensureDeferred
async def test_odd_headers_never_get_a_500(server, http):
    """Every API endpoint × headers with odd values: never a 5xx (found: a 5000-byte
    Host made Klein's routing fail, an undecodable Range made static.File fail)."""
    await upload(http, server, "f.txt", b"0123456789")
    endpoints = [("GET", "/api/list"), ("GET", "/api/metadata?path=f.txt"),
                 ("GET", "/api/download?path=f.txt"), ("HEAD", "/api/download?path=f.txt"),
                 ("PUT", "/api/upload?path=g.txt"), ("POST", "/api/sync"), ("GET", "/api/changes"),
                 ("POST", "/api/v1/auth/login"), ("GET", "/ws/health")]
    headers = [b"Range", b"If-Match", b"If-None-Match", b"If-Modified-Since", b"Content-Type",
               b"X-Client-Id", b"Authorization", b"Host", b"X-Content-SHA256", b"If-Range"]
    values = [b"\xff\xfe", b"", b"multipart/form-data; boundary=x", b"*", b'"', b"bytes=0-",
              b"a" * 5000, b"a" * 64 + b".example", b"[::1]:99999x"]
    form = b'--x\r\nContent-Disposition: form-data; name="a"\r\n\r\nb\r\n--x--\r\n'
    failures = []
    for method, url in endpoints:
        for name in headers:
            for value in values:
                response = await http.request(method, server.url + url, headers={name: [value]},
                                              data=form if method in ("POST", "PUT") else None)
                body = await response.content()
                if response.code >= 500:
                    failures.append((method, url, name, value[:20], response.code, body[:80]))
    assert failures == []
