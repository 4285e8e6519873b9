"""Shared pytest fixtures. pytest-twisted installs the reactor; never import it at module
level (the helpers these fixtures use are imported inside them for that reason)."""

import os
import sys

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.logger import globalLogPublisher

# The cluster fixtures (pg_schema, cluster_block, private_redis) for every module.
pytest_plugins = ["cluster_support"]


@pytest.fixture(scope="session")
def reactor():
    from twisted.internet import reactor

    return reactor


# -- a server and an HTTP client -------------------------------------------------------


@pytest.fixture
def server_overrides():
    """Handler keys the ``server`` fixtures add to their config: none here; a module that
    runs the same tests against a cluster node overrides it (one fixture, two modes)."""
    return {}


@pytest_twisted.async_yield_fixture
async def server(reactor, tmp_path, server_overrides):
    """A default server (uploads enabled) on ``tmp_path/"root"``, stopped afterwards
    (``server_overrides``: see above)."""
    from support import start_server

    running = await start_server(reactor, tmp_path, **server_overrides)
    yield running
    await running.stop()


@pytest.fixture
def servers(reactor, tmp_path, server_overrides):
    """A one-item list holding a server on ``tmp_path/"root"`` (``server_overrides``: see
    above): a test that restarts the server puts the new one at ``[0]``; whichever is
    there is stopped."""
    from support import start_server

    running = pytest_twisted.blockon(defer.ensureDeferred(start_server(reactor, tmp_path, **server_overrides)))
    holder = [running]
    yield holder
    pytest_twisted.blockon(defer.ensureDeferred(holder[0].stop()))


@pytest_twisted.async_yield_fixture
async def http(reactor):
    """A :class:`support.HttpClient` whose connections are closed afterwards."""
    from support import HttpClient

    client = HttpClient(reactor)
    yield client
    await client.close()


@pytest.fixture
def hostile_tree(tmp_path):
    """``tmp_path`` with an empty ``root`` whose symlinks lead out of it, to files a path
    attack would like to read (``test_api_paths.CANARY`` and ``PASSWD``)."""
    from test_api_paths import CANARY, PASSWD

    (tmp_path / "root").mkdir()
    (tmp_path / "root-evil").mkdir()
    (tmp_path / "root-evil" / "canary").write_bytes(CANARY)
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_bytes(PASSWD)
    os.symlink(str(tmp_path / "etc"), str(tmp_path / "root" / "link-out"))
    os.symlink("../root-evil", str(tmp_path / "root" / "link-sib"))
    return tmp_path


@pytest_twisted.async_yield_fixture
async def hostile(reactor, hostile_tree):
    """``(server, http, alerts)`` on :func:`hostile_tree`; afterwards, nothing outside
    the root may have changed."""
    from support import HttpClient, start_server
    from test_api_paths import snapshot

    server = await start_server(reactor, hostile_tree)
    alerts = []
    server.service.hub.alert = lambda kind, data: alerts.append((kind, data))
    http = HttpClient(reactor)
    outside = {k: v for k, v in snapshot(hostile_tree).items()
               if not k.startswith(server.root + os.sep)}
    yield server, http, alerts
    await http.close()
    await server.stop()
    after = {k: v for k, v in snapshot(hostile_tree).items()
             if not k.startswith(server.root + os.sep)}
    assert after == outside, "something outside the root changed"


@pytest_twisted.async_yield_fixture
async def stalling(reactor, tmp_path):
    """``await stalling(idle_timeout, credentials=None, **server_overrides)``: a server, a
    :class:`stallproxy.StallingProxy` in front of it and a ServerClient ("c1") through the
    proxy, as ``(server, proxy, client)``; afterwards the proxy is resumed and all three
    are closed."""
    from quantum_sync.client.transfer import ServerClient
    from stallproxy import StallingProxy
    from support import start_server

    started = []

    async def start(idle_timeout, credentials=None, **server_overrides):
        server = await start_server(reactor, tmp_path, **server_overrides)
        proxy = StallingProxy(reactor, server.port)
        try:
            url = f"http://127.0.0.1:{await proxy.listen()}"
        except BaseException:
            await server.stop()
            raise
        client = ServerClient(reactor, url, "c1", credentials, idle_timeout=idle_timeout)
        started.append((server, proxy, client))
        return server, proxy, client

    yield start
    for server, proxy, client in started:
        proxy.resume()
        await client.close()
        await proxy.port.stopListening()
        await server.stop()


# -- real clients ----------------------------------------------------------------------


@pytest.fixture
def clients(reactor, tmp_path, log_to_stderr):
    """A :class:`clients.Clients`; every client it started is stopped afterwards."""
    from clients import Clients

    group = Clients(reactor, tmp_path)
    yield group
    pytest_twisted.blockon(defer.ensureDeferred(group.stop_all()))


# -- logs ------------------------------------------------------------------------------


@pytest.fixture
def log_to_stderr():
    """With QS_TEST_LOG=1, the clients' and server's log lines go to stderr."""
    if not os.environ.get("QS_TEST_LOG"):
        yield
        return
    from twisted.logger import FilteringLogObserver, LogLevel, LogLevelFilterPredicate, textFileLogObserver

    observer = FilteringLogObserver(
        textFileLogObserver(sys.stderr), [LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)]
    )
    globalLogPublisher.addObserver(observer)
    yield
    globalLogPublisher.removeObserver(observer)


@pytest.fixture
def log_lines():
    """Every log line formatted, for asserting what an admin would read."""
    from twisted.logger import formatEvent

    lines = []

    def observe(event):
        lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


@pytest.fixture
def logged_failures():
    """Every failure (traceback) logged while the test runs; tests assert there are none."""
    failures = []

    def observe(event):
        if "log_failure" in event:
            failures.append(event)

    globalLogPublisher.addObserver(observe)
    yield failures
    globalLogPublisher.removeObserver(observe)


# -- WebSocket hubs --------------------------------------------------------------------


@pytest_twisted.async_yield_fixture
async def sites(reactor, tmp_path, logged_failures):
    """``await sites(**settings)`` starts a :func:`test_ws_support.hub_site`; all are
    stopped afterwards, and the test fails if any logged a failure."""
    from test_ws_support import QUIET, hub_site

    started = []

    async def start(**settings):
        site = await hub_site(reactor, tmp_path, **{**QUIET, **settings})
        started.append(site)
        return site

    yield start
    for site in started:
        await site.stop()
    assert [e.get("log_format") for e in logged_failures] == []
