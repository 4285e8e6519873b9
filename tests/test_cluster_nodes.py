"""Two cluster nodes in one process on one shared root, with a real PostgreSQL and
Redis: racing uploads, broadcasts across nodes in journal order, one journal, one
watcher of the root, and the feed's ordering (pure)."""

import hashlib
import os

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, DeferredList, gatherResults

from quantum_sync.protocol import Change, Delete
from quantum_sync.server.cluster.feed import Sequencer
from test_ws_support import connect
from cluster_support import wait_for_async
from tests.support import HttpClient, wait_for


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest_twisted.ensureDeferred
async def test_racing_uploads_on_two_nodes_one_wins_one_412(reactor, nodes):
    await nodes.start(2)
    http = HttpClient(reactor)
    try:
        base = b"base" * 1000
        await http.json("PUT", nodes.urls[0] + "/api/upload", params={"path": "doc.txt"}, data=base)
        winner_hash = sha(base)
        for round_ in range(6):
            current = winner_hash
            bodies = [bytes([65 + n]) * (200_000 + round_) for n in range(2)]

            async def put(url, data, current=current):
                response = await http.request("PUT", url + "/api/upload", params={"path": "doc.txt"},
                                              data=data, headers={"If-Match": current})
                return response.code, await response.content()

            results = await gatherResults([Deferred.fromCoroutine(put(url, body))
                                           for url, body in zip(nodes.urls, bodies)])
            codes = sorted(code for code, _ in results)
            assert codes == [200, 412], results
            winner = bodies[[code for code, _ in results].index(200)]
            with open(nodes.root / "doc.txt", "rb") as f:
                assert f.read() == winner  # never a mix, never the loser
            winner_hash = sha(winner)
        answers = [await http.json("GET", url + "/api/changes") for url in nodes.urls]
        assert answers[0][1] == answers[1][1]
        assert [c["seq"] for c in answers[0][1]["changes"]] == list(range(1, 8))
    finally:
        await http.close()


@pytest_twisted.ensureDeferred
async def test_broadcasts_cross_nodes_in_journal_order(reactor, nodes):
    await nodes.start(2)
    http = HttpClient(reactor)
    listeners = []
    try:
        for service, url in zip(nodes.services, nodes.urls):
            client = await connect(reactor, url.replace("http", "ws") + "/ws")
            ack = await client.request({"type": "Subscribe", "client_id": f"watch-{len(listeners)}"})
            assert ack["journal_id"] == nodes.services[0].index.journal_id
            listeners.append(client)

        async def writes(url, name):
            for n in range(15):
                data = f"{name}{n}".encode()
                await http.json("PUT", url + "/api/upload", params={"path": f"{name}/{n}"}, data=data,
                                headers={"X-Client-Id": f"writer-{name}"})

        await gatherResults([Deferred.fromCoroutine(writes(url, name))
                             for url, name in zip(nodes.urls, "ab")])
        for client in listeners:
            await wait_for(reactor, lambda c=client: len([m for m in c.received if m["type"] == "FileOperation"]) >= 30)
            seqs = [m["seq"] for m in client.received if m["type"] == "FileOperation"]
            assert seqs == list(range(1, 31))  # every change once, in order, from both nodes
        figures = [(await http.json("GET", url + "/ws/metrics"))[1] for url in nodes.urls]
        assert [f["cluster"]["node_id"] for f in figures] == ["node-1", "node-2"]
    finally:
        for client in listeners:
            client.transport.abortConnection()
        await http.close()


@pytest_twisted.ensureDeferred
async def test_one_node_watches_the_root_and_another_takes_over(reactor, nodes):
    await nodes.start(2)
    first, second = nodes.services
    await wait_for(reactor, lambda: first.node.leadership.leading)
    assert not second.node.leadership.leading and not second.watcher.running
    http = HttpClient(reactor)
    try:
        (nodes.root / "dropped.txt").write_bytes(b"from another program")

        async def journalled():
            _, answer = await http.json("GET", nodes.urls[1] + "/api/changes")
            return [c["operation"] for c in answer["changes"]]

        await wait_for_async(reactor, journalled, lambda ops: len(ops) == 1)
        await first.stopService()
        await wait_for(reactor, lambda: second.node.leadership.leading, timeout=15)
        assert second.watcher.running
        (nodes.root / "later.txt").write_bytes(b"while the second leads")
        ops = await wait_for_async(reactor, journalled, lambda ops: len(ops) == 2)
        assert "later.txt" in str(ops[1])
    finally:
        await http.close()


