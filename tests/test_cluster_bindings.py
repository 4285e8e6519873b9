"""Client ids bound to users on a cluster (real PostgreSQL and Redis, two nodes in one
process, ``auth`` on): the leader forgets the bindings of ids long unseen, as one
server does, and a node answers from memory only what the database named within the
last hour."""

import pytest_twisted

from quantum_sync.server.clientids import FORGET_AFTER, PRUNE_EVERY
from quantum_sync.server.cluster.bindings import CONFIRM_EVERY
from cluster_support import wait_for_async
from test_auth_e2e import WS_TIMERS, auth_section, bearer, login
from test_versions_api import wall_clock
from test_ws_support import connect
from tests.support import HttpClient, server_document, start_service, wait_for


async def _two_nodes(reactor, tmp_path, cluster_block, clocks, services):
    """Two nodes with ``auth``, each on its Clock of ``clocks`` (added to ``services``)."""
    urls = []
    for n, clock in enumerate(clocks, 1):
        service, (port,) = await start_service(
            reactor, server_document(root=str(tmp_path / "root"), cluster=cluster_block(f"node-{n}"),
                                     auth=auth_section(tmp_path), websocket=WS_TIMERS),
            str(tmp_path), {"clock": clock})
        services.append(service)
        urls.append(f"http://127.0.0.1:{port}")
    return urls


async def _bound(service) -> dict:
    """``{client id: (user, days since seen)}`` from the database."""
    def run(txn):
        txn.execute("SELECT client_id, user_name, extract(epoch FROM now() - seen) / 86400 FROM client_ids")
        return {client_id: (user, float(days)) for client_id, user, days in txn.fetchall()}

    return await service.index._run(run)


async def _age(service, days: float, *client_ids) -> None:
    await service.index._run(lambda txn: txn.execute(
        "UPDATE client_ids SET seen = now() - make_interval(secs => %s) WHERE client_id = ANY(%s)",
        (days * 86400, list(client_ids))))


@pytest_twisted.ensureDeferred
async def test_the_leader_forgets_ids_long_unseen_but_those_held_live(reactor, tmp_path, cluster_block):
    clocks, services = [wall_clock(), wall_clock()], []
    http = HttpClient(reactor)
    phone = None
    try:
        first, second = await _two_nodes(reactor, tmp_path, cluster_block, clocks, services)
        leader, other = services
        await wait_for(reactor, lambda: leader.node.leadership.leading)
        assert leader.node.bindings.pruning and not other.node.bindings.pruning
        alice = await login(http, first, "alice")
        wendy = await login(http, second, "wendy")

        async def upload(url, token, client_id, expect=200):
            code, body = await http.json("POST", url + "/api/upload", expect=None, data=b"x",
                                         params={"path": f"{client_id}.txt"},
                                         headers={**bearer(token), "X-Client-Id": [client_id]})
            assert code == expect, body
            return code

        await upload(first, alice, "old-laptop")
        await upload(first, alice, "desk")
        phone = await connect(reactor, second.replace("http", "ws") + "/ws")  # held live on node 2
        await phone.request({"type": "auth", "payload": {"token": wendy}})
        assert (await phone.request({"type": "Subscribe", "client_id": "phone"}))["type"] == "Ack"
        await _age(leader, FORGET_AFTER / 86400 + 1, "old-laptop", "phone")

        clocks[0].advance(PRUNE_EVERY)  # the leader's hourly pass (a LoopingCall)
        bound = await wait_for_async(reactor, lambda: _bound(leader), lambda bound: "old-laptop" not in bound)
        assert sorted(bound) == ["desk", "phone"]
        assert bound["phone"][1] < 1  # held live: seen now

        # free again for any user: on a node that never saw it, and on the node that
        # did once its memory is an hour old (it asks the database again)
        await upload(second, wendy, "old-laptop")
        clocks[0].advance(CONFIRM_EVERY)
        await upload(first, alice, "old-laptop", expect=403)
        await upload(first, wendy, "old-laptop")
        assert (await _bound(leader))["old-laptop"][0] == "wendy"

        # beyond the most kept, the least recently seen go (a live one is seen now)
        leader.node.bindings.max_ids = 2
        await _age(leader, 10, "desk")
        await _age(leader, 20, "phone")
        assert await leader.node.bindings.prune() == 1
        assert sorted(await _bound(leader)) == ["old-laptop", "phone"]
    finally:
        if phone is not None:
            phone.transport.abortConnection()
        await http.close()
        for service in services:
            if service.running:
                await service.stopService()
