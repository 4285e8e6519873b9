"""TCP keepalive on the client's connections.

A half-open connection (a laptop that slept, a NAT that forgot the mapping) looks
healthy to a socket that is only waiting to read: nothing ever arrives, nothing fails.
With keepalive probes the kernel notices a peer that stopped answering after
:data:`IDLE` + :data:`INTERVAL` × :data:`COUNT` seconds of silence and fails the socket.
Transfers have their own, shorter idle timeout (:mod:`quantum_sync.client.transfer`);
this is the floor under everything else, the WebSocket included.
"""

import socket
import weakref

from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.web.client import BrowserLikePolicyForHTTPS
from twisted.web.error import SchemeNotSupported
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

IDLE = 30
INTERVAL = 10
COUNT = 3


def keep_alive(protocol):
    """Turn keepalive on for the TCP socket under ``protocol`` (through a TLS wrapper
    too); returns ``protocol``."""
    transport = getattr(protocol, "transport", None)
    while transport is not None:
        handle = transport.getHandle() if hasattr(transport, "getHandle") else None
        if isinstance(handle, socket.socket):
            _set_options(handle)
            break
        transport = getattr(transport, "transport", None)
    return protocol


def _set_options(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", IDLE), ("TCP_KEEPINTVL", INTERVAL), ("TCP_KEEPCNT", COUNT)):
        option = getattr(socket, name, None)  # Linux names; other systems keep their defaults
        if option is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, option, value)
            except OSError:
                pass


@implementer(IStreamClientEndpoint)
class KeepAliveEndpoint:
    """An endpoint whose connections have TCP keepalive on."""

    def __init__(self, endpoint, quiet: bool = False, connections=None):
        """``connections``: a set that every connection's protocol joins (a ``WeakSet``:
        a closed connection leaves it once nothing else holds it)."""
        self._endpoint = endpoint
        self._quiet = quiet
        self._connections = connections

    def connect(self, factory):
        if self._quiet:
            factory.noisy = False  # no "Starting factory" line per connection
        return self._endpoint.connect(factory).addCallback(self._made)

    def _made(self, protocol):
        if self._connections is not None:
            self._connections.add(protocol)
        return keep_alive(protocol)


@implementer(IAgentEndpointFactory)
class KeptEndpoints:
    """An Agent's endpoints (``Agent.usingEndpointFactory``), one per server: Agent asks
    for an endpoint for every request (host name checks and encoding included) even when
    the pool then hands it a kept-alive connection, and an endpoint connects as often as
    asked, so one is kept. Its connections have TCP keepalive on, and the pool's factory
    of each (one per connection) logs no line: with dozens of pooled connections those
    lines drowned the transfer log."""

    def __init__(self, reactor, tls_policy=None, connect_timeout: float = 10):
        self._reactor = reactor
        self._tls_policy = tls_policy if tls_policy is not None else BrowserLikePolicyForHTTPS()
        self._connect_timeout = connect_timeout
        self._endpoints = {}
        self._connections = weakref.WeakSet()  # the protocols of the connections made

    def abort_all(self) -> None:
        """Abort every connection made through these endpoints that is still open, the
        busy ones too (a stop waits for no silent server)."""
        for protocol in list(self._connections):
            transport = getattr(protocol, "transport", None)
            if transport is not None and not getattr(transport, "disconnected", False):
                transport.abortConnection()

    def endpointForURI(self, uri):
        key = (uri.scheme, uri.host, uri.port)
        endpoint = self._endpoints.get(key)
        if endpoint is None:
            endpoint = self._endpoints[key] = KeepAliveEndpoint(self._endpoint(uri), quiet=True,
                                                                     connections=self._connections)
        return endpoint

    def _endpoint(self, uri):
        """What Agent's own endpoint factory builds: TCP to the host, TLS for https."""
        try:
            host = uri.host.decode("ascii")
        except UnicodeDecodeError:
            raise ValueError(f"the host {uri.host!r} is not ASCII (IDNA-encoded)") from None
        endpoint = HostnameEndpoint(self._reactor, host, uri.port, timeout=self._connect_timeout)
        if uri.scheme == b"http":
            return endpoint
        if uri.scheme == b"https":
            return wrapClientTLS(self._tls_policy.creatorForNetloc(uri.host, uri.port), endpoint)
        raise SchemeNotSupported(f"unsupported scheme: {uri.scheme!r}")
