"""/api/batch/upload and /api/batch/download against a real server on 127.0.0.1, and the
client's batches (ServerClient) against it and against servers without batches.

Each file of an upload batch must be handled exactly as its own PUT /api/upload would
be (verified, conditional, journalled with its own seq, broadcast on its own); a
whole-request refusal changes nothing."""

import errno
import json
import os

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory
from twisted.web import resource

from quantum_sync import batch
from quantum_sync.client.transfer import (DownloadCorrupt, PreconditionFailed, RequestRefused, ServerClient,
                                          ServerUnavailable)
from quantum_sync.protocol import FileMetadata
from quantum_sync.server.download import SMALL_DOWNLOAD
from tests.logcapture import LogCapture
from tests.support import client_of, server_document, start_server, start_service
from tests.test_api import EndlessBody, UnsizedBody, sha, upload
from tests.test_api_paths import ATTACKS, assert_safe
from tests.test_auth_e2e import auth_section, bearer, tokens_by_role, tree
from tests.test_batch import INVALID_DOWNLOAD_REQUESTS, INVALID_UPLOAD_BODIES, entry
from tests.test_hostile_slow import RawClient, trickle, within
from test_ws_support import connect, drop_all

BATCH_UPLOAD = "/api/batch/upload"
BATCH_DOWNLOAD = "/api/batch/download"


def item(path, data: bytes, **extra) -> tuple:
    """``(manifest entry, content)`` of one file of an upload batch."""
    return entry(path, data, **extra), data


def batch_body(items) -> bytes:
    return batch.encode({"files": [e for e, _ in items]}, [d for _, d in items])


async def send_batch(http, server, items, expect=200, method="POST", **kwargs):
    """The JSON answer to an upload batch of ``items``."""
    _, answer = await http.json(method, server.url + BATCH_UPLOAD, expect=expect, data=batch_body(items), **kwargs)
    return answer


async def fetch_batch(http, server, wanted, **kwargs) -> tuple:
    """``(manifest entries, parsed items)`` of a download batch of ``wanted`` (the
    parsed items as the client reads them: ``(FileMetadata, bytes)`` or ItemError)."""
    response = await http.post(server.url + BATCH_DOWNLOAD, data=json.dumps({"paths": wanted}).encode(), **kwargs)
    body = await response.content()
    assert response.code == 200, body[:300]
    assert response.headers.getRawHeaders("Content-Type") == [batch.CONTENT_TYPE.decode()]
    manifest, _ = batch.split(body)
    expected = [e["metadata"]["path"] if e["status"] == 200 else p for e, p in zip(manifest["files"], wanted)]
    return manifest["files"], batch.parse_download_answer(body, expected)


def codes(results) -> list:
    return [(r["status"], r["error"]["code"] if "error" in r else r["metadata"]["path"]) for r in results]


def on_disk(server, path) -> bytes:
    with open(os.path.join(server.root, path), "rb") as f:
        return f.read()


async def changes_since(http, server, since=0) -> dict:
    return (await http.json("GET", f"{server.url}/api/changes", params={"since": str(since)}))[1]


def temp_files(server) -> list:
    return os.listdir(server.service.store.temp_dir)


@pytest_twisted.async_yield_fixture
async def subscribe(reactor, server):  # noqa: F811
    """``await subscribe(client_id)`` (file operations) or ``subscribe(None, "alerts")``:
    a real WebSocket client on ``server``; all are dropped afterwards."""
    clients = []

    async def open_client(client_id, topic=None):
        client = await connect(reactor, server.ws_url)
        clients.append(client)
        message = ({"type": "Subscribe", "client_id": client_id} if topic is None
                   else {"type": "subscribe", "topic": topic})
        assert (await client.request(message))["type"] == "Ack"
        return client

    yield open_client
    await drop_all(reactor, clients, server.service.hub)


def access_lines(log) -> list:
    """``(method, path, status)`` of every request the server logged."""
    return [(e["method"], e["path"], e["status"]) for e in log.events
            if e.get("log_namespace") == "quantum_sync.access" and "status" in e]


def fill_the_disk_for(monkeypatch, marker=b"FULL"):
    """ENOSPC for writes of a body starting with ``marker`` (at os.writev, as in
    tests/test_api.py: no small file system can be mounted here); other writes go on."""
    real_writev = os.writev

    def writev(fd, buffers):
        if bytes(buffers[0][:len(marker)]) == marker:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_writev(fd, buffers)

    monkeypatch.setattr(os, "writev", writev)


