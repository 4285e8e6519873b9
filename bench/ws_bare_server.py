"""The same-run baseline of bench_ws.py: a bare Autobahn WebSocket server.

Autobahn's server defaults (no limits; permessage-deflate accepted with zlib's default
window and memory level), plus the least needed to run the bench's load: a
``Subscribe`` is answered with an Ack, any other message is sent to every other
connection. ``python bench/ws_bare_server.py PORT``; stops on SIGTERM.
"""

import sys

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol, listenWS
from autobahn.websocket.compress import PerMessageDeflateOffer, PerMessageDeflateOfferAccept
from twisted.internet import reactor

CONNECTIONS = set()
ACK = b'{"type":"Ack","operation_id":"subscribe"}'


class BareProtocol(WebSocketServerProtocol):
    def onOpen(self):
        CONNECTIONS.add(self)

    def onClose(self, wasClean, code, reason):
        CONNECTIONS.discard(self)

    def onMessage(self, payload, isBinary):
        if payload.startswith(b'{"type": "Subscribe"'):
            self.sendMessage(ACK)
            return
        for connection in CONNECTIONS:
            if connection is not self:
                connection.sendMessage(payload)


def accept(offers):
    for offer in offers:
        if isinstance(offer, PerMessageDeflateOffer):
            return PerMessageDeflateOfferAccept(offer)
    return None


def main():
    factory = WebSocketServerFactory(f"ws://127.0.0.1:{sys.argv[1]}")
    factory.protocol = BareProtocol
    factory.setProtocolOptions(perMessageCompressionAccept=accept)
    listenWS(factory, backlog=1024, interface="127.0.0.1")
    reactor.run()


if __name__ == "__main__":
    main()
