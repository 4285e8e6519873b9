"""Cluster nodes when Redis or PostgreSQL goes away, with real services: a Redis of
the test's own is stopped and started again; PostgreSQL is refused through a TCP proxy
of the test's own (the machine's services are never stopped)."""

import hashlib
import os
from urllib.parse import urlsplit

import pytest
import pytest_twisted
from twisted.internet import protocol
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, serverFromString
from twisted.internet.task import LoopingCall

from cluster_support import DATABASE, with_schema
from cluster_support import Nodes, start_node
from test_ws_support import connect
from tests.support import HttpClient, wait_for


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def _two_nodes(reactor, tmp_path, cluster_block, redis, services) -> tuple:
    """Two nodes on the test's own Redis (added to ``services``) once both hear it:
    ``(services, urls)``."""
    made = Nodes(reactor, tmp_path, lambda name: cluster_block(name, redis=redis.url))
    made.services = services
    await made.start(2)
    await wait_for(reactor, lambda: _redis_up(services), timeout=15)
    return services, made.urls


def _redis_up(services) -> bool:
    return all(s.node.bus.up and s.node.bus.can_publish for s in services)


def operations_of(client) -> list:
    return [m["seq"] for m in client.received if m["type"] == "FileOperation"]


@pytest_twisted.ensureDeferred
async def test_redis_stopped_and_restarted_no_broadcast_missed(reactor, tmp_path, cluster_block, private_redis):
    services, urls = [], []
    http = HttpClient(reactor)
    watcher = None
    try:
        services, urls = await _two_nodes(reactor, tmp_path, cluster_block, private_redis, services)
        watcher = await connect(reactor, urls[1].replace("http", "ws") + "/ws")
        await watcher.request({"type": "Subscribe", "client_id": "watcher"})

        async def upload(name):
            await http.json("PUT", urls[0] + "/api/upload", params={"path": name}, data=name.encode())

        await upload("before")
        await wait_for(reactor, lambda: operations_of(watcher) == [1])
        private_redis.stop()
        await wait_for(reactor, lambda: not any(s.node.bus.up for s in services), timeout=15)
        for n in range(5):  # writes go on; node 2 follows the journal by polling
            await upload(f"during-{n}")
        await wait_for(reactor, lambda: operations_of(watcher) == [1, 2, 3, 4, 5, 6])
        private_redis.start()
        await wait_for(reactor, lambda: _redis_up(services), timeout=30)
        published = services[0].node.bus.published
        await upload("after")
        await wait_for(reactor, lambda: operations_of(watcher) == list(range(1, 8)))
        assert services[0].node.bus.published == published + 1  # through Redis again
    finally:
        if watcher is not None:
            watcher.transport.abortConnection()
        await http.close()
        for service in services:
            await service.stopService()


class _Relay(protocol.Protocol):
    """One side of a proxied connection; what arrives before the other side is
    connected waits in ``pending``, and what arrives while the proxy holds this side's
    answers back waits in ``held``."""

    def __init__(self, proxy):
        self.proxy = proxy
        self.peer = None
        self.pending = []
        self.held = None

    def connectionMade(self):
        self.proxy.sides.add(self)

    def dataReceived(self, data):
        if self.held is not None:
            self.held.append(data)
            self.proxy.answer_held()
            return
        self.proxy.passing(self, data)
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.write(data)
        else:
            self.pending.append(data)

    def joined(self, peer):
        self.peer = peer
        for data in self.pending:
            peer.transport.write(data)
        self.pending = []

    def connectionLost(self, reason):
        self.proxy.sides.discard(self)
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.loseConnection()


