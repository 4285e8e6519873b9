"""Authentication end to end, against a real server on 127.0.0.1 with an ``auth`` section:
every role against every route and message, tokens three ways, forged and expired
tokens, login throttling with its security_alert, no secrets in logs, https and wss."""

import json
import os
import time

import attrs
import jwt
import pytest
import pytest_twisted
from twisted.logger import formatEvent

from quantum_sync import passwords, tls
from tests import certs
from tests.logcapture import LogCapture
from tests.support import HttpClient, start_server, wait_for
from test_ws_support import Client, connect, raw_handshake

FAST = {"ln": 10, "r": 8, "p": 1}
PASSWORDS = {"alice": "alice-Pw-1", "wendy": "wendy-Pw-2", "rita": "rita-Pw-3"}
ROLES = {"alice": "admin", "wendy": "write", "rita": "read"}
USER_OF_ROLE = {role: user for user, role in ROLES.items()}
HASHES = {user: passwords.hash_password(pw, **FAST) for user, pw in PASSWORDS.items()}
#: WebSocket clients a test opened; the fixture drops them.
OPEN_CLIENTS = []
WS_TIMERS = {"ping_interval": 30, "stale_timeout": 300, "cleanup_interval": 60, "metrics_interval": 60}


def auth_section(tmp_path, ttl=600):
    return {
        "users": {u: {"password_hash": HASHES[u], "role": ROLES[u]} for u in ROLES},
        "secret_file": str(tmp_path / "secrets" / "auth-secret"),
        "token_ttl": ttl,
    }


def tree(root):
    """Every path under ``root`` (state directory excepted) with its content."""
    found = {}
    for directory, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d != ".quantum-sync"]
        for name in dirs + files:
            full = os.path.join(directory, name)
            found[os.path.relpath(full, root)] = open(full, "rb").read() if name in files else None
    return found


@pytest.fixture
def captured_log():
    with LogCapture() as capture:
        yield capture


async def shut_down(server, http):
    """Drop the WebSockets a test opened, close the HTTP client, stop the server."""
    while OPEN_CLIENTS:
        client = OPEN_CLIENTS.pop()
        if client.transport is not None:
            client.transport.abortConnection()
    await http.close()
    await server.stop()


@pytest_twisted.async_yield_fixture
async def secured(reactor, tmp_path, captured_log):
    root = tmp_path / "root"
    (root / "d").mkdir(parents=True)
    (root / "a.txt").write_bytes(b"alpha")
    server = await start_server(reactor, tmp_path, auth=auth_section(tmp_path), websocket=WS_TIMERS)
    http = HttpClient(reactor)
    yield server, http
    await shut_down(server, http)
    assert [formatEvent(e) for e in captured_log.failures()] == []


async def login(http, url, user, password=None, expect=200):
    code, body = await http.json(
        "POST", url + "/api/v1/auth/login", expect=expect,
        data=json.dumps({"username": user, "password": PASSWORDS[user] if password is None else password}).encode(),
        headers={"Content-Type": ["application/json"]},
    )
    return body["data"]["token"] if code == 200 else body


async def tokens_by_role(http, server):
    return {role: await login(http, server.url, user) for role, user in USER_OF_ROLE.items()}


def bearer(token):
    return {"Authorization": [f"Bearer {token}"]} if token else {}


async def ws(server, reactor, path="/ws", headers=None) -> Client:
    client = await connect(reactor, f"ws://127.0.0.1:{server.port}{path}", headers=headers)
    OPEN_CLIENTS.append(client)
    return client


def secret_of(tmp_path):
    return bytes.fromhex((tmp_path / "secrets" / "auth-secret").read_text().strip())


