"""Autobahn details that have no public API.

- A close frame with any code: ``sendClose`` accepts only 1000 and 3000-4999, and the
  contract closes with 1001, 1008, 1009 and 1013; ``sendCloseFrame`` (the method
  ``sendClose`` ends in) sends them.
- Whether bytes wait in a connection's own send queue (``send_queue``, filled by
  ``sendData(sync=True)`` or a chopsize): a frame written past Autobahn must not overtake
  them.
"""

#: The longest close reason a close frame holds (125 bytes of payload less the code).
MAX_CLOSE_REASON = 123


def send_close(protocol, code: int, reason: str) -> None:
    """Start the closing handshake of an open ``protocol`` with ``code`` and ``reason``
    (cut to fit a control frame)."""
    protocol.sendCloseFrame(code=code, reasonUtf8=reason.encode("utf-8")[:MAX_CLOSE_REASON])


def bytes_queued(protocol) -> bool:
    """True while ``protocol`` holds bytes in its own send queue (sent later by Autobahn)."""
    return bool(protocol.send_queue)
