"""/ws with real Autobahn clients over real sockets: every message and its answer,
broadcasts, topics, source filtering and journal order."""

import pytest
import pytest_twisted

from quantum_sync.protocol import Change, Delete, Move, now
from quantum_sync.server import messages
from support import wait_for
from test_ws_support import MEMORY_JOURNAL_ID


@pytest_twisted.ensureDeferred
async def test_subscribe_is_acked_and_announced(sites):
    site = await sites()
    watcher = await site.connect()
    assert await watcher.request({"type": "subscribe", "topic": "peer_network", "id": "w1"}) == {
        "type": "Ack", "operation_id": "subscribe", "topic": "peer_network", "id": "w1"}
    laptop = await site.connect()
    assert await laptop.request({"type": "Subscribe", "client_id": "laptop"}) == {
        "type": "Ack", "operation_id": "subscribe", "journal_id": MEMORY_JOURNAL_ID, "cursor": 0}
    event = await watcher.expect("peer_connected")
    assert event["topic"] == "peer_network"
    assert event["data"]["id"] == "laptop" and event["data"]["address"].startswith("127.0.0.1:")
    assert event["timestamp"].endswith("Z")
    laptop.sendClose(1000)
    gone = await watcher.expect("peer_disconnected")
    assert gone["data"]["id"] == "laptop" and gone["data"]["reason"] == "closed"


@pytest_twisted.ensureDeferred
async def test_ping_pong_both_spellings_with_id(sites):
    site = await sites()
    client = await site.connect()
    assert await client.request({"type": "Ping"}) == {"type": "Pong"}
    assert await client.request({"type": "ping", "id": 5}) == {"type": "pong", "id": 5}


@pytest.mark.parametrize(
    "frame",
    [
        b"{not json",
        b'{"type": "Teleport", "id": "t1"}',
        b'{"type": "Subscribe", "client_id": 17}',
        b'{"type": "subscribe", "topic": ["alerts"]}',
        b'{"type": "FileOperation", "operation": {"Delete": {}}}',
        b'{"type": "FileOperation", "operation": {"Create": {"metadata": {"path": "a", "size": "1"}}}}',
        b"[" * 50000 + b"]" * 50000,
        b"null",
    ],
)
@pytest_twisted.ensureDeferred
async def test_bad_input_gets_invalid_message_and_connection_stays(sites, frame):
    site = await sites()
    client = await site.connect()
    client.sendMessage(frame)
    answer = await client.next()
    assert answer["type"] == "Error" and answer["code"] == "INVALID_MESSAGE" and answer["message"]
    if b"t1" in frame:
        assert answer["id"] == "t1"
    assert await client.request({"type": "Ping"}) == {"type": "Pong"}
    assert site.journal.seq == 0 and site.hub.subscriber_count("file_operations") == 0


@pytest_twisted.ensureDeferred
async def test_binary_frame_is_invalid_message(sites):
    site = await sites()
    client = await site.connect()
    client.sendMessage(b'{"type": "Ping"}', isBinary=True)
    assert (await client.next())["code"] == "INVALID_MESSAGE"
    assert await client.request({"type": "Ping"}) == {"type": "Pong"}


@pytest_twisted.ensureDeferred
async def test_file_operation_applied_broadcast_to_others_not_source(sites):
    site = await sites()
    site.journal.paths.add("docs/a.txt")
    alice, bob = await site.connect(), await site.connect()
    await alice.request({"type": "Subscribe", "client_id": "alice"})
    await bob.request({"type": "Subscribe", "client_id": "bob"})
    never = await site.connect()
    ack = await alice.request({"type": "FileOperation", "id": "op-1", "source_client": "alice",
                               "operation": {"Move": {"from": "docs/a.txt", "to": "docs/b.txt"}}})
    assert ack == {"type": "Ack", "operation_id": "op-1", "seq": 1, "id": "op-1"}
    broadcast = await bob.expect("FileOperation")
    assert broadcast["operation"] == {"Move": {"from": "docs/a.txt", "to": "docs/b.txt"}}
    assert broadcast["source_client"] == "alice" and broadcast["seq"] == 1
    assert broadcast["topic"] == "file_operations" and broadcast["timestamp"].endswith("Z")
    assert await alice.request({"type": "Ping"}) == {"type": "Pong"}  # nothing came back to alice
    assert await never.request({"type": "Ping"}) == {"type": "Pong"}  # nor to a non-subscriber
    assert site.journal.paths == {"docs/b.txt"}


