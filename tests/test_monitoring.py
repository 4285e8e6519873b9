"""/ws/metrics, /ws/status and /metrics on a real server, exactly as contract section 4
gives them (auth on these endpoints is covered by tests/test_auth_e2e.py)."""

import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families

from tests.support import HttpClient, start_server
from test_ws_support import connect, drop_all

TIMERS = {"ping_interval": 30, "stale_timeout": 300, "cleanup_interval": 60, "metrics_interval": 60}


@pytest_twisted.async_yield_fixture
async def monitored(reactor, tmp_path, logged_failures):
    running = await start_server(reactor, tmp_path, websocket=TIMERS)
    http = HttpClient(reactor)
    client = await connect(reactor, running.ws_url)
    await client.request({"type": "Subscribe", "client_id": "laptop"})
    await client.request({"type": "subscribe", "topic": "alerts"})
    await http.json("POST", running.url + "/api/upload?path=m.txt", data=b"12345")
    yield running, http
    await drop_all(reactor, [client], running.service.hub)
    await http.close()
    await running.stop()
    assert [e.get("log_format") for e in logged_failures] == []


@pytest_twisted.ensureDeferred
async def test_ws_metrics_has_exactly_the_contract_fields(monitored):
    running, http = monitored
    _, body = await http.json("GET", running.url + "/ws/metrics")
    assert set(body) == {"connections", "messages_in", "messages_out", "bytes_transferred",
                         "requests_per_second", "average_response_time", "storage", "journal_head",
                         # extensions (issue 13): the root watcher's lost events and rescans
                         "events_lost", "rescans"}
    assert set(body["storage"]) == {"total_space", "used_space", "available_space"}
    assert body["connections"] == 1 and body["messages_in"] == 2 and body["messages_out"] >= 2
    assert body["journal_head"] == running.service.operations.head >= 1
    assert body["bytes_transferred"] >= 5 and body["requests_per_second"] > 0
    assert isinstance(body["average_response_time"], float)
    assert body["storage"]["total_space"] >= body["storage"]["available_space"] > 0


@pytest_twisted.ensureDeferred
async def test_ws_status_lists_connected_clients(monitored):
    running, http = monitored
    _, body = await http.json("GET", running.url + "/ws/status")
    (entry,) = body["clients"]
    assert entry["client_id"] == "laptop" and entry["address"].startswith("127.0.0.1:")
    assert entry["topics"] == ["alerts", "file_operations"]
    assert entry["connected_at"].endswith("Z") and entry["last_seen"] >= entry["connected_at"]


@pytest_twisted.ensureDeferred
async def test_prometheus_text_carries_the_same_figures(monitored):
    running, http = monitored
    response = await http.get(running.url + "/metrics")
    assert response.code == 200
    assert response.headers.getRawHeaders(b"content-type")[0].startswith(b"text/plain")
    text = (await response.content()).decode()
    samples = {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples}
    assert samples["quantum_sync_websocket_connections"] == 1
    assert samples["quantum_sync_websocket_messages_in_total"] == 2
    assert samples["quantum_sync_journal_head"] == running.service.operations.head
    assert samples["quantum_sync_http_requests_total"] >= 1
    assert samples["quantum_sync_storage_available_space_bytes"] > 0
    for name in ("quantum_sync_websocket_messages_out_total", "quantum_sync_bytes_transferred_total",
                 "quantum_sync_requests_per_second", "quantum_sync_average_response_time_seconds"):
        assert name in samples


@pytest_twisted.ensureDeferred
async def test_monitoring_endpoints_refuse_other_methods(monitored):
    running, http = monitored
    for path in ("/ws/metrics", "/ws/status", "/metrics"):
        status, body = await http.json("POST", running.url + path, expect=None)
        assert status == 405 and body["error"]["code"] == "METHOD_NOT_ALLOWED"


def test_access_log_line_and_fields():
    """One access-log event per request: the rendered line (braces in a path kept as
    they are) and the fields JSON logs carry."""
    from twisted.internet.address import IPv4Address
    from twisted.logger import formatEvent

    from quantum_sync.server.metrics import Metrics
    from quantum_sync.server.site import SyncSite
    from tests.logcapture import LogCapture

    site = SyncSite(None, Metrics(), "/nonexistent", None)
    with LogCapture() as log:
        site._access(b"GET", b"/api/download?path=%7Bx%7D{y}&token=s", 200, 12, 0, 0.00125,
                     IPv4Address("TCP", "10.1.2.3", 5000))
    (event,) = [e for e in log.events if e.get("log_namespace") == "quantum_sync.access"]
    assert formatEvent(event) == \
        "10.1.2.3 GET /api/download?path=%7Bx%7D{y}&token=REDACTED 200 12B 1.2ms"
    assert {k: event[k] for k in ("client", "method", "status", "bytes_out", "bytes_in")} == \
        {"client": "10.1.2.3", "method": "GET", "status": 200, "bytes_out": 12, "bytes_in": 0}
    assert event["path"].endswith("token=REDACTED") and event["duration_ms"] == 1.25