async def settled(deferreds) -> list:
    """Per Deferred its result or the exception it failed with."""
    answers = await defer.DeferredList(list(deferreds), consumeErrors=True)
    return [value if ok else value.value for ok, value in answers]


# -- uploads -----------------------------------------------------------------------------


FILES = [("docs/a.txt", b"alpha"), ("docs/b.bin", bytes(range(256)) * 4), ("empty", b""),
         ("c/d/e.txt", b"deep\n"), ("caf\u00e9.txt", b"\n\n"), ("top.txt", b"x" * 5000)]


@pytest_twisted.ensureDeferred
async def test_a_batch_upload_lands_every_file_each_journalled_and_broadcast(server, http, subscribe):  # noqa: F811
    reader, writer = await subscribe("reader"), await subscribe("writer")
    head = (await changes_since(http, server))["cursor"]
    answer = await send_batch(http, server, [item(p, d) for p, d in FILES], headers={"X-Client-Id": ["writer"]})
    assert [(r["status"], r["metadata"]["path"], r["metadata"]["size"], r["metadata"]["hash"])
            for r in answer["results"]] == [(200, p, len(d), sha(d)) for p, d in FILES]
    assert answer["cursor"] == head + len(FILES)
    for path, data in FILES:
        assert on_disk(server, path) == data
    _, listing = await http.json("GET", f"{server.url}/api/list")
    assert {e["path"]: e for e in listing if not e["is_directory"]} == {
        r["metadata"]["path"]: r["metadata"] for r in answer["results"]}
    assert {e["path"] for e in listing if e["is_directory"]} == {"docs", "c", "c/d"}

    changes = (await changes_since(http, server, head))["changes"]
    assert [(c["seq"], list(c["operation"]), c["source_client"]) for c in changes] == [
        (head + 1 + i, ["Create"], "writer") for i in range(len(FILES))]
    assert [c["operation"]["Create"]["metadata"] for c in changes] == [r["metadata"] for r in answer["results"]]
    events = [await reader.expect("FileOperation") for _ in FILES]
    assert [(e["seq"], e["operation"], e["source_client"]) for e in events] == [
        (c["seq"], c["operation"], "writer") for c in changes]
    assert await writer.request({"type": "Ping"}) == {"type": "Pong"}
    assert not [m for m in writer.received if m["type"] == "FileOperation"]  # not sent back to its source

    # a second batch replaces two of them: Updates, on their If-Match
    answer = await send_batch(http, server, [item("docs/a.txt", b"alpha 2", if_match=sha(b"alpha")),
                                             item("empty", b"now full", if_match=f'"{sha(b"")}"')],
                              method="PUT", headers={"X-Client-Id": ["writer"]})
    assert codes(answer["results"]) == [(200, "docs/a.txt"), (200, "empty")]
    updates = [await reader.expect("FileOperation") for _ in range(2)]
    assert [(e["seq"], list(e["operation"])) for e in updates] == [(head + len(FILES) + 1, ["Update"]),
                                                                 (head + len(FILES) + 2, ["Update"])]
    assert (on_disk(server, "docs/a.txt"), on_disk(server, "empty")) == (b"alpha 2", b"now full")
    assert temp_files(server) == []


