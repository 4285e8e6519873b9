"""Timer and limit settings that used to misbehave at 0 (a busy loop, everyone dropped),
the start-up line for a server without /ws, ``rescan_interval``, and the bytes a group
broadcast counts in ``bytes_transferred``."""

import pytest
import pytest_twisted
from twisted.internet.task import Clock

from quantum_sync.config import ConfigError, WebSocketConfig, parse
from quantum_sync.protocol import Change, Delete
from quantum_sync.server import messages
from quantum_sync.server.hub import Hub
from quantum_sync.server.metrics import Metrics
from tests.logcapture import LogCapture
from tests.support import server_document, start_service
from test_config import document
from test_ws_support import MEMORY_JOURNAL_ID


@pytest.mark.parametrize("key", ["ping_interval", "stale_timeout", "cleanup_interval"])
def test_a_zero_timer_is_refused_in_one_line(key):
    with pytest.raises(ConfigError) as raised:
        parse(document(websocket={key: 0}), source="qs.json", base_dir="/srv")
    assert str(raised.value) == (
        f"qs.json: apps.http.servers.file_sync_server.routes[0].handle[0].websocket.{key}:"
        " must be more than 0")


def test_a_stale_timeout_shorter_than_the_heartbeat_is_refused():
    with pytest.raises(ConfigError, match="websocket.stale_timeout: must be more than"
                                          " ping_interval"):
        parse(document(websocket={"ping_interval": 30, "stale_timeout": 10}), base_dir="/srv")


def test_zero_turns_metrics_and_rate_limit_off():
    config = parse(document(websocket={"metrics_interval": 0, "rate_limit": 0}), base_dir="/srv")
    assert (config.handler.websocket.metrics_interval, config.handler.websocket.rate_limit) == (0, 0)


def test_no_timer_of_the_hub_runs_at_interval_zero():
    """metrics_interval 0 is off: no LoopingCall at all (one at 0 would spin a core)."""
    clock = Clock()
    hub = Hub(WebSocketConfig(metrics_interval=0), clock, metrics=Metrics(clock=clock.seconds))
    hub.startService()
    try:
        assert sorted(call.getTime() for call in clock.getDelayedCalls()) == [30, 60]
    finally:
        hub.stopService()


def test_rescan_interval_default_off_and_refusals():
    assert parse(document(), base_dir="/srv").handler.rescan_interval == 3600
    assert parse(document(rescan_interval=0), base_dir="/srv").handler.rescan_interval == 0
    assert parse(document(rescan_interval=90.5), base_dir="/srv").handler.rescan_interval == 90.5
    for bad, reason in ((-1, "must be at least 0"), ("hourly", "must be a number, not a string")):
        with pytest.raises(ConfigError, match=f"handle\\[0\\].rescan_interval: {reason}"):
            parse(document(rescan_interval=bad), base_dir="/srv")


def test_messages_out_count_each_byte_once():
    metrics = Metrics()
    metrics.observe_messages_out(3, 300)  # three messages, 300 bytes together
    assert (metrics.messages_out, metrics.bytes_transferred) == (3, 300)


@pytest_twisted.ensureDeferred
async def test_a_group_broadcast_counts_its_bytes_once(sites):
    site = await sites()
    reader = await site.connect()
    await reader.request({"type": "Subscribe", "client_id": "reader"})
    changes = [Change(seq, Delete(f"f{seq}"), "other", "2024-01-21T12:00:00Z") for seq in (1, 2, 3)]
    before = site.hub.metrics.bytes_transferred
    with site.hub.burst():  # one send_many to the reader
        for change in changes:
            site.hub.publish(change)
    for _ in changes:
        await reader.expect("FileOperation")
    sent = sum(len(messages.file_operation(change, MEMORY_JOURNAL_ID)) for change in changes)
    assert site.hub.metrics.bytes_transferred - before == sent


@pytest_twisted.ensureDeferred
async def test_a_server_without_a_ws_route_says_so_at_start(reactor, tmp_path):
    document = server_document(tmp_path / "root")
    route = document["apps"]["http"]["servers"]["file_sync_server"]["routes"][0]
    route["match"][0]["paths"] = ["/api/*"]
    with LogCapture() as log:
        service, _ = await start_service(reactor, document, str(tmp_path))
        await service.stopService()
    assert "no route serves /ws" in log.text()
    with LogCapture() as log:
        service, _ = await start_service(reactor, server_document(tmp_path / "root"), str(tmp_path))
        await service.stopService()
    assert "no route serves /ws" not in log.text()
