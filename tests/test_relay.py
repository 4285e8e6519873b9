"""Relays (quantum_sync.server.relay): a large upload is announced on the ``transfers``
topic while it arrives and can be read from ``/api/relay`` before it is stored; the
client prefetches it staged and the download of that version claims it.

Everything runs against a real server on 127.0.0.1 (real sockets, real Autobahn
WebSocket clients, real client services on real folders). Uploads are held mid-way by
their own body producer (or a raw TCP connection) so that a relay is read while its
upload is provably unfinished; every wait has a deadline.
"""

import hashlib
import json
import os
import tempfile
import threading
import time

import pytest
import pytest_twisted
import treq
from twisted.internet import defer, task
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory
from twisted.web.client import ResponseFailed
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from quantum_sync.client import transfer
from quantum_sync.client.transfer import _Prefetch, ServerClient
from quantum_sync.server.relay import RELAY_MIN, TOPIC
from tests.logcapture import LogCapture
from clients import read
from support import wait_for
from tests.support import HttpClient, start_server
from tests.test_auth_e2e import auth_section, bearer, tokens_by_role
from tests.test_server_stop import KeepAliveClient
from test_ws_support import connect, drop_all

TIMEOUT = 5.0
#: Just above the threshold: relayed, and quick to send on loopback.
SIZE = RELAY_MIN + (1 << 20)
#: Where an upload held by GatedBody stops until released (a few spool blocks in).
PAUSE_AT = 4 << 20 | 512 << 10


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def sleep(reactor, seconds):
    await task.deferLater(reactor, seconds, lambda: None)


def temp_files(server) -> list:
    return os.listdir(os.path.join(server.root, ".quantum-sync", "tmp"))


def descriptors_on(server, name="big.bin") -> list:
    """This process's open descriptors on the server's temp files or on ``name`` in its
    root (a relay's reader or the relay itself left open would show here)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(os.path.join(server.root, ".quantum-sync", "tmp") + "/") \
                or target.startswith(os.path.join(server.root, name)):
            found.append(target)
    return found


@implementer(IBodyProducer)
class GatedBody:
    """An upload body of ``data`` written in 256 KiB chunks, one every reactor turn
    (``callLater``); once ``pause_at`` bytes are out it waits for :meth:`release`."""

    CHUNK = 256 * 1024

    def __init__(self, reactor, data: bytes, pause_at: int | None = PAUSE_AT):
        self.reactor = reactor
        self.data = data
        self.length = len(data)
        self.pause_at = self.length if pause_at is None else pause_at
        self.sent = 0
        self.paused = defer.Deferred()  # fires (with the bytes sent) on reaching pause_at
        self._go = defer.Deferred()
        self._stopped = False

    def release(self) -> None:
        if not self._go.called:
            self._go.callback(None)

    def startProducing(self, consumer):
        return defer.ensureDeferred(self._produce(consumer))

    async def _produce(self, consumer):
        while self.sent < self.length:
            if self.sent >= self.pause_at and not self._go.called:
                if not self.paused.called:
                    self.paused.callback(self.sent)
                await self._go
            if self._stopped:
                return await defer.Deferred()  # IBodyProducer: never fires once stopped
            chunk = self.data[self.sent:self.sent + self.CHUNK]
            consumer.write(chunk)
            self.sent += len(chunk)
            await sleep(self.reactor, 0.001)

    def pauseProducing(self):
        pass

    def resumeProducing(self):
        pass

    def stopProducing(self):
        self._stopped = True
        self.release()


class RawUpload(KeepAliveClient):
    """A bare TCP connection to the server, e.g. an upload: the head and part of a body
    now, the rest (or an abrupt end) when the test says so."""

    @classmethod
    async def connect(cls, reactor, server) -> "RawUpload":
        client = cls()
        await TCP4ClientEndpoint(reactor, "127.0.0.1", server.port, timeout=TIMEOUT).connect(
            Factory.forProtocol(lambda: client))
        return client

    @classmethod
    async def start(cls, reactor, server, path, length, headers: dict, first: bytes) -> "RawUpload":
        client = await cls.connect(reactor, server)
        head = [f"PUT /api/upload?path={path} HTTP/1.1", f"Host: 127.0.0.1:{server.port}",
                f"Content-Length: {length}", "Connection: close"]
        head += [f"{name}: {value}" for name, value in headers.items()]
        client.transport.write(("\r\n".join(head) + "\r\n\r\n").encode("utf-8") + first)
        return client


class Sockets:
    """WebSocket clients on one server: ``await watch(client_id)`` is Subscribe'd (when
    a client id is given) and subscribed to ``transfers``; all are dropped at the end."""

    def __init__(self, reactor):
        self.reactor = reactor
        self.opened = []

    async def watch(self, server, client_id=None, url=None):
        client = await connect(self.reactor, url or server.ws_url)
        self.opened.append((server, client))
        if client_id is not None:
            answer = await client.request({"type": "Subscribe", "client_id": client_id})
            assert answer["type"] == "Ack", answer
        answer = await client.request({"type": "subscribe", "topic": TOPIC, "id": "t"})
        assert answer["type"] == "Ack" and answer.get("topic") == TOPIC, answer
        return client

    async def close(self):
        by_server = {}
        for server, client in self.opened:
            by_server.setdefault(id(server), (server, []))[1].append(client)
        for server, clients in by_server.values():
            if server.service.running:
                await drop_all(self.reactor, clients, server.service.hub)
            else:
                for client in clients:
                    if client.transport is not None:
                        client.transport.abortConnection()


@pytest.fixture(autouse=True)
def no_tracebacks():
    """No test here may make the server (or a client) log a traceback: a relay's
    failures are answers and log lines, never unhandled errors."""
    with LogCapture() as log:
        yield
    assert [e.get("log_format") or repr(e.get("log_failure")) for e in log.failures()] == []


@pytest_twisted.async_yield_fixture
async def sockets(reactor):
    group = Sockets(reactor)
    yield group
    await group.close()


async def announcements(client) -> list:
    """The ``upload_started`` events ``client`` got up to now: a ping answered on the
    same connection proves that everything the server sent before has arrived."""
    answer = await client.request({"type": "ping", "id": "flush"})
    while answer.get("type") != "pong":  # e.g. a peer_connected in between
        answer = await client.next()
    return [m for m in client.received if m.get("type") == "upload_started"]


async def json_answer(http, method, url, expect, **kwargs):
    """``(status, decoded JSON)`` of a request whose answer must come within TIMEOUT
    (a relay that streams where a refusal was expected fails here, not at pytest's timeout)."""
    from twisted.internet import reactor

    response = await http.request(method, url, **kwargs).addTimeout(TIMEOUT, reactor)
    body = await response.content().addTimeout(TIMEOUT, reactor)
    assert response.code == expect, (response.code, body[:300])
    return response.code, json.loads(body)


def upload(http, server, path, body, client_id="uploader", digest=None, headers=None):
    """Start a PUT /api/upload of ``body`` (bytes or a producer): a Deferred that fires
    with ``(status, JSON answer)`` once the whole answer is in."""
    all_headers = {"X-Client-Id": [client_id], **(headers or {})}
    if digest is not None:
        all_headers["X-Content-SHA256"] = [digest]

    async def send():
        response = await http.put(f"{server.url}/api/upload", params={"path": path}, data=body,
                                  headers=all_headers)
        return response.code, json.loads(await response.content())

    return defer.ensureDeferred(send())


class Reading:
    """A relay response being read: its bytes so far, and ``done`` (the whole body, or
    the failure that ended it)."""

    def __init__(self, response):
        self.response = response
        self.chunks = []
        self.done = treq.collect(response, self.chunks.append)

    @property
    def received(self) -> int:
        return sum(len(c) for c in self.chunks)

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)


