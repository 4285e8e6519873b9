"""The broadcast hub: one object every change flows through, whoever made it.

STUB written to fix the interface between the REST API (issue 2) and the real-time
half (issue 3); issue 3 replaces the body, keeping these method names.
"""

from twisted.application.service import Service


class Hub(Service):
    """Fans out journal changes and PeerVault events to WebSocket subscribers."""

    def publish(self, change) -> None:
        """Broadcast ``change`` (a :class:`quantum_sync.protocol.Change`, already
        journalled) to every ``file_operations`` subscriber except its source client.
        Called in journal order, on the reactor thread."""

    def alert(self, kind: str, data: dict) -> None:
        """Send a PeerVault event on the ``alerts`` topic (``security_alert``,
        ``storage_alert``, ``performance_alert``) to subscribers of that topic."""
