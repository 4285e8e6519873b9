"""/ws inside the real server (tests/support.start_server): every journalled change,
whoever made it, is broadcast once, in journal order, with its seq, to every subscriber
but its source; the hub's loops start and stop with the service."""

import hashlib
import os

import pytest_twisted

from tests.support import HttpClient, start_server
from support import wait_for
from test_ws_support import connect, drop_all

TIMERS = {"ping_interval": 30, "stale_timeout": 300, "cleanup_interval": 60, "metrics_interval": 60}


@pytest_twisted.async_yield_fixture
async def server(reactor, tmp_path, logged_failures, server_overrides):
    running = await start_server(reactor, tmp_path, websocket=TIMERS, **server_overrides)
    http = HttpClient(reactor)
    clients = []

    async def open_client(client_id=None):
        client = await connect(reactor, running.ws_url)
        clients.append(client)
        if client_id is not None:
            assert (await client.request({"type": "Subscribe", "client_id": client_id}))["type"] == "Ack"
        return client

    yield running, http, open_client
    await drop_all(reactor, clients, running.service.hub)
    await http.close()
    await running.stop()
    assert [e.get("log_format") for e in logged_failures] == []


@pytest_twisted.ensureDeferred
async def test_rest_upload_broadcast_to_others_with_seq_not_to_uploader(server):
    running, http, open_client = server
    alice, bob = await open_client("alice"), await open_client("bob")
    body = b"hello world"
    response = await http.post(running.url + "/api/upload?path=docs/hello.txt", data=body,
                               headers={"X-Client-Id": ["alice"]})
    assert response.code == 200
    await response.content()
    event = await bob.expect("FileOperation")
    metadata = event["operation"]["Create"]["metadata"]
    assert metadata["path"] == "docs/hello.txt" and metadata["hash"] == hashlib.sha256(body).hexdigest()
    assert event["source_client"] == "alice" and event["seq"] >= 1
    _, changes = await http.json("GET", running.url + f"/api/changes?since={event['seq'] - 1}")
    assert changes["changes"][0]["seq"] == event["seq"]
    assert await alice.request({"type": "Ping"}) == {"type": "Pong"}
    assert not [m for m in alice.received if m["type"] == "FileOperation"]


@pytest_twisted.ensureDeferred
async def test_ws_file_operation_applied_on_disk_journalled_and_broadcast(server):
    running, http, open_client = server
    os.makedirs(os.path.join(running.root, "a"))
    with open(os.path.join(running.root, "a", "x.txt"), "wb") as f:
        f.write(b"x")
    await running.service.operations.refresh(None)
    alice, bob = await open_client("alice"), await open_client("bob")
    head = running.service.operations.head
    ack = await alice.request({"type": "FileOperation", "id": "mv", "source_client": "alice",
                               "operation": {"Move": {"from": "a/x.txt", "to": "b/y.txt"}}})
    assert ack == {"type": "Ack", "operation_id": "mv", "seq": head + 1, "id": "mv"}
    assert os.path.exists(os.path.join(running.root, "b", "y.txt"))
    assert not os.path.exists(os.path.join(running.root, "a", "x.txt"))
    moved = await bob.expect("FileOperation")
    assert moved["seq"] == head + 1 and moved["operation"] == {"Move": {"from": "a/x.txt", "to": "b/y.txt"}}
    refused = await alice.request({"type": "FileOperation", "id": "again",
                                   "operation": {"Delete": {"path": "a/x.txt"}}})
    assert (refused["type"], refused["code"], refused["id"]) == ("Error", "NOT_FOUND", "again")
    conflict = await alice.request({"type": "FileOperation",
                                    "operation": {"Create": {"metadata": {
                                        "path": "b/y.txt", "size": 5, "hash": "0" * 64,
                                        "modified": "2024-01-21T12:00:00Z", "is_directory": False}}}})
    assert conflict["type"] == "Error" and conflict["code"] == "NOT_FOUND"
    assert running.service.operations.head == head + 1


