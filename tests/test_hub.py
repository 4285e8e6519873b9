"""Hub logic with a deterministic Clock and recording connections (no sockets here;
tests/test_ws*.py drive the same hub through real Autobahn clients)."""

import json

import attrs
import pytest
from twisted.internet.task import Clock
from zope.interface import implementer
from zope.interface.verify import verifyObject

from quantum_sync.config import WebSocketConfig
from quantum_sync.protocol import Change, Delete, Move
from quantum_sync.server.hub import Hub, IHubConnection
from quantum_sync.server.metrics import Metrics


@implementer(IHubConnection)
@attrs.define(eq=False, slots=False)
class RecordingConnection:
    """A connection that records what the hub does to it."""

    address: str = "127.0.0.1:5000"
    client_id: str = None
    connected_at: float = 0.0
    last_seen: float = 0.0
    assembling_since: float = None
    topics: set = attrs.field(factory=set)
    sent: list = attrs.field(factory=list)
    pings: int = 0
    closed: tuple = None
    aborted: str = None

    def send(self, payload):
        self.sent.append(json.loads(payload))

    def send_ping(self):
        self.pings += 1

    def close(self, code, reason):
        self.closed = (code, reason)

    def abort(self, reason):
        self.aborted = reason

    def types(self):
        return [m["type"] for m in self.sent]


def make_hub(clock=None, **settings):
    clock = clock or Clock()
    config = WebSocketConfig(**{"ping_interval": 1, "stale_timeout": 3, "cleanup_interval": 1,
                                "metrics_interval": 2, **settings})
    return Hub(config, clock, metrics=Metrics(clock=clock.seconds)), clock


def connect(hub, client_id=None, **fields):
    connection = RecordingConnection(connected_at=hub.clock.seconds(), last_seen=hub.clock.seconds(), **fields)
    hub.attach(connection)
    if client_id is not None:
        hub.identify(connection, client_id)
    return connection


def change(seq, source="", operation=None):
    return Change(seq, operation or Delete(f"f{seq}.txt"), source, "2024-01-21T12:00:00Z")


def test_recording_connection_matches_interface():
    # The fake honours the same interface as ws.HubProtocol.
    from quantum_sync.server.ws import HubProtocol

    assert IHubConnection.implementedBy(HubProtocol)
    assert verifyObject(IHubConnection, RecordingConnection())


def test_publish_reaches_subscribers_but_not_the_source_or_non_subscribers():
    hub, _ = make_hub()
    alice, bob = connect(hub, "alice"), connect(hub, "bob")
    silent = connect(hub)
    hub.publish(change(1, source="alice"))
    assert [m.get("seq") for m in bob.sent if m["type"] == "FileOperation"] == [1]
    assert "FileOperation" not in alice.types()
    assert silent.sent == []


def test_change_from_nobody_reaches_everyone_subscribed():
    hub, _ = make_hub()
    alice = connect(hub, "alice")
    watcher = connect(hub)
    hub.subscribe(watcher, "file_operations")
    hub.publish(change(1, source=""))
    assert alice.types()[-1] == "FileOperation" and watcher.types() == ["FileOperation"]


def test_publish_in_journal_order_exactly_once():
    hub, _ = make_hub()
    bob = connect(hub, "bob")
    for seq in (1, 2, 2, 3, 1, 4):
        hub.publish(change(seq, operation=Move(f"a{seq}", f"b{seq}")))
    assert [m["seq"] for m in bob.sent if m["type"] == "FileOperation"] == [1, 2, 3, 4]


def test_topics_select_events_and_unsubscribe_stops_them():
    hub, _ = make_hub()
    peers = connect(hub)
    hub.subscribe(peers, "peer_network")
    connect(hub, "carol")
    assert peers.sent[-1]["type"] == "peer_connected"
    assert peers.sent[-1]["data"]["id"] == "carol" and peers.sent[-1]["topic"] == "peer_network"
    hub.unsubscribe(peers, "peer_network")
    connect(hub, "dave")
    assert len(peers.sent) == 1