@pytest_twisted.ensureDeferred
async def test_each_file_of_a_batch_succeeds_or_fails_on_its_own(server, http, subscribe):  # noqa: F811
    alerts = await subscribe(None, "alerts")
    await upload(http, server, "kept.txt", b"v1")
    await upload(http, server, "dir/inner.txt", b"inner")
    head = (await changes_since(http, server))["cursor"]
    before = tree(server.root)
    answer = await send_batch(http, server, [
        item("kept.txt", b"v2", if_match=sha(b"not v1")),
        item("kept.txt", b"v2", if_none_match="*"),
        (entry("new.txt", b"announced"), b"different"),
        item("../escape.txt", b"out"),
        item("dir", b"onto a directory"),
        item("dir/inner.txt/below", b"below a file"),
        item("ok.txt", b"fine"),
        item(".quantum-sync/tmp/x", b"state"),
    ], headers={"X-Client-Id": ["mixed"]})
    assert codes(answer["results"]) == [
        (412, "PRECONDITION_FAILED"), (412, "PRECONDITION_FAILED"), (422, "HASH_MISMATCH"),
        (400, "INVALID_PATH"), (409, "CONFLICT"), (409, "CONFLICT"), (200, "ok.txt"), (400, "INVALID_PATH")]
    assert all(r["error"]["message"] for r in answer["results"] if r["status"] != 200)
    assert answer["cursor"] == head + 1
    assert tree(server.root) == {**before, "ok.txt": b"fine"}
    assert not os.path.exists(os.path.join(server.root, "..", "escape.txt"))
    changes = (await changes_since(http, server, head))["changes"]
    assert [(c["seq"], c["operation"]["Create"]["metadata"]["path"]) for c in changes] == [(head + 1, "ok.txt")]
    rejected = [await alerts.expect("security_alert") for _ in range(2)]
    assert sorted(a["data"]["path"] for a in rejected) == sorted([repr("../escape.txt"), repr(".quantum-sync/tmp/x")])
    assert {(a["data"]["event"], a["data"]["source_client"]) for a in rejected} == {("rejected_path", "mixed")}
    assert temp_files(server) == []


@pytest_twisted.ensureDeferred
async def test_uploads_of_one_path_in_a_batch_apply_in_order(server, http):  # noqa: F811
    v1, v2, v3 = b"version 1", b"version 2", b"version 3"
    answer = await send_batch(http, server, [
        item("same.txt", v1, if_none_match="*"),
        item("same.txt", v2, if_match=sha(v1)),  # based on the one before it in the batch
        item("same.txt", v3, if_match=sha(v1)),  # v1 is gone by now
        item("same.txt", v3, if_none_match="*"),
    ])
    assert [r["status"] for r in answer["results"]] == [200, 200, 412, 412]
    assert [r["metadata"]["hash"] for r in answer["results"][:2]] == [sha(v1), sha(v2)]
    assert on_disk(server, "same.txt") == v2
    changes = (await changes_since(http, server))["changes"]
    assert [(c["seq"], list(c["operation"])[0], c["operation"][list(c["operation"])[0]]["metadata"]["hash"])
            for c in changes] == [(1, "Create", sha(v1)), (2, "Update", sha(v2))]


@pytest.mark.parametrize("name", list(INVALID_UPLOAD_BODIES))
@pytest_twisted.ensureDeferred
async def test_a_malformed_batch_is_400_and_changes_nothing(server, http, name):  # noqa: F811
    await upload(http, server, "present.txt", b"here")
    before, head = tree(server.root), (await changes_since(http, server))["cursor"]
    _, answer = await http.json("POST", server.url + BATCH_UPLOAD, expect=400, data=INVALID_UPLOAD_BODIES[name])
    assert answer["error"]["code"] == "INVALID_REQUEST" and answer["error"]["message"]
    assert tree(server.root) == before and not [p for p in tree(server.root) if p.startswith("never")]
    assert (await changes_since(http, server))["cursor"] == head
    assert temp_files(server) == []


@pytest_twisted.ensureDeferred
async def test_a_chunked_batch_is_taken_like_a_sized_one(server, http):  # noqa: F811
    _, answer = await http.json("POST", server.url + BATCH_UPLOAD,
                                data=UnsizedBody(batch_body([item("a", b"A" * 10_000), item("b", b"B")])))
    assert codes(answer["results"]) == [(200, "a"), (200, "b")]
    assert on_disk(server, "a") == b"A" * 10_000
    _, answer = await http.json("POST", server.url + BATCH_UPLOAD, expect=400,
                                data=UnsizedBody(INVALID_UPLOAD_BODIES["contents longer than the sizes"]))
    assert answer["error"]["code"] == "INVALID_REQUEST"
    _, answer = await http.json("GET", server.url + BATCH_UPLOAD, expect=405)
    assert answer["error"]["code"] == "METHOD_NOT_ALLOWED"


def _largest_single_file_body() -> bytes:
    """A batch of one file exactly :data:`batch.MAX_BODY` bytes long."""
    data_size = batch.MAX_BODY
    while True:
        body = batch_body([item("big.bin", b"\0" * data_size)])
        if len(body) == batch.MAX_BODY:
            return body
        data_size -= len(body) - batch.MAX_BODY


