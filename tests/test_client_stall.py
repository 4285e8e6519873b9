"""A transfer whose connection stops moving bytes (a laptop asleep, a NAT that forgot the
mapping) is aborted and tried again, its slot freed; the client's sockets keep alive.

The fault comes from a TCP forwarder in the test that stops forwarding mid-transfer
(stallproxy.py)."""

import hashlib
import os
import socket

import pytest
import pytest_twisted

from quantum_sync.client import keepalive
from quantum_sync.client.transfer import SMALL_TRANSFER, ServerClient, TransferStalled
from stallproxy import BIG, big_transfer, client_sockets_to
from support import start_server, wait_for

@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("direction", ["down", "up"])
async def test_a_stalled_transfer_is_aborted_retried_and_arrives(reactor, tmp_path, stalling, direction):
    running, proxy, proxied = await stalling(idle_timeout=1.0)
    transfer, digest = await big_transfer(reactor, tmp_path, running, proxy, proxied, direction, 256 << 10)
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


@pytest_twisted.ensureDeferred
async def test_a_transfer_that_stays_stalled_gives_up_after_its_retries(reactor, tmp_path, stalling, monkeypatch):
    from quantum_sync.client import transfer

    monkeypatch.setattr(transfer, "STALL_RETRIES", 1)
    running, proxy, proxied = await stalling(idle_timeout=0.5)
    upload, _ = await big_transfer(reactor, tmp_path, running, proxy, proxied, "up", 64 << 10)
    with pytest.raises(TransferStalled):
        await upload.addTimeout(30, reactor)
    # the first try and one more, each connection closed by the client
    await wait_for(reactor, lambda: proxy.closed_while_stalled == 2, what="two aborted connections")
    assert proxied._transfers.tokens == proxied._transfers.limit


def test_keepalive_options_on_a_socket():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        keepalive._set_options(sock)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
        if hasattr(socket, "TCP_KEEPIDLE"):
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == keepalive.IDLE


@pytest_twisted.ensureDeferred
async def test_an_upload_held_past_its_token_life_still_arrives(reactor, tmp_path, stalling):
    """The server checks the token once the body is in: an upload that outlives its token
    gets AUTH_EXPIRED at the end, and is sent once more with the renewed token."""
    from twisted.internet.task import deferLater

    from quantum_sync.client.credentials import Login
    from test_e2e_tls_auth import short_lived_auth

    login = Login(reactor, "alice", "wonderland")
    running, proxy, proxied = await stalling(10, login, auth=short_lived_auth(tmp_path, 2))
    login.log_in = proxied.log_in
    try:
        await login.current()
        first = login.token
        upload, _ = await big_transfer(reactor, tmp_path, running, proxy, proxied, "up", 256 << 10)
        await deferLater(reactor, 2.5, lambda: None)  # the token's life passes while the upload is held
        proxy.resume()
        meta = await upload.addTimeout(30, reactor)
        assert meta.size == len(BIG) and login.token != first
        with open(os.path.join(running.root, "big.bin"), "rb") as f:
            assert f.read() == BIG
    finally:
        login.stop()


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
