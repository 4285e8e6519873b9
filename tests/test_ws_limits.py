"""/ws limits and close codes with real Autobahn clients over real sockets: message size
(whole and fragmented), rate limit, connection cap, origins, slow consumers, stale
clients, slow fragment trickles and authentication."""

import socket
import struct

import pytest
import pytest_twisted
from twisted.internet.task import Clock, LoopingCall, deferLater

from quantum_sync.protocol import Change, Delete, now
from quantum_sync.server.auth import Account, TokenAuthorizer
from quantum_sync.threads import ReactorThreads
from support import wait_for
from test_ws_support import raw_handshake


def padded_ping(size: int) -> bytes:
    """A valid Ping of exactly ``size`` bytes."""
    frame = b'{"type":"Ping","pad":""}'
    return frame[:-2] + b"x" * (size - len(frame)) + b'"}'


# -- message size ----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_message_at_the_limit_passes_one_byte_more_closes_1009(sites):
    site = await sites(max_message_size=1000)
    client = await site.connect()
    client.sendMessage(padded_ping(1000))
    assert await client.next() == {"type": "Pong"}
    client.sendMessage(padded_ping(1001))
    assert (await client.wait_closed())[0] == 1009


@pytest_twisted.ensureDeferred
async def test_fragmented_message_closed_1009_as_soon_as_total_passes(sites):
    site = await sites(max_message_size=1000)
    client = await site.connect()
    client.beginMessage()
    client.sendMessageFrame(b'{"type":"Ping","pad":"' + b"x" * 400)
    client.sendMessageFrame(b"x" * 400)
    assert client.close_code is None
    client.sendMessageFrame(b"x" * 400)  # 1,222 bytes so far; the message never ends
    assert (await client.wait_closed())[0] == 1009


@pytest_twisted.ensureDeferred
async def test_huge_length_header_closed_1009_without_reading_a_payload(sites):
    site = await sites(max_message_size=1000)
    client = await site.connect()
    client.transport.write(b"\x81\xff" + struct.pack("!Q", 2**62) + b"\x00\x00\x00\x00")
    assert (await client.wait_closed())[0] == 1009


# -- rate limit ------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_rate_limit_answers_retry_after_then_closes_persistent_abuse(sites):
    clock = Clock()
    site = await sites(rate_limit=5, factory_clock=clock)
    client = await site.connect()
    for _ in range(8):
        client.send_json({"type": "Ping"})
    answers = [await client.next() for _ in range(8)]
    assert answers[:5] == [{"type": "Pong"}] * 5
    assert {a["code"] for a in answers[5:]} == {"RATE_LIMIT_EXCEEDED"}
    assert all(a["retryAfter"] >= 1 for a in answers[5:])
    # A client that slows down is forgiven.
    clock.advance(2)
    assert await client.request({"type": "Ping"}) == {"type": "Pong"}
    # One that stays over the limit for 5 s after its first refusal is closed.
    for _ in range(12):
        if client.close_code is not None:
            break
        for _ in range(10):
            client.send_json({"type": "Ping"})
        await wait_for(site.reactor, lambda: client.inbox.pending and len(client.inbox.pending) >= 10
                       or client.close_code is not None)
        client.inbox.pending.clear()
        clock.advance(0.5)
    assert (await client.wait_closed())[0] == 1008


# -- connection cap, origins, upgrade --------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_connection_cap_refuses_handshake_with_503_json(sites):
    site = await sites(max_connections=2)
    first = await site.connect()
    await first.request({"type": "subscribe", "topic": "alerts"})
    await site.connect()
    for _ in range(3):
        status, body = await raw_handshake(site.reactor, site.http_url)
        assert status == 503 and body["error"]["code"] == "CONNECTION_LIMIT"
    alert = await first.expect("security_alert")
    assert alert["data"]["event"] == "connection_limit"
    assert [m["type"] for m in first.received].count("security_alert") == 1  # not one per refusal
    first.sendClose(1000)
    await wait_for(site.reactor, lambda: len(site.hub.connections) == 1)
    await site.connect()


@pytest.mark.parametrize(
    "origin",
    ["https://evil.example", "null", "https://app.example.com.evil.com",
     "https://evilapp.example.com", "https://app.example.com:8443"],
)
@pytest_twisted.ensureDeferred
async def test_origin_outside_allowed_origins_refused_with_alert(sites, origin):
    site = await sites(allowed_origins=("https://app.example.com",))
    watcher = await site.connect()
    await watcher.request({"type": "subscribe", "topic": "alerts"})
    status, body = await raw_handshake(site.reactor, site.http_url, {"Origin": [origin]})
    assert status == 403 and body["error"]["code"] == "PERMISSION_DENIED"
    alert = await watcher.expect("security_alert")
    assert alert["data"]["event"] == "origin_refused" and alert["data"]["detail"] == origin
    assert len(site.hub.connections) == 1
    await site.connect(origin="https://app.example.com")