# -- 1. announcements ---------------------------------------------------------------------


async def announced_upload(reactor, server, http, sockets, digest=None):
    """A held upload of big.bin, once a ``transfers`` subscriber has heard of it:
    ``(data, body, answer)``."""
    watcher = await sockets.watch(server, "watcher")
    data = os.urandom(SIZE)
    body = GatedBody(reactor, data)
    answer = upload(http, server, "big.bin", body, digest=digest or sha(data))
    await watcher.expect("upload_started")
    return data, body, answer


@pytest_twisted.ensureDeferred
async def test_large_upload_is_announced_to_others_only(reactor, server, http, sockets):
    """``upload_started`` (path, hash, size, source_client) reaches a subscriber of
    ``transfers`` before the upload has finished, not the uploader's own connection."""
    watcher = await sockets.watch(server, "watcher")
    anonymous = await sockets.watch(server)  # a topic subscriber that never said who it is
    uploader = await sockets.watch(server, "uploader")
    data = os.urandom(SIZE)
    body = GatedBody(reactor, data)
    answer = upload(http, server, "dir/big.bin", body, digest=sha(data).upper())
    event = await watcher.expect("upload_started")
    assert event["topic"] == TOPIC
    assert event["data"] == {"path": "dir/big.bin", "hash": sha(data), "size": SIZE,
                             "source_client": "uploader"}
    assert not answer.called  # announced while arriving
    assert (await anonymous.expect("upload_started"))["data"] == event["data"]
    body.release()
    code, stored = await answer.addTimeout(TIMEOUT, reactor)
    assert code == 200, stored
    assert stored["hash"] == sha(data)
    assert await announcements(uploader) == []
    assert len(await announcements(watcher)) == 1


@pytest.mark.parametrize("case", ["small", "no_hash", "bad_hash", "invalid_path", "state_dir"])
@pytest_twisted.ensureDeferred
async def test_uploads_that_are_not_announced(reactor, server, http, sockets, case):
    """Smaller than RELAY_MIN, without (or with an unusable) X-Content-SHA256, or to an
    invalid path: no ``upload_started``, and nothing to read at /api/relay."""
    watcher = await sockets.watch(server, "watcher")
    data = os.urandom(RELAY_MIN - 1 if case == "small" else SIZE)
    path, digest = "big.bin", sha(data)
    if case == "no_hash":
        digest = None
    elif case == "bad_hash":
        digest = "not-a-hash"
    elif case == "invalid_path":
        path = "../big.bin"
    elif case == "state_dir":
        path = ".quantum-sync/big.bin"
    body = GatedBody(reactor, data)
    answer = upload(http, server, path, body, digest=digest)
    await body.paused.addTimeout(TIMEOUT, reactor)
    # the upload is half in: a relay, if there were one, would be readable now
    if case not in ("invalid_path", "state_dir"):
        code, error = await json_answer(http, "GET", f"{server.url}/api/relay", expect=404,
                                      params={"path": path, "hash": sha(data)})
        assert error["error"]["code"] == "NOT_FOUND"
    body.release()
    code, answered = await answer.addTimeout(TIMEOUT, reactor)
    expected = {"small": 200, "no_hash": 200, "bad_hash": 400, "invalid_path": 400, "state_dir": 400}[case]
    assert code == expected, answered
    assert await announcements(watcher) == []


@pytest_twisted.ensureDeferred
async def test_nothing_is_announced_without_subscribers_and_after_unsubscribing(reactor, server, http, sockets):
    """Without a ``transfers`` subscriber an upload is not relayed at all; an unsubscribed
    connection gets nothing."""
    watcher = await sockets.watch(server, "watcher")
    assert (await watcher.request({"type": "unsubscribe", "topic": TOPIC}))["type"] == "Ack"
    await assert_not_relayed(reactor, server, http, watcher)


