"""After a stop in the middle of uploads, nothing is answered from an index that is not
yet trusted (a request waits a few seconds, then gets 503 with Retry-After; a WebSocket
Subscribe is answered once the index is trusted); the paths whose uploads
were intended and never journalled are looked at first; a file is recognised as changed
by its inode and ctime too, not only its size and mtime."""

import hashlib
import os
import sqlite3

import pytest_twisted
from twisted.internet.defer import Deferred

from quantum_sync import config as config_module
from quantum_sync.server.service import make_server_service
from quantum_sync.server.spools import UploadSpool
from quantum_sync.server.store import Store
from tests.support import HttpClient, server_document, start_server, wait_for
from test_disk_changes import WITHIN, GatedStore, operations_on
from test_ws_support import connect, drop_all


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _replace_keeping_size_and_mtime(name: str, data: bytes) -> None:
    """What an upload interrupted between its rename and its journal entry leaves, or
    another program that puts the mtime back: new bytes, same size and mtime."""
    st = os.lstat(name)
    assert len(data) == st.st_size
    with open(name + ".new", "wb") as f:
        f.write(data)
    os.utime(name + ".new", ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(name + ".new", name)


@pytest_twisted.ensureDeferred
async def test_requests_wait_for_the_interrupted_uploads_to_be_checked(reactor, tmp_path):
    http = HttpClient(reactor)
    running = await start_server(reactor, tmp_path)
    await http.json("POST", f"{running.url}/api/upload", params={"path": "a.txt"}, data=b"old-content")
    await running.stop()
    _replace_keeping_size_and_mtime(os.path.join(running.root, "a.txt"), b"new-content")
    with sqlite3.connect(os.path.join(running.state_dir, "index.sqlite3")) as db:
        db.execute("INSERT INTO intents (path) VALUES ('a.txt')")  # the crash left it

    store = GatedStore(running.root)
    store.release.clear()
    config = config_module.parse(server_document(running.root), source="<test>", base_dir=str(tmp_path))
    service = make_server_service(config, reactor, store=store)
    service.operations.ready_wait = 0.5
    service.startService()
    clients = []
    try:
        port = (await service.listeners[0].when_listening()).getHost().port
        url = f"http://127.0.0.1:{port}"
        await wait_for(reactor, store.entered.is_set, WITHIN)
        for route, params in (("metadata", {"path": "a.txt"}), ("list", {}), ("changes", {})):
            response = await http.get(f"{url}/api/{route}", params=params)
            body = await response.json()
            assert (response.code, body["error"]["code"]) == (503, "SERVICE_UNAVAILABLE"), route
            assert response.headers.getRawHeaders("Retry-After") == ["1"]
        client = await connect(reactor, f"ws://127.0.0.1:{port}/ws")
        clients.append(client)
        client.send_json({"type": "Subscribe", "client_id": "early"})
        assert await client.request({"type": "Ping"}) == {"type": "Pong"}  # answered at once
        service.operations.ready_wait = 30
        answered = []
        waiting = http.get(f"{url}/api/metadata", params={"path": "a.txt"})
        waiting.addBoth(lambda result: answered.append(result) or result)
        assert client.received == [{"type": "Pong"}] and not answered
        store.release.set()
        ack = await client.next()  # the Subscribe, once the interrupted upload is journalled
        assert (ack["type"], ack["operation_id"], ack["cursor"]) == ("Ack", "subscribe", 2)
        response = await waiting
        meta = await response.json()
        assert meta["hash"] == sha(b"new-content")  # same size and mtime, another inode
        await service.when_ready()
        _, changes = await http.json("GET", f"{url}/api/changes")
        assert changes["changes"][-1]["operation"]["Update"]["metadata"]["hash"] == sha(b"new-content")
        with sqlite3.connect(os.path.join(running.state_dir, "index.sqlite3")) as db:
            assert db.execute("SELECT COUNT(*) FROM intents").fetchone() == (0,)
    finally:
        store.release.set()
        await drop_all(reactor, clients, service.hub)
        await service.stopService()
        await http.close()


@pytest_twisted.ensureDeferred
async def test_a_rewrite_with_the_same_size_and_mtime_is_seen(reactor, tmp_path):
    http = HttpClient(reactor)
    running = await start_server(reactor, tmp_path)
    try:
        name = os.path.join(running.root, "a.txt")
        await http.json("POST", f"{running.url}/api/upload", params={"path": "a.txt"}, data=b"version-0")
        _replace_keeping_size_and_mtime(name, b"version-1")  # another inode
        response = await http.get(f"{running.url}/api/download", params={"path": "a.txt"})
        assert response.headers.getRawHeaders("ETag") == [f'"{sha(b"version-1")}"']  # not version-0's
        assert await response.content() == b"version-1"
        _replace_keeping_size_and_mtime(name, b"version-2")
        _, meta = await http.json("GET", f"{running.url}/api/metadata", params={"path": "a.txt"})
        assert meta["hash"] == sha(b"version-2")
        st = os.lstat(name)
        with open(name, "r+b") as f:  # in place: the same inode, a new ctime
            f.write(b"VERSION-3")
        os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns))
        _, meta = await http.json("GET", f"{running.url}/api/metadata", params={"path": "a.txt"})
        assert meta["hash"] == sha(b"VERSION-3")
        response = await http.get(f"{running.url}/api/download", params={"path": "a.txt"})
        assert response.headers.getRawHeaders("ETag") == [f'"{sha(b"VERSION-3")}"']
        assert await response.content() == b"VERSION-3"
    finally:
        await http.close()
        await running.stop()


class IntentCheckingStore(Store):
    """Looks, at each install, whether the index already holds the intent (a reader of
    its own: WAL lets it see what was committed)."""

    seen = None

    def install_staged(self, temp, temp_stat, path, walked=None):
        with sqlite3.connect(os.path.join(self.state_dir, "index.sqlite3")) as db:
            self.seen = [row[0] for row in db.execute("SELECT path FROM intents")]
        return super().install_staged(temp, temp_stat, path, walked)


@pytest_twisted.ensureDeferred
async def test_an_uploads_intent_is_durable_before_its_rename(reactor, tmp_path):
    store = IntentCheckingStore(str(tmp_path / "root"))
    async with operations_on(reactor, store) as operations:
        spool = UploadSpool(store.temp_dir)
        spool.write(b"data")
        spool.finish()
        await Deferred.fromCoroutine(operations.upload("d/x.bin", spool, spool.sha256, 4, "c"))
        assert store.seen == ["d/x.bin"]
        assert await operations.index.intents() == []  # forgotten with the journal entry
