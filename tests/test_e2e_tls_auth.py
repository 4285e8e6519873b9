"""End to end over https/wss with a CA made in the test, and with token authentication."""

import os

import pytest_twisted
from twisted.internet.task import deferLater

import certs
from support import HttpClient, start_server
from clients import Clients, read, write
from support import wait_for
from quantum_sync.passwords import hash_password


class HttpsServer:
    """A started server seen through an https URL (the support helper reports http)."""

    def __init__(self, running, url):
        self.running, self.url = running, url
        self.service = running.service


@pytest_twisted.ensureDeferred
async def test_https_with_the_ca_syncs_and_an_unverifiable_certificate_stops_transfers(reactor, tmp_path, log_lines):
    ca = certs.make_ca(tmp_path)
    issued = certs.issue(tmp_path, ca)
    running = await start_server(reactor, tmp_path, listen=certs.ssl_listen(issued))
    server = HttpsServer(running, f"https://127.0.0.1:{running.port}")
    group = Clients(reactor, tmp_path)
    try:
        trusting = await group.start(server, "trusting", ca_cert=ca.cert_path)
        await wait_for(reactor, lambda: trusting.link.connected, what="wss subscription")
        write(trusting.config.folder, "secret.txt", b"over tls")
        await wait_for(reactor, lambda: read(running.root, "secret.txt") == b"over tls", what="https upload")
        # a client that does not trust the CA transfers nothing, says why, and keeps trying
        doubting = await group.start(server, "doubting", wait=False)
        await wait_for(reactor, lambda: any("TLS: certificate of 127.0.0.1 refused" in line for line in log_lines),
                       what="the TLS refusal in the log")
        await wait_for(reactor, lambda: doubting.engine is not None and doubting.engine.online is False, what="offline")
        assert read(doubting.config.folder, "secret.txt") is None
        assert doubting.running and not doubting.ready.called
    finally:
        await group.stop_all()
        await running.stop()


@pytest_twisted.ensureDeferred
async def test_token_authentication_on_http_and_websocket(reactor, tmp_path, log_lines):
    auth = {
        "users": {"alice": {"password_hash": hash_password("wonderland", ln=10), "role": "write"}},
        "secret_file": str(tmp_path / "secret"),
        "token_ttl": 3600,
    }
    running = await start_server(reactor, tmp_path, auth=auth)
    token = await log_in(reactor, running)
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    group = Clients(reactor, tmp_path)
    try:
        a = await group.start(running, "a", token=token)
        b = await group.start(running, "b", token=token)
        write(a.config.folder, "authorised.txt", b"with a token")
        await wait_for(reactor, lambda: read(b.config.folder, "authorised.txt") == b"with a token", what="sync")
        anonymous = await group.start(running, "anonymous", wait=False, realtime=False)
        await wait_for(reactor, lambda: anonymous.engine is not None and anonymous.engine.online is False, what="refusal")
        assert read(anonymous.config.folder, "authorised.txt") is None
        assert os.listdir(anonymous.config.folder) == [".quantum-sync"]
    finally:
        await group.stop_all()
        await running.stop()


async def log_in(reactor, running, user="alice", password="wonderland") -> str:
    """A token from the server's login endpoint."""
    http = HttpClient(reactor)
    try:
        _, body = await http.json("POST", running.url + "/api/v1/auth/login",
                                  json={"username": user, "password": password})
    finally:
        await http.close()
    return body["data"]["token"]


def short_lived_auth(tmp_path, ttl):
    return {
        "users": {"alice": {"password_hash": hash_password("wonderland", ln=10), "role": "write"}},
        "secret_file": str(tmp_path / "secret"),
        "token_ttl": ttl,
    }


@pytest_twisted.ensureDeferred
async def test_a_client_that_logs_in_renews_its_token_and_keeps_its_websocket(reactor, tmp_path, log_lines):
    running = await start_server(reactor, tmp_path, auth=short_lived_auth(tmp_path, 3))
    group = Clients(reactor, tmp_path)
    try:
        a = await group.start(running, "a", user="alice", password="wonderland")
        b = await group.start(running, "b", user="alice", password="wonderland")
        links = (a.link.protocol, b.link.protocol)
        started = reactor.seconds()
        i = 0
        # files keep syncing both ways while the 3 s token is renewed (every 2 s) 3 times
        while not (a.credentials.logins >= 4 and b.credentials.logins >= 4):
            assert reactor.seconds() - started < 30, "the tokens were not renewed"
            write(a.config.folder, f"f{i}.txt", b"%d" % i)
            write(b.config.folder, f"g{i}.txt", b"%d" % i)
            await wait_for(reactor, lambda: read(b.config.folder, f"f{i}.txt") == b"%d" % i
                           and read(a.config.folder, f"g{i}.txt") == b"%d" % i, what=f"sync {i}")
            await deferLater(reactor, 0.5, lambda: None)  # the next pair of files, half a second later
            i += 1
        # the same WebSocket connections all along, never dropped or refused
        assert (a.link.protocol, b.link.protocol) == links and a.link.connected and b.link.connected
        assert not any("disconnected" in line or "refused" in line for line in log_lines)
    finally:
        await group.stop_all()
        await running.stop()


@pytest_twisted.ensureDeferred
async def test_an_expired_fixed_token_is_said_once_and_retried_slowly(reactor, tmp_path, log_lines):
    running = await start_server(reactor, tmp_path, auth=short_lived_auth(tmp_path, 2))
    token = await log_in(reactor, running)
    group = Clients(reactor, tmp_path)
    try:
        a = await group.start(running, "a", token=token)
        await deferLater(reactor, 2.5, lambda: None)  # the token's life passes
        write(a.config.folder, "late.txt", b"after expiry")
        a.link.protocol.transport.loseConnection()  # a network blip: the link reconnects
        await wait_for(reactor, lambda: any("realtime: the server refused the token" in line for line in log_lines),
                       what="the WebSocket's refusal")
        await deferLater(reactor, 3, lambda: None)  # a window in which today's link made several handshakes
        refusals = [line for line in log_lines if "realtime: the server refused the token" in line]
        said = [line for line in log_lines if "the server refused the token given with --token" in line]
        assert len(refusals) == 1 and len(said) == 1, (refusals, said)
        assert read(running.root, "late.txt") is None and a.engine.online is False
    finally:
        await group.stop_all()
        await running.stop()
