"""End-to-end helpers: real clients (the daemon's own service objects, in the test
reactor) on real folders, and what a test reads and writes in those folders.

The ``clients`` fixture (conftest.py) hands a test a :class:`Clients`."""

import hashlib
import os

import treq
from twisted.internet import defer

from quantum_sync.client.service import ClientConfig, SyncClientService
from quantum_sync.client.transfer import ServerClient
from quantum_sync.paths import STATE_DIR_NAME
from quantum_sync.protocol import Delete, Move
from support import wait_for

#: What ``keep.txt`` holds: a file that keeps a folder from ever being emptied (a client
#: holds back deleting everything).
KEEP = b"so that the folder is not emptied"


def sha(data: bytes) -> str:
    """The SHA-256 of ``data`` as :func:`tree` gives it."""
    return hashlib.sha256(data).hexdigest()


def tree(folder):
    """path → sha256 (None for directories) of everything under ``folder`` but the state dir."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        rel_dir = os.path.relpath(dirpath, folder)
        if rel_dir == ".":
            dirnames[:] = [d for d in dirnames if d != STATE_DIR_NAME]
        for d in dirnames:
            found[os.path.normpath(os.path.join(rel_dir, d))] = None
        for f in filenames:
            with open(os.path.join(dirpath, f), "rb") as fh:
                found[os.path.normpath(os.path.join(rel_dir, f))] = hashlib.sha256(fh.read()).hexdigest()
    return found


def write(folder, rel, data: bytes, mtime=None):
    """Write ``data`` to ``folder/rel`` (making its directories); set its mtime if given."""
    path = os.path.join(folder, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    if mtime is not None:
        os.utime(path, (mtime, mtime))


def read(folder, rel):
    """The bytes of ``folder/rel``; None when it is missing or not a file."""
    try:
        with open(os.path.join(folder, rel), "rb") as f:
            return f.read()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None


def server_has_websocket(server) -> bool:
    """True when the server's first listener routes /ws (clients subscribe there); a
    stand-in server without a config is taken to."""
    config = getattr(server, "config", None)
    return config is None or config.listeners[0].routes_to_handler("/ws")


class Clients:
    """Starts clients against a server and stops them all at the end."""

    def __init__(self, reactor, tmp_path):
        self.reactor, self.tmp_path, self.running = reactor, tmp_path, []

    async def start(self, server, name, wait=True, **options):
        """Start client ``name`` on ``tmp_path/name`` (or ``folder=``); with ``wait``,
        return once it has reconciled and (when real-time) subscribed."""
        folder = options.pop("folder", None) or str(self.tmp_path / name)
        os.makedirs(folder, exist_ok=True)
        config = ClientConfig(
            server=server.url,
            folder=os.path.realpath(folder),
            client_id=options.pop("client_id", name),
            interval=options.pop("interval", 1.0),
            settle=options.pop("settle", 0.05),
            **options,
        )
        client = SyncClientService(config, self.reactor)
        client.startService()
        self.running.append(client)
        if wait:
            await wait_for(self.reactor, lambda: client.ready.called, what=f"{name} ready")
            if config.realtime and server_has_websocket(server):
                await wait_for(self.reactor, lambda: client.link.connected, what=f"{name} subscribed")
        return client

    async def pair(self, server, **options):
        """Clients "a" and "b" on one server, and their folders."""
        a = await self.start(server, "a", **options)
        b = await self.start(server, "b")
        return a, b, a.config.folder, b.config.folder

    async def synced(self, server, files, dirs=(), name="a", **options):
        """Client ``name`` (``options``: as :meth:`start`) with ``files`` (path → bytes)
        and the empty directories ``dirs`` written in its folder, once the server's root
        holds the same tree; returns the client and its folder."""
        client = await self.start(server, name, **options)
        folder = client.config.folder
        for path, data in files.items():
            write(folder, path, data)
        for path in dirs:
            os.makedirs(os.path.join(folder, path))
        await converged(self.reactor, folder, server.root)
        return client, folder

    async def behind(self, server, files=None, dirs=()):
        """Client ``a`` with ``keep.txt`` and ``d/x.txt`` (or the ``files`` and ``dirs``
        given) synced, hearing nothing more until it catches up (no WebSocket, no
        periodic reconcile); returns the client and its folder."""
        files = {"d/x.txt": b"x"} if files is None else files
        return await self.synced(server, {"keep.txt": KEEP, **files}, dirs, realtime=False, interval=3600)

    async def stop(self, client):
        if client in self.running:
            self.running.remove(client)
            await client.stopService()

    async def stop_all(self):
        for client in list(self.running):
            await self.stop(client)


async def converged(reactor, *folders, timeout=None):
    """Wait until every folder holds the same (non-empty) tree; return it."""

    def same():
        trees = [tree(f) for f in folders]
        return all(t == trees[0] for t in trees[1:]) and trees[0]

    try:
        return await wait_for(reactor, same, *([timeout] if timeout else []), what="folders to converge")
    except AssertionError:
        raise AssertionError("not converged: " + repr([tree(f) for f in folders])) from None


async def as_other(server, method, path, **kwargs):
    """A request to ``server`` as the client ``other``; its JSON answer (a 200)."""
    response = await treq.request(method, f"{server.url}{path}", headers={"X-Client-Id": "other"}, **kwargs)
    body = await response.json()
    assert response.code == 200, body
    return body


async def move(server, source, destination):
    """Another client moves ``source`` to ``destination`` on ``server``."""
    body = await as_other(server, "POST", "/api/sync", json={
        "operations": [{"Move": {"from": source, "to": destination}}], "client_id": "other"})
    assert body["results"][0]["status"] == "applied"


class HeldUpload:
    """Holds the client's upload of ``path`` until :meth:`release`, and records the
    order in which uploads end and Moves/Deletes go out (``monkeypatch``: on every
    ServerClient, for a client not started yet)."""

    def __init__(self, path, client=None, monkeypatch=None):
        self.path, self.events = path, []
        self.started, self.gate = defer.Deferred(), defer.Deferred()
        real_upload, real_sync = ServerClient.upload, ServerClient.sync

        async def upload(server, path, *args):
            if path == self.path and not self.started.called:
                self.started.callback(None)
                await self.gate
            meta = await real_upload(server, path, *args)
            self.events.append(("uploaded", path))
            return meta

        async def sync(server, operations):
            for op in operations:
                if isinstance(op, (Move, Delete)):
                    self.events.append(("sent", op))
                    self.release()  # if sent while the upload was in flight: let that land after
            return await real_sync(server, operations)

        def held_upload(server, path, *args):
            return defer.ensureDeferred(upload(server, path, *args))

        if monkeypatch is not None:
            monkeypatch.setattr(ServerClient, "upload", held_upload)
            monkeypatch.setattr(ServerClient, "sync", sync)
        else:
            server = client.engine.server
            server.upload = lambda path, *args: held_upload(server, path, *args)
            server.sync = lambda operations: sync(server, operations)

    def release(self):
        if not self.gate.called:
            self.gate.callback(None)