@pytest_twisted.ensureDeferred
async def test_temps_in_a_folder_per_node(reactor, nodes):
    await nodes.start(2)
    dirs = [service.store.temp_dir for service in nodes.services]
    assert dirs == [str(nodes.root / ".quantum-sync" / "nodes" / f"node-{n}" / "tmp") for n in (1, 2)]
    marker = os.path.join(dirs[1], "in-flight")
    open(marker, "wb").close()
    await nodes.services[0].stopService()
    await nodes.start(1)  # a third node starting clears its own temps only
    assert os.path.exists(marker)


def _change(seq):
    return Change(seq, Delete(f"p{seq}"), "c", "t")


def test_sequencer_lets_out_in_order_and_drops_repeats():
    sequencer = Sequencer(delivered=4)
    assert sequencer.offer(_change(4)) == []
    assert sequencer.offer(_change(6)) == [] and sequencer.gap
    assert sequencer.offer(_change(6)) == []
    assert [c.seq for c in sequencer.offer(_change(5))] == [5, 6] and not sequencer.gap
    assert [c.seq for c in sequencer.offer(_change(7))] == [7]
    assert sequencer.delivered == 7


@pytest_twisted.ensureDeferred
async def test_peer_events_and_alerts_reach_every_node_status_lists_its_own(reactor, nodes):
    await nodes.start(2)
    await wait_for(reactor, lambda: all(s.node.bus.up and s.node.bus.can_publish for s in nodes.services),
                   timeout=15)
    http = HttpClient(reactor)
    watcher = await connect(reactor, nodes.urls[1].replace("http", "ws") + "/ws")
    laptop = None
    try:
        for topic in ("peer_network", "alerts"):
            await watcher.request({"type": "subscribe", "topic": topic, "id": topic})
        laptop = await connect(reactor, nodes.urls[0].replace("http", "ws") + "/ws")
        await laptop.request({"type": "Subscribe", "client_id": "laptop"})
        joined = await watcher.expect("peer_connected")
        assert joined["data"]["id"] == "laptop" and joined["data"]["node_id"] == "node-1"
        refused = await http.request("PUT", nodes.urls[0] + "/api/upload", params={"path": "../escape"},
                                     data=b"x")
        await refused.content()
        assert refused.code == 400
        alert = await watcher.expect("security_alert")
        assert alert["topic"] == "alerts" and alert["data"]["node_id"] == "node-1"
        statuses = [(await http.json("GET", url + "/ws/status"))[1] for url in nodes.urls]
        assert [c["client_id"] for c in statuses[0]["clients"]] == ["laptop"]
        assert [c["client_id"] for c in statuses[1]["clients"]] == [None]  # the watcher, unnamed
        figures = (await http.json("GET", nodes.urls[1] + "/ws/metrics"))[1]["cluster"]
        assert figures["node_id"] == "node-2" and figures["redis"] is True
        assert [n["node_id"] for n in figures["nodes"]] == ["node-1", "node-2"]
        assert figures["nodes"][0]["address"] == nodes.urls[0].split("//")[1]
        prometheus = await (await http.get(nodes.urls[1] + "/metrics")).text()
        assert 'quantum_sync_cluster_live_node{address="%s",node_id="node-1"} 1.0' % (
            nodes.urls[0].split("//")[1]) in prometheus
        assert 'quantum_sync_cluster_node{leader="false",node_id="node-2"} 1.0' in prometheus
    finally:
        for client in (watcher, laptop):
            if client is not None:
                client.transport.abortConnection()
        await http.close()