class Proxy(protocol.Factory):
    """A TCP proxy to PostgreSQL that can refuse: ``close()`` stops listening and drops
    every connection, ``open()`` listens again on the same port; and that can hold a
    query's answer back (``hold_answer_to``, ``release``)."""

    def __init__(self, reactor, host, port):
        self.reactor, self.host, self.port = reactor, host, port
        self.listening = None
        self.sides = set()
        self.listen_port = None
        self.marker, self.answered, self.holding = None, None, []

    def buildProtocol(self, addr):
        inner = _Relay(self)

        def connected(outer):
            outer.joined(inner)
            inner.joined(outer)

        def failed(_):
            if inner.transport is not None:
                inner.transport.loseConnection()

        outer_factory = protocol.Factory.forProtocol(lambda: _Relay(self))
        TCP4ClientEndpoint(self.reactor, self.host, self.port).connect(outer_factory).addCallbacks(
            connected, failed)
        return inner

    def hold_answer_to(self, marker: bytes) -> Deferred:
        """Hold back what the database sends on the connection of the next query with
        ``marker`` in it, until :meth:`release`; fires once its answer is held."""
        self.marker, self.answered = marker, Deferred()
        return self.answered

    def passing(self, side, data):
        if self.marker is not None and self.marker in data and side.peer is not None:
            self.marker = None
            side.peer.held = []
            self.holding.append(side.peer)

    def answer_held(self):
        if self.answered is not None and not self.answered.called:
            self.answered.callback(None)

    def release(self):
        holding, self.holding = self.holding, []
        for side in holding:
            held, side.held = side.held, None
            for data in held:
                side.peer.transport.write(data)

    async def open(self):
        description = f"tcp:{self.listen_port or 0}:interface=127.0.0.1"
        self.listening = await serverFromString(self.reactor, description).listen(self)
        self.listen_port = self.listening.getHost().port

    async def close(self):
        listening, self.listening = self.listening, None
        await listening.stopListening()
        for side in list(self.sides):
            side.transport.abortConnection()


async def _proxied_database(reactor, pg_schema):
    """A listening Proxy to the test database, and the URL of the test's schema through it."""
    target = urlsplit(DATABASE)
    proxy = Proxy(reactor, target.hostname, target.port or 5432)
    await proxy.open()
    schema = pg_schema.split("search_path%3D")[1]
    return proxy, with_schema(DATABASE.replace(f"{target.hostname}:{target.port or 5432}",
                                               f"127.0.0.1:{proxy.listen_port}"), schema)


@pytest_twisted.ensureDeferred
async def test_database_refused_answers_503_and_recovers(reactor, tmp_path, cluster_block, pg_schema):
    proxy, proxied = await _proxied_database(reactor, pg_schema)
    service, url = await start_node(reactor, tmp_path, tmp_path / "root", cluster_block("n1", database=proxied))
    http = HttpClient(reactor, persistent=False)
    root = tmp_path / "root"
    try:
        await http.json("PUT", url + "/api/upload", params={"path": "kept.txt"}, data=b"one")
        await proxy.close()
        refused = await http.request("PUT", url + "/api/upload", params={"path": "kept.txt"},
                                     data=b"two", headers={"If-Match": sha(b"one")})
        body = await refused.content()
        assert refused.code == 503, body
        assert refused.headers.getRawHeaders("Retry-After") == ["2"]
        assert b"SERVICE_UNAVAILABLE" in body
        assert (root / "kept.txt").read_bytes() == b"one"  # nothing half-applied
        new = await http.request("PUT", url + "/api/upload", params={"path": "new.txt"}, data=b"x")
        await new.content()
        assert new.code == 503 and not os.path.exists(root / "new.txt")
        changes = await http.request("GET", url + "/api/changes")
        await changes.content()
        assert changes.code == 503
        await proxy.open()

        async def uploaded_again():
            response = await http.request("PUT", url + "/api/upload", params={"path": "kept.txt"},
                                          data=b"two", headers={"If-Match": sha(b"one")})
            await response.content()
            return response.code == 200

        await wait_for(reactor, uploaded_again, timeout=20, step=0.2, what="the upload taken again")
        _, answer = await http.json("GET", url + "/api/changes")
        assert [c["seq"] for c in answer["changes"]] == [1, 2]
        assert (root / "kept.txt").read_bytes() == b"two"
    finally:
        await http.close()
        await service.stopService()
        if proxy.listening is not None:
            await proxy.close()


async def _refused_after_its_install(reactor, http, url, index, proxy, root):
    """``kept.txt`` uploaded, then updated while the database goes (``proxy`` closed) as
    ``index`` is about to journal the update, the file already in place: the update is
    answered 503, and the database is back three seconds later."""
    await http.json("PUT", url + "/api/upload", params={"path": "kept.txt"}, data=b"one")
    record_each = index.record_each

    async def cut_then_record(*args, **kwargs):
        index.record_each = record_each
        await proxy.close()
        reactor.callLater(3.0, lambda: Deferred.fromCoroutine(proxy.open()))
        return await record_each(*args, **kwargs)

    index.record_each = cut_then_record
    refused = await http.request("PUT", url + "/api/upload", params={"path": "kept.txt"},
                                 data=b"two", headers={"If-Match": sha(b"one")})
    await refused.content()
    assert refused.code == 503 and (root / "kept.txt").read_bytes() == b"two"