async def assert_not_relayed(reactor, server, http, watcher):
    """A large upload, held half-way: nothing to read at /api/relay meanwhile; stored in
    the end as any upload is; ``watcher`` heard of it at no point."""
    data = os.urandom(SIZE)
    body = GatedBody(reactor, data)
    answer = upload(http, server, "big.bin", body, digest=sha(data))
    await body.paused.addTimeout(TIMEOUT, reactor)
    _, error = await json_answer(http, "GET", f"{server.url}/api/relay", expect=404,
                               params={"path": "big.bin", "hash": sha(data)})
    assert error["error"]["code"] == "NOT_FOUND"
    body.release()
    code, stored = await answer.addTimeout(TIMEOUT, reactor)
    assert code == 200 and stored["hash"] == sha(data)
    assert await announcements(watcher) == []


@pytest_twisted.ensureDeferred
async def test_a_server_with_relays_turned_off_announces_nothing(reactor, tmp_path, http, sockets):
    """``"relay": false``: a large upload is stored as any upload is, never announced, and
    /api/relay has nothing to read while it arrives."""
    server = await start_server(reactor, tmp_path, relay=False)
    try:
        await assert_not_relayed(reactor, server, http, await sockets.watch(server, "watcher"))
    finally:
        await sockets.close()
        await server.stop()


# -- 2. reading a relay -------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_relay_streams_the_upload_while_it_arrives(reactor, server, http, sockets):
    """GET /api/relay during the upload: 200, Content-Length = size, bytes flowing while
    the upload is held mid-way, and exactly the upload's bytes in the end. Afterwards
    the relay is gone (404) and no temp file is left."""
    data, body, answer = await announced_upload(reactor, server, http, sockets)
    relay_http = HttpClient(reactor)
    try:
        response = await relay_http.get(f"{server.url}/api/relay",
                                        params={"path": "big.bin", "hash": sha(data).upper()},
                                        headers={"X-Client-Id": ["watcher"]}).addTimeout(TIMEOUT, reactor)
        assert response.code == 200
        assert response.length == SIZE  # Content-Length (the Agent takes it out of the headers)
        assert response.headers.getRawHeaders("Content-Type") == ["application/octet-stream"]
        assert response.headers.getRawHeaders("ETag") == [f'"{sha(data)}"']
        reading = Reading(response)
        await body.paused.addTimeout(TIMEOUT, reactor)
        await wait_for(reactor, lambda: reading.received >= 1 << 20, TIMEOUT)
        # the upload is still held: what was read came from the unfinished upload
        assert body.sent == PAUSE_AT and not answer.called and not reading.done.called
        assert 0 < reading.received <= PAUSE_AT
        assert reading.body == data[:reading.received]
        assert not os.path.exists(os.path.join(server.root, "big.bin"))
        body.release()
        code, stored = await answer.addTimeout(TIMEOUT, reactor)
        assert code == 200, stored
        await reading.done.addTimeout(TIMEOUT, reactor)
        assert reading.body == data
    finally:
        await relay_http.close()
    _, error = await json_answer(http, "GET", f"{server.url}/api/relay", expect=404,
                               params={"path": "big.bin", "hash": sha(data)})
    assert error["error"]["code"] == "NOT_FOUND"
    await wait_for(reactor, lambda: temp_files(server) == [], TIMEOUT)
    await wait_for(reactor, lambda: descriptors_on(server) == [], TIMEOUT)
    with open(os.path.join(server.root, "big.bin"), "rb") as f:
        assert f.read() == data


@pytest_twisted.ensureDeferred
async def test_two_readers_and_a_late_one_get_the_same_bytes(reactor, server, http, sockets):
    """Several readers follow one upload; one that comes when most of it is in starts
    from the first byte all the same."""
    data, body, answer = await announced_upload(reactor, server, http, sockets)
    params = {"path": "big.bin", "hash": sha(data)}
    early = Reading(await http.get(f"{server.url}/api/relay", params=params).addTimeout(TIMEOUT, reactor))
    await body.paused.addTimeout(TIMEOUT, reactor)
    await wait_for(reactor, lambda: early.received >= 4 << 20, TIMEOUT)
    late_http = HttpClient(reactor)
    try:
        late = Reading(await late_http.get(f"{server.url}/api/relay", params=params).addTimeout(TIMEOUT, reactor))
        await wait_for(reactor, lambda: late.received >= 4 << 20, TIMEOUT)
        assert not answer.called
        body.release()
        assert (await answer.addTimeout(TIMEOUT, reactor))[0] == 200
        await early.done.addTimeout(TIMEOUT, reactor)
        await late.done.addTimeout(TIMEOUT, reactor)
    finally:
        await late_http.close()
    assert early.body == data and late.body == data


@pytest_twisted.ensureDeferred
async def test_relay_requests_that_find_nothing(reactor, server, http, sockets):
    """404 NOT_FOUND for a path or hash no upload is arriving with (also a stored file),
    400 for a missing hash or an invalid path."""
    data, body, answer = await announced_upload(reactor, server, http, sockets)
    await body.paused.addTimeout(TIMEOUT, reactor)
    url = f"{server.url}/api/relay"
    for params in ({"path": "other.bin", "hash": sha(data)},
                   {"path": "big.bin", "hash": sha(b"other")},
                   {"path": "big.bin", "hash": "zz"}):
        _, error = await json_answer(http, "GET", url, expect=404, params=params)
        assert error["error"]["code"] == "NOT_FOUND", params
    _, error = await json_answer(http, "GET", url, expect=400, params={"path": "big.bin"})
    assert error["error"]["code"] == "INVALID_REQUEST"
    _, error = await json_answer(http, "GET", url, expect=400, params={"path": "../big.bin", "hash": sha(data)})
    assert error["error"]["code"] == "INVALID_PATH"
    body.release()
    assert (await answer.addTimeout(TIMEOUT, reactor))[0] == 200
    # stored now: the relay is over (the file is at /api/download)
    _, error = await json_answer(http, "GET", url, expect=404, params={"path": "big.bin", "hash": sha(data)})
    assert error["error"]["code"] == "NOT_FOUND"


