"""End to end with the real daemon: ``twistd -n quantum-sync-client`` as a subprocess."""

import os
import signal
import subprocess
import sys

import pytest_twisted

from clients import converged, read, write
from support import wait_for

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


def log_tail(path, lines=60):
    """The last ``lines`` lines of the daemon's log, to show why a run failed."""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@pytest_twisted.ensureDeferred
async def test_twistd_client_syncs_both_ways(reactor, tmp_path, servers, clients):
    folder = tmp_path / "daemon"
    log = open(tmp_path / "daemon.log", "wb")
    daemon = subprocess.Popen(
        [TWISTD, "-n", "--pidfile=", "quantum-sync-client", "--server", servers[0].url, "--local-path", str(folder),
         "--client-id", "daemon", "--interval", "1", "--settle", "50"],
        stdout=log, stderr=subprocess.STDOUT, cwd=str(tmp_path),
    )
    try:
        b = await clients.start(servers[0], "b")
        write(b.config.folder, "to-daemon.txt", b"hello daemon")
        await wait_for(reactor, lambda: read(str(folder), "to-daemon.txt") == b"hello daemon", what="download")
        write(str(folder), "from-daemon/x.txt", b"hello b")
        await wait_for(reactor, lambda: read(b.config.folder, "from-daemon/x.txt") == b"hello b", what="upload")
        await converged(reactor, str(folder), b.config.folder, servers[0].root)
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            # Waited for without blocking the reactor: the server runs in it, and the
            # daemon's stop waits for the answers to its requests in flight.
            await wait_for(reactor, lambda: daemon.poll() is not None, timeout=30, what="the daemon to exit")
        finally:
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait(timeout=10)
            log.close()
            print("daemon log tail:\n" + log_tail(tmp_path / "daemon.log"))  # shown when the test fails
    text = (tmp_path / "daemon.log").read_text()
    assert "uploaded from-daemon/x.txt" in text and "downloaded to-daemon.txt" in text
    assert "realtime: connected" in text
    assert "Traceback (most recent call last)" not in text
    assert os.path.exists(folder / ".quantum-sync" / "state.db")