@pytest.mark.timeout(30, method="thread")  # (without: the blocked reactor hangs the run)
@pytest_twisted.ensureDeferred
async def test_a_node_stops_without_waiting_on_the_reactor_for_a_query_in_flight(
        reactor, tmp_path, cluster_block, pg_schema):
    """The index's pool is closed off the reactor: while a query's answer is held back,
    the node's stop is pending and the reactor keeps turning; it ends once the answer
    comes, and the query has it."""
    proxy, proxied = await _proxied_database(reactor, pg_schema)
    service, _ = await start_node(reactor, tmp_path, tmp_path / "root", cluster_block("n1", database=proxied))
    index, closing = service.index, Deferred()
    stop_index = index.stopService

    def stop_then_tell():
        stopped = stop_index()
        closing.callback([stopped])
        return stopped

    def held_query(txn):
        txn.execute("SELECT 'qs-held-answer'")
        return txn.fetchone()[0]

    index.stopService = stop_then_tell
    stopping = None
    try:
        answered = proxy.hold_answer_to(b"qs-held-answer")
        query = Deferred.fromCoroutine(index.interaction(held_query))
        await answered.addTimeout(10, reactor)
        stopping = service.stopService()
        [index_stopped] = await closing.addTimeout(10, reactor)
        ticks = []
        loop = LoopingCall(ticks.append, None)
        loop.clock = reactor
        loop.start(0.01)
        await wait_for(reactor, lambda: len(ticks) >= 3, timeout=10, what="the reactor turning")
        loop.stop()
        assert not index_stopped.called and not stopping.called and not query.called
        proxy.release()
        await stopping.addTimeout(10, reactor)
        assert index_stopped.called and await query == "qs-held-answer"
    finally:
        proxy.release()
        if stopping is None:
            await service.stopService()
        if proxy.listening is not None:
            await proxy.close()


@pytest_twisted.ensureDeferred
async def test_database_lost_between_install_and_journal_is_journalled_when_back(
        reactor, tmp_path, cluster_block, pg_schema):
    """The window no lock can close: the file is in place when the database goes. The
    upload answers 503; once the database is back the change is journalled by itself
    (here by the rescan of the node taking the leader lock again)."""
    proxy, proxied = await _proxied_database(reactor, pg_schema)
    service, url = await start_node(reactor, tmp_path, tmp_path / "root", cluster_block("n1", database=proxied))
    http = HttpClient(reactor, persistent=False)
    try:
        await _refused_after_its_install(reactor, http, url, service.index, proxy, tmp_path / "root")

        async def journalled():
            response = await http.request("GET", url + "/api/changes")
            body = await response.content()
            return response.code == 200 and sha(b"two") in body.decode()

        await wait_for(reactor, journalled, timeout=20, step=0.2, what="the change journalled")
        _, answer = await http.json("GET", url + "/api/changes")
        assert [c["seq"] for c in answer["changes"]] == [1, 2]
        assert answer["changes"][1]["operation"]["Update"]["metadata"]["hash"] == sha(b"two")
    finally:
        await http.close()
        await service.stopService()
        if proxy.listening is not None:
            await proxy.close()


@pytest_twisted.ensureDeferred
async def test_a_node_that_lost_the_database_mid_group_journals_it_when_back(
        reactor, tmp_path, cluster_block, pg_schema):
    """As above on a node that does not watch the root, beside a leader that sees no
    event of it (its watcher stopped, as over NFS): the node itself looks again at the
    paths of its failed group until the database answers."""
    root = tmp_path / "root"
    leader, leader_url = await start_node(reactor, tmp_path, root, cluster_block("n1"))
    await leader.watcher.stopService()
    proxy, proxied = await _proxied_database(reactor, pg_schema)
    other, url = await start_node(reactor, tmp_path, root, cluster_block("n2", database=proxied))
    assert leader.node.leadership.leading and not other.node.leadership.leading
    http = HttpClient(reactor, persistent=False)
    try:
        await _refused_after_its_install(reactor, http, url, other.index, proxy, root)

        async def journalled():
            _, answer = await http.json("GET", leader_url + "/api/changes")
            operations = [c["operation"] for c in answer["changes"]]
            return operations if len(operations) >= 2 else None

        operations = await wait_for(reactor, journalled, timeout=20, step=0.2, what="the change journalled")
        assert operations[1]["Update"]["metadata"]["hash"] == sha(b"two")
    finally:
        await http.close()
        for service in (other, leader):
            await service.stopService()
        if proxy.listening is not None:
            await proxy.close()


async def _watching(reactor, url):
    """A WebSocket on ``url`` subscribed to the peer and alert topics."""
    watcher = await connect(reactor, url.replace("http", "ws") + "/ws")
    for topic in ("peer_network", "alerts"):
        await watcher.request({"type": "subscribe", "topic": topic, "id": topic})
    return watcher


