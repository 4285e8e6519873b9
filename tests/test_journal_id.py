"""The journal's identity (contract section 8): made with the journal, kept across
restarts, new when the state folder is lost; carried by /api/changes, the Subscribe Ack
and every FileOperation broadcast; a cursor of another journal is 410 CURSOR_EXPIRED."""

import re
import shutil

import pytest_twisted

from tests.support import HttpClient, start_server
from test_ws_support import connect, drop_all

TIMERS = {"ping_interval": 30, "stale_timeout": 300, "cleanup_interval": 60, "metrics_interval": 60}


async def _changes(http, running, expect=200, **params):
    return (await http.json("GET", f"{running.url}/api/changes", expect=expect, params=params))[1]


@pytest_twisted.ensureDeferred
async def test_a_lost_state_folder_is_a_new_journal_that_clients_notice(reactor, tmp_path):
    http = HttpClient(reactor)
    running = await start_server(reactor, tmp_path, websocket=TIMERS)
    try:
        for name in ("a", "b", "c"):
            await http.json("POST", f"{running.url}/api/upload", params={"path": name}, data=b"x")
        first = await _changes(http, running)
        journal_id = first["journal_id"]
        assert re.fullmatch("[0-9a-f]{32}", journal_id) and first["cursor"] == 3
        assert (await _changes(http, running, since="3", journal_id=journal_id))["changes"] == []

        running = await running.restart()  # same state folder: same journal
        assert (await _changes(http, running, since="3"))["journal_id"] == journal_id

        await running.stop()
        shutil.rmtree(running.state_dir)  # lost (or restored from an old backup)
        running = await running.restart()
        await http.json("POST", f"{running.url}/api/upload", params={"path": "d"}, data=b"y")
        fresh = await _changes(http, running)
        assert fresh["journal_id"] != journal_id and fresh["cursor"] >= 1
        # the old cursor is beyond the new head: refused, not silently answered
        refused = (await _changes(http, running, expect=410, since="40"))["error"]
        assert refused["code"] == "CURSOR_EXPIRED"
        assert (refused["journal_id"], refused["cursor"]) == (fresh["journal_id"], fresh["cursor"])
        # a cursor within the new journal's range, but of the old journal: refused too
        refused = (await _changes(http, running, expect=410, since="1", journal_id=journal_id))["error"]
        assert refused["code"] == "CURSOR_EXPIRED"
        assert (refused["journal_id"], refused["cursor"]) == (fresh["journal_id"], fresh["cursor"])
    finally:
        await http.close()
        await running.stop()


@pytest_twisted.ensureDeferred
async def test_the_subscribe_ack_and_every_broadcast_name_the_journal(reactor, tmp_path):
    http = HttpClient(reactor)
    running = await start_server(reactor, tmp_path, websocket=TIMERS)
    clients = []
    try:
        await http.json("POST", f"{running.url}/api/upload", params={"path": "before"}, data=b"x")
        journal_id = (await _changes(http, running))["journal_id"]
        listener = await connect(reactor, running.ws_url)
        clients.append(listener)
        ack = await listener.request({"type": "Subscribe", "client_id": "listener", "id": "s"})
        assert ack == {"type": "Ack", "operation_id": "subscribe", "id": "s",
                       "journal_id": journal_id, "cursor": 1}
        await http.json("POST", f"{running.url}/api/upload", params={"path": "after"}, data=b"y",
                        headers={"X-Client-Id": "other"})
        other = await connect(reactor, running.ws_url)
        clients.append(other)
        await other.request({"type": "Subscribe", "client_id": "other"})
        await other.request({"type": "FileOperation", "operation": {"Delete": {"path": "before"}}})
        broadcasts = [await listener.expect("FileOperation") for _ in range(2)]
        assert [(b["seq"], b["journal_id"]) for b in broadcasts] == [(2, journal_id), (3, journal_id)]
    finally:
        await drop_all(reactor, clients, running.service.hub)
        await http.close()
        await running.stop()
