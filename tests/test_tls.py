"""quantum_sync.tls against real TLS listeners on 127.0.0.1 with a CA made in the test."""

import pytest
import pytest_twisted
import treq
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory, Protocol
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data

from quantum_sync import tls
from tests import certs
from tests.logcapture import LogCapture


@pytest.fixture
def captured_log():
    with LogCapture() as capture:
        yield capture


@pytest.fixture
def pki(tmp_path):
    ca = certs.make_ca(tmp_path)
    return {
        "ca": ca,
        "good": certs.issue(tmp_path, ca),
        "wrong_host": certs.issue(tmp_path, ca, hosts=("other.example",), stem="wrong"),
        "expired": certs.issue(tmp_path, ca, stem="expired", expired=True),
        "other_ca": certs.make_ca(tmp_path, "unrelated CA"),
    }


async def _https_site(reactor, issued):
    root = Resource()
    root.putChild(b"hello", Data(b"hello over tls", "text/plain"))
    port = await serverFromString(reactor, certs.ssl_listen(issued)).listen(Site(root))
    return port


async def _get(reactor, url, policy):
    pool = HTTPConnectionPool(reactor, persistent=False)
    client = treq.client.HTTPClient(Agent(reactor, contextFactory=policy, pool=pool))
    try:
        response = await client.get(url)
        return response.code, await response.content()
    finally:
        await pool.closeCachedConnections()


@pytest_twisted.ensureDeferred
async def test_https_with_ca_cert_verifies_and_connects(reactor, pki):
    port = await _https_site(reactor, pki["good"])
    try:
        for host in ("127.0.0.1", "localhost"):
            url = f"https://{host}:{port.getHost().port}/hello"
            code, body = await _get(reactor, url, tls.https_policy(pki["ca"].cert_path))
            assert (code, body) == (200, b"hello over tls")
    finally:
        await port.stopListening()


@pytest.mark.parametrize(
    "cert, ca, reason",
    [
        ("good", "other_ca", "issuer is not in the trusted roots"),
        ("good", None, "issuer is not in the trusted roots"),
        ("wrong_host", "ca", "does not match the host name"),
        ("expired", "ca", "expired"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_untrusted_certificate_is_refused_with_a_log_line(
    reactor, pki, captured_log, cert, ca, reason
):
    port = await _https_site(reactor, pki[cert])
    try:
        policy = tls.https_policy(pki[ca].cert_path if ca else None)
        url = f"https://127.0.0.1:{port.getHost().port}/hello"
        with pytest.raises(Exception) as raised:
            await _get(reactor, url, policy)
        from twisted.python.failure import Failure

        explained = tls.tls_failure_reason(Failure(raised.value))
        assert explained is not None, raised.value
        text = captured_log.text()
        assert "TLS: certificate of 127.0.0.1 refused" in text
        assert reason in text
    finally:
        await port.stopListening()


class _Echo(Protocol):
    def dataReceived(self, data):
        self.transport.write(data)


class _Collect(Protocol):
    def __init__(self):
        self.received = defer.Deferred()

    def dataReceived(self, data):
        if not self.received.called:
            self.received.callback(data)

    def connectionLost(self, reason):
        if not self.received.called:
            self.received.errback(reason)


@pytest_twisted.ensureDeferred
async def test_client_endpoint_tls_for_websockets(reactor, pki, captured_log):
    factory = Factory.forProtocol(_Echo)
    good = await serverFromString(reactor, certs.ssl_listen(pki["good"])).listen(factory)
    bad = await serverFromString(reactor, certs.ssl_listen(pki["wrong_host"])).listen(factory)
    try:
        endpoint = tls.client_endpoint(
            reactor, "localhost", good.getHost().port, True, pki["ca"].cert_path
        )
        protocol = _Collect()
        await endpoint.connect(Factory.forProtocol(lambda: protocol))
        protocol.transport.write(b"ping")
        assert await protocol.received == b"ping"
        protocol.transport.loseConnection()

        endpoint = tls.client_endpoint(
            reactor, "localhost", bad.getHost().port, True, pki["ca"].cert_path
        )
        refused = _Collect()
        await endpoint.connect(Factory.forProtocol(lambda: refused))
        refused.transport.write(b"ping")
        with pytest.raises(Exception):
            await refused.received
        assert "TLS: certificate of localhost refused" in captured_log.text()
    finally:
        await good.stopListening()
        await bad.stopListening()


def test_plain_endpoint_when_not_tls(reactor):
    from twisted.internet.endpoints import HostnameEndpoint

    assert isinstance(tls.client_endpoint(reactor, "localhost", 1, False), HostnameEndpoint)


def test_ca_cert_errors_are_one_clear_line(tmp_path):
    with pytest.raises(tls.TLSConfigError, match="--ca-cert .*missing.pem"):
        tls.load_trust_root(str(tmp_path / "missing.pem"))
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(tls.TLSConfigError, match="no PEM certificate"):
        tls.https_policy(str(junk))


def test_ca_file_with_several_certificates(tmp_path):
    first = certs.make_ca(tmp_path, "first")
    second = certs.make_ca(tmp_path, "second")
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(open(first.cert_path, "rb").read() + open(second.cert_path, "rb").read())
    assert tls.load_trust_root(str(bundle)) is not None


def test_non_tls_failures_are_not_explained():
    from twisted.internet.error import ConnectionRefusedError
    from twisted.python.failure import Failure

    assert tls.tls_failure_reason(Failure(ConnectionRefusedError())) is None


@pytest.mark.parametrize("trusted", [False, True])
@pytest_twisted.ensureDeferred
async def test_sync_client_over_https_verifies_the_server(reactor, tmp_path, pki, captured_log, trusted):
    """The real sync client against a real https/wss server: without the CA it moves no
    byte and says why (and keeps retrying); with ``ca_cert`` it syncs."""
    from quantum_sync.client.service import ClientConfig, SyncClientService
    from tests.support import start_server, wait_for

    root = tmp_path / "root"
    root.mkdir()
    (root / "hello.txt").write_bytes(b"over tls")
    server = await start_server(reactor, tmp_path, listen=certs.ssl_listen(pki["good"]))
    folder = tmp_path / "folder"
    folder.mkdir()
    config = ClientConfig(server=f"https://localhost:{server.port}", folder=str(folder),
                          ca_cert=pki["ca"].cert_path if trusted else None, interval=0.5, settle=0.05)
    client = SyncClientService(config, reactor)
    client.startService()
    try:
        if trusted:
            await wait_for(reactor, lambda: (folder / "hello.txt").exists(), 10)
            assert (folder / "hello.txt").read_bytes() == b"over tls"
            await wait_for(reactor, lambda: client.link is not None and client.link.connected, 10)
        else:
            refusals = lambda: captured_log.text().count("TLS: certificate of localhost refused")  # noqa: E731
            await wait_for(reactor, lambda: refusals() >= 2, 10)  # it keeps retrying
            assert not (folder / "hello.txt").exists()
            assert not client.ready.called
    finally:
        await client.stopService()
        await server.stop()
