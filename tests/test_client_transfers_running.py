"""A single large transfer is listed while it runs, with the bytes it has moved so far
(what ``quantum-sync-client status`` shows as a transfer's progress)."""

import pytest
import pytest_twisted

from stallproxy import BIG, big_transfer
from support import wait_for


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("direction", ["down", "up"])
async def test_a_running_transfer_says_how_far_it_is(reactor, tmp_path, stalling, direction):
    running, proxy, proxied = await stalling(idle_timeout=60.0)
    # held halfway: the transfer stays running
    transfer, _ = await big_transfer(reactor, tmp_path, running, proxy, proxied, direction, 1 << 20)
    await wait_for(reactor, lambda: not proxy.forwarding and proxied.transfers_running(), what="a held transfer")
    ((shown_direction, path, moved),) = proxied.transfers_running()
    assert (shown_direction, path) == (direction, "big.bin") and 0 < moved <= len(BIG)
    if direction == "down":
        assert moved < len(BIG)  # (an upload counts what the socket took: loopback buffers take it all)
    proxy.resume()
    await transfer.addTimeout(30, reactor)
    assert proxied.transfers_running() == []