# --- logins and tokens -----------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_login_answer_and_secret_file(secured, tmp_path):
    server, http = secured
    code, body = await http.json(
        "POST", server.url + "/api/v1/auth/login",
        data=json.dumps({"username": "rita", "password": PASSWORDS["rita"]}).encode())
    assert body["success"] is True
    assert set(body["data"]) >= {"token", "expires_at"}
    assert body["data"]["expires_at"].endswith("Z")
    secret = tmp_path / "secrets" / "auth-secret"
    assert oct(secret.stat().st_mode & 0o777) == "0o600"
    assert len(secret.read_text().strip()) == 64
    for user, password in [("rita", "wrong"), ("nobody", "x"), ("rita", "")]:
        error = await login(http, server.url, user, password, expect=401)
        assert error["error"]["code"] == "AUTH_FAILED"
    for body in [b"{", b"[]", b'{"username": 1, "password": "x"}', b'{"username": "rita"}']:
        _, error = await http.json("POST", server.url + "/api/v1/auth/login", expect=400, data=body)
        assert error["error"]["code"] == "INVALID_REQUEST"


@pytest_twisted.ensureDeferred
async def test_token_accepted_three_ways(secured, reactor):
    server, http = secured
    token = await login(http, server.url, "rita")
    _, listing = await http.json("GET", server.url + "/api/list", headers=bearer(token))
    assert {entry["path"] for entry in listing} == {"a.txt", "d"}
    await http.json("GET", f"{server.url}/api/list?token={token}")
    client = await ws(server, reactor)
    assert (await client.request({"type": "auth", "payload": {"token": token}}))["type"] == "auth_success"
    assert (await client.request({"type": "Subscribe", "client_id": "c1"}))["type"] == "Ack"
    # at the WebSocket handshake too: ?token= and the Authorization header
    for n, (path, headers) in enumerate([(f"/ws?token={token}", None), ("/ws", {"Authorization": f"Bearer {token}"})]):
        client = await ws(server, reactor, path, headers)  # (one live connection per client id)
        assert (await client.request({"type": "Subscribe", "client_id": f"c{n + 2}"}))["type"] == "Ack"


HTTP_ROUTES = [
    ("GET", "/api/list", None, "read"),
    ("GET", "/api/metadata?path=a.txt", None, "read"),
    ("GET", "/api/download?path=a.txt", None, "read"),
    ("GET", "/api/changes?since=0", None, "read"),
    ("GET", "/api/versions?path=a.txt", None, "read"),
    ("GET", "/ws/metrics", None, "read"),
    ("POST", "/api/upload?path=new-{n}.txt", b"new", "write"),
    ("PUT", "/api/upload?path=put-{n}.txt", b"put", "write"),
    ("POST", "/api/sync", "SYNC", "write"),
    ("GET", "/ws/status", None, "admin"),
    ("GET", "/metrics", None, "admin"),
]
RANK = {None: -1, "read": 0, "write": 1, "admin": 2}


def _sync_body(n):
    return json.dumps({"client_id": "t", "operations": [
        {"Create": {"metadata": {"path": f"dir-{n}", "size": 0, "modified": "2024-01-21T12:00:00Z",
                                 "hash": "", "is_directory": True}}}]}).encode()


@pytest_twisted.ensureDeferred
async def test_every_role_against_every_route(secured):
    server, http = secured
    tokens = {None: None, **await tokens_by_role(http, server)}
    n = 0
    for role, token in tokens.items():
        for method, path, body, need in HTTP_ROUTES:
            n += 1
            before = tree(server.root)
            data = _sync_body(n) if body == "SYNC" else body
            response = await http.request(method, server.url + path.format(n=n),
                                          headers=bearer(token), data=data)
            content = await response.content()
            label = (role, method, path)
            if RANK[role] >= RANK[need]:
                assert response.code == 200, (label, content[:300])
            else:
                expected = (401, "AUTH_REQUIRED") if role is None else (403, "PERMISSION_DENIED")
                assert response.code == expected[0], (label, content[:300])
                assert json.loads(content)["error"]["code"] == expected[1], label
                assert tree(server.root) == before, label
        # /ws/health stays open
        response = await http.get(server.url + "/ws/health", headers=bearer(token))
        assert response.code == 200
        assert json.loads(await response.content())["status"] == "ok"


