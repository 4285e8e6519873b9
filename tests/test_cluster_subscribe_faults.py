"""Subscribe on a cluster node while PostgreSQL is away (refused through a TCP proxy of
the test's own, as in test_cluster_faults.py): an id that needs the database is refused
with SERVICE_UNAVAILABLE and a close with 1013, nothing half made and nothing logged as
a failure; what the node can check alone is accepted; once the database is back every
Subscribe succeeds and the node's ids are recorded. The leader's work on the root (its
first rescan, the watcher's refreshes and full rescans) waits for the database the same
way."""

import contextlib

import pytest_twisted
from twisted.internet.threads import deferToThreadPool
from twisted.logger import formatEvent

from quantum_sync.errors import SyncError
from cluster_support import start_node, wait_for_async
from test_auth_e2e import WS_TIMERS, auth_section, login
from test_cluster_faults import _proxied_database
from test_ws_support import connect
from tests.logcapture import LogCapture
from tests.support import HttpClient, wait_for


async def _subscribe(reactor, url, client_id, token=None, message_id=None):
    """A new connection to ``url`` (authenticated with ``token``) subscribed as
    ``client_id``: ``(client, answer)``."""
    client = await connect(reactor, url.replace("http", "ws") + "/ws")
    if token is not None:
        assert (await client.request({"type": "auth", "payload": {"token": token}}))["type"] == "auth_success"
    request = {"type": "Subscribe", "client_id": client_id}
    if message_id is not None:
        request["id"] = message_id
    return client, await client.request(request)


async def _rows(service, table: str) -> dict:
    """``{client id: user or node}`` of ``client_ids`` or ``live_clients`` (None while
    the node's pooled connections dropped in the outage are being replaced)."""
    column = "user_name" if table == "client_ids" else "node_id"
    try:
        return dict(await service.index._run(
            lambda txn: txn.execute(f"SELECT client_id, {column} FROM {table}").fetchall()))
    except SyncError as error:
        assert error.code == "SERVICE_UNAVAILABLE"
        return None


async def _stop(service, proxy) -> None:
    """Stop ``service`` with its database refused (its queries in flight end at once)."""
    if proxy.listening is not None:
        await proxy.close()
    await service.stopService()


async def _rows_become(reactor, service, table: str, expected: dict) -> None:
    await wait_for_async(reactor, lambda: _rows(service, table), lambda rows: rows == expected, timeout=30)


async def _subscribed_when_back(reactor, url, client_id, token=None):
    """Subscribe as ``client_id`` until it is accepted (the pool's connections come back
    one by one): the subscribed client."""
    async def attempt():
        client, answer = await _subscribe(reactor, url, client_id, token)
        if answer["type"] != "Ack":
            client.transport.abortConnection()
            return None
        return client

    return await wait_for_async(reactor, attempt, lambda client: client is not None, timeout=30)


@pytest_twisted.ensureDeferred
async def test_with_auth_a_new_id_is_refused_while_the_database_is_away(reactor, tmp_path, cluster_block, pg_schema):
    proxy, proxied = await _proxied_database(reactor, pg_schema)
    service, url = await start_node(reactor, tmp_path, tmp_path / "root", cluster_block("n1", database=proxied),
                                    auth=auth_section(tmp_path), websocket=WS_TIMERS)
    http = HttpClient(reactor, persistent=False)
    sockets = []
    try:
        token = await login(http, url, "alice")
        known, answer = await _subscribe(reactor, url, "known", token)  # bound before the outage
        assert answer["type"] == "Ack"
        known.sendClose(1000)
        await known.wait_closed()
        service.hub.bindings.confirm_every = 0  # its binding due to be confirmed again
        await proxy.close()
        with LogCapture() as log:
            refused, answer = await _subscribe(reactor, url, "new-id", token, message_id=3)
            sockets.append(refused)
            assert (answer["type"], answer["code"], answer["retryAfter"], answer["id"]) == (
                "Error", "SERVICE_UNAVAILABLE", 2, 3)
            assert (await refused.wait_closed())[0] == 1013  # try again later
            assert service.hub.holder("new-id") is None and service.hub.bindings.owner("new-id") is None
            # an id this node knows is answered from memory (the database cannot confirm
            # it), its live row checked here only
            again, answer = await _subscribe(reactor, url, "known", token)
            sockets.append(again)
            assert answer["type"] == "Ack" and service.hub.holder("known") is not None
        failed = log.error_messages()
        assert not failed, "\n".join(failed)
        await proxy.open()
        back = await _subscribed_when_back(reactor, url, "new-id", token)
        sockets.append(back)
        await _rows_become(reactor, service, "client_ids", {"known": "alice", "new-id": "alice"})
        # the id held while away: recorded by the next heartbeat
        await _rows_become(reactor, service, "live_clients", {"known": "n1", "new-id": "n1"})
    finally:
        for client in sockets:
            client.transport.abortConnection()
        await http.close()
        await _stop(service, proxy)