@pytest_twisted.ensureDeferred
async def test_an_upload_cut_short_cuts_its_relay_short(reactor, server, http, sockets):
    """The uploader's connection drops mid-way: the relay's reader sees an incomplete
    body (not a clean end), the relay is gone and no temp file is left."""
    watcher = await sockets.watch(server, "watcher")
    data = os.urandom(SIZE)
    half = data[:PAUSE_AT]
    raw = await RawUpload.start(reactor, server, "big.bin", SIZE,
                                {"X-Content-SHA256": sha(data), "X-Client-Id": "uploader"}, half)
    try:
        await watcher.expect("upload_started")
        response = await http.get(f"{server.url}/api/relay",
                                  params={"path": "big.bin", "hash": sha(data)}).addTimeout(TIMEOUT, reactor)
        assert response.code == 200
        reading = Reading(response)
        await wait_for(reactor, lambda: reading.received >= 1 << 20, TIMEOUT)
        assert not reading.done.called
        assert len(temp_files(server)) == 1
    finally:
        raw.transport.abortConnection()
    await raw.lost.addTimeout(TIMEOUT, reactor)
    with pytest.raises((ResponseFailed, PotentialDataLoss)):
        await reading.done.addTimeout(TIMEOUT, reactor)
    assert reading.received < SIZE
    assert reading.body == data[:reading.received]
    _, error = await json_answer(http, "GET", f"{server.url}/api/relay", expect=404,
                               params={"path": "big.bin", "hash": sha(data)})
    assert error["error"]["code"] == "NOT_FOUND"
    await wait_for(reactor, lambda: temp_files(server) == [], TIMEOUT)
    await wait_for(reactor, lambda: descriptors_on(server) == [], TIMEOUT)
    assert not os.path.exists(os.path.join(server.root, "big.bin"))


@pytest_twisted.ensureDeferred
async def test_a_reader_that_goes_away_disturbs_nothing(reactor, server, http, sockets):
    """A relay reader that hangs up mid-way: the upload is stored as usual, another
    reader still gets every byte, and no descriptor stays open."""
    data, body, answer = await announced_upload(reactor, server, http, sockets)
    params = {"path": "big.bin", "hash": sha(data)}
    quitter = await RawUpload.connect(reactor, server)  # a bare reader, to hang up at will
    quitter.transport.write(f"GET /api/relay?path=big.bin&hash={sha(data)} HTTP/1.1\r\n"
                            f"Host: 127.0.0.1:{server.port}\r\n\r\n".encode("ascii"))
    stayer = Reading(await http.get(f"{server.url}/api/relay", params=params).addTimeout(TIMEOUT, reactor))
    await body.paused.addTimeout(TIMEOUT, reactor)
    await wait_for(reactor, lambda: len(quitter.received) > 1 << 20 and stayer.received > 0, TIMEOUT)
    assert quitter.received.startswith(b"HTTP/1.1 200 ")
    quitter.transport.abortConnection()
    await quitter.lost.addTimeout(TIMEOUT, reactor)
    body.release()
    assert (await answer.addTimeout(TIMEOUT, reactor))[0] == 200
    await stayer.done.addTimeout(TIMEOUT, reactor)
    assert stayer.body == data and len(quitter.received) < SIZE
    await wait_for(reactor, lambda: descriptors_on(server) == [], TIMEOUT)
    await wait_for(reactor, lambda: temp_files(server) == [], TIMEOUT)


@pytest_twisted.ensureDeferred
async def test_a_relay_asked_for_while_the_upload_is_being_installed(reactor, server, http, sockets, monkeypatch):
    """Between the rename that installs the upload and the end of its request the relay
    is still listed: a reader that comes then gets a whole, well-formed answer (it once
    got a 500 whose Content-Length still announced the upload's size, so it hung)."""
    renamed, go = threading.Event(), threading.Event()
    real_replace = os.replace

    def replace(source, target, *args, **kwargs):  # the install's rename, held just after it is done
        real_replace(source, target, *args, **kwargs)
        if os.path.basename(str(source)).startswith("upload-"):
            renamed.set()
            go.wait(TIMEOUT)

    monkeypatch.setattr(os, "replace", replace)
    watcher = await sockets.watch(server, "watcher")
    data = os.urandom(SIZE)
    answer = upload(http, server, "big.bin", GatedBody(reactor, data, pause_at=None), digest=sha(data))
    await watcher.expect("upload_started")
    with LogCapture() as log:
        try:
            await wait_for(reactor, renamed.is_set, TIMEOUT)
            response = await http.get(f"{server.url}/api/relay",
                                      params={"path": "big.bin", "hash": sha(data)}).addTimeout(TIMEOUT, reactor)
            body = await response.content().addTimeout(TIMEOUT, reactor)
        finally:
            go.set()
        assert (await answer.addTimeout(TIMEOUT, reactor))[0] == 200
    assert log.failures() == []
    if response.code == 200:
        assert body == data
    else:
        assert (response.code, json.loads(body)["error"]["code"]) == (404, "NOT_FOUND")
    await wait_for(reactor, lambda: temp_files(server) == [], TIMEOUT)