@pytest_twisted.ensureDeferred
async def test_a_batch_over_16_mib_is_413_before_its_body_is_read(server, http):  # noqa: F811
    before = tree(server.root)
    for body in (EndlessBody(batch.MAX_BODY + 1), UnsizedBody(b"\0" * (batch.MAX_BODY + 1))):
        response = await http.post(server.url + BATCH_UPLOAD, data=body)
        assert response.code == 413
        assert json.loads(await response.content())["error"]["code"] == "TOO_LARGE"
    assert tree(server.root) == before and temp_files(server) == []
    assert (await changes_since(http, server))["cursor"] == 0
    largest = _largest_single_file_body()  # at the limit: taken
    _, answer = await http.json("POST", server.url + BATCH_UPLOAD, data=largest)
    assert answer["results"][0]["metadata"]["size"] == len(largest) - largest.index(b"\n") - 1


@pytest_twisted.ensureDeferred
async def test_files_over_max_upload_size_are_refused_one_by_one(reactor, tmp_path, http):  # noqa: F811
    server = await start_server(reactor, tmp_path, max_upload_size=1000)
    try:
        answer = await send_batch(http, server, [item("fits", b"x" * 1000), item("over", b"x" * 1001),
                                                 item("also.txt", b"ok")])
        assert codes(answer["results"]) == [(200, "fits"), (413, "TOO_LARGE"), (200, "also.txt")]
        assert sorted(tree(server.root)) == ["also.txt", "fits"]
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_a_full_disk_refuses_only_the_files_it_stopped(server, http, monkeypatch):  # noqa: F811
    fill_the_disk_for(monkeypatch)
    answer = await send_batch(http, server, [item("one", b"first"), item("two", b"FULL disk"), item("three", b"third")])
    assert codes(answer["results"]) == [(200, "one"), (507, "INSUFFICIENT_STORAGE"), (200, "three")]
    assert tree(server.root) == {"one": b"first", "three": b"third"}
    assert len((await changes_since(http, server))["changes"]) == 2
    assert temp_files(server) == []


@pytest_twisted.ensureDeferred
async def test_batch_uploads_disabled(reactor, tmp_path, http):  # noqa: F811
    server = await start_server(reactor, tmp_path, enable_upload=False)
    try:
        _, answer = await http.json("POST", server.url + BATCH_UPLOAD, expect=403, data=batch_body([item("x", b"x")]))
        assert answer["error"]["code"] == "UPLOAD_DISABLED"
        response = await http.put(server.url + BATCH_UPLOAD, data=EndlessBody(10 * 1024 * 1024))
        assert response.code == 403  # answered before the body
        assert json.loads(await response.content())["error"]["code"] == "UPLOAD_DISABLED"
        assert tree(server.root) == {} and temp_files(server) == []
        files, _ = await fetch_batch(http, server, ["x"])  # reading still works
        assert codes(files) == [(404, "NOT_FOUND")]
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_batches_need_the_write_role_to_upload_and_the_read_role_to_download(reactor, tmp_path,
                                                                                   http):  # noqa: F811
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "a.txt").write_bytes(b"alpha")
    server = await start_server(reactor, tmp_path, auth=auth_section(tmp_path))
    try:
        tokens = await tokens_by_role(http, server)
        body = batch_body([item("new.txt", b"new")])
        wanted = json.dumps({"paths": ["a.txt"]}).encode()
        for token, upload_code, download_code in ((None, 401, 401), (tokens["read"], 403, 200)):
            _, answer = await http.json("POST", server.url + BATCH_UPLOAD, expect=upload_code, data=body,
                                        headers=bearer(token))
            assert answer["error"]["code"] == ("AUTH_REQUIRED" if token is None else "PERMISSION_DENIED")
            response = await http.post(server.url + BATCH_DOWNLOAD, data=wanted, headers=bearer(token))
            content = await response.content()
            assert response.code == download_code, content[:200]
        assert batch.parse_download_answer(content, ["a.txt"])[0][1] == b"alpha"
        assert tree(server.root) == {"a.txt": b"alpha"}
        response = await http.put(server.url + BATCH_UPLOAD, data=EndlessBody(10 * 1024 * 1024))
        assert response.code == 401  # refused before the body
        await response.content()
        for token in (tokens["write"], tokens["admin"]):
            answer = await send_batch(http, server, [item("new.txt", b"new")], headers=bearer(token))
            assert codes(answer["results"]) == [(200, "new.txt")]
        _, answer = await http.json("POST", f"{server.url}{BATCH_UPLOAD}?token={tokens['write']}",
                                    data=batch_body([item("q.txt", b"q")]))
        assert codes(answer["results"]) == [(200, "q.txt")]
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_hostile_paths_in_batches_stay_inside_the_root(hostile):  # noqa: F811
    server, http, alerts = hostile
    files, items = await fetch_batch(http, server, ATTACKS)
    for attack, answer, parsed in zip(ATTACKS, files, items):
        assert answer["status"] in (400, 404), (attack, answer)
        assert answer["status"] == 404 or answer["error"]["code"] in ("INVALID_PATH", "INVALID_REQUEST"), attack
    refused = {attack for attack, answer in zip(ATTACKS, files)
               if answer.get("error", {}).get("code") == "INVALID_PATH"}
    assert {"../etc/passwd", "link-out/passwd", "link-sib/canary", ".quantum-sync/index.sqlite3", ""} <= refused
    rejected = [d for kind, d in alerts if kind == "security_alert" and d["event"] == "rejected_path"]
    assert len(rejected) == len(refused)  # one alert a refused path

    contents = [b"%d" % i for i in range(len(ATTACKS))]
    answer = await send_batch(http, server, [item(a, c) for a, c in zip(ATTACKS, contents)] + [item("fine.txt", b"f")],
                              headers={"X-Client-Id": ["attacker"]})
    results = answer["results"]
    assert results[-1]["status"] == 200
    for attack, result in zip(ATTACKS, results):
        assert result["status"] in (200, 400), (attack, result)
        if result["status"] == 200:
            assert_safe(200, json.dumps(result["metadata"]).encode(), server, attack)
        else:
            assert result["error"]["code"] == "INVALID_PATH", attack
    assert {a for a, r in zip(ATTACKS, results) if r["status"] == 400} == refused
    rejected = [d for kind, d in alerts if kind == "security_alert" and d["event"] == "rejected_path"]
    assert len(rejected) == 2 * len(refused)
    assert {d["source_client"] for d in rejected[len(refused):]} == {"attacker"}