def forged(tmp_path, clock_now):
    key = secret_of(tmp_path)
    good = {"sub": "alice", "role": "admin", "iat": int(clock_now), "exp": int(clock_now) + 600,
            "iss": "quantum-sync", "aud": "quantum-sync"}
    from cryptography.hazmat.primitives.asymmetric import rsa

    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    header_none = jwt.utils.base64url_encode(b'{"alg":"none","typ":"JWT"}').decode()
    payload = jwt.utils.base64url_encode(json.dumps(good).encode()).decode()
    return {
        "alg none": (f"{header_none}.{payload}.", "AUTH_FAILED"),
        "wrong key": (jwt.encode(good, os.urandom(32), algorithm="HS256"), "AUTH_FAILED"),
        "wrong algorithm HS512": (jwt.encode(good, key, algorithm="HS512"), "AUTH_FAILED"),
        "wrong algorithm RS256": (jwt.encode(good, rsa_key, algorithm="RS256"), "AUTH_FAILED"),
        "no exp": (jwt.encode({k: v for k, v in good.items() if k != "exp"}, key, algorithm="HS256"),
                   "AUTH_FAILED"),
        "expired": (jwt.encode(dict(good, iat=int(clock_now) - 700, exp=int(clock_now) - 100), key,
                               algorithm="HS256"), "AUTH_EXPIRED"),
        "garbage": ("x.y.z", "AUTH_FAILED"),
    }


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
@pytest_twisted.ensureDeferred
async def test_forged_and_expired_tokens_refused_everywhere(secured, tmp_path, reactor):
    server, http = secured
    # the right key with valid claims is accepted: the forgeries differ only in what is named
    valid = jwt.encode({"sub": "alice", "iat": int(time.time()), "exp": int(time.time()) + 60,
                        "iss": "quantum-sync", "aud": "quantum-sync"}, secret_of(tmp_path), algorithm="HS256")
    await http.json("GET", server.url + "/ws/status", headers=bearer(valid))
    for name, (token, code) in forged(tmp_path, time.time()).items():
        for url, headers in [(server.url + "/api/list", bearer(token)),
                             (f"{server.url}/api/list?token={token}", {})]:
            status, body = await http.json("GET", url, expect=None, headers=headers)
            assert (status, body["error"]["code"]) == (401, code), name
        status, body = await raw_handshake(reactor, f"{server.url}/ws?token={token}")
        assert (status, body["error"]["code"]) == (401, code), name
        client = await ws(server, reactor)
        answer = await client.request({"type": "auth", "payload": {"token": token}})
        assert answer["type"] == "auth_error", name
        code_closed, _ = await client.wait_closed()
        assert code_closed == 1008, name


@pytest_twisted.ensureDeferred
async def test_websocket_roles_and_auth_first(secured, reactor):
    server, http = secured
    tokens = await tokens_by_role(http, server)
    # anything but auth (or Ping) first: AUTH_REQUIRED and close 1008
    client = await ws(server, reactor)
    assert (await client.request({"type": "Ping"}))["type"] == "Pong"
    answer = await client.request({"type": "Subscribe", "client_id": "x"})
    assert (answer["type"], answer["code"]) == ("Error", "AUTH_REQUIRED")
    assert (await client.wait_closed())[0] == 1008
    # every role against every message: reads for all, FileOperation only from write up
    for n, role in enumerate(("read", "write", "admin")):
        client = await ws(server, reactor)
        await client.request({"type": "auth", "payload": {"token": tokens[role]}})
        for message in ({"type": "Subscribe", "client_id": role},
                        {"type": "subscribe", "topic": "alerts"},
                        {"type": "unsubscribe", "topic": "alerts"},
                        {"type": "subscribe", "topic": "system"}):
            assert (await client.request(message))["type"] == "Ack", (role, message)
        assert (await client.request({"type": "ping", "id": n}))["type"] == "pong"
        before = tree(server.root)
        source, target = ("a.txt", "b.txt") if n < 2 else ("b.txt", "c.txt")
        answer = await client.request({"type": "FileOperation", "source_client": role, "id": role,
                                       "operation": {"Move": {"from": source, "to": target}}})
        assert answer["id"] == role
        if role == "read":
            assert (answer["type"], answer["code"]) == ("Error", "PERMISSION_DENIED")
            assert tree(server.root) == before
        else:
            assert answer["type"] == "Ack", answer
            await wait_for(reactor, lambda: os.path.exists(os.path.join(server.root, target)))
            assert not os.path.exists(os.path.join(server.root, source))