@pytest_twisted.ensureDeferred
async def test_an_upload_refused_at_the_end_leaves_its_relay_unusable(reactor, server, http, sockets):
    """A body that does not hash to its X-Content-SHA256 is announced (the hash is only
    known at the end) and its relay delivers the bytes, but they do not hash to the
    announced hash, and nothing is stored."""
    watcher = await sockets.watch(server, "watcher")
    data = os.urandom(SIZE)
    claimed = sha(b"something else")
    body = GatedBody(reactor, data)
    answer = upload(http, server, "big.bin", body, digest=claimed)
    event = await watcher.expect("upload_started")
    assert event["data"]["hash"] == claimed
    reading = Reading(await http.get(f"{server.url}/api/relay",
                                     params={"path": "big.bin", "hash": claimed}).addTimeout(TIMEOUT, reactor))
    body.release()
    code, error = await answer.addTimeout(TIMEOUT, reactor)
    assert (code, error["error"]["code"]) == (422, "HASH_MISMATCH")
    try:
        await reading.done.addTimeout(TIMEOUT, reactor)
    except (ResponseFailed, PotentialDataLoss):
        pass
    assert sha(reading.body) != claimed
    await wait_for(reactor, lambda: temp_files(server) == [], TIMEOUT)
    assert not os.path.exists(os.path.join(server.root, "big.bin"))


@pytest_twisted.ensureDeferred
async def test_relay_needs_the_read_role_when_auth_is_configured(reactor, tmp_path, sockets):
    """With accounts: /api/relay without a token is 401, with a read token 200 and the
    bytes; a large upload by a read-only account is refused at its headers and never
    announced."""
    server = await start_server(reactor, tmp_path, auth=auth_section(tmp_path),
                                websocket={"ping_interval": 30, "stale_timeout": 300,
                                           "cleanup_interval": 60, "metrics_interval": 60})
    http = HttpClient(reactor)
    try:
        tokens = await tokens_by_role(http, server)
        watcher = await sockets.watch(server, "watcher", url=f"{server.ws_url}?token={tokens['read']}")
        data = os.urandom(SIZE)
        params = {"path": "big.bin", "hash": sha(data)}
        # a read-only account may not upload: refused before the body, never announced
        code, refused = await upload(http, server, "big.bin", GatedBody(reactor, data, pause_at=None),
                                     digest=sha(data), headers=bearer(tokens["read"])).addTimeout(TIMEOUT, reactor)
        assert (code, refused["error"]["code"]) == (403, "PERMISSION_DENIED")
        assert await announcements(watcher) == []
        body = GatedBody(reactor, data)
        answer = upload(http, server, "big.bin", body, digest=sha(data), headers=bearer(tokens["write"]))
        await watcher.expect("upload_started")
        await body.paused.addTimeout(TIMEOUT, reactor)
        _, error = await json_answer(http, "GET", f"{server.url}/api/relay", expect=401, params=params)
        assert error["error"]["code"] == "AUTH_REQUIRED"
        _, error = await json_answer(http, "GET", f"{server.url}/api/relay", expect=401, params=params,
                                   headers=bearer("not-a-token"))
        reading = Reading(await http.get(f"{server.url}/api/relay", params=params,
                                         headers=bearer(tokens["read"])).addTimeout(TIMEOUT, reactor))
        assert reading.response.code == 200
        body.release()
        assert (await answer.addTimeout(TIMEOUT, reactor))[0] == 200
        await reading.done.addTimeout(TIMEOUT, reactor)
        assert reading.body == data
    finally:
        await sockets.close()
        sockets.opened.clear()
        await http.close()
        await server.stop()


# -- 3. two real clients ------------------------------------------------------------------


class SpoolGate:
    """Holds the server's upload spools after their first blocks (os.writev in the spool's
    writing thread waits, at most TIMEOUT seconds, until :meth:`open`): an upload is
    provably still arriving while the test looks."""

    def __init__(self, monkeypatch, free_blocks=2):
        self._open = threading.Event()
        self.held = threading.Event()  # set once a write waited at the gate
        self.blocks = 0
        real_writev = os.writev

        def writev(fd, buffers):
            if threading.current_thread().name == "upload-write":
                self.blocks += 1
                if self.blocks > free_blocks and not self._open.is_set():
                    self.held.set()
                    self._open.wait(TIMEOUT)
            return real_writev(fd, buffers)

        monkeypatch.setattr(os, "writev", writev)

    def open(self):
        self._open.set()


def relay_readers(server) -> int:
    """Readers following uploads on ``server`` right now."""
    return server.service.api.relays.reader_count()


def subscribed_to_transfers(server, client_id) -> bool:
    return any(c.client_id == client_id and TOPIC in c.topics for c in server.service.hub.connections)


def access_lines(log) -> list:
    """``(method, path, status)`` of every request the server logged."""
    return [(e["method"], e["path"], e["status"]) for e in log.events
            if e.get("log_namespace") == "quantum_sync.access" and "status" in e]


def requests_for(log, route, path) -> list:
    return [line for line in access_lines(log)
            if line[1].startswith(route + "?") and f"path={path}" in line[1]]


def staged_bytes(folder) -> int:
    """Bytes in the client's staging directory (downloads being received)."""
    return staged_bytes_in(os.path.join(folder, ".quantum-sync", "tmp"))


def staged_bytes_in(tmp) -> int:
    total = 0
    for name in os.listdir(tmp):
        try:
            total += os.path.getsize(os.path.join(tmp, name))
        except FileNotFoundError:  # installed or removed meanwhile
            pass
    return total


def put_in_place(tmp_path, folder, name, data: bytes):
    """Write ``data`` outside ``folder``, then rename it in (the watcher sees it whole)."""
    outside = tmp_path / f"outside-{name}"
    outside.write_bytes(data)
    os.rename(outside, os.path.join(folder, name))