def test_detach_announces_peer_disconnected_once():
    hub, _ = make_hub()
    watcher = connect(hub)
    hub.subscribe(watcher, "peer_network")
    erin = connect(hub, "erin")
    hub.detach(erin, "closed")
    hub.detach(erin, "closed")
    gone = [m for m in watcher.sent if m["type"] == "peer_disconnected"]
    assert [m["data"] for m in gone] == [{"id": "erin", "reason": "closed", "timestamp": gone[0]["data"]["timestamp"]}]
    assert hub.subscriber_count("file_operations") == 0


def test_heartbeat_pings_and_cleanup_drops_stale_after_stale_timeout():
    hub, clock = make_hub()
    watcher = connect(hub)
    hub.subscribe(watcher, "peer_network")
    quiet = connect(hub, "quiet")
    hub.startService()
    try:
        for _ in range(3):
            clock.advance(1)
            watcher.last_seen = clock.seconds()  # the watcher keeps answering
        assert quiet.pings == 3 and quiet.aborted is None
        clock.advance(1)
        assert quiet.aborted == "timeout"
        assert quiet not in hub.connections and watcher.aborted is None
        assert watcher.sent[-1]["type"] == "peer_disconnected"
        assert watcher.sent[-1]["data"]["reason"] == "timeout"
    finally:
        hub.stopService()


def test_message_assembly_deadline_closes_with_1008():
    hub, clock = make_hub(stale_timeout=100)
    trickler = connect(hub)
    trickler.assembling_since = 0.0
    hub.startService()
    clock.advance(1)
    assert trickler.closed is None
    clock.advance(1)
    assert trickler.closed[0] == 1008
    hub.stopService()


def test_loops_survive_their_own_errors():
    hub, clock = make_hub()

    class Broken(RecordingConnection):
        def send_ping(self):
            raise RuntimeError("boom")

    broken = Broken()
    hub.attach(broken)
    hub.startService()
    clock.advance(1)
    clock.advance(1)
    assert all(loop.running for loop in hub._loops)
    hub.stopService()


def test_stop_service_stops_loops_and_closes_connections():
    hub, clock = make_hub()
    alice = connect(hub, "alice")
    hub.startService()
    assert len(clock.getDelayedCalls()) == 3
    hub.stopService()
    assert clock.getDelayedCalls() == [] and alice.closed == (1001, "server shutting down")


def test_system_metrics_every_metrics_interval(tmp_path):
    hub, clock = make_hub()
    hub.storage_root = str(tmp_path)
    system = connect(hub)
    hub.subscribe(system, "system")
    hub.metrics.observe_request(0.5, 10, 20)
    hub.publish(change(7))
    hub.startService()
    clock.advance(2)
    hub.stopService()
    (tick,) = [m for m in system.sent if m["type"] == "system_metrics"]
    data = tick["data"]
    assert tick["topic"] == "system"
    assert data["connections"] == 1 and data["journal_head"] == 7
    assert data["bytes_transferred"] == 30 and data["average_response_time"] == 0.5
    assert data["storage"]["total_space"] > 0 and data["storage"]["available_space"] > 0


def test_storage_and_performance_alerts_on_crossing_only(tmp_path):
    hub, clock = make_hub(storage_alert_free_bytes=2**62, performance_alert_ms=100)
    hub.storage_root = str(tmp_path)
    alerts = connect(hub)
    hub.subscribe(alerts, "alerts")
    hub.metrics.observe_request(0.5, 0, 0)
    for _ in range(3):
        hub.metrics_tick()
    kinds = [m["type"] for m in alerts.sent]
    assert kinds == ["storage_alert", "performance_alert"]
    assert alerts.sent[1]["data"]["value"] == 500.0 and alerts.sent[1]["topic"] == "alerts"
    clock.advance(120)  # the slow request leaves the window: recovered, then slow again
    hub.metrics_tick()
    hub.metrics.observe_request(0.5, 0, 0)
    hub.metrics_tick()
    assert [m["type"] for m in alerts.sent].count("performance_alert") == 2


