"""Counters behind /ws/metrics and /metrics.

STUB fixing the interface the REST API (issue 2) reports into; issue 3 fills it in
(requests a second, average response time, messages in/out, connections, ...).
"""

import attrs


@attrs.define
class Metrics:
    """Running totals for the monitoring endpoints."""

    requests: int = 0
    bytes_transferred: int = 0
    response_time_total: float = 0.0

    def observe_request(self, duration: float, bytes_in: int, bytes_out: int) -> None:
        """One finished HTTP request: its wall time in seconds and the body bytes moved."""
        self.requests += 1
        self.response_time_total += duration
        self.bytes_transferred += bytes_in + bytes_out
