"""A large upload relayed across the nodes of a cluster (real PostgreSQL and Redis, two
nodes in one process on one shared root): a client on node 2 hears of an upload arriving
at node 1 and reads it from node 2's ``/api/relay`` while it is still arriving."""

import os

import pytest_twisted
from twisted.internet.defer import Deferred

from test_relay import PAUSE_AT, SIZE, TIMEOUT, GatedBody, Reading, sha
from test_ws_support import connect
from tests.support import HttpClient, wait_for


@pytest_twisted.ensureDeferred
async def test_an_upload_on_one_node_is_relayed_by_another(reactor, nodes):
    await nodes.start(2, relay=True)
    first, second = nodes.urls
    watcher = await connect(reactor, second.replace("http", "ws") + "/ws")
    http, relay_http = HttpClient(reactor), HttpClient(reactor)
    try:
        await watcher.request({"type": "Subscribe", "client_id": "watcher"})
        await watcher.request({"type": "subscribe", "topic": "transfers", "id": "t"})
        data = os.urandom(SIZE)
        body = GatedBody(reactor, data)


        async def put():
            response = await http.put(first + "/api/upload", params={"path": "big.bin"}, data=body,
                                      headers={"X-Client-Id": ["uploader"], "X-Content-SHA256": [sha(data)]})
            await response.content()
            return response.code

        answer = Deferred.fromCoroutine(put())
        announced = await watcher.expect("upload_started", timeout=10)
        assert announced["data"] == {"path": "big.bin", "hash": sha(data), "size": SIZE,
                                     "source_client": "uploader"}
        response = await relay_http.get(second + "/api/relay", params={"path": "big.bin", "hash": sha(data)},
                                        headers={"X-Client-Id": ["watcher"]}).addTimeout(TIMEOUT, reactor)
        assert response.code == 200 and response.length == SIZE
        reading = Reading(response)
        await body.paused.addTimeout(TIMEOUT, reactor)
        await wait_for(reactor, lambda: reading.received >= 1 << 20, TIMEOUT)
        # the upload is still held: what node 2 sent came from node 1's unfinished temp file
        assert body.sent == PAUSE_AT and not answer.called and not reading.done.called
        assert reading.body == data[:reading.received]
        body.release()
        assert await answer.addTimeout(TIMEOUT, reactor) == 200
        await reading.done.addTimeout(TIMEOUT, reactor)
        assert reading.body == data
        relays = nodes.services[1].api.relays
        await wait_for(reactor, lambda: relays.reader_count() == 0 and not relays._relays, TIMEOUT)
    finally:
        watcher.transport.abortConnection()
        await relay_http.close()
        await http.close()