@pytest_twisted.ensureDeferred
async def test_login_throttling_429_and_security_alert(secured, reactor):
    server, http = secured
    admin = await login(http, server.url, "alice")
    watcher = await ws(server, reactor)
    await watcher.request({"type": "auth", "payload": {"token": admin}})
    assert (await watcher.request({"type": "subscribe", "topic": "alerts"}))["type"] == "Ack"
    for _ in range(5):
        await login(http, server.url, "wendy", "guess", expect=401)
    response = await http.post(server.url + "/api/v1/auth/login", data=json.dumps(
        {"username": "wendy", "password": PASSWORDS["wendy"]}).encode())
    body = json.loads(await response.content())
    assert response.code == 429
    assert body["error"]["code"] == "RATE_LIMIT_EXCEEDED"
    retry = int(response.headers.getRawHeaders("Retry-After")[0])
    assert 1 <= retry <= 60 and body["error"]["retryAfter"] == retry
    alert = await _alert(watcher, "login_throttled")
    assert alert["topic"] == "alerts"
    assert alert["data"]["address"] == "127.0.0.1"
    # tokens already issued keep working
    await http.json("GET", server.url + "/api/list", headers=bearer(admin))


async def _alert(client, event):
    while True:
        message = await client.expect("security_alert")
        if message["data"].get("event") == event:
            return message


@pytest_twisted.ensureDeferred
async def test_tokens_and_passwords_never_logged(secured, reactor, captured_log):
    server, http = secured
    token = await login(http, server.url, "rita")
    await http.json("GET", f"{server.url}/api/list?token={token}")
    await http.json("GET", f"{server.url}/api/metadata?path=a.txt&token={token}")
    await http.json("GET", f"{server.url}/api/list?%74oken={token}&x=1")
    await http.json("GET", server.url + "/api/list", headers=bearer(token))
    await login(http, server.url, "rita", "a-wrong-Password-9", expect=401)
    client = await ws(server, reactor, f"/ws?token={token}")
    await client.request({"type": "auth", "payload": {"token": token}})
    client.sendClose(1000)
    await client.wait_closed()
    await wait_for(reactor, lambda: any("/api/metadata" in formatEvent(e) for e in captured_log.events))
    text = captured_log.text()
    assert "token=REDACTED" in text  # the access log saw the requests...
    for secret in [token, token.split(".")[2], PASSWORDS["rita"], "a-wrong-Password-9"]:
        assert secret not in text  # ...but not the secrets


# --- TLS end to end --------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_https_and_wss_end_to_end(reactor, tmp_path, captured_log):
    from autobahn.twisted.websocket import WebSocketClientFactory
    from treq.client import HTTPClient
    from twisted.web.client import Agent, HTTPConnectionPool

    ca = certs.make_ca(tmp_path)
    issued = certs.issue(tmp_path, ca)
    server = await start_server(reactor, tmp_path, listen=certs.ssl_listen(issued),
                                auth=auth_section(tmp_path), websocket=WS_TIMERS)
    pools = []

    def client(policy):
        pool = HTTPConnectionPool(reactor, persistent=False)
        pools.append(pool)
        if policy is None:
            return HTTPClient(Agent(reactor, pool=pool))
        return HTTPClient(Agent(reactor, contextFactory=policy, pool=pool))

    ws_client = None
    try:
        https = f"https://localhost:{server.port}"
        trusted = client(tls.https_policy(ca.cert_path))
        response = await trusted.post(https + "/api/v1/auth/login", data=json.dumps(
            {"username": "alice", "password": PASSWORDS["alice"]}).encode())
        assert response.code == 200
        token = json.loads(await response.content())["data"]["token"]
        response = await trusted.get(https + "/api/list", headers=bearer(token))
        assert response.code == 200 and json.loads(await response.content()) == []

        factory = WebSocketClientFactory(f"wss://localhost:{server.port}/ws")
        factory.protocol = Client
        endpoint = tls.client_endpoint(reactor, "localhost", server.port, True, ca.cert_path)
        ws_client = await endpoint.connect(factory)
        await ws_client.opened.addTimeout(5, reactor)
        answer = await ws_client.request({"type": "auth", "payload": {"token": token}})
        assert answer["type"] == "auth_success"

        # a client without the CA refuses the server, and says why
        untrusted = client(tls.https_policy())
        with pytest.raises(Exception) as raised:
            await untrusted.get(https + "/ws/health")
        from twisted.python.failure import Failure

        assert tls.tls_failure_reason(Failure(raised.value)) is not None
        assert "TLS: certificate of localhost refused" in captured_log.text()
        # plain http to the TLS port gets nothing useful
        with pytest.raises(Exception):
            await client(None).get(f"http://127.0.0.1:{server.port}/api/list", timeout=5)
    finally:
        if ws_client is not None and ws_client.transport is not None:
            ws_client.transport.abortConnection()
        for pool in pools:
            await pool.closeCachedConnections()
        await server.stop()