def test_default_node_id_is_host_and_port():
    from quantum_sync.config import ListenerConfig
    from quantum_sync.server.cluster.node import default_node_id

    def listeners(*endpoints):
        return [ListenerConfig(e, "s", ("*",)) for e in endpoints]

    assert default_node_id(listeners("tcp:8080:backlog=1024"), "sync-a.example.org") == "sync-a:8080"
    assert default_node_id(listeners("unix:/run/qs.sock", "ssl:8443:privateKey=k"), "h") == "h:8443"
    assert default_node_id(listeners("tcp:0:interface=127.0.0.1"), "h", pid=42) == "h:pid42"


@pytest_twisted.ensureDeferred
async def test_large_upload_relay_is_off_on_a_cluster_node(reactor, nodes):
    await nodes.start(1, relay=True)
    assert nodes.services[0].listeners[0].site.upload_started is None


def test_sequencer_skips_what_was_pruned():
    sequencer = Sequencer(delivered=2)
    assert sequencer.offer(_change(9)) == [] and sequencer.lowest_waiting == 9
    sequencer.skip_to(8)
    assert [c.seq for c in sequencer.offer_waiting()] == [9] and sequencer.lowest_waiting is None
    sequencer.skip_to(5)  # never backwards
    assert sequencer.delivered == 9


@pytest_twisted.ensureDeferred
async def test_a_node_behind_the_journal_s_retention_goes_on(reactor, nodes):
    """Entries pruned before a node delivered them (it was cut off longer than the
    retention lasts): it says so and goes on with what follows."""
    await nodes.start(2, journal_retention=5)
    first, second = nodes.services
    second.node.bus.up = False
    await second.node.bus.stop()  # node 2 hears nothing and does not poll
    second.node.feed.stop()
    watcher = await connect(reactor, nodes.urls[1].replace("http", "ws") + "/ws")
    http = HttpClient(reactor)
    try:
        await watcher.request({"type": "Subscribe", "client_id": "w"})
        for n in range(120):  # far past the retention (pruned in steps of 100)
            await http.json("PUT", nodes.urls[0] + "/api/upload", params={"path": f"p{n}"}, data=b"x")
        await second.node.feed.fill()
        assert second.node.feed.delivered == 120
        await http.json("PUT", nodes.urls[0] + "/api/upload", params={"path": "after"}, data=b"y")
        await second.node.feed.fill()
        message = await watcher.expect("FileOperation", seq=121)
        assert "after" in str(message["operation"])
    finally:
        watcher.transport.abortConnection()
        await http.close()


def test_bus_messages_round_trip_and_a_node_knows_its_own():
    from quantum_sync.server.cluster.redisbus import decode_changes, encode_changes, sender_prefix

    changes = [Change(7, Delete("a b/é"), "laptop", "2026-01-01T00:00:00Z", '{"Delete":{"path":"a b/\\u00e9"}}'),
               Change(8, Delete("x"), "desk", "2026-01-01T00:00:01Z", '{"Delete":{"path":"x"}}')]
    text = encode_changes(changes, "node-1")
    assert text.startswith(sender_prefix("node-1")) and not text.startswith(sender_prefix("node-10"))
    back = decode_changes(text)
    assert [(c.seq, c.operation, c.source_client, c.timestamp) for c in back] == [
        (7, Delete("a b/é"), "laptop", "2026-01-01T00:00:00Z"), (8, Delete("x"), "desk", "2026-01-01T00:00:01Z")]
    for malformed in ('{"node":"n","changes":[[0,"{}","c","t"]]}', '{"node":"n"}', "[]", "{"):
        with pytest.raises(Exception):
            decode_changes(malformed)


