"""A hostile server against the real sync client: paths that climb out of the folder,
absolute paths, the state directory, NUL and backslashes, symlinks in the folder that
lead out, in listings, in ``/api/changes`` and in WebSocket FileOperations. Nothing
outside the client's folder is written, deleted or read into it, and the client's own
state directory is never a sync target."""

import hashlib
import json
import os
from urllib.parse import parse_qs, urlsplit

import pytest
import pytest_twisted
from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet.endpoints import serverFromString
from twisted.web import resource, server

from tests.logcapture import LogCapture
from support import wait_for

EVIL = b"EVIL: a hostile server's content\n"
GOOD = b"good content\n"
VICTIM = b"victim: outside the folder, must survive\n"
MODIFIED = "2024-01-21T12:00:00Z"


def sha(data):
    return hashlib.sha256(data).hexdigest()


def meta(path, data=EVIL, directory=False):
    return {"path": path, "size": 0 if directory else len(data), "modified": MODIFIED,
            "hash": "" if directory else sha(data), "is_directory": directory}


def hostile_paths(tmp_path):
    """Paths no client may act on: syntactically bad ones, and valid ones through the
    folder's ``link-out`` symlink (which leads outside) or into its state directory."""
    return [
        "../escape.txt", "../../escape.txt", "a/../../escape.txt", str(tmp_path / "abs.txt"),
        "/" + str(tmp_path / "abs2.txt").lstrip("/"), "..\\escape.txt", "sub\\..\\..\\escape.txt",
        ".quantum-sync/evil", ".quantum-sync", "nul\x00.txt", "..", ".", "", "x/" * 2050,
        "link-out/evil.txt", "link-out/passwd", "link-out", "link-sib/victim.txt",
    ]


def operations(tmp_path):
    """Every kind of operation with every hostile path, and moves between good and bad."""
    ops = []
    for path in hostile_paths(tmp_path):
        ops += [{"Create": {"metadata": meta(path)}}, {"Update": {"metadata": meta(path)}},
                {"Create": {"metadata": meta(path, directory=True)}}, {"Delete": {"path": path}},
                {"Move": {"from": "good.txt", "to": path}}, {"Move": {"from": path, "to": "stolen.txt"}}]
    return ops


class FakeServer(resource.Resource):
    """Answers the client's API calls with hostile listings and journal entries and
    serves ``EVIL`` for any download; records what the client asked and sent."""

    isLeaf = True

    def __init__(self, listing, changes):
        super().__init__()
        self.listing = listing
        self.changes = changes
        self.requests = []
        self.uploads = {}

    def render(self, request):
        url = urlsplit(request.uri.decode("utf-8", "replace"))
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        self.requests.append((request.method.decode(), url.path, query.get("path")))
        request.setHeader(b"Content-Type", b"application/json")
        if url.path == "/api/list":
            return json.dumps(self.listing).encode()
        if url.path == "/api/changes":
            since = int(query.get("since", 0))
            entries = [c for c in self.changes if c["seq"] > since]
            return json.dumps({"changes": entries, "cursor": len(self.changes), "has_more": False}).encode()
        if url.path == "/api/download":
            request.setHeader(b"Content-Type", b"application/octet-stream")
            return GOOD if query.get("path") == "good.txt" else EVIL
        if url.path == "/api/metadata":
            found = [m for m in self.listing if m.get("path") == query.get("path")]
            return json.dumps(found[0] if found else meta(query.get("path", "x"))).encode()
        if url.path == "/api/upload":
            data = request.content.read()
            self.uploads[query.get("path")] = data
            return json.dumps(meta(query.get("path", "x"), data)).encode()
        if url.path == "/api/sync":
            body = json.loads(request.content.read() or b"{}")
            results = [{"status": "applied", "seq": 1} for _ in body.get("operations", [])]
            return json.dumps({"results": results, "cursor": len(self.changes)}).encode()
        if url.path == "/ws/metrics":
            return json.dumps({"journal_head": len(self.changes)}).encode()
        if url.path == "/ws/health":
            return b'{"status": "ok"}'
        request.setResponseCode(404)
        return b'{"error": {"code": "NOT_FOUND", "message": "no"}}'


class HostileHub(WebSocketServerProtocol):
    """Acks the client's Subscribe, then sends every hostile FileOperation."""

    def onMessage(self, payload, isBinary):
        message = json.loads(payload)
        factory = self.factory
        if message.get("type") == "Subscribe":
            self.sendMessage(b'{"type": "Ack", "operation_id": "subscribe"}')
            for n, operation in enumerate(factory.operations, start=1000):
                self.sendMessage(json.dumps({
                    "type": "FileOperation", "operation": operation, "source_client": "evil",
                    "topic": "file_operations", "seq": n, "timestamp": MODIFIED}).encode())
            factory.sent += 1