@pytest_twisted.ensureDeferred
async def test_refused_file_operations_get_the_http_code(sites):
    site = await sites()
    client = await site.connect()
    await client.request({"type": "subscribe", "topic": "alerts"})
    missing = await client.request({"type": "FileOperation", "id": 1,
                                    "operation": {"Delete": {"path": "nope.txt"}}})
    assert (missing["code"], missing["id"]) == ("NOT_FOUND", 1)
    client.send_json({"type": "FileOperation", "id": 2, "operation": {"Delete": {"path": "../etc/passwd"}}})
    hostile = await client.expect("Error")
    assert (hostile["code"], hostile["id"]) == ("INVALID_PATH", 2)
    (alert,) = [m for m in client.received if m["type"] == "security_alert"]
    assert alert["topic"] == "alerts" and alert["data"]["event"] == "rejected_path"
    assert site.journal.seq == 0


@pytest_twisted.ensureDeferred
async def test_broadcasts_keep_journal_order_and_reach_topic_subscribers(sites):
    site = await sites()
    reader = await site.connect()
    await reader.request({"type": "subscribe", "topic": "file_operations"})
    for seq in range(1, 201):
        site.hub.publish(Change(seq, Delete(f"f{seq}"), "someone", now()))
    site.hub.publish(Change(150, Move("x", "y"), "someone", now()))  # a replay: not sent again
    await wait_for(site.reactor, lambda: len(reader.received) >= 201)
    seqs = [m["seq"] for m in reader.received if m["type"] == "FileOperation"]
    assert seqs == list(range(1, 201))
    reader.send_json({"type": "unsubscribe", "topic": "file_operations"})
    assert await reader.expect("Ack", operation_id="unsubscribe") == {
        "type": "Ack", "operation_id": "unsubscribe", "topic": "file_operations"}
    site.hub.publish(Change(201, Delete("late"), "someone", now()))
    assert await reader.request({"type": "Ping"}) == {"type": "Pong"}


@pytest_twisted.ensureDeferred
async def test_system_metrics_on_the_system_topic(sites):
    site = await sites(metrics_interval=0.05)
    client = await site.connect()
    await client.request({"type": "subscribe", "topic": "system"})
    tick = await client.expect("system_metrics")
    assert tick["topic"] == "system"
    assert tick["data"]["connections"] == 1 and tick["data"]["messages_in"] >= 1
    assert set(tick["data"]["storage"]) == {"total_space", "used_space", "available_space"}


@pytest_twisted.ensureDeferred
async def test_compression_is_negotiated_small_and_context_free(sites):
    site = await sites()
    sender, reader = await site.connect(), await site.connect(compress=True)
    (asked,) = reader.websocket_extensions_in_use
    assert asked.client_max_window_bits == 9  # asked of the client
    (server_side,) = [c for c in site.hub.connections if c.websocket_extensions_in_use]
    (deflate,) = server_side.websocket_extensions_in_use
    assert deflate.server_no_context_takeover and deflate.server_max_window_bits == 9
    assert deflate.mem_level == 1 and deflate.client_max_window_bits == 9
    await reader.request({"type": "Subscribe", "client_id": "reader"})
    site.journal.paths.add("big.txt")
    await sender.request({"type": "FileOperation", "operation": {"Delete": {"path": "big.txt"}}})
    assert (await reader.expect("FileOperation"))["operation"] == {"Delete": {"path": "big.txt"}}
    assert await reader.request({"type": "Ping", "id": "z" * 200}) == {"type": "Pong", "id": "z" * 200}


