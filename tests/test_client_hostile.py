"""A hostile or failing server can never make the client write outside its folder, nor
read an error as "everything was deleted". The server here is a small twisted.web fake
(real sockets on 127.0.0.1), because a real quantum-sync server never sends such things."""

import hashlib
import json
import os

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.web import resource, server as web_server

from clients import Clients, read, write
from support import wait_for

GOOD = b"good content"
EVIL = b"pwned"


def meta(path, data):
    return {"path": path, "size": len(data), "modified": "2024-01-21T12:00:00Z",
            "hash": hashlib.sha256(data).hexdigest(), "is_directory": False}


HOSTILE_PATHS = ["../evil.txt", "/tmp/evil-abs.txt", "a/../../evil2.txt", ".quantum-sync/state.db",
                 "link/pwned.txt", "back\\slash.txt", ""]


class FakeServer(resource.Resource):
    """Answers the client's calls with hostile paths (or with errors when ``failing``)."""

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.failing = False
        self.requests = []

    def render(self, request):
        path = request.path.decode()
        self.requests.append((request.method.decode(), path))
        if self.failing:
            request.setResponseCode(503)
            return b'{"error": {"code": "INTERNAL_ERROR", "message": "maintenance"}}'
        if path == "/api/list":
            return json.dumps([meta(p, EVIL) for p in HOSTILE_PATHS] + [meta("good.txt", GOOD)]).encode()
        if path == "/api/changes":
            changes = [{"seq": i + 1, "operation": {"Create": {"metadata": meta(p, EVIL)}}, "source_client": "x",
                        "timestamp": "2024-01-21T12:00:00Z"} for i, p in enumerate(HOSTILE_PATHS)]
            changes.append({"seq": 99, "operation": {"Move": {"from": "good.txt", "to": "../moved-out.txt"}},
                            "source_client": "x", "timestamp": "2024-01-21T12:00:00Z"})
            return json.dumps({"changes": changes, "cursor": 99, "has_more": False}).encode()
        if path == "/api/download":
            wanted = request.args.get(b"path", [b""])[0].decode()
            return GOOD if wanted == "good.txt" else EVIL
        request.setResponseCode(404)
        return b'{"error": {"code": "NOT_FOUND", "message": "no"}}'


@pytest.fixture
def fake(reactor):
    site = web_server.Site(FakeServer())
    port = reactor.listenTCP(0, site, interface="127.0.0.1")

    class Running:
        url = f"http://127.0.0.1:{port.getHost().port}"
        handler = site.resource

    yield Running
    pytest_twisted.blockon(defer.maybeDeferred(port.stopListening))


@pytest.fixture
def clients(reactor, tmp_path):
    group = Clients(reactor, tmp_path / "clients")
    yield group
    pytest_twisted.blockon(defer.ensureDeferred(group.stop_all()))


def outside_files(tmp_path, folder):
    """Every file under tmp_path that is not inside the client's folder."""
    found = []
    for dirpath, _, filenames in os.walk(tmp_path):
        if os.path.realpath(dirpath).startswith(os.path.realpath(folder)):
            continue
        found += [os.path.join(dirpath, f) for f in filenames]
    return found


@pytest_twisted.ensureDeferred
async def test_hostile_paths_from_the_server_never_escape_the_folder(reactor, tmp_path, fake, clients):
    outside = tmp_path / "outside"
    outside.mkdir()
    folder = tmp_path / "clients" / "victim"
    folder.mkdir(parents=True)
    os.symlink(outside, folder / "link")  # a symlink inside the folder leading out
    client = await clients.start(fake, "victim", realtime=False)
    await wait_for(reactor, lambda: read(str(folder), "good.txt") == GOOD, what="the good file")
    await client.engine.catch_up_soon()
    await client.engine.idle()  # every job the hostile changes started has ended
    assert outside_files(tmp_path, folder) == []
    assert not (tmp_path / "evil.txt").exists() and not os.path.exists("/tmp/evil-abs.txt")
    assert read(str(folder), "../moved-out.txt") is None
    assert os.listdir(outside) == []
    with open(folder / ".quantum-sync" / "state.db", "rb") as f:
        assert f.read(15) == b"SQLite format 3"


@pytest_twisted.ensureDeferred
async def test_a_failing_server_is_not_everything_deleted(reactor, tmp_path, fake, clients):
    client = await clients.start(fake, "victim", realtime=False)
    folder = client.config.folder
    await wait_for(reactor, lambda: read(folder, "good.txt") == GOOD, what="the good file")
    write(folder, "mine.txt", b"local only")
    fake.handler.failing = True
    seen = len(fake.handler.requests)
    await wait_for(reactor, lambda: len(fake.handler.requests) > seen + 3, what="reconciles against the failing server")
    assert read(folder, "good.txt") == GOOD and read(folder, "mine.txt") == b"local only"
    assert client.engine.online is False