@pytest.mark.parametrize("uri, logged", [
    (b"/api/list?token=abc", "/api/list?token=REDACTED"),
    (b"/api/list?path=a&token=abc&x=1", "/api/list?path=a&token=REDACTED&x=1"),
    (b"/api/list?%74oken=abc", "/api/list?%74oken=REDACTED"),
    (b"/api/list?tok%65n=a&token=b", "/api/list?tok%65n=REDACTED&token=REDACTED"),
    (b"/api/list?mytoken=1&path=token%3Dx", "/api/list?mytoken=1&path=token%3Dx"),
    (b"/api/list", "/api/list"),
])
def test_access_log_redaction(uri, logged):
    from quantum_sync.server.site import redact

    assert redact(uri) == logged


@pytest_twisted.ensureDeferred
async def test_open_websocket_follows_expiry_and_account_changes(reactor, tmp_path):
    from twisted.internet.task import deferLater

    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "a.txt").write_bytes(b"alpha")
    server = await start_server(reactor, tmp_path, auth=auth_section(tmp_path, ttl=3), websocket=WS_TIMERS)
    http = HttpClient(reactor)
    try:
        tokens = await tokens_by_role(http, server)
        clients = {}
        for role in ("write", "admin"):
            clients[role] = client = await ws(server, reactor)
            assert (await client.request({"type": "auth", "payload": {"token": tokens[role]}}))["type"] \
                == "auth_success"
            assert (await client.request({"type": "Subscribe", "client_id": role}))["type"] == "Ack"
        # the write user is demoted in the running server: writes refused, the connection stays
        accounts = server.service.authorizer.accounts
        accounts["wendy"] = attrs.evolve(accounts["wendy"], role="read")
        answer = await clients["write"].request({"type": "FileOperation", "source_client": "w", "id": 1,
                                                 "operation": {"Delete": {"path": "a.txt"}}})
        assert (answer["type"], answer["code"]) == ("Error", "PERMISSION_DENIED")
        assert os.path.exists(os.path.join(server.root, "a.txt"))
        # once the token has expired, the next message is refused and the connection closed
        await deferLater(reactor, 3.2, lambda: None)
        answer = await clients["admin"].request({"type": "subscribe", "topic": "alerts", "id": 2})
        assert (answer["type"], answer["code"], answer["id"]) == ("Error", "AUTH_EXPIRED", 2)
        assert (await clients["admin"].wait_closed())[0] == 1008
    finally:
        await shut_down(server, http)


class _RawHttp:
    """One HTTP/1.1 request written by hand over a socket, in as many pieces as the test
    wants; ``answer`` fires with the status line's code once the head is in."""

    def __init__(self):
        from twisted.internet.defer import Deferred
        from twisted.internet.protocol import Protocol

        self.received = b""
        self.answer = Deferred()
        outer = self

        class _Protocol(Protocol):
            def dataReceived(self, data):
                outer.received += data
                if b"\r\n\r\n" in outer.received and not outer.answer.called:
                    outer.answer.callback(int(outer.received.split(b" ", 2)[1]))

        self.protocol = _Protocol()

    async def connect(self, reactor, port):
        from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), self.protocol)

    def send(self, data: bytes):
        self.protocol.transport.write(data)