@pytest_twisted.ensureDeferred
async def test_broadcasts_reach_plain_and_compressed_subscribers_and_are_counted_once_each(sites):
    site = await sites()
    plain, compressed = await site.connect(), await site.connect(compress=True)
    await plain.request({"type": "Subscribe", "client_id": "plain"})
    await compressed.request({"type": "Subscribe", "client_id": "compressed"})
    closing = await site.connect()
    await closing.request({"type": "Subscribe", "client_id": "closing"})
    (server_closing,) = [c for c in site.hub.connections if c.client_id == "closing"]
    server_closing.close(1001, "going")  # closing: gets nothing more, and is not counted
    metrics = site.hub.metrics
    before = (metrics.messages_out, metrics.bytes_transferred)
    long_path = "dir/" + "x" * 300  # long enough to go out deflated
    change = Change(1, Delete(long_path), "someone", now())
    site.hub.publish(change)
    for reader in (plain, compressed):
        assert (await reader.expect("FileOperation"))["operation"] == {"Delete": {"path": long_path}}
    size = len(messages.file_operation(change, MEMORY_JOURNAL_ID))
    assert (metrics.messages_out - before[0], metrics.bytes_transferred - before[1]) == (2, 2 * size)
    before = (metrics.messages_out, metrics.bytes_transferred)
    burst = [Change(seq, Delete(f"{long_path}/{seq}"), "someone", now()) for seq in (2, 3)]
    with site.hub.burst():  # two messages in one write to each
        for change in burst:
            site.hub.publish(change)
    for reader in (plain, compressed):
        got = [await reader.expect("FileOperation", seq=seq) for seq in (2, 3)]
        assert [m["operation"] for m in got] == [{"Delete": {"path": c.operation.path}} for c in burst]
        assert [m["seq"] for m in reader.received if m["type"] == "FileOperation"] == [1, 2, 3]
    size = sum(len(messages.file_operation(change, MEMORY_JOURNAL_ID)) for change in burst)
    assert (metrics.messages_out - before[0], metrics.bytes_transferred - before[1]) == (4, 2 * size)
    assert not [m for m in closing.received if m["type"] == "FileOperation"]


def _fuzz_messages(count: int, seed: int = 1234):
    """Random JSON values and mutated valid messages, reproducible from ``seed``."""
    import json
    import random

    rng = random.Random(seed)
    valid = [
        {"type": "Subscribe", "client_id": "fuzz"},
        {"type": "subscribe", "topic": "alerts"},
        {"type": "FileOperation", "operation": {"Move": {"from": "a", "to": "b"}}},
        {"type": "Ping", "id": 1},
        {"type": "auth", "payload": {"token": "t"}},
    ]
    atoms = [None, True, False, 0, -1, 2**70, 1.5, "", "x", "../etc/passwd", "\u202e", [], {}]

    def value(depth=0):
        kind = rng.random()
        if depth > 3 or kind < 0.5:
            return rng.choice(atoms)
        if kind < 0.75:
            return [value(depth + 1) for _ in range(rng.randrange(4))]
        return {rng.choice(["type", "id", "topic", "operation", "payload", "client_id", "k"]): value(depth + 1)
                for _ in range(rng.randrange(4))}

    for _ in range(count):
        if rng.random() < 0.5:
            message = json.loads(json.dumps(rng.choice(valid)))
            key = rng.choice(list(message))
            message[key] = value()
            yield json.dumps(message).encode()
        else:
            yield json.dumps(value()).encode()


@pytest_twisted.ensureDeferred
async def test_fuzzed_messages_each_answered_connection_survives(sites):
    site = await sites(rate_limit=0)
    client = await site.connect()
    frames = list(_fuzz_messages(300))
    for frame in frames:
        client.sendMessage(frame)
    client.send_json({"type": "Ping", "id": "last"})
    await client.expect("Pong", id="last")
    answers = [m for m in client.received if m["type"] in ("Error", "Ack", "Pong", "pong", "auth_success")]
    assert len(answers) >= len(frames)
    assert {m["code"] for m in answers if m["type"] == "Error"} <= {"INVALID_MESSAGE", "INVALID_PATH", "NOT_FOUND"}
    assert client.close_code is None