def tree_outside(tmp_path, folder):
    """Names and content hashes under ``tmp_path`` outside ``folder``."""
    found = {}
    for directory, dirs, files in os.walk(tmp_path, followlinks=False):
        if os.path.abspath(directory) == os.path.abspath(folder):
            dirs[:] = []
            continue
        for name in files:
            full = os.path.join(directory, name)
            found[full] = sha(open(full, "rb").read()) if not os.path.islink(full) else "link"
        for name in dirs:
            found[os.path.join(directory, name)] = "dir"
    return found


def folder_contents(folder):
    """Every regular file under ``folder`` (not through symlinks) and its content."""
    found = {}
    for directory, dirs, files in os.walk(folder, followlinks=False):
        for name in files:
            full = os.path.join(directory, name)
            if not os.path.islink(full):
                found[os.path.relpath(full, folder)] = open(full, "rb").read()
    return found


@pytest_twisted.async_yield_fixture
async def hostile_server(reactor, tmp_path):
    started = {}

    async def start(listing, changes, ws_operations):
        fake = FakeServer(listing, changes)
        factory = WebSocketServerFactory()
        factory.protocol = HostileHub
        factory.operations = ws_operations
        factory.sent = 0
        site = server.Site(_Everything(fake, factory))
        port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(site)
        started["port"] = port
        return fake, factory, f"http://127.0.0.1:{port.getHost().port}"

    yield start
    if "port" in started:
        await started["port"].stopListening()


class _Everything(resource.Resource):
    """``/ws`` is the hostile hub, everything else the fake API."""

    def __init__(self, fake, factory):
        super().__init__()
        self.fake = fake
        self.ws = WebSocketResource(factory)

    def getChildWithDefault(self, name, request):
        if request.path == b"/ws":
            return self.ws
        return self.fake


def make_folder(tmp_path):
    """The client's folder with ``link-out -> outside/`` and ``link-sib -> ../victim-dir``,
    and files outside it that a hostile server would like to change or steal."""
    folder = tmp_path / "folder"
    folder.mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "passwd").write_bytes(VICTIM)
    (tmp_path / "victim-dir").mkdir()
    (tmp_path / "victim-dir" / "victim.txt").write_bytes(VICTIM)
    (tmp_path / "escape.txt").write_bytes(VICTIM)
    os.symlink(tmp_path / "outside", folder / "link-out")
    os.symlink("../victim-dir", folder / "link-sib")
    return folder


SCENARIOS = {
    # a listing of hostile entries next to one good file
    "listing": lambda tmp: ([meta("good.txt", GOOD)] + [meta(p) for p in hostile_paths(tmp)], [], []),
    # a journal of hostile operations
    "changes": lambda tmp: ([meta("good.txt", GOOD)], [
        {"seq": n, "operation": op, "source_client": "evil", "timestamp": MODIFIED}
        for n, op in enumerate(operations(tmp), start=1)], []),
    # hostile FileOperations over the WebSocket
    "websocket": lambda tmp: ([meta("good.txt", GOOD)], [], operations(tmp)),
}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
@pytest_twisted.ensureDeferred
async def test_hostile_server_cannot_escape_the_folder(reactor, tmp_path, hostile_server, scenario):
    from quantum_sync.client.service import ClientConfig, SyncClientService

    folder = make_folder(tmp_path)
    listing, changes, ws_operations = SCENARIOS[scenario](tmp_path)
    fake, factory, url = await hostile_server(listing, changes, ws_operations)
    outside_before = tree_outside(tmp_path, folder)
    config = ClientConfig(server=url, folder=str(folder), client_id="victim", interval=0.3,
                          settle=0.05, realtime=True)
    client = SyncClientService(config, reactor)
    with LogCapture() as errors:
        client.startService()
        try:
            await wait_for(reactor, lambda: any(p == "/api/list" for _, p, _ in fake.requests), 10)
            if ws_operations:
                await wait_for(reactor, lambda: factory.sent > 0, 10)
            if scenario != "listing":
                # the hostile scenarios keep the good file in the listing: once it has
                # arrived, the client has processed what came before and after it
                await wait_for(reactor, lambda: (folder / "good.txt").exists(), 10)
            # one more full reconcile against the hostile listing and journal, and every
            # job anything started has ended
            await client.engine.reconcile()
            await client.engine.idle()
        finally:
            await client.stopService()

    assert tree_outside(tmp_path, folder) == outside_before
    contents = folder_contents(folder)
    state = {p: c for p, c in contents.items() if p.startswith(".quantum-sync/")}
    assert all(c != EVIL for c in state.values()), sorted(state)
    synced = {p: c for p, c in contents.items() if not p.startswith(".quantum-sync/")}
    assert "stolen.txt" not in synced
    assert all(content != EVIL for content in synced.values()), sorted(synced)
    for data in fake.uploads.values():
        assert data != VICTIM  # nothing from outside was read into the folder and sent
    assert errors.failures() == [], errors.error_messages()
