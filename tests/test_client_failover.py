"""A client given several servers (``--server`` more than once) moves to the next one
when the one in use cannot be reached: its REST calls and its WebSocket."""

import pytest
import pytest_twisted
from twisted.internet import protocol

from cluster_support import free_port
from quantum_sync.client.failover import RotatingEndpoint, ServerList, host_and_port
from quantum_sync.client.tap import Options
from quantum_sync.client.transfer import ServerClient, ServerUnavailable
from quantum_sync.tls import client_endpoint


def test_server_list_goes_round():
    servers = ServerList(["http://a:1/", "http://b:2"])
    assert servers.current == "http://a:1"
    assert servers.advance() == "http://b:2" and servers.advance() == "http://a:1"
    with pytest.raises(ValueError):
        ServerList([])


def test_server_given_several_times(tmp_path):
    options = Options()
    options.parseOptions(["--server", "http://127.0.0.1:1", "-s", "http://127.0.0.1:2/",
                          "--local-path", str(tmp_path / "folder")])
    assert options.config.server == "http://127.0.0.1:1"
    assert options.config.fallbacks == ("http://127.0.0.1:2",)


def test_each_server_checked(tmp_path, capsys):
    with pytest.raises(SystemExit):
        Options().parseOptions(["--server", "http://127.0.0.1:1", "--server", "ftp://x",
                                "--local-path", str(tmp_path / "folder")])
    assert "--server ftp://x: expected http://HOST:PORT" in capsys.readouterr().err


@pytest_twisted.ensureDeferred
async def test_rest_calls_move_to_the_next_server(reactor, server):
    dead = f"http://127.0.0.1:{free_port()}"
    client = ServerClient(reactor, dead, "c1", fallbacks=(server.url,))
    try:
        with pytest.raises(ServerUnavailable):
            await client.list()
        assert client.server_url == server.url
        assert await client.list() == []
    finally:
        await client.close()


@pytest_twisted.ensureDeferred
async def test_websocket_endpoint_moves_on_after_a_failed_attempt(reactor, server):
    urls = [f"http://127.0.0.1:{free_port()}", server.url]
    endpoint = RotatingEndpoint([client_endpoint(reactor, *host_and_port(url)) for url in urls])
    factory = protocol.Factory.forProtocol(protocol.Protocol)
    with pytest.raises(Exception):
        await endpoint.connect(factory)
    connected = await endpoint.connect(factory)
    assert connected.transport.getPeer().port == server.port
    connected.transport.loseConnection()