@pytest_twisted.ensureDeferred
async def test_without_auth_subscribe_is_checked_on_its_node_while_the_database_is_away(
        reactor, tmp_path, cluster_block, pg_schema):
    proxy, proxied = await _proxied_database(reactor, pg_schema)
    service, url = await start_node(reactor, tmp_path, tmp_path / "root", cluster_block("n1", database=proxied))
    sockets = []
    try:
        await proxy.close()
        with LogCapture() as log:
            first, answer = await _subscribe(reactor, url, "laptop")
            sockets.append(first)
            assert answer["type"] == "Ack"
            second, answer = await _subscribe(reactor, url, "laptop")  # the node's own rule stands
            sockets.append(second)
            assert answer["code"] == "CLIENT_ID_IN_USE"
            assert (await second.wait_closed())[0] == 1013
        failed = log.error_messages()
        assert not failed, "\n".join(failed)
        await proxy.open()
        await _rows_become(reactor, service, "live_clients", {"laptop": "n1"})  # the next heartbeat's
        sockets.append(await _subscribed_when_back(reactor, url, "desk"))
        await _rows_become(reactor, service, "live_clients", {"laptop": "n1", "desk": "n1"})
    finally:
        for client in sockets:
            client.transport.abortConnection()
        await _stop(service, proxy)


@contextlib.asynccontextmanager
async def _watching_node(reactor, tmp_path, cluster_block, pg_schema):
    """One node on ``tmp_path/root`` reaching its database through a proxy of the test's
    own: ``(service, url, proxy, http)``; all stopped at the end."""
    proxy, proxied = await _proxied_database(reactor, pg_schema)
    service, url = await start_node(reactor, tmp_path, tmp_path / "root", cluster_block("n1", database=proxied))
    http = HttpClient(reactor, persistent=False)
    try:
        yield service, url, proxy, http
    finally:
        await http.close()
        await _stop(service, proxy)


async def _journalled_when_back(reactor, http, url, proxy, log, name: bytes) -> None:
    """Nothing in ``log`` failed; once ``proxy`` lets the database through again, the
    file ``name`` is journalled."""
    failed = log.error_messages()
    assert not failed, "\n".join(failed)
    await proxy.open()

    async def journalled():
        response = await http.request("GET", url + "/api/changes")
        body = await response.content()
        return response.code == 200 and name in body

    await wait_for(reactor, journalled, timeout=30, what=f"{name!r} journalled once the database is back")


@pytest_twisted.ensureDeferred
async def test_a_new_leader_rescans_the_root_once_the_database_is_back(reactor, tmp_path, cluster_block, pg_schema):
    """The rescan a node runs when it begins leading (what changed while no node
    watched) waits for a database that is away, without a traceback, and then runs."""
    async with _watching_node(reactor, tmp_path, cluster_block, pg_schema) as (service, url, proxy, http):
        await service.watcher.stopService()  # as if no node watched: another program writes
        (tmp_path / "root" / "unwatched.txt").write_bytes(b"x")
        await proxy.close()
        with LogCapture() as log:
            service.node._lead(True)  # as when it takes the leader lock
            await service.node._rescan
        await _journalled_when_back(reactor, http, url, proxy, log, b"unwatched.txt")


@pytest_twisted.ensureDeferred
async def test_a_file_written_while_the_database_is_away_is_journalled_once_it_is_back(
        reactor, tmp_path, cluster_block, pg_schema):
    """The watching node's refresh of a path another program wrote meets the database
    away: the path waits (one line, no traceback) and is journalled once it is back, not
    at the next full rescan."""
    async with _watching_node(reactor, tmp_path, cluster_block, pg_schema) as (service, url, proxy, http):
        assert service.node.leadership.leading and service.watcher.running
        await proxy.close()
        with LogCapture() as log:
            (tmp_path / "root" / "offline.txt").write_bytes(b"x")
            await wait_for(reactor, lambda: any("offline.txt" in text or "changed paths" in text
                                                for text in map(formatEvent, log.events)),
                           what="the watcher's refresh of the path")
        await _journalled_when_back(reactor, http, url, proxy, log, b"offline.txt")


@pytest_twisted.ensureDeferred
async def test_a_full_rescan_that_met_the_database_away_runs_again_once_it_is_back(
        reactor, tmp_path, cluster_block, pg_schema):
    """A full rescan of the root (here one after an inotify overflow) meets the database
    away: one line, no traceback, and it is tried again every 2 s until it goes through,
    not at the next periodic rescan."""
    root = tmp_path / "root"
    async with _watching_node(reactor, tmp_path, cluster_block, pg_schema) as (service, url, proxy, http):
        # the node keeps leading through the outage (its lock is not tried again, so it is
        # not retaken with a rescan of its own once the database is back)
        await service.node.leadership.stop()
        await service.node._rescan  # (the one it ran when it began leading: done before)
        observer = service.watcher.observer  # blind, as over NFS: only a rescan sees the file
        observer.stop()
        await deferToThreadPool(reactor, reactor.getThreadPool(), observer.join, 10)
        assert not observer.is_alive()
        (root / "unseen.txt").write_bytes(b"x")
        await proxy.close()
        with LogCapture() as log:
            service.watcher.events_lost()
            await wait_for(reactor, lambda: any(f"rescanning {root}" in formatEvent(event)
                                                for event in log.events),
                           what="the rescan's failure")
        await _journalled_when_back(reactor, http, url, proxy, log, b"unseen.txt")
