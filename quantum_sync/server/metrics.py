"""Counters behind /ws/metrics, /metrics and the ``system_metrics`` event.

The REST API reports each finished request through :meth:`Metrics.observe_request`; the
WebSocket protocol reports messages in and out. Requests a second and the average
response time are taken over the last :data:`WINDOW_SECONDS` seconds, in one-second
buckets, so memory stays constant whatever the request rate.
"""

import time

import attrs

#: The span, in seconds, of ``requests_per_second`` and ``average_response_time``.
WINDOW_SECONDS = 60


@attrs.define
class Metrics:
    """Running totals for the monitoring endpoints.

    ``clock`` returns seconds (``reactor.seconds`` or a test ``Clock.seconds``); the
    window figures are taken at ``now`` (default: the clock's).
    """

    requests: int = 0
    bytes_transferred: int = 0
    messages_in: int = 0
    messages_out: int = 0
    #: times the root watcher lost events (inotify queue overflow)
    events_lost: int = 0
    #: full rescans of the root (periodic, or after lost events)
    rescans: int = 0
    clock: object = time.time
    _buckets: dict = attrs.field(factory=dict)

    def observe_request(self, duration: float, bytes_in: int, bytes_out: int) -> None:
        """One finished HTTP request: its wall time in seconds and the body bytes moved."""
        self.requests += 1
        self.bytes_transferred += bytes_in + bytes_out
        second = int(self.clock())
        count, total = self._buckets.get(second, (0, 0.0))
        self._buckets[second] = (count + 1, total + duration)
        if len(self._buckets) > WINDOW_SECONDS * 2:
            self._prune(second)

    def observe_message_in(self, size: int) -> None:
        """One WebSocket message received (``size`` payload bytes)."""
        self.messages_in += 1
        self.bytes_transferred += size

    def observe_messages_out(self, count: int, size: int) -> None:
        """``count`` WebSocket messages sent, of ``size`` payload bytes together."""
        self.messages_out += count
        self.bytes_transferred += size

    def _prune(self, now_second: int) -> None:
        oldest = now_second - WINDOW_SECONDS
        for second in [s for s in self._buckets if s <= oldest]:
            del self._buckets[second]

    def _window(self, now):
        second = int(self.clock() if now is None else now)
        self._prune(second)
        count = sum(c for c, _ in self._buckets.values())
        total = sum(t for _, t in self._buckets.values())
        return count, total

    def requests_per_second(self, now=None) -> float:
        """HTTP requests a second over the last minute."""
        count, _ = self._window(now)
        return count / WINDOW_SECONDS

    def average_response_time(self, now=None) -> float:
        """Mean HTTP response time in seconds over the last minute (0.0 when idle)."""
        count, total = self._window(now)
        return total / count if count else 0.0