def _upload_head(path, length, token, sha):
    return (f"POST /api/upload?path={path} HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n"
            f"Authorization: Bearer {token}\r\nX-Client-Id: long\r\nX-Content-SHA256: {sha}\r\n\r\n").encode()


@pytest_twisted.ensureDeferred
async def test_an_upload_that_outlives_its_token_is_taken_once(reactor, tmp_path):
    """The token is judged when the upload's head arrives: a body that is still coming
    when the token runs out is stored, not refused at its end (the client would send it
    all again); a token expired before the head is refused before the body."""
    import hashlib

    from twisted.internet.task import Clock

    (tmp_path / "root").mkdir()
    server = await start_server(reactor, tmp_path, auth=auth_section(tmp_path, ttl=60))
    http = HttpClient(reactor)
    clock = Clock()
    clock.advance(1_000_000)
    server.service.authorizer.clock = clock  # the tokens' time, moved by the test
    temp_dir = server.service.store.temp_dir
    try:
        token = await login(http, server.url, "wendy")
        body = os.urandom(4 * 1024 * 1024)
        sha = hashlib.sha256(body).hexdigest()
        upload = _RawHttp()
        await upload.connect(reactor, server.port)
        upload.send(_upload_head("long.bin", len(body), token, sha) + body[:1024 * 1024])

        def spooled():  # the head was let in: its body is going to a temp file
            return any(os.path.getsize(os.path.join(temp_dir, name)) > 0 for name in os.listdir(temp_dir))

        await wait_for(reactor, spooled, what="the first part of the body in the server's temp file")
        clock.advance(61)  # the token runs out while the body is still coming
        upload.send(body[1024 * 1024:])
        assert await upload.answer == 200, upload.received[:300]
        assert open(os.path.join(server.root, "long.bin"), "rb").read() == body
        # a token that has run out before the head: 401 without waiting for the body
        late = _RawHttp()
        await late.connect(reactor, server.port)
        late.send(_upload_head("late.bin", len(body), token, sha))
        assert await late.answer == 401
        assert b"AUTH_EXPIRED" in late.received
    finally:
        await http.close()
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_an_upload_refused_at_its_head_stops_sending(reactor, tmp_path, logged_failures):
    """A token refused when the upload's head arrives (401 before the body is read): the
    client stops its body there instead of sending the rest into a connection the
    server only drains before closing."""
    from twisted.internet.defer import Deferred
    from twisted.web.iweb import IBodyProducer
    from zope.interface import implementer

    from quantum_sync.client.transfer import IdleWatch, NotAuthorized, ServerClient

    @implementer(IBodyProducer)
    class Endless:
        """1 GiB announced, 64 KiB a reactor turn."""

        length = 1 << 30

        def __init__(self):
            self.sent, self.stopped, self.paused, self._consumer = 0, False, False, None

        def startProducing(self, consumer):
            self._consumer = consumer
            reactor.callLater(0, self._more)
            return Deferred()  # never done: the test ends before 1 GiB

        def _more(self):
            if self.stopped or self.paused:
                return
            self._consumer.write(b"x" * 65536)
            self.sent += 65536
            reactor.callLater(0, self._more)

        def pauseProducing(self):
            self.paused = True

        def resumeProducing(self):
            self.paused = False
            reactor.callLater(0, self._more)

        def stopProducing(self):
            self.stopped = True

    (tmp_path / "root").mkdir()
    server = await start_server(reactor, tmp_path, auth=auth_section(tmp_path))
    http = HttpClient(reactor)
    client = ServerClient(reactor, server.url, "c", "not-a-token")
    try:
        body = Endless()
        watch = IdleWatch(reactor, 60)
        with pytest.raises(NotAuthorized, match="AUTH_FAILED"):
            await client._transfer_request("PUT", "/api/upload", "big.bin", {}, body, watch=watch)
        watch.stop()
        assert body.stopped and body.sent < Endless.length
        assert [e.get("log_format") for e in logged_failures] == []
    finally:
        await client.close()
        await http.close()
        await server.stop()
