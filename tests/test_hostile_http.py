"""Hypothesis against the HTTP API of a running server: arbitrary paths, query strings and
JSON bodies never get a 5xx, never log an unhandled error, never touch or serve a byte
outside the root, and the server still answers afterwards."""

import json
from urllib.parse import quote, quote_from_bytes

import pytest
import pytest_twisted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.web.client import ResponseFailed
from twisted.web.http import PotentialDataLoss

from quantum_sync import passwords
from tests import hostile
from tests.logcapture import LogCapture
from tests.support import HttpClient, start_server

SETTINGS = settings(
    max_examples=200, deadline=None, database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
OUTSIDE_CONTENT = (b"canary: never served", b"root:x:0:0:fake")


class Env:
    """Two running servers (open, and with auth), a client, and what lies outside."""

    def __init__(self, open_server, auth_server, http, tmp_path, outside):
        self.open_server = open_server
        self.auth_server = auth_server
        self.http = http
        self.tmp_path = tmp_path
        self.outside = outside

    async def call(self, method, url, **kwargs):
        """(status, body) of one request."""
        response = await self.http.request(method, url, **kwargs)
        try:
            return response.code, await response.content()
        except ResponseFailed as e:
            # Twisted's own 400 for a malformed header line has no length, only a close.
            assert e.reasons[0].check(PotentialDataLoss) and response.code == 400, e
            return response.code, b'{"error": {"code": "twisted"}}'


    def __repr__(self):
        return f"Env({self.tmp_path})"

    def check(self, status, body, label):
        """No 5xx; every refusal a JSON error with a code; nothing from outside served."""
        assert status < 500, (label, status, body[:300])
        if status >= 400 and label[0] != "HEAD":
            assert json.loads(body)["error"]["code"], label
        for content in OUTSIDE_CONTENT:
            assert content not in body, label


@pytest.fixture
def env(reactor, tmp_path):
    hostile.build_tree(tmp_path)
    auth = {"users": {"u": {"password_hash": passwords.hash_password("pw", ln=10), "role": "write"}},
            "secret_file": str(tmp_path / "secret"), "token_ttl": 60}

    async def start():
        open_server = await start_server(reactor, tmp_path)
        auth_server = await start_server(reactor, tmp_path, root=str(tmp_path / "root2"), auth=auth)
        return open_server, auth_server

    with LogCapture() as errors:
        open_server, auth_server = pytest_twisted.blockon(defer.ensureDeferred(start()))
        outside = hostile.outside_snapshot(tmp_path)
        environment = Env(open_server, auth_server, HttpClient(reactor), tmp_path, outside)
        yield environment
        for server in (open_server, auth_server):
            status, body = pytest_twisted.blockon(
                defer.ensureDeferred(environment.call("GET", server.url + "/ws/health")))
            assert status == 200 and json.loads(body)["status"] == "ok"
        pytest_twisted.blockon(defer.ensureDeferred(environment.http.close()))
        for server in (open_server, auth_server):
            pytest_twisted.blockon(defer.ensureDeferred(server.stop()))
    assert errors.error_messages() == []
    assert hostile.outside_snapshot(tmp_path) == outside


def q(text):
    return quote(text.encode("utf-8", "surrogatepass"), safe="")


@SETTINGS
@given(path=hostile.paths, other=hostile.paths)
@pytest_twisted.ensureDeferred
async def test_hostile_paths_on_every_route(env, path, other):
    base = env.open_server.url
    p = q(path)
    calls = [
        ("GET", f"/api/metadata?path={p}", None),
        ("GET", f"/api/download?path={p}", None),
        ("HEAD", f"/api/download?path={p}", None),
        ("POST", f"/api/upload?path={p}", b"payload"),
        ("PUT", f"/api/upload?path={p}", b""),
    ]
    for method, url, data in calls:
        status, body = await env.call(method, base + url, data=data)
        env.check(status, body, (method, path))
    sync = {"client_id": "fuzz", "operations": [
        {"Delete": {"path": path}},
        {"Move": {"from": path, "to": other}},
        {"Move": {"from": "a.txt", "to": path}},
        {"Create": {"metadata": {"path": path, "size": 0, "modified": "2024-01-21T12:00:00Z",
                                 "hash": "", "is_directory": True}}},
    ]}
    status, body = await env.call("POST", base + "/api/sync", data=json.dumps(sync).encode())
    env.check(status, body, ("sync", path, other))
    if status == 200:
        assert len(json.loads(body)["results"]) == 4
    assert hostile.outside_snapshot(env.tmp_path) == env.outside


@SETTINGS
@given(body=st.one_of(
    hostile.json_values,
    st.builds(lambda ops, cid: {"operations": ops, "client_id": cid},
              st.lists(hostile.operations, max_size=5), hostile.json_values),
    st.builds(lambda u, pw: {"username": u, "password": pw}, hostile.json_values, hostile.json_values),
))
@pytest_twisted.ensureDeferred
async def test_arbitrary_json_bodies(env, body):
    data = json.dumps(body).encode()
    for server, path in [(env.open_server, "/api/sync"), (env.open_server, "/api/v1/auth/login"),
                         (env.auth_server, "/api/v1/auth/login")]:
        status, answer = await env.call("POST", server.url + path, data=data)
        env.check(status, answer, (path, body))


@pytest_twisted.ensureDeferred
async def test_a_lone_surrogate_in_a_login_is_a_failed_login(env):
    """"\\ud800" is valid JSON but no UTF-8 (found by test_arbitrary_json_bodies once in a
    while: the password's byte count raised UnicodeEncodeError, a 500)."""
    for body in ({"username": "u", "password": "\ud800"}, {"username": "\ud800", "password": "x\ud800"}):
        status, answer = await env.call("POST", env.auth_server.url + "/api/v1/auth/login",
                                        data=json.dumps(body).encode())
        assert (status, json.loads(answer)["error"]["code"]) == (401, "AUTH_FAILED"), answer


@SETTINGS
@given(raw=st.binary(max_size=200), junk=st.binary(max_size=200), number=st.text(max_size=25))
@pytest_twisted.ensureDeferred
async def test_arbitrary_bytes_in_queries_urls_and_bodies(env, raw, junk, number):
    base = env.open_server.url
    encoded = quote_from_bytes(raw, safe="")
    n = q(number)
    calls = [
        ("GET", f"/api/metadata?path={encoded}", None),
        ("GET", f"/api/download?{encoded}={encoded}&path=a.txt", None),
        ("GET", f"/api/changes?since={n}&limit={n}", None),
        ("GET", f"/api/list?{encoded}", None),
        ("GET", f"/api/{encoded}", None),
        ("GET", f"/{encoded}", None),
        ("POST", "/api/sync", junk),
        ("POST", "/api/v1/auth/login", junk),
        ("POST", f"/api/upload?path={encoded}", junk),
    ]
    for method, url, data in calls:
        status, body = await env.call(method, base + url, data=data)
        env.check(status, body, (method, url))
    status, body = await env.call("GET", env.auth_server.url + f"/api/list?token={encoded}",
                            headers={"Authorization": [b"Bearer " + raw.replace(b"\n", b"")]})
    if any(b < 0x20 or b == 0x7F for b in raw):  # Twisted refuses such a header line itself
        assert status in (400, 401), body
    else:
        assert status == 401, body