@pytest_twisted.ensureDeferred
async def test_with_auth_a_client_id_is_its_first_user_s_on_every_node(reactor, nodes, tmp_path):
    """A binding made on one node holds on every other at once (checked in the
    database when a node meets an id it has not seen), over HTTP and WebSocket."""
    from test_auth_e2e import WS_TIMERS, auth_section, bearer, login

    await nodes.start(2, auth=auth_section(tmp_path), websocket=WS_TIMERS)
    first, second = nodes.urls
    http = HttpClient(reactor)
    try:
        alice = await login(http, first, "alice")
        wendy = await login(http, second, "wendy")  # one secret for both nodes
        await http.json("POST", first + "/api/upload", data=b"x", params={"path": "a.txt"},
                        headers={**bearer(alice), "X-Client-Id": ["alice-laptop"]})
        code, body = await http.json("POST", second + "/api/upload", expect=None, data=b"y",
                                     params={"path": "w.txt"},
                                     headers={**bearer(wendy), "X-Client-Id": ["alice-laptop"]})
        assert (code, body["error"]["code"]) == (403, "PERMISSION_DENIED")
        socket = await connect(reactor, first.replace("http", "ws") + "/ws")
        try:
            await socket.request({"type": "auth", "payload": {"token": wendy}})
            assert (await socket.request({"type": "Subscribe", "client_id": "wendy-phone"}))["type"] == "Ack"
        finally:
            socket.transport.abortConnection()
        code, body = await http.json("POST", second + "/api/upload", expect=None, data=b"z",
                                     params={"path": "p.txt"},
                                     headers={**bearer(alice), "X-Client-Id": ["wendy-phone"]})
        assert (code, body["error"]["code"]) == (403, "PERMISSION_DENIED")
        # both claim a new id at once on two nodes: the database's first wins on both
        users = ("alice", "wendy")
        results = await DeferredList([Deferred.fromCoroutine(service.hub.bindings.claim("shared-id", user))
                                      for service, user in zip(nodes.services, users)], consumeErrors=True)
        winners = [user for (ok, _), user in zip(results, users) if ok]
        assert len(winners) == 1
        assert [r.value.code for ok, r in results if not ok] == ["PERMISSION_DENIED"]
        assert {service.hub.bindings.owner("shared-id") for service in nodes.services} == set(winners)
    finally:
        await http.close()


@pytest_twisted.ensureDeferred
async def test_no_update_is_lost_under_racing_conditional_uploads_on_three_nodes(reactor, nodes):
    """Writers on three nodes update five files with If-Match, each from the version it
    last read: every accepted upload follows exactly the version it named, so the
    journal of each path is one chain of accepted uploads (no lost update)."""
    import random

    await nodes.start(3)
    http = HttpClient(reactor)
    paths = [f"doc-{n}.txt" for n in range(5)]
    accepted, refused = [], 0
    rng = random.Random(15)
    try:
        for path in paths:
            await http.json("PUT", nodes.urls[0] + "/api/upload", params={"path": path}, data=path.encode())

        async def writer(name):
            nonlocal refused
            for n in range(12):
                path = rng.choice(paths)
                _, meta = await http.json("GET", rng.choice(nodes.urls) + "/api/metadata", params={"path": path})
                body = f"{name}-{n}-{path}".encode() * 100
                response = await http.request("PUT", rng.choice(nodes.urls) + "/api/upload", params={"path": path},
                                              data=body, headers={"If-Match": meta["hash"]})
                await response.content()
                if response.code == 200:
                    accepted.append((path, meta["hash"], sha(body)))
                else:
                    assert response.code == 412
                    refused += 1

        await gatherResults([Deferred.fromCoroutine(writer(f"w{n}")) for n in range(6)])
        _, answer = await http.json("GET", nodes.urls[2] + "/api/changes", params={"limit": "10000"})
        history = {path: [] for path in paths}
        for change in answer["changes"]:
            (kind, body), = change["operation"].items()
            history[body["metadata"]["path"]].append(body["metadata"]["hash"])
        chained = {(path, before, after) for path, hashes in history.items()
                   for before, after in zip(hashes, hashes[1:])}
        assert chained == set(accepted)
        assert len(answer["changes"]) == len(paths) + len(accepted)
        for path, hashes in history.items():
            assert sha((nodes.root / path).read_bytes()) == hashes[-1]
        assert refused > 0  # the race was real
    finally:
        await http.close()
