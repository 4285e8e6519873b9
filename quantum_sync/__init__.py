"""quantum-sync: self-hosted real-time file sync on Twisted."""
