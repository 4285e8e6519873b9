"""A batch upload whose client goes away at any stage leaks nothing and installs no
wrong bytes: every staged file has one owner at a time (the request until it hands the
file to the operations, then the group commit), so the held-descriptor budget returns
to 0, the process's descriptors do not grow, and every file holds its own content."""

import hashlib
import os
import random

import pytest_twisted
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.task import deferLater

from tests.logcapture import LogCapture
from tests.support import wait_for
from tests.test_batch_api import BATCH_UPLOAD, batch_body, item
from tests.test_hostile_slow import RawClient

ROUNDS, FILES = 40, 32
WITHIN = 20


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def _content(path: str, round_: int) -> bytes:
    return f"{path} written in round {round_}\n".encode() * 20


async def _abandoned(reactor, running, body: bytes, stage: str, delay: float) -> None:
    """Send a batch upload and drop the connection at ``stage``."""
    client = RawClient(reactor)
    await TCP4ClientEndpoint(reactor, "127.0.0.1", running.port).connect(Factory.forProtocol(lambda: client))
    head = (f"POST {BATCH_UPLOAD} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Client-Id: gone\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    if stage == "mid-body":
        client.transport.write(head + body[:len(body) // 2])
    else:
        client.transport.write(head + body)
    await deferLater(reactor, delay, lambda: None)
    client.transport.abortConnection()
    await client.lost


@pytest_twisted.ensureDeferred
async def test_disconnects_at_every_stage_leak_nothing_and_mix_nothing(reactor, server, http):  # noqa: F811
    operations, store = server.service.operations, server.service.store
    paths = [f"d{n % 4}/f{n}.txt" for n in range(FILES)]
    await http.json("POST", server.url + BATCH_UPLOAD, data=batch_body([item(p, _content(p, -1)) for p in paths]))
    baseline = _open_descriptors()
    rng = random.Random(13)
    with LogCapture() as log:
        for round_ in range(ROUNDS):
            body = batch_body([item(p, _content(p, round_)) for p in rng.sample(paths, FILES // 2)])
            stage = ("mid-body", "whole body")[round_ % 2]
            # a batch that completes alongside keeps the group commit busy meanwhile
            other = http.post(server.url + BATCH_UPLOAD, data=batch_body(
                [item(p, _content(p, 1000 + round_)) for p in rng.sample(paths, 8)]))
            await _abandoned(reactor, server, body, stage, rng.choice((0, 0.0005, 0.001, 0.003, 0.01, 0.03)))
            await (await other).content()
        await wait_for(reactor, lambda: not operations._uploads and store.held_temps == 0, WITHIN)
        await operations.idle()
    assert log.failures() == []
    assert store.held_temps == 0
    await wait_for(reactor, lambda: _open_descriptors() <= baseline + 4, WITHIN)
    for path in paths:  # each file holds bytes written for it, and the index says so
        with open(os.path.join(server.root, path), "rb") as f:
            data = f.read()
        assert data.startswith(f"{path} written in round ".encode()), (path, data[:60])
        _, meta = await http.json("GET", server.url + "/api/metadata", params={"path": path})
        assert meta["hash"] == hashlib.sha256(data).hexdigest()
    assert os.listdir(store.temp_dir) == []