# -- downloads ---------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_batch_download_returns_exactly_the_stored_bytes_and_their_metadata(server, http):  # noqa: F811
    await send_batch(http, server, [item(p, d) for p, d in FILES])
    os.makedirs(os.path.join(server.root, "other"))
    with open(os.path.join(server.root, "other", "written.bin"), "wb") as f:  # by another program
        f.write(b"w" * 3000)
    wanted = [p for p, _ in FILES] + ["other/written.bin", "docs/a.txt", "cafe\u0301.txt"]
    files, items = await fetch_batch(http, server, wanted)
    expected = dict(FILES, **{"other/written.bin": b"w" * 3000})
    for path, (metadata, content) in zip(wanted, items):
        path = "caf\u00e9.txt" if path == "cafe\u0301.txt" else path
        assert metadata.path == path and content == expected[path]
        assert (metadata.size, metadata.hash, metadata.is_directory) == (len(content), sha(content), False)
        _, stored = await http.json("GET", f"{server.url}/api/metadata", params={"path": path})
        assert metadata.to_json() == stored


@pytest_twisted.ensureDeferred
async def test_files_that_cannot_be_sent_are_refused_one_by_one(server, http):  # noqa: F811
    os.makedirs(os.path.join(server.root, "dir"))
    for name, size in (("limit.bin", SMALL_DOWNLOAD), ("over.bin", SMALL_DOWNLOAD + 1)):
        with open(os.path.join(server.root, name), "wb") as f:
            f.write(b"L" * size)
    await server.service.operations.refresh(None)
    # a body just stored from a batch is kept in memory (RecentBodies) whatever its size
    await send_batch(http, server, [item("small.txt", b"small"),
                                    item("uploaded-over.bin", b"U" * (SMALL_DOWNLOAD + 1))])
    wanted = ["small.txt", "missing.txt", "../etc/passwd", "dir", "over.bin", "limit.bin", 7, "uploaded-over.bin",
              "small.txt"]
    files, items = await fetch_batch(http, server, wanted)
    assert codes(files) == [
        (200, "small.txt"), (404, "NOT_FOUND"), (400, "INVALID_PATH"), (400, "INVALID_REQUEST"),
        (413, "TOO_LARGE"), (200, "limit.bin"), (400, "INVALID_PATH"), (413, "TOO_LARGE"), (200, "small.txt")]
    assert [i[1] if isinstance(i, tuple) else None for i in items] == [
        b"small", None, None, None, None, b"L" * SMALL_DOWNLOAD, None, None, b"small"]


