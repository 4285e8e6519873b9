"""One live WebSocket per client id (a second gets CLIENT_ID_IN_USE with retryAfter,
and the first is probed with a ping so a half-open one goes at once), and with auth on
a client id belongs to the user that first used it."""

import pytest
import pytest_twisted
from twisted.internet.task import Clock

from quantum_sync.errors import SyncError
from quantum_sync.server.ws import PROBE_TIMEOUT
from tests.support import HttpClient, InlineThreads, start_server, wait_for
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


def _saved(state_dir):
    import json
    import os

    from quantum_sync.server.clientids import FILE_NAME

    with open(os.path.join(state_dir, FILE_NAME), encoding="utf-8") as f:
        return json.load(f)["ids"]


def test_client_ids_not_seen_for_long_are_forgotten(tmp_path):
    """The bindings file is bounded: an id unseen for ``forget_after`` seconds is forgotten
    by the pruning pass (and free for anyone again); one in use, or held by a live
    connection, is kept; beyond ``max_ids`` the least recently seen go first."""
    from quantum_sync.server.clientids import ClientIdBindings

    clock = Clock()
    clock.advance(1_000_000)
    live = {"on-the-websocket"}
    bindings = ClientIdBindings(str(tmp_path), clock, InlineThreads(), live=live.__contains__,
                                forget_after=1000, max_ids=3, prune_every=100)
    bindings.startService()
    try:
        for client_id in ("old-laptop", "desk", "on-the-websocket"):
            bindings.claim(client_id, "alice")
        clock.advance(600)
        bindings.claim("desk", "alice")  # seen again
        clock.advance(500)  # old-laptop and on-the-websocket: unseen for 1,100 s; desk for 500 s
        assert set(_saved(tmp_path)) == {"desk", "on-the-websocket"}
        bindings.claim("old-laptop", "wendy")  # free again: anyone's
        for n in range(3):  # beyond max_ids: the least recently seen goes
            clock.advance(1)
            bindings.claim(f"new-{n}", "wendy")
        clock.advance(100)
        assert set(_saved(tmp_path)) == {"on-the-websocket", "new-1", "new-2"}
    finally:
        bindings.stopService()
    # what was seen since the last pass is written at the stop, and read back at a start
    again = ClientIdBindings(str(tmp_path), clock, InlineThreads())
    again.claim("new-2", "wendy")
    with pytest.raises(SyncError, match="another user"):
        again.claim("on-the-websocket", "wendy")


def test_a_bindings_file_without_seen_times_is_read(tmp_path):
    """A file of ``{id: user}`` (an older server's) is read, its ids taken as seen at start."""
    import json

    from quantum_sync.server.clientids import FILE_NAME, ClientIdBindings

    (tmp_path / FILE_NAME).write_text(json.dumps({"laptop": "alice"}))
    clock = Clock()
    clock.advance(5000)
    bindings = ClientIdBindings(str(tmp_path), clock, InlineThreads(), forget_after=1000, prune_every=100)
    bindings.startService()
    try:
        assert _saved(tmp_path) == {"laptop": {"user": "alice", "seen": 5000}}
        with pytest.raises(SyncError):
            bindings.claim("laptop", "wendy")
        clock.advance(1100)
        assert _saved(tmp_path) == {}
    finally:
        bindings.stopService()


@pytest_twisted.ensureDeferred
async def test_a_client_whose_id_another_client_holds_takes_a_new_one(reactor, tmp_path, monkeypatch, log_lines, http):
    from quantum_sync.client.state import FolderState
    from quantum_sync.server import ws
    from clients import Clients, write

    monkeypatch.setattr(ws, "PROBE_TIMEOUT", 1)  # the retryAfter: the client waits it once
    running = await start_server(reactor, tmp_path)
    holder = await connect(reactor, running.ws_url)
    group = Clients(reactor, tmp_path)
    folder = tmp_path / "a"
    try:
        assert (await holder.request({"type": "Subscribe", "client_id": "shared"}))["type"] == "Ack"
        folder.mkdir()
        state = await FolderState(reactor, str(folder)).open()
        state.client_id("shared")  # the id the folder's state remembers (a copy's, say)
        await state.close()
        client = await group.start(running, "a", client_id=None)  # (waits until it is subscribed)
        taken = client.link.client_id
        assert taken != "shared" and client.engine.client_id == client.server.client_id == taken
        hub = running.service.hub
        assert hub.holder("shared") is not None and hub.holder(taken) is not None  # the holder keeps its id
        assert [line for line in log_lines if "client id" in line and "realtime" in line] == [
            f"realtime: another client is connected with client id shared: taking a new client id, {taken}"]
        write(str(folder), "after.txt", b"sent as the new id")

        async def uploaded_as():
            _, body = await http.json("GET", f"{running.url}/api/changes")
            return [c["source_client"] for c in body["changes"] if "Create" in c["operation"]]

        assert await wait_for(reactor, uploaded_as, what="the upload journalled") == [taken]
        await group.stop(client)
        state = await FolderState(reactor, str(folder)).open()
        assert state.meta["client_id"] == taken  # remembered
        await state.close()
    finally:
        await group.stop_all()
        holder.sendClose(1000)
        await holder.wait_closed()
        await running.stop()