@pytest_twisted.ensureDeferred
async def test_a_client_gets_a_large_file_from_its_relay(reactor, tmp_path, server, clients, monkeypatch):
    """A writes ~10 MiB; B, subscribed to ``transfers``, reads it from /api/relay while A's
    upload is held on the server, and ends with identical bytes without /api/download."""
    gate = SpoolGate(monkeypatch)
    a = await clients.start(server, "a")
    b = await clients.start(server, "b")
    await wait_for(reactor, lambda: subscribed_to_transfers(server, "b"), TIMEOUT)
    data = os.urandom(10 << 20)
    with LogCapture() as log:
        put_in_place(tmp_path, a.config.folder, "big.bin", data)
        try:
            # B follows the relay and has bytes staged while A's upload is held on the server
            await wait_for(reactor, lambda: gate.held.is_set() and relay_readers(server) > 0
                           and staged_bytes(b.config.folder) > 0, TIMEOUT)
            assert not os.path.exists(os.path.join(server.root, "big.bin"))
            assert not os.path.exists(os.path.join(b.config.folder, "big.bin"))
        finally:
            gate.open()
        await wait_for(reactor, lambda: read(b.config.folder, "big.bin") == data, TIMEOUT, "B has big.bin")
        await wait_for(reactor, lambda: requests_for(log, "/api/relay", "big.bin"), TIMEOUT)
    assert [status for _, _, status in requests_for(log, "/api/relay", "big.bin")] == [200]
    assert requests_for(log, "/api/download", "big.bin") == []
    assert requests_for(log, "/api/upload", "big.bin") != []  # the log did see A's upload
    # the staged prefetch was installed, not left behind
    assert os.listdir(os.path.join(b.config.folder, ".quantum-sync", "tmp")) == []
    assert not b.engine.server._prefetches


@pytest_twisted.ensureDeferred
async def test_a_client_without_relay_downloads_once_stored(reactor, tmp_path, server, clients, monkeypatch):
    """B started with relay=False never subscribes to ``transfers``: even with A's upload
    held on the server for a while, B fetches the file through /api/download only."""
    gate = SpoolGate(monkeypatch)
    a = await clients.start(server, "a")
    b = await clients.start(server, "b", relay=False)
    data = os.urandom(10 << 20)
    with LogCapture() as log:
        put_in_place(tmp_path, a.config.folder, "big.bin", data)
        try:
            await wait_for(reactor, gate.held.is_set, TIMEOUT)
            assert relay_readers(server) == 0
        finally:
            gate.open()
        await wait_for(reactor, lambda: read(b.config.folder, "big.bin") == data, TIMEOUT, "B has big.bin")
    assert not subscribed_to_transfers(server, "b")
    assert subscribed_to_transfers(server, "a")  # A (relay on) does subscribe
    assert requests_for(log, "/api/relay", "big.bin") == []
    assert [status for _, _, status in requests_for(log, "/api/download", "big.bin")] == [200]


# -- 4. the client's prefetches -------------------------------------------------------------


def staged_file(tmp_path, data=b"staged") -> str:
    staging = tmp_path / "staging"
    staging.mkdir(exist_ok=True)
    fd, name = tempfile.mkstemp(dir=staging, prefix="dl-")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return name


@pytest_twisted.async_yield_fixture
async def server_client(reactor, tmp_path):
    """A ServerClient constructed on the real reactor (for tests that send nothing,
    a closed port), closed afterwards."""
    client = ServerClient(reactor, "http://127.0.0.1:9", "c")
    yield client
    await client.close()


def test_a_claim_waits_for_the_prefetch_and_cancels_its_expiry(tmp_path):
    """_Prefetch: a claim before the end gets the staged name when it settles; a claim
    after it gets it at once and cancels the pending expiry (deterministic Clock)."""
    clock = task.Clock()
    waiting = _Prefetch()
    claimed = waiting.claim()
    assert not claimed.called
    staged = staged_file(tmp_path)
    waiting.settle(staged)
    assert claimed.result == staged

    expired = []
    entry = _Prefetch()
    entry.settle(staged_file(tmp_path))
    entry.expiry = clock.callLater(transfer.PREFETCH_KEEP, expired.append, True)
    clock.advance(transfer.PREFETCH_KEEP - 1)
    got = entry.claim()
    assert got.called and got.result == entry.staged and entry.claimed
    assert not entry.expiry.active()
    clock.advance(transfer.PREFETCH_KEEP)
    assert expired == []


@pytest_twisted.ensureDeferred
async def test_expire_and_close_remove_only_unclaimed_staged_files(tmp_path, server_client):
    """_expire drops an unclaimed finished prefetch and unlinks its file (and cancels a
    pending expiry); a claimed one's file belongs to its claimer and stays; a running
    one is only forgotten. close() expires every unclaimed prefetch."""
    clock = task.Clock()
    client = server_client
    finished, claimed, running = _Prefetch(), _Prefetch(), _Prefetch()
    finished.settle(staged_file(tmp_path))
    finished.expiry = clock.callLater(transfer.PREFETCH_KEEP, lambda: None)
    claimed.settle(staged_file(tmp_path))
    claimed.claim()
    client._prefetches.update({("a", "1"): finished, ("b", "2"): claimed, ("c", "3"): running})
    finished_file, claimed_file = finished.staged, claimed.staged
    await client._expire(("a", "1"), finished)
    assert not os.path.exists(finished_file) and ("a", "1") not in client._prefetches
    assert not finished.expiry.active()
    await client._expire(("b", "2"), claimed)
    assert os.path.exists(claimed_file) and claimed.staged == claimed_file
    await client._expire(("c", "3"), running)
    assert client._prefetches == {} and not running.done

    kept = _Prefetch()
    kept.settle(staged_file(tmp_path, b"kept"))
    kept.expiry = clock.callLater(transfer.PREFETCH_KEEP, lambda: None)
    kept_file = kept.staged
    client._prefetches[("d", "4")] = kept
    await client.close()
    assert not os.path.exists(kept_file) and client._prefetches == {}
    assert not kept.expiry.active()
    assert os.path.exists(claimed_file)