@pytest_twisted.ensureDeferred
async def test_a_download_batch_stops_at_16_mib(server, http):  # noqa: F811
    count = batch.MAX_BODY // SMALL_DOWNLOAD  # exactly 16 MiB of files fit
    for i in range(count + 2):
        with open(os.path.join(server.root, f"f{i:03}"), "wb") as f:
            f.write(bytes([i % 256]) * SMALL_DOWNLOAD)
    with open(os.path.join(server.root, "tiny"), "wb") as f:
        f.write(b"t")
    await server.service.operations.refresh(None)
    wanted = [f"f{i:03}" for i in range(count + 2)] + ["tiny"]
    files, items = await fetch_batch(http, server, wanted)
    # the batch is full: the file that would pass 16 MiB and every one after it (even a
    # tiny one) are left to be fetched on their own
    assert [f["status"] for f in files] == [200] * count + [413, 413, 413]
    assert {f["error"]["code"] for f in files[count:]} == {"TOO_LARGE"}
    assert all(content == bytes([i % 256]) * SMALL_DOWNLOAD for i, (_, content) in enumerate(items[:count]))


@pytest.mark.parametrize("name", list(INVALID_DOWNLOAD_REQUESTS))
@pytest_twisted.ensureDeferred
async def test_a_malformed_download_request_is_400(server, http, name):  # noqa: F811
    data = json.dumps(INVALID_DOWNLOAD_REQUESTS[name]).encode()
    _, answer = await http.json("POST", server.url + BATCH_DOWNLOAD, expect=400, data=data)
    assert answer["error"]["code"] == "INVALID_REQUEST"


@pytest_twisted.ensureDeferred
async def test_a_download_request_that_is_not_json_is_400(server, http):  # noqa: F811
    for data in (b"", b"paths", b'{"paths": ["a"]', b"\xff"):
        _, answer = await http.json("POST", server.url + BATCH_DOWNLOAD, expect=400, data=data)
        assert answer["error"]["code"] == "INVALID_REQUEST"
    _, answer = await http.json("GET", server.url + BATCH_DOWNLOAD, expect=405)
    assert answer["error"]["code"] == "METHOD_NOT_ALLOWED"


# -- the client's batches ----------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_client_uploads_waiting_at_once_travel_in_batches(reactor, server, http):  # noqa: F811
    client = ServerClient(reactor, server.url, "batcher")
    datas = [b"file %d " % i * (i + 1) for i in range(120)]
    try:
        with LogCapture() as log:
            answers = await settled(client.upload(f"many/{i:03}.txt", None, sha(d), None, data=d)
                                    for i, d in enumerate(datas))
        assert [(m.path, m.hash, m.size) for m in answers] == [
            (f"many/{i:03}.txt", sha(d), len(d)) for i, d in enumerate(datas)]
        requests = access_lines(log)
        assert len(requests) <= 4, requests  # not one a file
        assert [r for r in requests if r[1] == BATCH_UPLOAD and r[2] == 200], requests
        assert all(on_disk(server, f"many/{i:03}.txt") == d for i, d in enumerate(datas))
        assert len((await changes_since(http, server))["changes"]) == len(datas)

        # a second round: each caller gets its own answer, refusals included
        with LogCapture() as log:
            answers = await settled([
                client.upload("many/000.txt", None, sha(b"new 0"), sha(datas[0]), data=b"new 0"),
                client.upload("many/001.txt", None, sha(b"new 1"), sha(b"stale"), data=b"new 1"),
                client.upload("many/002.txt", None, sha(b"new 2"), None, data=b"new 2"),  # exists already
                client.upload("many/003.txt", None, sha(b"new 3"), sha(datas[3]), data=b"new 3"),
                client.upload("../out.txt", None, sha(b"o"), None, data=b"o"),
                client.upload("wrong.txt", None, sha(b"announced"), None, data=b"sent"),
                client.upload("many/004.txt", None, sha(b"new 4"), sha(datas[4]), data=b"new 4"),
            ])
        assert [type(a) for a in answers] == [FileMetadata, PreconditionFailed, PreconditionFailed,
                                              FileMetadata, RequestRefused, RequestRefused, FileMetadata]
        assert [(a.path, a.hash) for a in (answers[0], answers[3], answers[6])] == [
            ("many/000.txt", sha(b"new 0")), ("many/003.txt", sha(b"new 3")), ("many/004.txt", sha(b"new 4"))]
        assert [(a.status, a.code) for a in answers[1:3] + answers[4:6]] == [
            (412, "PRECONDITION_FAILED"), (412, "PRECONDITION_FAILED"), (400, "INVALID_PATH"), (422, "HASH_MISMATCH")]
        assert on_disk(server, "many/001.txt") == datas[1] and on_disk(server, "many/003.txt") == b"new 3"
        assert [r[1] for r in access_lines(log)].count(BATCH_UPLOAD) >= 1
    finally:
        await client.close()


