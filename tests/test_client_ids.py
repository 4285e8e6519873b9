"""One live WebSocket per client id (a second gets CLIENT_ID_IN_USE with retryAfter,
and the first is probed with a ping so a half-open one goes at once), and with auth on
a client id belongs to the user that first used it."""

import pytest_twisted
from twisted.internet.task import Clock

from quantum_sync.server.ws import PROBE_TIMEOUT
from tests.support import HttpClient, start_server, wait_for
from tests.test_auth_e2e import WS_TIMERS, auth_section, bearer, login
from test_ws_support import connect, drop_all


@pytest_twisted.ensureDeferred
async def test_a_second_live_connection_with_an_id_is_refused(sites):
    site = await sites()
    first, second = await site.connect(), await site.connect()
    assert (await first.request({"type": "Subscribe", "client_id": "laptop"}))["type"] == "Ack"
    refused = await second.request({"type": "Subscribe", "client_id": "laptop", "id": 7})
    assert (refused["type"], refused["code"], refused["retryAfter"], refused["id"]) == (
        "Error", "CLIENT_ID_IN_USE", PROBE_TIMEOUT, 7)
    assert (await second.wait_closed())[0] == 1013  # try again later
    assert await first.request({"type": "Ping"}) == {"type": "Pong"}  # the first stays
    assert [c.client_id for c in site.hub.connections if c.client_id] == ["laptop"]
    first.sendClose(1000)
    await first.wait_closed()
    await wait_for(site.reactor, lambda: site.hub.holder("laptop") is None)
    again = await site.connect()
    assert (await again.request({"type": "Subscribe", "client_id": "laptop"}))["type"] == "Ack"


@pytest_twisted.ensureDeferred
async def test_a_half_open_holder_is_probed_and_dropped(sites):
    clock = Clock()
    site = await sites(factory_clock=clock)
    asleep, awake, newcomer = await site.connect(), await site.connect(), await site.connect()
    await asleep.request({"type": "Subscribe", "client_id": "sleeper"})
    await awake.request({"type": "Subscribe", "client_id": "alive"})
    asleep.transport.pauseProducing()  # reads nothing more: answers no ping (a sleeping laptop)
    refused = await newcomer.request({"type": "Subscribe", "client_id": "sleeper"})
    assert refused["code"] == "CLIENT_ID_IN_USE"
    other = await site.connect()
    assert (await other.request({"type": "Subscribe", "client_id": "alive"}))["code"] == "CLIENT_ID_IN_USE"
    newcomer = await site.connect()  # (the refused one was closed: it comes back)
    await wait_for(site.reactor, lambda: len(clock.getDelayedCalls()) >= 2)
    await awake.request({"type": "Ping"})  # the live holder has read its probe ping and answered
    clock.advance(PROBE_TIMEOUT)
    await wait_for(site.reactor, lambda: site.hub.holder("sleeper") is None)
    assert site.hub.holder("alive") is not None  # it answered: kept
    assert (await newcomer.request({"type": "Subscribe", "client_id": "sleeper"}))["type"] == "Ack"


@pytest_twisted.ensureDeferred
async def test_with_auth_a_client_id_belongs_to_its_first_user(reactor, tmp_path, logged_failures):
    http = HttpClient(reactor)
    running = await start_server(reactor, tmp_path, auth=auth_section(tmp_path), websocket=WS_TIMERS)
    clients = []
    try:
        tokens = {user: await login(http, running.url, user) for user in ("alice", "wendy")}

        async def subscribed(user, client_id):
            client = await connect(reactor, running.ws_url)
            clients.append(client)
            assert (await client.request({"type": "auth", "payload": {"token": tokens[user]}}))["type"] == "auth_success"
            return client, await client.request({"type": "Subscribe", "client_id": client_id})

        alice, answer = await subscribed("alice", "alice-laptop")
        assert answer["type"] == "Ack"
        alice.sendClose(1000)
        await alice.wait_closed()
        _, answer = await subscribed("wendy", "alice-laptop")  # not connected now, still alice's
        assert (answer["type"], answer["code"]) == ("Error", "PERMISSION_DENIED")
        code, body = await http.json("POST", f"{running.url}/api/upload", expect=None, data=b"x",
                                     params={"path": "w.txt"},
                                     headers={**bearer(tokens["wendy"]), "X-Client-Id": ["alice-laptop"]})
        assert (code, body["error"]["code"]) == (403, "PERMISSION_DENIED")
        await http.json("POST", f"{running.url}/api/upload", data=b"x", params={"path": "w.txt"},
                        headers={**bearer(tokens["wendy"]), "X-Client-Id": ["wendy-desk"]})
        await drop_all(reactor, clients, running.service.hub)
        running = await running.restart()  # the binding is kept in the state directory
        tokens["wendy"] = await login(http, running.url, "wendy")
        _, answer = await subscribed("wendy", "alice-laptop")
        assert answer["code"] == "PERMISSION_DENIED"
        _, answer = await subscribed("wendy", "wendy-desk")
        assert answer["type"] == "Ack"
    finally:
        await drop_all(reactor, clients, running.service.hub)
        await http.close()
        await running.stop()
