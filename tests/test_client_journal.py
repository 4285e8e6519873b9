"""The engine and the server's journal: the cursor moves only past applied changes, a
journal that started over (another journal_id, or 410) means a safe full reconcile, and a
failed download is retried. The server is a small twisted.web fake on a real socket that
speaks the journal protocol (journal_id in answers) and can be told to fail."""

import hashlib
import json
import os

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.web import resource, server as web_server

from quantum_sync.client import localfs
from quantum_sync.client.engine import Engine
from quantum_sync.client.state import FolderState
from quantum_sync.client.transfer import ServerClient
from quantum_sync.protocol import Create, Delete, FileMetadata, Update

from support import wait_for

OLD, NEW = "a" * 32, "b" * 32
WHEN = "2024-01-21T12:00:00Z"


def sha(data):
    return hashlib.sha256(data).hexdigest()


def meta(path, data):
    return {"path": path, "size": len(data), "modified": WHEN, "hash": sha(data), "is_directory": False}


def error(request, status, code, **extra):
    request.setResponseCode(status)
    return json.dumps({"error": {"code": code, "message": code.lower(), **extra}}).encode()


class JournalServer(resource.Resource):
    """Files, a journal and its id; ``refuse_downloads`` answers that many downloads 403,
    ``hold_downloads`` keeps download answers until released."""

    isLeaf = True

    def __init__(self, journal_id=OLD):
        super().__init__()
        self.journal_id = journal_id
        self.files = {}  # path → bytes
        self.journal = []  # (seq, operation JSON, source)
        self.refuse_downloads = 0
        self.held = None  # a Deferred the download answers wait for
        self.requests = []
        self.uploads = []
        self.deletes = []

    def add(self, path, data, source="other"):
        """A file written by another client: stored and journalled."""
        kind = "Update" if path in self.files else "Create"
        self.files[path] = data
        self.journal.append((len(self.journal) + 1, {kind: {"metadata": meta(path, data)}}, source))
        return len(self.journal)

    def start_over(self, journal_id=NEW):
        """The server's state was lost: a new journal, starting from the files it holds."""
        self.journal_id = journal_id
        self.journal = []
        for path, data in sorted(self.files.items()):
            self.journal.append((len(self.journal) + 1, {"Create": {"metadata": meta(path, data)}}, "server"))

    def render(self, request):
        path = request.path.decode()
        self.requests.append((request.method.decode(), path, {k.decode(): v[0].decode() for k, v in request.args.items()}))
        handler = getattr(self, "_" + path.strip("/").replace("/", "_"), None)
        if handler is None:
            return error(request, 404, "NOT_FOUND")
        return handler(request)

    def _arg(self, request, name, default=None):
        return request.args.get(name.encode(), [default.encode() if default is not None else None])[0]

    def _api_list(self, request):
        return json.dumps([meta(p, d) for p, d in sorted(self.files.items())]).encode()

    def _ws_metrics(self, request):
        return json.dumps({"journal_head": len(self.journal)}).encode()

    def _api_metadata(self, request):
        path = self._arg(request, "path").decode()
        if path not in self.files:
            return error(request, 404, "NOT_FOUND")
        return json.dumps(meta(path, self.files[path])).encode()

    def _api_changes(self, request):
        since = int(self._arg(request, "since", "0"))
        asked = self._arg(request, "journal_id")
        if (asked is not None and asked.decode() != self.journal_id) or since > len(self.journal):
            return error(request, 410, "CURSOR_EXPIRED", journal_id=self.journal_id, cursor=len(self.journal))
        changes = [{"seq": s, "operation": op, "source_client": src, "timestamp": WHEN}
                   for s, op, src in self.journal if s > since]
        return json.dumps({"changes": changes, "cursor": len(self.journal), "has_more": False,
                           "journal_id": self.journal_id}).encode()

    def _api_download(self, request):
        path = self._arg(request, "path").decode()
        if self.refuse_downloads:
            self.refuse_downloads -= 1
            return error(request, 403, "PERMISSION_DENIED")
        if path not in self.files:
            return error(request, 404, "NOT_FOUND")
        if self.held is not None:
            data = self.files[path]

            def answer(_):
                request.write(data)
                request.finish()

            self.held.addCallback(answer)
            return web_server.NOT_DONE_YET
        return self.files[path]

    def _api_upload(self, request):
        path = self._arg(request, "path").decode()
        data = request.content.read()
        self.uploads.append(path)
        self.add(path, data, source=request.getHeader("X-Client-Id") or "")
        return json.dumps(meta(path, data)).encode()

    def _api_sync(self, request):
        body = json.loads(request.content.read())
        results = []
        for op in body["operations"]:
            if "Delete" in op:
                self.deletes.append(op["Delete"]["path"])
                self.files.pop(op["Delete"]["path"], None)
            results.append({"status": "applied"})
        return json.dumps({"results": results, "cursor": len(self.journal)}).encode()


