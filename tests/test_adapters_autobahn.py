"""quantum_sync.adapters.autobahn: pins the Autobahn details it uses (a close frame with
the contract's codes, its own send queue) over a real WebSocket connection. Every wait is
bounded."""

import pytest
import pytest_twisted
from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
    WebSocketServerFactory,
    WebSocketServerProtocol,
)
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint

from quantum_sync.adapters import autobahn as adapter


@pytest.mark.parametrize("code", [1001, 1008, 1009, 1013])
@pytest_twisted.ensureDeferred
async def test_a_close_frame_carries_the_contracts_codes(reactor, code):
    closed, refused, queued = defer.Deferred(), [], []

    class Server(WebSocketServerProtocol):
        def onOpen(self):
            try:
                self.sendClose(code, "public API")
            except Exception:  # Autobahn's sendClose takes 1000 and 3000-4999 only
                refused.append(code)
            queued.append(adapter.bytes_queued(self))
            self.sendData(b"", sync=True)  # the first goes out, a second synchronous send
            self.sendData(b"", sync=True)  # waits in Autobahn's queue for a later turn
            queued.append(adapter.bytes_queued(self))
            adapter.send_close(self, code, "é" + "x" * 200)  # (queued behind them)

    class Client(WebSocketClientProtocol):
        def onClose(self, wasClean, code, reason):
            closed.callback((wasClean, code, reason))

    server_factory = WebSocketServerFactory()
    server_factory.protocol = Server
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(server_factory)
    url = "ws://127.0.0.1:%d/" % port.getHost().port
    try:
        client_factory = WebSocketClientFactory(url)
        client_factory.protocol = Client
        await TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port).connect(client_factory)
        timer = reactor.callLater(10, closed.errback, TimeoutError("no close frame"))
        was_clean, got, reason = await closed
        timer.cancel()
    finally:
        await port.stopListening()
    # When this fails because sendClose accepts the code, the adapter can use sendClose.
    assert refused == [code]
    assert queued == [False, True]
    assert was_clean and got == code
    assert reason == ("é" + "x" * 200).encode("utf-8")[:adapter.MAX_CLOSE_REASON].decode("utf-8")