@pytest_twisted.ensureDeferred
async def test_changes_from_rest_ws_and_sync_arrive_in_journal_order(server):
    running, http, open_client = server
    writer, reader = await open_client("writer"), await open_client("reader")
    for i in range(5):
        await http.json("POST", running.url + f"/api/upload?path=f{i}.txt", data=b"%d" % i,
                        headers={"X-Client-Id": ["writer"]})
        writer.send_json({"type": "FileOperation",
                          "operation": {"Create": {"metadata": {
                              "path": f"dir{i}", "size": 0, "hash": "", "is_directory": True,
                              "modified": "2024-01-21T12:00:00Z"}}}})
    await http.json("POST", running.url + "/api/sync", data=b'{"operations": [{"Delete": {"path": "f0.txt"}}], '
                    b'"client_id": "writer"}', headers={"Content-Type": ["application/json"]})
    await wait_for(running.reactor, lambda: len([m for m in reader.received if m["type"] == "FileOperation"]) >= 11)
    seqs = [m["seq"] for m in reader.received if m["type"] == "FileOperation"]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs) == 11
    _, changes = await http.json("GET", running.url + "/api/changes?since=0")
    assert [c["seq"] for c in changes["changes"]] == seqs


@pytest_twisted.ensureDeferred
async def test_hub_loops_start_and_stop_with_the_service(reactor, tmp_path, logged_failures):
    running = await start_server(reactor, tmp_path, websocket=TIMERS)
    hub = running.service.hub
    assert hub.running and len(hub._loops) == 3 and all(loop.running for loop in hub._loops)
    loops = list(hub._loops)
    client = await connect(reactor, running.ws_url)
    await client.request({"type": "Subscribe", "client_id": "c"})
    await running.stop()
    assert not hub.running and not any(loop.running for loop in loops)
    assert (await client.wait_closed())[0] == 1001
    await wait_for(reactor, lambda: not hub.connections)


@pytest_twisted.ensureDeferred
async def test_file_dropped_into_root_by_another_program_is_broadcast(server):
    running, http, open_client = server
    reader = await open_client("reader")
    with open(os.path.join(running.root, "dropped.txt"), "wb") as f:
        f.write(b"from elsewhere")
    event = await reader.expect("FileOperation", timeout=10)
    assert event["operation"]["Create"]["metadata"]["path"] == "dropped.txt"
    assert event["seq"] == running.service.operations.head


@pytest_twisted.ensureDeferred
async def test_ws_delete_with_if_match_refuses_what_changed_and_broadcasts_it_bare(server):
    running, http, open_client = server
    with open(os.path.join(running.root, "f.txt"), "wb") as f:
        f.write(b"changed since alice saw it")
    await running.service.operations.refresh(None)
    alice, bob = await open_client("alice"), await open_client("bob")
    head = running.service.operations.head
    seen = hashlib.sha256(b"what alice saw").hexdigest()
    refused = await alice.request({"type": "FileOperation", "id": "del",
                                   "operation": {"Delete": {"path": "f.txt", "if_match": seen}}})
    assert (refused["type"], refused["code"], refused["id"]) == ("Error", "PRECONDITION_FAILED", "del")
    assert os.path.exists(os.path.join(running.root, "f.txt")) and running.service.operations.head == head
    current = hashlib.sha256(b"changed since alice saw it").hexdigest()
    ack = await alice.request({"type": "FileOperation", "id": "del2",
                               "operation": {"Delete": {"path": "f.txt", "if_match": current}}})
    assert ack["type"] == "Ack" and ack["seq"] == head + 1
    deleted = await bob.expect("FileOperation")
    assert deleted["operation"] == {"Delete": {"path": "f.txt"}}
    assert not os.path.exists(os.path.join(running.root, "f.txt"))