async def prefetching(reactor, server, http, sockets, tmp_path, monkeypatch, keep=0.3, digest=None):
    """A held upload of big.bin (a ``transfers`` subscriber present, so it is relayed)
    and a ServerClient that prefetches it: ``(client, body, answer, data, staging)``."""
    monkeypatch.setattr(transfer, "PREFETCH_KEEP", keep)
    data, body, answer = await announced_upload(reactor, server, http, sockets, digest)
    staging = tmp_path / "staging"
    staging.mkdir(exist_ok=True)
    client = ServerClient(reactor, server.url, "c")
    client.prefetch("big.bin", digest or sha(data), SIZE, str(staging))
    return client, body, answer, data, staging


async def release_unclaimed(reactor, body, answer, entry, staging):
    """Let the held upload finish; its prefetch, which nobody owns, leaves no file."""
    body.release()
    assert (await answer.addTimeout(TIMEOUT, reactor))[0] == 200
    await wait_for(reactor, lambda: entry.done, TIMEOUT)
    assert entry.staged is None and os.listdir(staging) == []


@pytest_twisted.ensureDeferred
async def test_an_unclaimed_prefetch_is_removed_after_prefetch_keep(reactor, server, http, sockets,
                                                                   tmp_path, monkeypatch):
    """The relayed copy is staged and checked; nobody claims it: PREFETCH_KEEP seconds
    later it is unlinked, and a download of that version then goes to /api/download."""
    client, body, answer, data, staging = await prefetching(reactor, server, http, sockets, tmp_path, monkeypatch,
                                                            keep=1.0)
    try:
        key = ("big.bin", sha(data))
        await body.paused.addTimeout(TIMEOUT, reactor)
        body.release()
        assert (await answer.addTimeout(TIMEOUT, reactor))[0] == 200
        await wait_for(reactor, lambda: client._prefetches[key].done, TIMEOUT)
        (name,) = os.listdir(staging)
        with open(staging / name, "rb") as f:
            assert f.read() == data
        started = time.monotonic()
        await wait_for(reactor, lambda: os.listdir(staging) == [], TIMEOUT)
        assert time.monotonic() - started >= 0.5  # kept a while (1 s from the end), then removed
        assert key not in client._prefetches
        with LogCapture() as log:
            staged = await client.download("big.bin", sha(data), str(staging), SIZE).addTimeout(TIMEOUT, reactor)
        with open(staged, "rb") as f:
            assert f.read() == data
        assert [line[1].split("?")[0] for line in access_lines(log)] == ["/api/download"]
    finally:
        await client.close()


@pytest_twisted.ensureDeferred
async def test_a_download_claims_the_prefetch_of_its_version(reactor, server, http, sockets,
                                                            tmp_path, monkeypatch):
    """A download asked while the relay is still being read waits for it and gets the
    relayed file (no /api/download); the claimed file is not expired afterwards."""
    client, body, answer, data, staging = await prefetching(reactor, server, http, sockets, tmp_path, monkeypatch)
    entry = client._prefetches[("big.bin", sha(data))]
    try:
        with LogCapture() as log:
            await body.paused.addTimeout(TIMEOUT, reactor)
            downloading = client.download("big.bin", sha(data), str(staging), SIZE)
            assert not downloading.called
            body.release()
            assert (await answer.addTimeout(TIMEOUT, reactor))[0] == 200
            staged = await downloading.addTimeout(TIMEOUT, reactor)
        with open(staged, "rb") as f:
            assert f.read() == data
        routes = [line[1].split("?")[0] for line in access_lines(log)]
        assert "/api/relay" in routes and "/api/download" not in routes
        assert client._prefetches == {}
        assert entry.expiry is None  # nothing will throw the claimer's file away
        assert os.listdir(staging) == [os.path.basename(staged)]
    finally:
        await client.close()
    assert os.path.exists(staged)  # close() leaves claimed files alone


@pytest_twisted.ensureDeferred
async def test_a_claim_gives_up_on_a_stalled_relay_after_claim_wait(reactor, server, http, sockets,
                                                                   tmp_path, monkeypatch):
    """A relay that makes no progress holds its claimer CLAIM_WAIT seconds at most: the
    download then asks /api/download itself (here the file is not stored yet: 404), and
    the relayed copy, once it completes, is removed (nobody owns it any more)."""
    monkeypatch.setattr(transfer, "CLAIM_WAIT", 0.3)
    client, body, answer, data, staging = await prefetching(reactor, server, http, sockets, tmp_path, monkeypatch,
                                                            keep=60.0)
    entry = client._prefetches[("big.bin", sha(data))]
    try:
        await body.paused.addTimeout(TIMEOUT, reactor)
        with LogCapture() as log:
            started = reactor.seconds()
            with pytest.raises(transfer.RequestRefused) as refused:
                await client.download("big.bin", sha(data), str(staging), SIZE).addTimeout(TIMEOUT, reactor)
            assert refused.value.status == 404
            assert 0.25 <= reactor.seconds() - started < TIMEOUT
        routes = [line[1].split("?")[0] for line in access_lines(log)]
        assert "/api/download" in routes
        await release_unclaimed(reactor, body, answer, entry, staging)
    finally:
        await client.close()


@pytest_twisted.ensureDeferred
async def test_close_removes_a_finished_unclaimed_prefetch(reactor, server, http, sockets, tmp_path, monkeypatch):
    client, body, answer, data, staging = await prefetching(reactor, server, http, sockets, tmp_path, monkeypatch,
                                                            keep=60.0)
    try:
        body.release()
        assert (await answer.addTimeout(TIMEOUT, reactor))[0] == 200
        await wait_for(reactor, lambda: client._prefetches[("big.bin", sha(data))].done, TIMEOUT)
        assert len(os.listdir(staging)) == 1
    finally:
        await client.close()
    assert os.listdir(staging) == [] and client._prefetches == {}


