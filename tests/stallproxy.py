"""A TCP forwarder between a client and a server that stops forwarding mid-transfer (a
laptop asleep, a NAT that forgot the mapping), a large file to send through it, and this
process's sockets to a port (to look at their options).

The ``stalling`` fixture (conftest.py) starts a server, a :class:`StallingProxy` in front
of it and a client through that proxy."""

import hashlib
import os
import socket

from twisted.internet.endpoints import TCP4ClientEndpoint, serverFromString
from twisted.internet.protocol import Factory, Protocol

from quantum_sync.client.transfer import ServerClient

BIG = os.urandom(3 << 20)


class _Side(Protocol):
    """One end of a forwarded connection: ``downstream`` is the server's end."""

    def __init__(self, proxy, downstream):
        self.proxy, self.downstream = proxy, downstream
        self.peer = None
        self.pending = []  # bytes for the peer, until it is connected

    def connectionMade(self):
        if not self.downstream:  # a client came: connect to the server on its behalf
            self.transport.pauseProducing()
            endpoint = TCP4ClientEndpoint(self.proxy.reactor, "127.0.0.1", self.proxy.target)
            endpoint.connect(Factory.forProtocol(lambda: _Side(self.proxy, True))).addCallback(self._paired)

    def _paired(self, server_side):
        self.peer, server_side.peer = server_side, self
        for data in self.pending:
            server_side.transport.write(data)
        self.pending = []
        self.transport.resumeProducing()

    def dataReceived(self, data):
        self.proxy.carry(self, data)

    def deliver(self, data):
        """Write ``data`` to the other end."""
        if self.peer is None:
            self.pending.append(data)
        else:
            self.peer.transport.write(data)

    def connectionLost(self, reason):
        self.proxy.lost(self)
        if self.peer is not None:
            self.peer.transport.loseConnection()


class StallingProxy:
    """Forwards 127.0.0.1:port to the server; after ``stall_after`` bytes in the chosen
    direction it forwards nothing more (in either direction) until :meth:`resume`."""

    def __init__(self, reactor, target):
        self.reactor, self.target = reactor, target
        self.forwarding = True
        self.stall_after, self.direction, self.counted = None, "down", 0
        self.held = []  # (side, data) not forwarded while stalled
        self.closed_while_stalled = 0

    async def listen(self):
        self.port = await serverFromString(self.reactor, "tcp:0:interface=127.0.0.1").listen(
            Factory.forProtocol(lambda: _Side(self, False)))
        return self.port.getHost().port

    def stall(self, after: int, direction: str):
        self.stall_after, self.direction, self.counted = after, direction, 0

    def carry(self, side, data):
        if self.forwarding and self.stall_after is not None and side.downstream == (self.direction == "down"):
            room = self.stall_after - self.counted
            if len(data) > room:
                if room > 0:
                    side.deliver(data[:room])
                self.forwarding, data = False, data[max(room, 0):]
            self.counted += min(len(data), max(room, 0))
        if not self.forwarding:
            self.held.append((side, data))
            return
        side.deliver(data)

    def lost(self, side):
        if not self.forwarding and not side.downstream:
            self.closed_while_stalled += 1
        self.held = [(s, d) for s, d in self.held if s is not side and s.peer is not side]

    def resume(self):
        self.forwarding, self.stall_after = True, None
        held, self.held = self.held, []
        for side, data in held:
            side.deliver(data)


async def big_transfer(reactor, tmp_path, server, proxy, client, direction, stall_after):
    """Start a transfer of :data:`BIG` (``big.bin``) through ``client`` in ``direction``
    ("down": uploaded directly first) that the proxy stalls after ``stall_after`` bytes;
    returns the transfer's Deferred and the file's SHA-256."""
    digest = hashlib.sha256(BIG).hexdigest()
    source = tmp_path / "big.bin"
    source.write_bytes(BIG)
    staging = tmp_path / "staging"
    staging.mkdir()
    if direction == "down":
        direct = ServerClient(reactor, server.url, "c2")
        try:
            await direct.upload("big.bin", str(source), digest, size=len(BIG))
        finally:
            await direct.close()
    proxy.stall(stall_after, direction)
    if direction == "down":
        return client.download("big.bin", digest, str(staging), size=len(BIG)), digest
    return client.upload("big.bin", str(source), digest, size=len(BIG)), digest


def client_sockets_to(port):
    """Duplicates of this process's TCP sockets connected to 127.0.0.1:port."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if not os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                continue
            sock = socket.fromfd(int(name), socket.AF_INET, socket.SOCK_STREAM)
        except OSError:
            continue
        try:
            if sock.type == socket.SOCK_STREAM and sock.getpeername() == ("127.0.0.1", port):
                found.append(sock)
                continue
        except OSError:
            pass
        sock.close()
    return found
