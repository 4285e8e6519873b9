"""One live WebSocket per client id across the nodes of a cluster (real PostgreSQL and
Redis, two nodes in one process): a second Subscribe on another node gets
CLIENT_ID_IN_USE with retryAfter, a half-open holder on another node is probed, and the
ids held by a node that is no longer live are taken over (and given up by it)."""

import pytest
import pytest_twisted

from cluster_support import Nodes, wait_for_async
from quantum_sync.server.ws import PROBE_TIMEOUT
from test_ws_support import connect
from tests.support import wait_for


def ws_url(url: str) -> str:
    return url.replace("http", "ws") + "/ws"


async def subscribe(reactor, url, client_id, message_id=None):
    """A new connection to ``url`` subscribed as ``client_id``: ``(client, answer)``."""
    client = await connect(reactor, ws_url(url))
    request = {"type": "Subscribe", "client_id": client_id}
    if message_id is not None:
        request["id"] = message_id
    return client, await client.request(request)


async def subscribed_in_time(reactor, url, client_id, timeout=20):
    """Subscribe as ``client_id`` until it is accepted (each refusal closes)."""
    async def attempt():
        client, answer = await subscribe(reactor, url, client_id)
        if answer["type"] != "Ack":
            client.transport.abortConnection()
            return None
        return client

    return await wait_for_async(reactor, attempt, lambda client: client is not None, timeout=timeout)


def held_by(service):
    return set(service.hub.client_ids())


@pytest_twisted.ensureDeferred
async def test_a_client_id_is_live_on_one_node_at_a_time(reactor, nodes):
    await nodes.start(2)
    first, answer = await subscribe(reactor, nodes.urls[0], "laptop")
    assert answer["type"] == "Ack"
    second, refused = await subscribe(reactor, nodes.urls[1], "laptop", message_id=7)
    try:
        assert (refused["type"], refused["code"], refused["retryAfter"], refused["id"]) == (
            "Error", "CLIENT_ID_IN_USE", PROBE_TIMEOUT, 7)
        assert (await second.wait_closed())[0] == 1013  # try again later
        assert await first.request({"type": "Ping"}) == {"type": "Pong"}  # the first stays
        assert held_by(nodes.services[0]) == {"laptop"} and held_by(nodes.services[1]) == set()
        first.sendClose(1000)
        await first.wait_closed()
        again = await subscribed_in_time(reactor, nodes.urls[1], "laptop")
        assert held_by(nodes.services[1]) == {"laptop"}
        third, refused = await subscribe(reactor, nodes.urls[0], "laptop")
        assert refused["code"] == "CLIENT_ID_IN_USE"  # now the other way round
        again.transport.abortConnection()
        third.transport.abortConnection()
    finally:
        for client in (first, second):
            client.transport.abortConnection()


@pytest.mark.parametrize("redis_stopped", [False, True], ids=["through-redis", "redis-stopped"])
@pytest_twisted.ensureDeferred
async def test_a_half_open_holder_on_another_node_is_probed_and_dropped(reactor, tmp_path, cluster_block,
                                                                       private_redis, redis_stopped):
    """The request to probe goes through Redis, or through PostgreSQL while Redis is away."""
    nodes = Nodes(reactor, tmp_path, lambda name: cluster_block(name, redis=private_redis.url))
    try:
        await nodes.start(2)
        await wait_for(reactor, lambda: all(s.node.bus.up and s.node.bus.can_publish for s in nodes.services),
                       timeout=15)
        if redis_stopped:
            private_redis.stop()
            await wait_for(reactor, lambda: not any(s.node.bus.can_publish for s in nodes.services), timeout=15)
        asleep, answer = await subscribe(reactor, nodes.urls[0], "sleeper")
        assert answer["type"] == "Ack"
        asleep.transport.pauseProducing()  # reads nothing more: answers no ping (a sleeping laptop)
        newcomer, refused = await subscribe(reactor, nodes.urls[1], "sleeper")
        try:
            assert refused["code"] == "CLIENT_ID_IN_USE"
            # node 1 heard node 2's request, probed, and dropped the sleeper
            await wait_for(reactor, lambda: nodes.services[0].hub.holder("sleeper") is None,
                           timeout=PROBE_TIMEOUT + 10)
            back = await subscribed_in_time(reactor, nodes.urls[1], "sleeper")
            back.transport.abortConnection()
        finally:
            for client in (asleep, newcomer):
                client.transport.abortConnection()
    finally:
        await nodes.stop()


@pytest_twisted.ensureDeferred
async def test_the_ids_of_a_node_no_longer_live_are_taken_over(reactor, nodes):
    """Node 1's session ends (as when its process dies): its lock goes at once, so its
    ids are free for another node; when node 1 beats again it finds its id taken and
    closes its own connection. A node whose heartbeat is old loses its ids too."""
    await nodes.start(2)
    first, second = (service.node for service in nodes.services)
    held, answer = await subscribe(reactor, nodes.urls[0], "laptop")
    assert answer["type"] == "Ack"
    assert (await subscribe(reactor, nodes.urls[1], "laptop"))[1]["code"] == "CLIENT_ID_IN_USE"
    first.presence.stop()
    await first.presence._thread.run(first.presence._drop)  # its session (and lock) gone
    moved = await subscribed_in_time(reactor, nodes.urls[1], "laptop", timeout=10)
    try:
        await first.presence.beat()  # back: its renewal finds the id another node's
        assert (await held.wait_closed())[0] == 1013
        assert held_by(nodes.services[0]) == set() and held_by(nodes.services[1]) == {"laptop"}

        # node 2 stops beating (a host gone silent, its session still open)
        second.presence.stop()
        assert (await subscribe(reactor, nodes.urls[0], "laptop"))[1]["code"] == "CLIENT_ID_IN_USE"
        await nodes.services[1].index._run(
            lambda txn: txn.execute("UPDATE nodes SET seen = now() - interval '1 minute'"
                                    " WHERE node_id = 'node-2'"))
        taken = await subscribed_in_time(reactor, nodes.urls[0], "laptop", timeout=10)
        taken.transport.abortConnection()
    finally:
        for client in (held, moved):
            client.transport.abortConnection()