@pytest_twisted.ensureDeferred
async def test_star_allows_any_origin_but_not_null(sites):
    site = await sites()
    await site.connect(origin="https://anywhere.example")
    status, body = await raw_handshake(site.reactor, site.http_url, {"Origin": ["null"]})
    assert status == 403 and body["error"]["code"] == "PERMISSION_DENIED"


@pytest_twisted.ensureDeferred
async def test_plain_get_on_ws_is_a_json_400(sites):
    import treq

    site = await sites()
    response = await treq.get(site.http_url, persistent=False)
    body = await response.json()
    assert response.code == 400 and body["error"]["code"] == "INVALID_REQUEST"


# -- slow consumers, stale clients, trickles ---------------------------------------------


def shrink_buffers(sock_owner):
    """Small kernel buffers so that a few hundred KiB fill them."""
    handle = sock_owner.transport.getHandle()
    handle.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    handle.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)


@pytest_twisted.ensureDeferred
async def test_slow_consumer_closed_1013_while_others_keep_receiving(sites):
    site = await sites(max_send_queue=64 * 1024)
    slow, fast = await site.connect(), await site.connect()
    await slow.request({"type": "Subscribe", "client_id": "slow"})
    await fast.request({"type": "Subscribe", "client_id": "fast"})
    (server_slow,) = [c for c in site.hub.connections if c.client_id == "slow"]
    shrink_buffers(slow)
    shrink_buffers(server_slow)
    slow.transport.pauseProducing()  # the slow client stops reading
    longest_backlog = 0
    for seq in range(1, 1501):
        site.hub.publish(Change(seq, Delete(f"dir/{'x' * 900}/{seq}"), "writer", now()))
        longest_backlog = max(longest_backlog, server_slow._backlog_bytes)
        if seq % 20 == 0:  # changes arrive over time, not in one reactor turn
            await deferLater(site.reactor, 0, lambda: None)
    assert server_slow.state != server_slow.STATE_OPEN  # closing: its queue was dropped
    assert longest_backlog <= 64 * 1024 and server_slow._backlog is None
    await wait_for(site.reactor, lambda: len(fast.received) >= 1501)
    assert [m["seq"] for m in fast.received[1:]] == list(range(1, 1501))
    slow.transport.resumeProducing()
    assert (await slow.wait_closed())[0] == 1013


@pytest_twisted.ensureDeferred
async def test_client_that_stops_answering_pings_is_dropped_after_stale_timeout(sites):
    site = await sites(ping_interval=0.1, stale_timeout=0.5, cleanup_interval=0.1)
    watcher = await site.connect()
    await watcher.request({"type": "subscribe", "topic": "peer_network"})
    mute = await site.connect()
    await mute.request({"type": "Subscribe", "client_id": "mute"})
    await watcher.expect("peer_connected")
    mute.transport.pauseProducing()  # never reads a ping again, never answers
    started = site.reactor.seconds()
    gone = await watcher.expect("peer_disconnected")
    assert gone["data"] == {"id": "mute", "reason": "timeout", "timestamp": gone["data"]["timestamp"]}
    assert site.reactor.seconds() - started >= 0.4
    # the watcher answered every ping automatically and is still there
    assert len(site.hub.connections) == 1
    assert await watcher.request({"type": "Ping"}) == {"type": "Pong"}


@pytest_twisted.ensureDeferred
async def test_fragment_trickle_closed_1008_by_assembly_deadline(sites):
    site = await sites(ping_interval=0.2, stale_timeout=300)
    client = await site.connect()
    client.beginMessage()
    client.sendMessageFrame(b'{"type":"Ping","pad":"')
    trickle = LoopingCall(client.sendMessageFrame, b"x")
    trickle.clock = site.reactor
    trickle.start(0.05)
    try:
        assert (await client.wait_closed())[0] == 1008
    finally:
        trickle.stop()


# -- authentication --------------------------------------------------------------------------


@pytest.fixture
def authorizer(reactor):
    accounts = {"reader": Account("reader", "-", "read"), "writer": Account("writer", "-", "write")}
    return TokenAuthorizer(accounts, b"k" * 32, 3600, reactor, run_in_thread=ReactorThreads(reactor).defer)


