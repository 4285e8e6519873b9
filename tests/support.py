"""Test support: a real quantum-sync server listening on 127.0.0.1, and an HTTP client.

::

    server = await start_server(reactor, tmp_path, websocket={"ping_interval": 1})
    http = HttpClient(reactor)
    try:
        response = await http.get(server.url + "/api/list")
    finally:
        await http.close()
        await server.stop()

``handler_overrides`` are merged into the ``file_sync`` handler of the config document
(so they go through the real config validation); ``enable_upload`` defaults to True.
"""

import contextlib
import inspect
import json
import os
import time

import attrs
import pytest
from treq.client import HTTPClient
from twisted.internet.endpoints import serverFromString
from twisted.internet.task import deferLater
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.server import Site

from quantum_sync import config as config_module

LOCAL_LISTEN = "tcp:0:interface=127.0.0.1:backlog=1024"

def skip_or_fail_under_ci(tests: str, reason: str):
    """Skip where something ``tests`` need is missing here (``reason``), except under CI
    (``CI`` set): there it fails, so a green CI always ran them."""
    if os.environ.get("CI"):
        pytest.fail(f"{tests} need {reason} (CI is set, so this is not skipped)")
    pytest.skip(reason)


#: Seconds a test waits for something that must happen before it fails: far above what
#: anything takes on a loaded machine, so a test that waits this long has failed.
WAIT_TIMEOUT = 15.0


async def wait_for(reactor, predicate, timeout=WAIT_TIMEOUT, what="the condition", step=0.02):
    """Call ``predicate()`` every ``step`` seconds (of ``reactor``'s timers) until it
    returns something true, and return that; after ``timeout`` seconds of real time,
    fail with an AssertionError naming ``what``. A predicate may be asynchronous (return
    a Deferred or a coroutine, e.g. one that asks the server): its result is awaited.

    The only wait the tests use: it proves that something happened. That something did
    *not* happen is proved by waiting for a later event that would have come after it."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await deferLater(reactor, step, lambda: None)


async def sleep(reactor, seconds):
    """Let ``seconds`` pass: only to pace a writer, never as proof that nothing happened."""
    await deferLater(reactor, seconds, lambda: None)


def server_document(root, listen: str = LOCAL_LISTEN, **handler_overrides) -> dict:
    """A config document for a server on ``root``; overrides go into the handler."""
    handler = {"handler": "file_sync", "root": str(root), "enable_upload": True}
    handler.update(handler_overrides)
    return {"apps": {"http": {"servers": {"file_sync_server": {
        "listen": [listen],
        "routes": [{"match": [{"matcher": "path", "paths": ["/api/*", "/ws"]}],
                    "handle": [handler]}],
    }}}}}


@attrs.frozen
class RunningServer:
    """A started server: where it listens, where its files are, and its services."""

    url: str
    ws_url: str
    port: int
    root: str
    state_dir: str
    config: object
    service: object
    reactor: object
    tmp_path: object
    overrides: dict

    async def stop(self) -> None:
        """Stop listening, wait for in-flight operations, close the index."""
        if self.service.running:
            await self.service.stopService()

    async def restart(self, **handler_overrides) -> "RunningServer":
        """Stop, then start a new server on the same root (and state dir); the new one
        listens on a new port. ``handler_overrides`` replace the original ones."""
        await self.stop()
        overrides = dict(self.overrides, **handler_overrides)
        return await start_server(self.reactor, self.tmp_path, **overrides)


async def start_service(reactor, document: dict, base_dir: str, service_options=None):
    """Start a server from a whole config ``document``; ``(service, ports)`` once every
    listener listens and the index is reconciled (stop it with ``service.stopService()``).
    ``service_options`` go to ``make_server_service`` (e.g. an injected fault)."""
    from quantum_sync.server.service import make_server_service

    config = config_module.parse(document, source="<test config>", base_dir=base_dir)
    service = make_server_service(config, reactor, **(service_options or {}))
    service.startService()
    try:
        ports = [(await listener.when_listening()).getHost().port for listener in service.listeners]
        await service.when_ready()
    except BaseException:
        await service.stopService()
        raise
    return service, ports


async def start_server(reactor, tmp_path, service_options=None, **handler_overrides) -> RunningServer:
    """Start a server on ``tmp_path/"root"`` (unless ``root=`` is given) on a free port of
    127.0.0.1 and wait until it listens and its index is reconciled with the disk.
    ``service_options`` go to ``make_server_service``."""
    overrides = dict(handler_overrides)
    overrides.setdefault("root", str(tmp_path / "root"))
    service, (port,) = await start_service(reactor, server_document(**overrides), str(tmp_path),
                                           service_options)
    config = service.config
    return RunningServer(
        url=f"http://127.0.0.1:{port}",
        ws_url=f"ws://127.0.0.1:{port}/ws",
        port=port,
        root=config.handler.root,
        state_dir=config.handler.state_dir,
        config=config,
        service=service,
        reactor=reactor,
        tmp_path=tmp_path,
        overrides=overrides,
    )


class HttpClient:
    """A treq client with its own connection pool; ``await close()`` when done."""

    def __init__(self, reactor, persistent: bool = True):
        self.pool = HTTPConnectionPool(reactor, persistent=persistent)
        self.client = HTTPClient(Agent(reactor, pool=self.pool))

    def __getattr__(self, name):
        # get/post/put/head/request/... straight from treq's HTTPClient
        return getattr(self.client, name)

    async def json(self, method: str, url: str, expect: int | None = 200, **kwargs):
        """``(status, decoded JSON body)``; asserts the status when ``expect`` is given."""
        response = await self.client.request(method, url, **kwargs)
        body = await response.content()
        if expect is not None:
            assert response.code == expect, (response.code, body[:500])
        return response.code, json.loads(body) if body else None

    async def close(self) -> None:
        await self.pool.closeCachedConnections()


@contextlib.asynccontextmanager
async def client_of(reactor, resource, client_id: str = "c"):
    """A client's :class:`~quantum_sync.client.transfer.ServerClient` talking to the
    twisted.web ``resource`` (a stand-in server: one that lies, throttles, or has no batch
    endpoints) served on a free loopback port; both closed afterwards."""
    from quantum_sync.client.transfer import ServerClient

    port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(Site(resource))
    client = ServerClient(reactor, f"http://127.0.0.1:{port.getHost().port}", client_id)
    try:
        yield client
    finally:
        await client.close()
        await port.stopListening()


class InlineThreads:
    """A thread pool stand-in that runs ``f`` at once, in the test's thread (for parts
    driven by a Clock, whose writes must be done when the test looks)."""

    def defer(self, f, *args, **kwargs):
        from twisted.internet.defer import succeed

        return succeed(f(*args, **kwargs))
