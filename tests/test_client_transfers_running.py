"""A single large transfer is listed while it runs, with the bytes it has moved so far
(what ``quantum-sync-client status`` shows as a transfer's progress)."""

import hashlib

import pytest
import pytest_twisted

from quantum_sync.client.transfer import ServerClient
from support import start_server, wait_for
from test_client_stall import BIG, StallingProxy


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("direction", ["down", "up"])
async def test_a_running_transfer_says_how_far_it_is(reactor, tmp_path, direction):
    running = await start_server(reactor, tmp_path)
    proxy = StallingProxy(reactor, running.port)
    proxied = ServerClient(reactor, f"http://127.0.0.1:{await proxy.listen()}", "c1", idle_timeout=60.0)
    direct = ServerClient(reactor, running.url, "c2")
    digest = hashlib.sha256(BIG).hexdigest()
    (tmp_path / "staging").mkdir()
    source = tmp_path / "big.bin"
    source.write_bytes(BIG)
    try:
        if direction == "down":
            await direct.upload("big.bin", str(source), digest, size=len(BIG))
        proxy.stall(1 << 20, direction)  # held halfway: the transfer stays running
        if direction == "down":
            transfer = proxied.download("big.bin", digest, str(tmp_path / "staging"), size=len(BIG))
        else:
            transfer = proxied.upload("big.bin", str(source), digest, size=len(BIG))
        await wait_for(reactor, lambda: not proxy.forwarding and proxied.transfers_running(), what="a held transfer")
        ((shown_direction, path, moved),) = proxied.transfers_running()
        assert (shown_direction, path) == (direction, "big.bin") and 0 < moved <= len(BIG)
        if direction == "down":
            assert moved < len(BIG)  # (an upload counts what the socket took: loopback buffers take it all)
        proxy.resume()
        await transfer.addTimeout(30, reactor)
        assert proxied.transfers_running() == []
    finally:
        await proxied.close()
        await direct.close()
        await proxy.port.stopListening()
        await running.stop()