@pytest_twisted.ensureDeferred
async def test_a_full_disk_in_a_client_batch_is_server_unavailable_for_that_file(reactor, server,  # noqa: F811
                                                                                  monkeypatch):
    fill_the_disk_for(monkeypatch)
    client = ServerClient(reactor, server.url, "c")
    try:
        datas = [b"ok %d" % i for i in range(6)] + [b"FULL!"]
        answers = await settled(client.upload(f"f{i}", None, sha(d), None, data=d) for i, d in enumerate(datas))
        assert [a.path for a in answers[:-1]] == [f"f{i}" for i in range(6)]
        assert isinstance(answers[-1], ServerUnavailable) and "INSUFFICIENT_STORAGE" in str(answers[-1])
    finally:
        await client.close()


@pytest_twisted.ensureDeferred
async def test_client_downloads_waiting_at_once_travel_in_batches(reactor, server, http):  # noqa: F811
    datas = {f"d/{i:02}.bin": os.urandom(100 + i) for i in range(40)}
    await send_batch(http, server, [item(p, d) for p, d in datas.items()])
    big = b"B" * (SMALL_DOWNLOAD + 10)
    with open(os.path.join(server.root, "big.bin"), "wb") as f:
        f.write(big)
    await server.service.operations.refresh(None)
    client = ServerClient(reactor, server.url, "reader")
    try:
        with LogCapture() as log:
            answers = await settled(client.download_bytes(p, sha(d), len(d)) for p, d in datas.items())
        assert answers == list(datas.values())
        requests = access_lines(log)
        assert len(requests) <= 4 and [r for r in requests if r[1] == BATCH_DOWNLOAD], requests
        with LogCapture() as log:
            answers = await settled([  # the first two go alone, the others in a batch
                client.download_bytes("d/00.bin", sha(datas["d/00.bin"]), 100),
                client.download_bytes("d/02.bin", sha(datas["d/02.bin"]), 102),
                client.download_bytes("d/01.bin", sha(b"something else"), 101),
                client.download_bytes("missing.bin", sha(b""), 0),
                client.download_bytes("big.bin", sha(big), len(big)),  # TOO_LARGE in a batch: fetched alone
                client.download_bytes("d/03.bin", sha(datas["d/03.bin"]), 103),
            ])
        assert answers[:2] == [datas["d/00.bin"], datas["d/02.bin"]]
        assert answers[4:] == [big, datas["d/03.bin"]]
        assert isinstance(answers[2], DownloadCorrupt)
        assert isinstance(answers[3], RequestRefused) and (answers[3].status, answers[3].code) == (404, "NOT_FOUND")
        requests = access_lines(log)
        assert ("POST", BATCH_DOWNLOAD, 200) in requests and ("GET", "/api/download?path=big.bin", 200) in requests
    finally:
        await client.close()


class _NoBatches(resource.Resource):
    """A server from before batches: /api/upload and /api/download on a dict, 405 for
    everything else (as a server whose routes do not know the method would)."""

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.files, self.requests = {}, []

    def render(self, request):
        self.requests.append((request.method, request.path))
        name = request.args.get(b"path", [b""])[0].decode()
        if request.path == b"/api/upload" and request.method == b"PUT":
            data = request.content.read()
            if request.getHeader(b"x-content-sha256") != sha(data).encode():
                request.setResponseCode(422)
                return b'{"error": {"code": "HASH_MISMATCH", "message": "no"}}'
            self.files[name] = data
            return json.dumps({"path": name, "size": len(data), "modified": "2026-01-01T00:00:00Z",
                               "hash": sha(data), "is_directory": False}).encode()
        if request.path == b"/api/download" and request.method == b"GET" and name in self.files:
            return self.files[name]
        request.setResponseCode(405)
        return b"<html>method not allowed</html>"


