"""The client keeps no connection open that it has no use for: a stop never waits for
the server (requests in flight aborted, pooled connections closed, nothing
half-transferred visible), and an upload refused before its body went closes its
connection at once."""

import hashlib
import os

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory, Protocol

from clients import Clients, tree, write
from quantum_sync.client.state import tmp_dir
from quantum_sync.client.transfer import SMALL_REQUEST_TIMEOUT, RequestRefused, ServerClient
from quantum_sync.server.site import REFUSED_GRACE
from support import start_server, wait_for
from stallproxy import BIG, StallingProxy, client_sockets_to

#: Seconds a stop may take here: far below the request timeout (and the idle timeout)
#: a stop used to wait for, far above what a stop takes on a loaded machine.
STOP_BOUND = 5.0
assert STOP_BOUND * 4 < SMALL_REQUEST_TIMEOUT


class _Silent(Protocol):
    """Accepts, reads the request, never answers."""

    def dataReceived(self, data):
        if not self.factory.asked.called:
            self.factory.asked.callback(self)

    def connectionLost(self, reason):
        self.factory.gone += 1


class _Address:
    def __init__(self, url):
        self.url = url


async def _stopped_within(reactor, client, bound=STOP_BOUND):
    stopping = client.stopService()
    await wait_for(reactor, lambda: stopping.called, timeout=bound, what="the client's stop")


@pytest_twisted.ensureDeferred
async def test_a_stop_aborts_a_request_a_silent_server_never_answers(reactor, tmp_path, logged_failures, log_lines):
    factory = Factory.forProtocol(_Silent)
    factory.asked, factory.gone = defer.Deferred(), 0
    port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(factory)
    group = Clients(reactor, tmp_path)
    try:
        client = await group.start(_Address(f"http://127.0.0.1:{port.getHost().port}"), "a", wait=False)
        await factory.asked.addTimeout(10, reactor)  # its first reconcile asks, and waits
        group.running.remove(client)
        await _stopped_within(reactor, client)
        await wait_for(reactor, lambda: factory.gone >= 1, timeout=1, what="the connection closed")
        assert not logged_failures
        assert not [line for line in log_lines if "server unavailable" in line]  # a stop, not an outage
    finally:
        await group.stop_all()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_stop_mid_download_aborts_it_and_leaves_no_partial_file(reactor, tmp_path, logged_failures):
    running = await start_server(reactor, tmp_path)
    proxy = StallingProxy(reactor, running.port)
    address = _Address(f"http://127.0.0.1:{await proxy.listen()}")
    group = Clients(reactor, tmp_path)
    try:
        await group.start(running, "w", realtime=False)
        write(str(tmp_path / "w"), "big.bin", BIG)
        await wait_for(reactor, lambda: os.path.exists(os.path.join(running.root, "big.bin")), what="the upload")
        proxy.stall(256 << 10, "down")  # the server's answer stops after 256 KiB
        reader = await group.start(address, "r", wait=False, realtime=False)
        staging = tmp_dir(str(tmp_path / "r"))
        await wait_for(reactor, lambda: not proxy.forwarding and any(
            name.startswith("dl-") for name in os.listdir(staging)), what="the download stalled, staged")
        group.running.remove(reader)
        await _stopped_within(reactor, reader)
        assert "big.bin" not in tree(str(tmp_path / "r"))
        assert os.listdir(staging) == []  # the partial download is removed
        await wait_for(reactor, lambda: proxy.closed_while_stalled >= 1, timeout=1, what="its connection closed")
        assert not logged_failures
    finally:
        await group.stop_all()
        await proxy.port.stopListening()
        await running.stop()


def _connections_to(port) -> int:
    sockets = client_sockets_to(port)
    for sock in sockets:
        sock.close()
    return len(sockets)


@pytest_twisted.ensureDeferred
async def test_an_upload_refused_before_its_body_went_closes_its_connection_at_once(reactor, tmp_path):
    running = await start_server(reactor, tmp_path, max_upload_size=1000)
    server = ServerClient(reactor, running.url, "c1")
    body = b"x" * (16 << 20)  # more than the socket buffers hold: most of it is unsent when refused
    source = tmp_path / "big.bin"
    source.write_bytes(body)
    try:
        with pytest.raises(RequestRefused) as refused:
            await server.upload("big.bin", str(source), hashlib.sha256(body).hexdigest(), size=len(body))
        assert refused.value.code == "TOO_LARGE"
        # the server would cut it REFUSED_GRACE seconds after refusing; the client does at once
        await wait_for(reactor, lambda: _connections_to(running.port) == 0, timeout=REFUSED_GRACE / 4,
                       what="the refused upload's connection closed")
    finally:
        await server.close()
        await running.stop()
