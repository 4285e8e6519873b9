"""Several servers of one cluster (``--server`` given more than once): tried in turn.

The nodes share one journal, so a client that moves to the next node goes on from its
cursor. :class:`ServerList` is the pure choice of the current server;
:class:`RotatingEndpoint` is the WebSocket's endpoint that moves on when a connection
attempt fails (its ClientService retries with backoff).
"""

from urllib.parse import urlsplit

from twisted.internet.interfaces import IStreamClientEndpoint
from zope.interface import implementer


class ServerList:
    """The servers in the order given, and which one is in use."""

    def __init__(self, urls):
        self.urls = tuple(url.rstrip("/") for url in urls)
        if not self.urls:
            raise ValueError("no server")
        self.position = 0

    @property
    def current(self) -> str:
        return self.urls[self.position]

    def advance(self) -> str:
        """Move to the next server (after the last: the first); returns it."""
        self.position = (self.position + 1) % len(self.urls)
        return self.current


@implementer(IStreamClientEndpoint)
class RotatingEndpoint:
    """Connects to the current one of ``endpoints``; a failed attempt moves to the next,
    so the ClientService's next try goes there."""

    def __init__(self, endpoints):
        self.endpoints = list(endpoints)
        self.position = 0

    def connect(self, factory):
        attempt = self.endpoints[self.position].connect(factory)

        def failed(failure):
            self.position = (self.position + 1) % len(self.endpoints)
            return failure

        return attempt.addErrback(failed)


def host_and_port(url: str) -> tuple:
    """``(host, port, secure)`` of an http(s)/ws(s) URL."""
    parts = urlsplit(url)
    secure = parts.scheme in ("https", "wss")
    return parts.hostname, parts.port or (443 if secure else 80), secure