@pytest.fixture
def fake(reactor):
    handler = JournalServer()
    port = reactor.listenTCP(0, web_server.Site(handler), interface="127.0.0.1")
    handler.url = f"http://127.0.0.1:{port.getHost().port}"
    yield handler
    pytest_twisted.blockon(defer.maybeDeferred(port.stopListening))


class Folder:
    """A client folder: its state, server client and engine (no watcher, no WebSocket)."""

    def __init__(self, reactor, path, fake):
        self.reactor, self.path, self.fake = reactor, str(path), fake
        self.state = self.server = self.engine = None

    async def open(self):
        os.makedirs(self.path, exist_ok=True)
        self.state = await FolderState(self.reactor, self.path).open()
        self.server = ServerClient(self.reactor, self.fake.url, "me")
        self.engine = Engine(self.reactor, self.path, self.state, self.server, "me", retry_delay=0.05)
        return self

    async def close(self):
        if self.fake.held is not None:  # a test that failed while downloads were held
            self.fake.held.callback(None)
        self.engine.stop()
        await self.engine.idle()
        await self.server.close()
        await self.state.close()

    def read(self, rel):
        try:
            with open(os.path.join(self.path, rel), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None


@pytest.fixture
def folder(reactor, tmp_path, fake):
    opened = pytest_twisted.blockon(defer.ensureDeferred(Folder(reactor, tmp_path / "f", fake).open()))
    yield opened
    pytest_twisted.blockon(defer.ensureDeferred(opened.close()))


def create(path, data):
    return Create(FileMetadata(path, len(data), 0.0, sha(data), False))


@pytest_twisted.ensureDeferred
async def test_a_client_without_a_journal_id_adopts_the_first_it_hears(fake, folder):
    fake.add("a.txt", b"one")
    await folder.engine.reconcile()
    assert folder.state.journal_id is None or folder.state.journal_id == OLD
    folder.engine.journal_named(OLD)
    assert folder.state.journal_id == OLD and folder.state.cursor == 1
    listed = sum(1 for method, path, _ in fake.requests if path == "/api/list")
    await folder.engine.catch_up()
    assert sum(1 for method, path, _ in fake.requests if path == "/api/list") == listed  # no reconcile
    assert [args.get("journal_id") for _, path, args in fake.requests if path == "/api/changes"][-1] == OLD


async def _follow(folder):
    """The folder synced with the server and following its journal OLD."""
    await folder.engine.reconcile()
    folder.engine.journal_named(OLD)
    await folder.engine.catch_up()


async def _synced_then_lost(fake, folder):
    """Two files synced; the server then loses one of them and its journal starts over."""
    fake.add("kept.txt", b"kept")
    fake.add("lost.txt", b"the server loses this one")
    await _follow(folder)
    assert folder.read("lost.txt") == b"the server loses this one" and folder.state.cursor == 2
    del fake.files["lost.txt"]
    fake.start_over()


@pytest_twisted.ensureDeferred
async def test_another_journal_id_in_an_answer_means_a_reconcile_that_deletes_nothing(fake, folder):
    await _synced_then_lost(fake, folder)
    fake.add("new.txt", b"written after the restore")  # seq 2 of the new journal: below the old cursor
    os.remove(os.path.join(folder.path, "kept.txt"))  # a delete made here is still sent
    await folder.engine.catch_up()
    await folder.engine.idle()
    assert folder.read("new.txt") == b"written after the restore"
    assert folder.read("lost.txt") == b"the server loses this one"
    assert fake.files["lost.txt"] == b"the server loses this one" and "lost.txt" in fake.uploads
    assert fake.deletes == ["kept.txt"]
    assert folder.state.journal_id == NEW and folder.state.cursor == folder.engine.remote.journal.heard >= 2


@pytest_twisted.ensureDeferred
async def test_a_broadcast_from_another_journal_starts_over(fake, folder):
    await _synced_then_lost(fake, folder)
    fake.add("new.txt", b"announced live")
    await folder.engine.remote_operation(3, create("new.txt", b"announced live"), NEW)
    await folder.engine.catch_up_soon()
    await folder.engine.idle()
    assert folder.read("new.txt") == b"announced live"
    assert fake.files["lost.txt"] == b"the server loses this one"
    assert folder.state.journal_id == NEW and folder.state.cursor == len(fake.journal)


@pytest_twisted.ensureDeferred
async def test_a_410_with_the_same_journal_reconciles_and_takes_the_head(fake, folder):
    fake.add("a.txt", b"one")
    fake.add("a.txt", b"one, edited")
    await _follow(folder)
    assert folder.state.cursor == 2
    del fake.journal[1:]  # a rolled-back journal: our cursor is beyond its head
    fake.files["b.txt"] = b"two"
    await folder.engine.catch_up()
    await folder.engine.idle()
    assert folder.read("b.txt") == b"two" and folder.read("a.txt") == b"one, edited"
    assert folder.state.cursor == 1 and folder.state.journal_id == OLD


@pytest_twisted.ensureDeferred
async def test_the_cursor_moves_only_once_the_change_is_applied(fake, folder):
    fake.add("a.txt", b"one")
    await folder.engine.reconcile()
    fake.held = defer.Deferred()
    fake.add("b.txt", b"two")
    applied = folder.engine.remote_operation(2, create("b.txt", b"two"), OLD)
    await wait_for(folder.reactor, lambda: ("GET", "/api/download", {"path": "b.txt"}) in fake.requests,
                   what="the download asked for")
    del fake.files["a.txt"]
    await folder.engine.remote_operation(3, Delete("a.txt"), OLD)  # a later change, applied meanwhile
    assert folder.read("a.txt") is None
    assert not applied.called and folder.engine.remote.journal.heard == 3
    assert folder.state.cursor == 1  # a crash now fetches seq 2 again
    release, fake.held = fake.held, None
    release.callback(None)
    await applied
    assert folder.read("b.txt") == b"two" and folder.state.cursor == 3


@pytest_twisted.ensureDeferred
async def test_a_refused_download_is_retried_with_backoff(fake, folder):
    await folder.engine.reconcile()
    fake.refuse_downloads = 2
    fake.add("a.txt", b"one")
    await folder.engine.remote_operation(1, Update(FileMetadata("a.txt", 3, 0.0, sha(b"one"), False)), OLD)
    assert "a.txt" in folder.state.pending and folder.read("a.txt") is None
    await wait_for(folder.reactor, lambda: folder.read("a.txt") == b"one", what="the download retried")
    assert sum(1 for _, path, _ in fake.requests if path == "/api/download") == 3
    await wait_for(folder.reactor, lambda: "a.txt" not in folder.state.pending, what="unqueued")
    assert folder.state.cursor == 1


@pytest_twisted.ensureDeferred
async def test_a_download_that_fails_on_the_disk_is_retried(fake, folder, monkeypatch):
    await folder.engine.reconcile()
    real, failures = localfs.install_many, []

    def full_once(*args, **kwargs):
        if not failures:
            failures.append(1)
            raise OSError(28, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(localfs, "install_many", full_once)
    fake.add("a.txt", b"one")
    await folder.engine.remote_operation(1, create("a.txt", b"one"), OLD)
    assert failures and folder.read("a.txt") is None
    await wait_for(folder.reactor, lambda: folder.read("a.txt") == b"one", what="the install retried")


def test_retries_double_up_to_the_cap_and_end():
    from quantum_sync.client.actions import DownloadRetries

    retries = DownloadRetries(1.0, retries=4, cap=5.0)
    assert [retries.failed("p") for _ in range(5)] == [1.0, 2.0, 4.0, 5.0, None]
    assert len(retries) == 0  # given up: forgotten
    retries.failed("p")
    retries.succeeded("p")
    assert len(retries) == 0 and retries.failed("p") == 1.0


@pytest_twisted.ensureDeferred
async def test_a_client_started_after_the_server_was_restored_deletes_nothing_it_lost(reactor, fake, folder):
    await _synced_then_lost(fake, folder)
    await folder.close()  # the client was stopped; the server restored meanwhile
    restarted = await Folder(reactor, folder.path, fake).open()
    folder.engine = restarted.engine  # closed by the fixture
    folder.state, folder.server = restarted.state, restarted.server
    await restarted.engine.reconcile()  # the start-up reconcile, before any subscription
    assert folder.read("lost.txt") == b"the server loses this one"
    assert fake.files["lost.txt"] == b"the server loses this one"
    # the head when the reconcile began (its own upload, journalled after, is skipped by a catch-up)
    assert restarted.state.journal_id == NEW and restarted.state.cursor == 1
