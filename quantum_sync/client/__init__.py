"""The quantum-sync client: a folder kept converged with a server, both ways."""
