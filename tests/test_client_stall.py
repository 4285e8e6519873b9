"""A transfer whose connection stops moving bytes (a laptop asleep, a NAT that forgot the
mapping) is aborted and tried again, its slot freed; the client's sockets keep alive.

The fault comes from a TCP forwarder in the test that stops forwarding mid-transfer."""

import hashlib
import os
import socket

import pytest
import pytest_twisted
from twisted.internet.endpoints import TCP4ClientEndpoint, serverFromString
from twisted.internet.protocol import Factory, Protocol

from quantum_sync.client import keepalive
from quantum_sync.client.transfer import SMALL_TRANSFER, ServerClient, TransferStalled
from support import start_server, wait_for

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


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("direction", ["down", "up"])
async def test_a_stalled_transfer_is_aborted_retried_and_arrives(reactor, tmp_path, direction):
    running = await start_server(reactor, tmp_path)
    proxy = StallingProxy(reactor, running.port)
    proxied = ServerClient(reactor, f"http://127.0.0.1:{await proxy.listen()}", "c1", idle_timeout=1.0)
    direct = ServerClient(reactor, running.url, "c2")
    digest = hashlib.sha256(BIG).hexdigest()
    staging = tmp_path / "staging"
    staging.mkdir()
    try:
        source = tmp_path / "big.bin"
        source.write_bytes(BIG)
        if direction == "down":
            await direct.upload("big.bin", str(source), digest, size=len(BIG))
        proxy.stall(256 << 10, direction)
        if direction == "down":
            transfer = proxied.download("big.bin", digest, str(staging), size=len(BIG))
        else:
            transfer = proxied.upload("big.bin", str(source), digest, size=len(BIG))
        # the stalled connection is given up by the client (nothing else would end it) ...
        await wait_for(reactor, lambda: proxy.closed_while_stalled >= 1, timeout=20, what="the stalled transfer aborted")
        proxy.resume()
        # ... and the transfer, tried again, arrives whole
        result = await transfer.addTimeout(30, reactor)
        if direction == "down":
            with open(result, "rb") as f:
                assert hashlib.sha256(f.read()).hexdigest() == digest
        else:
            assert result.hash == digest
            with open(os.path.join(running.root, "big.bin"), "rb") as f:
                assert f.read() == BIG
        assert proxied._transfers.tokens == proxied._transfers.limit  # the slot is free again
        assert len(BIG) > SMALL_TRANSFER
        # the client's sockets (the pooled one to the proxy) have keepalive on
        proxy_port = proxy.port.getHost().port
        options = [s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) for s in client_sockets_to(proxy_port)]
        assert options and all(options)
    finally:
        await proxied.close()
        await direct.close()
        await proxy.port.stopListening()
        await running.stop()


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


@pytest_twisted.ensureDeferred
async def test_a_transfer_that_stays_stalled_gives_up_after_its_retries(reactor, tmp_path, monkeypatch):
    from quantum_sync.client import transfer

    monkeypatch.setattr(transfer, "STALL_RETRIES", 1)
    running = await start_server(reactor, tmp_path)
    proxy = StallingProxy(reactor, running.port)
    proxied = ServerClient(reactor, f"http://127.0.0.1:{await proxy.listen()}", "c1", idle_timeout=0.5)
    try:
        source = tmp_path / "big.bin"
        source.write_bytes(BIG)
        proxy.stall(64 << 10, "up")
        with pytest.raises(TransferStalled):
            await proxied.upload("big.bin", str(source), hashlib.sha256(BIG).hexdigest(),
                                 size=len(BIG)).addTimeout(30, reactor)
        # the first try and one more, each connection closed by the client
        await wait_for(reactor, lambda: proxy.closed_while_stalled == 2, what="two aborted connections")
        assert proxied._transfers.tokens == proxied._transfers.limit
    finally:
        proxy.resume()
        await proxied.close()
        await proxy.port.stopListening()
        await running.stop()


def test_keepalive_options_on_a_socket():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        keepalive._set_options(sock)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
        if hasattr(socket, "TCP_KEEPIDLE"):
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == keepalive.IDLE


@pytest_twisted.ensureDeferred
async def test_an_upload_held_past_its_token_life_still_arrives(reactor, tmp_path):
    """The server checks the token once the body is in: an upload that outlives its token
    gets AUTH_EXPIRED at the end, and is sent once more with the renewed token."""
    from twisted.internet.task import deferLater

    from quantum_sync.client.credentials import Login
    from test_e2e_tls_auth import short_lived_auth

    running = await start_server(reactor, tmp_path, auth=short_lived_auth(tmp_path, 2))
    proxy = StallingProxy(reactor, running.port)
    login = Login(reactor, "alice", "wonderland")
    proxied = ServerClient(reactor, f"http://127.0.0.1:{await proxy.listen()}", "c1", login, idle_timeout=10)
    login.log_in = proxied.log_in
    try:
        source = tmp_path / "big.bin"
        source.write_bytes(BIG)
        await login.current()
        first = login.token
        proxy.stall(256 << 10, "up")
        upload = proxied.upload("big.bin", str(source), hashlib.sha256(BIG).hexdigest(), size=len(BIG))
        await deferLater(reactor, 2.5, lambda: None)  # the token's life passes while the upload is held
        proxy.resume()
        meta = await upload.addTimeout(30, reactor)
        assert meta.size == len(BIG) and login.token != first
        with open(os.path.join(running.root, "big.bin"), "rb") as f:
            assert f.read() == BIG
    finally:
        login.stop()
        await proxied.close()
        await proxy.port.stopListening()
        await running.stop()


@pytest_twisted.ensureDeferred
async def test_pooled_connections_keep_alive_and_log_no_factory_lines(reactor, tmp_path, monkeypatch):
    """The client's Agent connects through keepalive.KeptEndpoints: TCP keepalive on each
    pooled connection, and no "Starting factory" line per connection."""
    from logcapture import LogCapture

    sockets = []
    set_options = keepalive._set_options
    monkeypatch.setattr(keepalive, "_set_options", lambda sock: (sockets.append(sock), set_options(sock)))
    running = await start_server(reactor, tmp_path)
    client = ServerClient(reactor, f"http://127.0.0.1:{running.port}", "c1")
    try:
        with LogCapture() as log:
            await client.list()
        assert sockets and all(s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) for s in sockets)
        assert "Starting factory" not in log.text()
    finally:
        await client.close()
        await running.stop()