@pytest_twisted.ensureDeferred
async def test_a_prefetch_thrown_away_while_running_removes_its_file_when_done(reactor, server, http, sockets,
                                                                               tmp_path, monkeypatch):
    """close() while the relay is still being read: the relayed copy, once complete,
    is unlinked (nobody will claim it)."""
    client, body, answer, data, staging = await prefetching(reactor, server, http, sockets, tmp_path, monkeypatch,
                                                            keep=60.0)
    entry = client._prefetches[("big.bin", sha(data))]
    try:
        await body.paused.addTimeout(TIMEOUT, reactor)
        await wait_for(reactor, lambda: staged_bytes_in(staging) > 0, TIMEOUT)
        await client.close()
        assert client._prefetches == {} and not entry.done
        await release_unclaimed(reactor, body, answer, entry, staging)
    finally:
        await client.close()


@pytest_twisted.ensureDeferred
async def test_failed_prefetches_leave_nothing(reactor, server, http, sockets,
                                                                   tmp_path, monkeypatch):
    """A relay that does not hash to the announced hash, or one that is not there (404),
    leaves no staged file and no prefetch; only the first is worth a log line."""
    wrong = sha(b"not the content")
    client, body, answer, data, staging = await prefetching(reactor, server, http, sockets, tmp_path, monkeypatch,
                                                            digest=wrong)
    try:
        with LogCapture() as log:
            body.release()
            code, error = await answer.addTimeout(TIMEOUT, reactor)
            assert (code, error["error"]["code"]) == (422, "HASH_MISMATCH")
            await wait_for(reactor, lambda: client._prefetches == {}, TIMEOUT)
            assert os.listdir(staging) == []
            client.prefetch("nothing.bin", wrong, SIZE, str(staging))  # no such upload: 404
            await wait_for(reactor, lambda: client._prefetches == {}, TIMEOUT)
            await wait_for(reactor, lambda: len(requests_for(log, "/api/relay", "nothing.bin")) == 1, TIMEOUT)
        assert os.listdir(staging) == []
        failed = [e for e in log.events if e.get("log_format", "").startswith("relay of")]
        assert [e["path"] for e in failed] == ["big.bin"]
    finally:
        await client.close()


@pytest_twisted.ensureDeferred
async def test_at_most_prefetches_relays_are_followed(reactor, server, http, sockets, tmp_path):
    """Beyond PREFETCHES at once (or the same version twice) prefetch() does nothing."""
    client = ServerClient(reactor, server.url, "c")
    staging = tmp_path / "staging"
    staging.mkdir()
    try:
        with LogCapture() as log:
            for n in range(transfer.PREFETCHES):
                client.prefetch(f"f{n}", sha(b"%d" % n), SIZE, str(staging))
            client.prefetch("f0", sha(b"0"), SIZE, str(staging))
            client.prefetch("extra", sha(b"x"), SIZE, str(staging))
            assert sorted(path for path, _ in client._prefetches) == [f"f{n}" for n in range(transfer.PREFETCHES)]
            await wait_for(reactor, lambda: client._prefetches == {}, TIMEOUT)  # all 404
        assert len([line for line in access_lines(log) if line[1].startswith("/api/relay?")]) == transfer.PREFETCHES
    finally:
        await client.close()


@pytest_twisted.ensureDeferred
async def test_a_client_acts_only_on_useful_announcements(reactor, tmp_path, server, http, clients):
    """Announcements the real hub sends to a real client: an invalid one is ignored with
    a warning; one of a version the client already has starts nothing; one
    of a new version is followed (here 404: nothing is arriving, which stays quiet)."""
    b = await clients.start(server, "b")
    await wait_for(reactor, lambda: subscribed_to_transfers(server, "b"), TIMEOUT)
    same = os.urandom(1000)
    await json_answer(http, "PUT", f"{server.url}/api/upload", 200, params={"path": "same.bin"}, data=same,
                      headers={"X-Client-Id": ["a"]})
    # the file, and its version recorded (which the announcement is compared with)
    await wait_for(reactor, lambda: read(b.config.folder, "same.bin") == same and b.state.base("same.bin") is not None,
                   TIMEOUT, "B has same.bin")
    hub = server.service.hub
    with LogCapture() as log:
        hub.event("upload_started", {"path": "../escape.bin", "hash": sha(b"x"), "size": SIZE, "source_client": "a"})
        hub.event("upload_started", {"path": "x.bin", "hash": "NOT-A-HASH", "size": SIZE, "source_client": "a"})
        hub.event("upload_started", {"path": "same.bin", "hash": sha(same), "size": SIZE, "source_client": "a"})
        hub.event("upload_started", {"path": "new.bin", "hash": sha(b"new"), "size": SIZE, "source_client": "a"})
        await wait_for(reactor, lambda: requests_for(log, "/api/relay", "new.bin"), TIMEOUT)
        await wait_for(reactor, lambda: not b.engine.server._prefetches, TIMEOUT)
    relays = [line for line in access_lines(log) if line[1].startswith("/api/relay?")]
    assert [(line[1].split("&")[0], line[2]) for line in relays] == [("/api/relay?path=new.bin", 404)]
    warnings = [e for e in log.events if "ignoring an invalid" in e.get("log_format", "") and e.get("kind") == "upload_started"]
    assert len(warnings) == 2
    assert not [e for e in log.events if e.get("log_format", "").startswith("relay of")]  # a 404 is quiet
    assert not os.path.exists(tmp_path / "escape.bin")
    assert os.listdir(os.path.join(b.config.folder, ".quantum-sync", "tmp")) == []


def test_no_relay_option(tmp_path):
    """``--no-relay`` turns the client's relay off (on by default)."""
    from quantum_sync.client.tap import Options

    def parse(*extra):
        options = Options()
        options.parseOptions(["--server", "http://127.0.0.1:8080", "--local-path", str(tmp_path), *extra])
        return options.config

    assert parse().relay is True
    assert parse("--no-relay").relay is False
