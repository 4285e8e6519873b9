"""The monitoring endpoints of contract section 4: ``/ws/metrics``, ``/ws/status`` and
``/metrics`` (Prometheus text via prometheus_client).

All three read the hub's figures (:meth:`Hub.figures`, :meth:`Hub.status`), so the JSON,
the Prometheus text and the ``system_metrics`` event always agree. With auth enabled,
``/ws/metrics`` needs any valid token and the other two need ``admin``.
"""

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from twisted.web.resource import Resource

from quantum_sync.errors import SyncError
from quantum_sync.server.httpio import write_error, write_json

PREFIX = "quantum_sync_"


class HubCollector:
    """A prometheus_client collector reading the hub's figures at scrape time."""

    def __init__(self, hub):
        self._hub = hub

    def collect(self):
        figures = self._hub.figures()
        metrics = self._hub.metrics
        yield GaugeMetricFamily(PREFIX + "websocket_connections", "Open WebSocket connections",
                                value=figures["connections"])
        yield CounterMetricFamily(PREFIX + "websocket_messages_in", "WebSocket messages received",
                                  value=figures["messages_in"])
        yield CounterMetricFamily(PREFIX + "websocket_messages_out", "WebSocket messages sent",
                                  value=figures["messages_out"])
        yield CounterMetricFamily(PREFIX + "bytes_transferred",
                                  "HTTP body and WebSocket payload bytes moved",
                                  value=figures["bytes_transferred"])
        yield CounterMetricFamily(PREFIX + "http_requests", "HTTP requests served",
                                  value=metrics.requests)
        yield GaugeMetricFamily(PREFIX + "requests_per_second",
                                "HTTP requests a second over the last minute",
                                value=figures["requests_per_second"])
        yield GaugeMetricFamily(PREFIX + "average_response_time_seconds",
                                "Mean HTTP response time over the last minute",
                                value=figures["average_response_time"])
        for name, value in figures["storage"].items():
            if value is not None:
                yield GaugeMetricFamily(PREFIX + "storage_" + name + "_bytes",
                                        f"Root file system {name.replace('_', ' ')}", value=value)
        yield GaugeMetricFamily(PREFIX + "journal_head", "Newest journal sequence number",
                                value=figures["journal_head"])
        yield CounterMetricFamily(PREFIX + "watch_events_lost",
                                  "Times the root watcher lost events (inotify queue overflow)",
                                  value=figures["events_lost"])
        yield CounterMetricFamily(PREFIX + "rescans", "Full rescans of the root",
                                  value=figures["rescans"])
        cluster = figures.get("cluster")
        if cluster is not None:
            node = GaugeMetricFamily(PREFIX + "cluster_node", "This node (1) and whether it"
                                     " watches the root", labels=["node_id", "leader"])
            node.add_metric([cluster["node_id"], str(cluster["leader"]).lower()], 1)
            yield node
            live = GaugeMetricFamily(PREFIX + "cluster_live_node", "A node whose heartbeat is"
                                     " recent", labels=["node_id", "address"])
            for peer in cluster["nodes"]:
                live.add_metric([peer["node_id"], peer["address"]], 1)
            yield live


class MonitoringResource(Resource):
    """One read-only monitoring endpoint: authorize ``role``, then ``render_body(request)``."""

    isLeaf = True

    def __init__(self, authorizer, role: str, render_body):
        super().__init__()
        self._authorizer = authorizer
        self._role = role
        self._render_body = render_body

    def render(self, request):
        try:
            if request.method not in (b"GET", b"HEAD"):
                raise SyncError("METHOD_NOT_ALLOWED", "only GET is supported here")
            self._authorizer.authorize_request(request, self._role)
        except SyncError as error:
            return write_error(request, error)
        return self._render_body(request)


def _json(body):
    return lambda request: write_json(request, body())


def _prometheus(registry):
    def render(request):
        request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode("ascii"))
        request.setHeader(b"Cache-Control", b"no-store")
        return generate_latest(registry)

    return render


def monitoring_endpoints(hub, authorizer) -> dict:
    """The monitoring resources by path, for the site's fixed endpoints."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(HubCollector(hub))
    return {
        "/ws/metrics": MonitoringResource(authorizer, "read", _json(hub.figures)),
        "/ws/status": MonitoringResource(authorizer, "admin", _json(hub.status)),
        "/metrics": MonitoringResource(authorizer, "admin", _prometheus(registry)),
    }
