"""The quantum-sync server: store, index/journal, REST API, WebSocket hub."""