@pytest_twisted.ensureDeferred
async def test_a_client_falls_back_to_one_request_a_file_for_a_server_without_batches(reactor):
    old = _NoBatches()
    async with client_of(reactor, old) as client:
        for round_ in range(2):
            datas = {f"r{round_}/{i}": b"%d-%d" % (round_, i) for i in range(30)}
            answers = await settled(client.upload(p, None, sha(d), None, data=d) for p, d in datas.items())
            assert [a.path for a in answers] == list(datas)
            assert all(old.files[p] == d for p, d in datas.items())
            answers = await settled(client.download_bytes(p, sha(d), len(d)) for p, d in datas.items())
            assert answers == list(datas.values())
        batches = [r for r in old.requests if r[1].startswith(b"/api/batch/")]
        assert batches == [(b"POST", b"/api/batch/upload")]  # asked once, then never again
        assert len(old.requests) == 1 + 2 * 2 * 30


@pytest_twisted.ensureDeferred
async def test_a_client_falls_back_when_the_batch_routes_are_not_served(reactor, tmp_path):
    """The real server, configured to route only the single-file endpoints: 404 for
    /api/batch/*; the client then sends each file on its own, downloads too."""
    document = server_document(str(tmp_path / "root"))
    route = document["apps"]["http"]["servers"]["file_sync_server"]["routes"][0]
    route["match"] = [{"path": ["/api/upload", "/api/download", "/api/list", "/api/changes"]}]
    service, (port,) = await start_service(reactor, document, str(tmp_path))
    url = f"http://127.0.0.1:{port}"
    uploader, downloader = ServerClient(reactor, url, "up"), ServerClient(reactor, url, "down")
    try:
        datas = {f"p/{i:02}.txt": b"content %d" % i for i in range(25)}
        with LogCapture() as log:
            answers = await settled(uploader.upload(p, None, sha(d), None, data=d) for p, d in datas.items())
            assert [a.path for a in answers] == list(datas)
            assert await settled(downloader.download_bytes(p, sha(d), len(d)) for p, d in datas.items()) == \
                list(datas.values())
        requests = access_lines(log)
        assert [r for r in requests if r[1].startswith("/api/batch/")] == [
            ("POST", BATCH_UPLOAD, 404), ("POST", BATCH_DOWNLOAD, 404)]
        assert len([r for r in requests if r[1].startswith("/api/upload?")]) == len(datas)
        assert len([r for r in requests if r[1].startswith("/api/download?")]) == len(datas)
        assert all((tmp_path / "root" / p).read_bytes() == d for p, d in datas.items())
    finally:
        await uploader.close()
        await downloader.close()
        await service.stopService()


@pytest_twisted.ensureDeferred
async def test_a_slow_batch_body_is_not_cut_at_the_request_deadline(reactor, server):  # noqa: F811
    """Like a single upload's body, a batch's (up to 16 MiB from a slow uplink) may take
    longer than the deadline for a whole request; only the idle timeout applies."""
    deadline = 0.3
    for listener in server.service.listeners:
        listener.site.request_timeout = deadline
    client = RawClient(reactor)
    await TCP4ClientEndpoint(reactor, "127.0.0.1", server.port).connect(Factory.forProtocol(lambda: client))
    body = batch_body([item("slow/a.txt", b"a" * 10), item("slow/b.txt", b"b" * 10)])
    try:
        client.transport.write(b"POST /api/batch/upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
                               b"Connection: close\r\n\r\n" % len(body))
        await trickle(reactor, client, body, step=deadline * 3 / len(body))
        await within(reactor, client.lost, 5)
        assert client.received.startswith(b"HTTP/1.1 200"), client.received[:200]
        assert (on_disk(server, "slow/a.txt"), on_disk(server, "slow/b.txt")) == (b"a" * 10, b"b" * 10)
    finally:
        if client.open:
            client.transport.abortConnection()