def test_security_alert_reaches_alert_subscribers():
    hub, _ = make_hub()
    alerts, other = connect(hub), connect(hub, "x")
    hub.subscribe(alerts, "alerts")
    hub.alert("security_alert", {"event": "origin_refused"})
    assert alerts.sent[-1]["type"] == "security_alert" and alerts.sent[-1]["data"]["event"] == "origin_refused"
    assert "security_alert" not in other.types()


def test_status_lists_clients():
    hub, clock = make_hub()
    clock.advance(1700000000)
    connect(hub, "alice")
    (entry,) = hub.status()["clients"]
    assert entry["client_id"] == "alice" and entry["topics"] == ["file_operations"]
    assert entry["connected_at"] == "2023-11-14T22:13:20Z"


@pytest.mark.parametrize("seconds, expected", [(0, 2 / 60), (61, 0.0)])
def test_requests_per_second_window(seconds, expected):
    clock = Clock()
    metrics = Metrics(clock=clock.seconds)
    metrics.observe_request(0.1, 0, 0)
    metrics.observe_request(0.3, 0, 0)
    clock.advance(seconds)
    assert metrics.requests_per_second() == pytest.approx(expected)


def test_a_failing_connection_does_not_stop_a_broadcast():
    hub, _ = make_hub()

    class Failing(RecordingConnection):
        def send(self, payload):
            raise RuntimeError("socket exploded")

    broken = Failing(client_id="broken")
    hub.attach(broken)
    hub.subscribe(broken, "file_operations")
    after = connect(hub, "after")
    hub.publish(change(1))
    assert broken.aborted == "error" and after.types()[-1] == "FileOperation"


def test_a_class_with_send_all_gets_each_broadcast_for_all_its_connections_at_once():
    hub, _ = make_hub()
    calls = []

    @attrs.define(eq=False, slots=False)
    class Grouped(RecordingConnection):
        @classmethod
        def send_all(cls, connections, payloads, failed):
            calls.append((sorted(c.client_id for c in connections), [json.loads(p)["seq"] for p in payloads]))
            for connection in connections:
                try:
                    if connection.client_id == "broken":
                        raise RuntimeError("socket exploded")
                    for payload in payloads:
                        connection.send(payload)
                except Exception:
                    failed(connection)

    grouped = {}
    for name in ("g1", "g2", "broken"):
        grouped[name] = Grouped(client_id=name)
        hub.attach(grouped[name])
        hub.subscribe(grouped[name], "file_operations")
    plain, source = connect(hub, "plain"), connect(hub, "source")
    for connection in (plain, source):
        hub.subscribe(connection, "file_operations")
    hub.publish(change(1, source="g2"))
    assert calls == [(["broken", "g1"], [1])]  # one call for the class, never the source
    assert [m["seq"] for m in grouped["g1"].sent] == [1] and grouped["g2"].sent == []
    assert grouped["broken"].aborted == "error" and grouped["g1"].aborted is None
    assert [m["seq"] for m in plain.sent] == [1] and [m["seq"] for m in source.sent] == [1]
    with hub.burst():  # a burst: the connections that get the same messages go together
        hub.publish(change(2, source="g1"))
        hub.publish(change(3))
    assert sorted(calls[1:]) == [(["broken", "g2"], [2, 3]), (["g1"], [3])]
    assert [m["seq"] for m in grouped["g2"].sent] == [2, 3] and [m["seq"] for m in plain.sent] == [1, 2, 3]


def test_a_burst_holds_broadcasts_and_sends_each_connection_its_messages_together_in_order():
    hub, _ = make_hub()
    plain = connect(hub, "plain", topics={"file_operations"})
    batched = connect(hub, "batched", topics={"file_operations"})
    writes = []
    batched.send_many = lambda payloads: writes.append([json.loads(p)["seq"] for p in payloads])
    with hub.burst():
        for seq in (1, 2, 3):
            hub.publish(change(seq, source="plain"))
        assert plain.sent == [] and writes == []  # nothing leaves before the block ends
        hub.publish(change(4))
    assert [m["seq"] for m in plain.sent] == [4]  # never its own changes
    assert writes == [[1, 2, 3, 4]]  # one write, journal order
    hub.publish(change(5))
    assert [m["seq"] for m in batched.sent] == [5]  # outside a burst: one send as before
