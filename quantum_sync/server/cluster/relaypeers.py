"""Large uploads relayed across the nodes of a cluster (:mod:`quantum_sync.server.relay`).

The node receiving a large upload tells the others (an event, :mod:`.events`) where its
temp file is on the shared root; each of them follows that file
(:class:`~quantum_sync.server.relay.FollowedRelay`) and announces the upload to its own
``transfers`` subscribers, and is told when the upload is over.
"""

import os

from quantum_sync.server.relay import RELAY_MIN

STARTED = "relay_started"
ENDED = "relay_ended"
#: Where the nodes' temp files are, under the root (each node's in a folder of its own).
TEMPS = os.path.join(".quantum-sync", "nodes") + os.sep


class RelayPeers:
    """Tells the other nodes of this node's relays (``send(kind, data)``) and follows
    theirs in ``relays`` (a :class:`~quantum_sync.server.relay.Relays`)."""

    def __init__(self, relays, root: str, send):
        self._relays = relays
        self._root = root
        self._send = send

    def started(self, relay, source: str) -> None:
        self._send(STARTED, {"path": relay.path, "hash": relay.sha256, "size": relay.size,
                             "source_client": source, "temp": os.path.relpath(relay.temp_path, self._root)})

    def ended(self, relay) -> None:
        self._send(ENDED, {"path": relay.path, "hash": relay.sha256})

    def heard(self, kind: str, data: dict) -> None:
        """Another node's word of a relay (a malformed one is ignored)."""
        path, sha256 = data.get("path"), data.get("hash")
        if not (isinstance(path, str) and isinstance(sha256, str)):
            return
        if kind == ENDED:
            self._relays.followed_ended(path, sha256)
            return
        size, temp, source = data.get("size"), data.get("temp"), data.get("source_client")
        if not (isinstance(size, int) and size >= RELAY_MIN and isinstance(temp, str)
                and isinstance(source, str)):
            return
        temp = os.path.normpath(temp)
        if not temp.startswith(TEMPS) or os.path.isabs(temp):
            return  # never a file outside the nodes' temp folders
        self._relays.follow(path, sha256, size, os.path.join(self._root, temp), source)