@pytest_twisted.ensureDeferred
async def test_auth_required_before_anything_but_auth_or_ping(sites, authorizer):
    site = await sites(authorizer=authorizer)
    client = await site.connect()
    assert await client.request({"type": "Ping"}) == {"type": "Pong"}
    answer = await client.request({"type": "Subscribe", "client_id": "x", "id": "s"})
    assert (answer["type"], answer["code"], answer["id"]) == ("Error", "AUTH_REQUIRED", "s")
    assert (await client.wait_closed())[0] == 1008


@pytest_twisted.ensureDeferred
async def test_auth_message_then_roles_apply(sites, authorizer):
    site = await sites(authorizer=authorizer)
    site.journal.paths.add("a.txt")
    client = await site.connect()
    token = authorizer.issue_token("reader")["token"]
    ok = await client.request({"type": "auth", "payload": {"token": token}, "id": 1})
    assert ok == {"type": "auth_success", "data": {"user": "reader", "role": "read"}, "id": 1}
    assert (await client.request({"type": "Subscribe", "client_id": "r"}))["type"] == "Ack"
    refused = await client.request({"type": "FileOperation", "operation": {"Delete": {"path": "a.txt"}}})
    assert refused["code"] == "PERMISSION_DENIED" and site.journal.paths == {"a.txt"}


@pytest_twisted.ensureDeferred
async def test_bad_auth_message_gets_auth_error_close_1008_and_alert(sites, authorizer):
    site = await sites(authorizer=authorizer)
    admin_token = authorizer.issue_token("writer")["token"]
    watcher = await site.connect(headers={"Authorization": f"Bearer {admin_token}"})
    await watcher.request({"type": "subscribe", "topic": "alerts"})
    client = await site.connect()
    answer = await client.request({"type": "auth", "payload": {"token": "forged"}})
    assert answer["type"] == "auth_error" and answer["code"] == "AUTH_FAILED"
    assert (await client.wait_closed())[0] == 1008
    assert (await watcher.expect("security_alert"))["data"]["event"] == "auth_failed"


@pytest_twisted.ensureDeferred
async def test_handshake_token_query_or_header_and_bad_one_refused_401(sites, authorizer):
    site = await sites(authorizer=authorizer)
    token = authorizer.issue_token("writer")["token"]
    site.journal.paths.add("w.txt")
    by_query = await site.connect(f"{site.ws_url}?token={token}")
    ack = await by_query.request({"type": "FileOperation", "operation": {"Delete": {"path": "w.txt"}}})
    assert ack["type"] == "Ack"
    status, body = await raw_handshake(site.reactor, site.http_url + "?token=forged")
    assert status == 401 and body["error"]["code"] == "AUTH_FAILED"
    status, body = await raw_handshake(site.reactor, site.http_url, {"Authorization": ["Bearer forged"]})
    assert status == 401 and body["error"]["code"] == "AUTH_FAILED"


@pytest_twisted.ensureDeferred
async def test_unauthenticated_connection_closed_after_auth_timeout(sites, authorizer):
    site = await sites(authorizer=authorizer)
    site.factory.auth_timeout = 0.2
    client = await site.connect()
    answer = await client.next()
    assert answer["code"] == "AUTH_REQUIRED"
    assert (await client.wait_closed())[0] == 1008


# -- protocol violations (a port of the Autobahn|Testsuite cases that matter here) ----------


def masked(first: int, payload: bytes) -> bytes:
    mask = b"\x01\x02\x03\x04"
    return bytes([first, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


@pytest.mark.parametrize(
    "raw, code",
    [
        (masked(0x83, b"x"), 1002),  # reserved opcode 3
        (masked(0x8B, b"x"), 1002),  # reserved control opcode 11
        (masked(0xB1, b'{"type":"Ping"}'), 1002),  # RSV bits without an extension
        (masked(0x80, b"x"), 1002),  # continuation without a message
        (masked(0x81, b"\xff\xfe"), 1007),  # invalid UTF-8 in a text frame
        (bytes([0x81, 0x02]) + b"{}", 1002),  # unmasked client frame
        (bytes([0x89, 0xFE, 0x00, 0x7E]) + b"\x00" * 4 + b"p" * 126, 1002),  # 126-byte ping
    ],
)
@pytest_twisted.ensureDeferred
async def test_protocol_violations_close_with_rfc_codes(sites, raw, code):
    site = await sites()
    client = await site.connect()
    client.transport.write(raw)
    assert (await client.wait_closed())[0] == code
