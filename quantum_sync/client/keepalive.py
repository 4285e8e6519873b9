"""TCP keepalive on the client's connections.

A half-open connection (a laptop that slept, a NAT that forgot the mapping) looks
healthy to a socket that is only waiting to read: nothing ever arrives, nothing fails.
With keepalive probes the kernel notices a peer that stopped answering after
:data:`IDLE` + :data:`INTERVAL` × :data:`COUNT` seconds of silence and fails the socket.
Transfers have their own, shorter idle timeout (:mod:`quantum_sync.client.transfer`);
this is the floor under everything else, the WebSocket included.
"""

import socket

from twisted.internet.interfaces import IStreamClientEndpoint
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

    def __init__(self, endpoint):
        self._endpoint = endpoint

    def connect(self, factory):
        return self._endpoint.connect(factory).addCallback(keep_alive)
