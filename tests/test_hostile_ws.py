"""Hypothesis against the WebSocket of a running server: arbitrary JSON, messages of the
right type with hostile contents (paths above all), non-JSON text and binary frames.
Each answer is a JSON message or a policy close (never 1011 or a dropped connection),
no unhandled error is logged, nothing outside the root changes, and the server still
answers afterwards."""

import itertools
import json

import pytest
import pytest_twisted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import defer

from quantum_sync import passwords
from tests import hostile
from tests.logcapture import LogCapture
from tests.support import HttpClient, start_server
from test_ws_support import connect

SETTINGS = settings(
    max_examples=200, deadline=None, database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
#: Close codes a hostile message may earn: policy (1008), too big (1009).
POLICY_CLOSES = {1008, 1009}
WEBSOCKET = {"rate_limit": 100000, "ping_interval": 30, "stale_timeout": 300,
             "cleanup_interval": 60, "metrics_interval": 60}
TYPES = ["Subscribe", "subscribe", "unsubscribe", "FileOperation", "Ping", "ping", "auth",
         "Ack", "Error", "Pong", "", "fileoperation", "SUBSCRIBE"]

messages = st.one_of(
    hostile.json_values,
    st.builds(lambda t, rest: {**rest, "type": t}, st.sampled_from(TYPES),
              st.dictionaries(st.sampled_from(["id", "client_id", "topic", "payload", "operation",
                                               "source_client", "token"]),
                              hostile.json_values, max_size=3)),
    st.builds(lambda op, source, i: {"type": "FileOperation", "operation": op,
                                     "source_client": source, "id": i},
              hostile.operations, st.one_of(st.text(max_size=10), hostile.json_values),
              st.one_of(st.integers(), st.text(max_size=10))),
    st.builds(lambda topic: {"type": "subscribe", "topic": topic}, hostile.json_values),
    st.builds(lambda payload: {"type": "auth", "payload": payload}, hostile.json_values),
)
frames = st.one_of(
    messages.map(lambda m: (json.dumps(m).encode(), False)),
    st.binary(max_size=300).map(lambda b: (b, True)),
    st.text(max_size=100).map(lambda t: (t.encode("utf-8", "surrogatepass"), False)),
)


class Session:
    """One server and a WebSocket connection to it, reopened when the server closes it."""

    def __init__(self, reactor, server, tmp_path, outside):
        self.reactor = reactor
        self.server = server
        self.tmp_path = tmp_path
        self.outside = outside
        self.client = None
        self.probes = itertools.count()
        self.closes = []

    def __repr__(self):
        return f"Session({self.server.url})"

    async def ensure_open(self):
        if self.client is None or self.client.close_code is not None:
            self.client = await connect(self.reactor, self.server.ws_url)
        return self.client

    async def probe(self):
        """Ping with a fresh id and wait for its Pong (skipping anything else); or, if
        the server closed the connection meanwhile, check the code and reopen."""
        client = await self.ensure_open()
        probe_id = f"probe-{next(self.probes)}"
        client.send_json({"type": "Ping", "id": probe_id})
        pong = defer.ensureDeferred(client.expect("Pong", id=probe_id, timeout=5))
        done, index = await defer.DeferredList(
            [pong, client.closed], fireOnOneCallback=True, fireOnOneErrback=True, consumeErrors=True)
        if index == 1 or client.close_code is not None:
            pong.cancel() if not pong.called else None
            code = client.close_code
            self.closes.append(code)
            assert code in POLICY_CLOSES, f"closed with {code}"
            self.client = None
            await self.ensure_open()
            return await self.probe()

    async def close(self):
        if self.client is not None and self.client.transport is not None:
            self.client.transport.abortConnection()


@pytest.fixture
def session(reactor, tmp_path):
    hostile.build_tree(tmp_path)

    async def start():
        return await start_server(reactor, tmp_path, websocket=WEBSOCKET)

    with LogCapture() as errors:
        server = pytest_twisted.blockon(defer.ensureDeferred(start()))
        outside = hostile.outside_snapshot(tmp_path)
        running = Session(reactor, server, tmp_path, outside)
        yield running

        async def finish():
            await running.probe()
            await running.close()
            http = HttpClient(reactor)
            try:
                code, body = await http.json("GET", server.url + "/ws/health")
                assert body["status"] == "ok"
                await http.json("GET", server.url + "/api/list")
            finally:
                await http.close()
            await server.stop()

        pytest_twisted.blockon(defer.ensureDeferred(finish()))
    assert errors.error_messages() == []
    assert hostile.outside_snapshot(tmp_path) == outside


@SETTINGS
@given(sent=st.lists(frames, min_size=1, max_size=4))
@pytest_twisted.ensureDeferred
async def test_hostile_frames_get_answers_not_crashes(session, sent):
    client = await session.ensure_open()
    for payload, binary in sent:
        client.sendMessage(payload, isBinary=binary)
    await session.probe()
    for message in client.received:
        assert isinstance(message, dict) and message.get("type"), message
        if message["type"] == "Error":
            assert message["code"] != "INTERNAL_ERROR", message
    client.received.clear()
    assert hostile.outside_snapshot(session.tmp_path) == session.outside


@SETTINGS
@given(path=hostile.paths, other=hostile.paths)
@pytest_twisted.ensureDeferred
async def test_hostile_paths_in_file_operations(session, path, other):
    client = await session.ensure_open()
    operations = [
        {"Delete": {"path": path}},
        {"Move": {"from": path, "to": other}},
        {"Move": {"from": "a.txt", "to": path}},
        {"Create": {"metadata": {"path": path, "size": 0, "modified": "2024-01-21T12:00:00Z",
                                 "hash": "", "is_directory": True}}},
        {"Update": {"metadata": {"path": path, "size": 5, "modified": "2024-01-21T12:00:00Z",
                                 "hash": "0" * 64, "is_directory": False}}},
    ]
    for n, operation in enumerate(operations):
        answer = await client.request({"type": "FileOperation", "operation": operation,
                                       "source_client": "fuzz", "id": n}, timeout=5)
        assert answer.get("id") == n, answer
        assert answer["type"] in ("Ack", "Error"), answer
        if answer["type"] == "Error":
            assert answer["code"] in {"INVALID_PATH", "INVALID_MESSAGE", "NOT_FOUND", "CONFLICT",
                                      "PERMISSION_DENIED"}, answer
    assert hostile.outside_snapshot(session.tmp_path) == session.outside


@pytest.fixture
def auth_session(reactor, tmp_path):
    auth = {"users": {"u": {"password_hash": passwords.hash_password("pw", ln=10), "role": "read"}},
            "secret_file": str(tmp_path / "secret"), "token_ttl": 60}

    async def start():
        return await start_server(reactor, tmp_path, websocket=WEBSOCKET, auth=auth)

    with LogCapture() as errors:
        server = pytest_twisted.blockon(defer.ensureDeferred(start()))
        yield Session(reactor, server, tmp_path, {})
        pytest_twisted.blockon(defer.ensureDeferred(server.stop()))
    assert errors.error_messages() == []


@settings(SETTINGS, max_examples=60)
@given(first=messages.filter(lambda m: not (isinstance(m, dict) and m.get("type") in ("Ping", "ping"))))
@pytest_twisted.ensureDeferred
async def test_unauthenticated_first_messages_are_refused(auth_session, first):
    client = await auth_session.ensure_open()
    client.send_json(first)
    code, _ = await client.wait_closed(timeout=5)
    assert code == 1008
    answers = [m["type"] for m in client.received]
    assert answers and answers[-1] in ("Error", "auth_error"), client.received
    assert all(m.get("type") not in ("Ack", "auth_success", "FileOperation") for m in client.received)