@pytest_twisted.ensureDeferred
async def test_events_reach_every_node_while_redis_is_down(reactor, tmp_path, cluster_block, private_redis):
    """Peer events and alerts go through PostgreSQL where Redis cannot carry them: with
    Redis stopped, and with only the receiving node's subscription gone."""
    services, urls = [], []
    http = HttpClient(reactor)
    sockets = []
    try:
        services, urls = await _two_nodes(reactor, tmp_path, cluster_block, private_redis, services)
        watcher = await _watching(reactor, urls[1])
        sockets.append(watcher)
        private_redis.stop()
        await wait_for(reactor, lambda: not any(s.node.bus.up or s.node.bus.can_publish for s in services),
                       timeout=15)
        laptop = await connect(reactor, urls[0].replace("http", "ws") + "/ws")
        sockets.append(laptop)
        await laptop.request({"type": "Subscribe", "client_id": "laptop"})
        joined = await watcher.expect("peer_connected")
        assert joined["data"]["id"] == "laptop" and joined["data"]["node_id"] == "node-1"
        refused = await http.request("PUT", urls[0] + "/api/upload", params={"path": "../escape"}, data=b"x")
        await refused.content()
        alert = await watcher.expect("security_alert")
        assert alert["data"]["node_id"] == "node-1"

        private_redis.start()  # back for node 1; node 2 stays deaf to it
        await wait_for(reactor, lambda: _redis_up(services), timeout=30)
        await services[0].node.presence.beat()  # (node 1 knows node 2 is live: its next beat, now)
        assert len(services[0].node.presence.live) == 2
        await services[1].node.bus.stop()
        assert not services[1].node.bus.up
        laptop.transport.abortConnection()
        left = await watcher.expect("peer_disconnected")
        assert left["data"]["id"] == "laptop" and left["data"]["node_id"] == "node-1"
        assert not [m for m in watcher.received if m.get("type") == "peer_connected"][1:]  # once each
    finally:
        for client in sockets:
            client.transport.abortConnection()
        await http.close()
        for service in services:
            await service.stopService()


@pytest.mark.parametrize("redis_first", [True, False], ids=["redis-back-first", "database-back-first"])
@pytest_twisted.ensureDeferred
async def test_a_change_committed_while_a_node_had_neither_redis_nor_the_database_reaches_it(
        reactor, tmp_path, cluster_block, pg_schema, private_redis, redis_first):
    """Node 1 commits a change while node 2 has neither Redis (stopped: nobody hears
    the broadcast) nor its database (refused: its polls of the journal fail). Once both
    are back, in either order, node 2 reads the change from the journal and delivers it:
    a committed change is in the journal, which every node follows from the last seq it
    delivered."""
    proxy, proxied = await _proxied_database(reactor, pg_schema)
    root = tmp_path / "root"
    services, watcher = [], None
    http = HttpClient(reactor)
    try:
        for name, database in (("node-1", pg_schema), ("node-2", proxied)):
            service, url = await start_node(reactor, tmp_path, root,
                                            cluster_block(name, redis=private_redis.url, database=database))
            services.append(service)
        first_url = f"http://127.0.0.1:{services[0].listeners[0].port.getHost().port}"
        await wait_for(reactor, lambda: _redis_up(services), timeout=15)
        watcher = await connect(reactor, url.replace("http", "ws") + "/ws")  # on node 2
        await watcher.request({"type": "Subscribe", "client_id": "watcher"})
        await http.json("PUT", first_url + "/api/upload", params={"path": "before"}, data=b"1")
        await wait_for(reactor, lambda: operations_of(watcher) == [1])

        private_redis.stop()
        await proxy.close()
        await wait_for(reactor, lambda: not any(s.node.bus.up for s in services), timeout=15)
        await http.json("PUT", first_url + "/api/upload", params={"path": "during"}, data=b"2")
        assert services[1].node.feed.delivered == 1  # (node 2 cannot have read it)

        for back in ((private_redis.start, proxy.open) if redis_first else (proxy.open, private_redis.start)):
            result = back()
            if result is not None:
                await result
        await wait_for(reactor, lambda: operations_of(watcher) == [1, 2], timeout=30,
                       what="the change delivered on node 2")
    finally:
        if watcher is not None:
            watcher.transport.abortConnection()
        await http.close()
        if proxy.listening is not None:  # (a query in flight through it ends at once)
            await proxy.close()
        for service in reversed(services):
            await service.stopService()
