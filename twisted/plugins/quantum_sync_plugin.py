"""twistd plugins for quantum-sync: the server and the sync client.

Kept import-light on purpose: twistd imports every dropin on ``twistd --help``.
"""
from twisted.application.service import ServiceMaker

quantumSyncServer = ServiceMaker(
    "quantum-sync",
    "quantum_sync.server.tap",
    "File sync server: REST API and WebSocket hub on one port",
    "quantum-sync",
)
quantumSyncClient = ServiceMaker(
    "quantum-sync-client",
    "quantum_sync.client.tap",
    "File sync client: keeps a local folder converged with a quantum-sync server",
    "quantum-sync-client",
)
