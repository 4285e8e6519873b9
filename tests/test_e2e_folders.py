"""End to end: one ``twistd quantum-sync-client --config`` daemon syncing two folders
with two servers; one server stopped never stalls the other folder."""

import json
import os
import signal
import subprocess
import sys

import pytest_twisted

from clients import read, write
from support import start_server, wait_for
from test_e2e_disk_full import LIMIT, limit_file_size

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


class Daemon:
    """``twistd -n quantum-sync-client`` as a subprocess, its output in a log file."""

    def __init__(self, tmp_path, *args, preexec_fn=None):
        self.log_path = tmp_path / "daemon.log"
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen([TWISTD, "-n", "--pidfile=", "quantum-sync-client", *args],
                                        stdout=self._log, stderr=subprocess.STDOUT, cwd=str(tmp_path),
                                        preexec_fn=preexec_fn)

    async def stop(self, reactor):
        """SIGTERM, then wait (the reactor running: the daemon may still talk to a server in it)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            await wait_for(reactor, lambda: self.process.poll() is not None, timeout=30, what="the daemon to stop")
        self._log.close()
        return self.log_path.read_text()


def write_config(tmp_path, folders):
    path = tmp_path / "client.json"
    path.write_text(json.dumps({"folders": folders}))
    return str(path)


async def work_and_home(reactor, tmp_path):
    """Servers one and two (``tmp_path/s1``, ``s2``), and the configuration of a daemon
    syncing folder ``work`` with one and ``home`` with two."""
    servers = []
    for name in ("s1", "s2"):
        (tmp_path / name).mkdir(exist_ok=True)
        servers.append(await start_server(reactor, tmp_path / name))
    one, two = servers
    config = write_config(tmp_path, [
        {"name": "work", "server": one.url, "local_path": "work", "client_id": "d1", "interval": 1, "settle_ms": 20},
        {"name": "home", "server": two.url, "local_path": "home", "client_id": "d2", "interval": 1, "settle_ms": 20},
    ])
    return servers, config


@pytest_twisted.ensureDeferred
async def test_two_folders_on_two_servers_one_stopped(reactor, tmp_path, clients):
    servers, config = await work_and_home(reactor, tmp_path)
    one, two = servers
    try:
        daemon = Daemon(tmp_path, "--config", config)
        try:
            other = await clients.start(two, "other")
            work, home = str(tmp_path / "work"), str(tmp_path / "home")
            write(work, "w.txt", b"to server one")
            write(home, "h.txt", b"to server two")
            await wait_for(reactor, lambda: read(one.root, "w.txt") == b"to server one", what="upload to one")
            await wait_for(reactor, lambda: read(other.config.folder, "h.txt") == b"to server two", what="home to other")

            await one.stop()
            write(work, "queued.txt", b"waits for server one")
            write(other.config.folder, "down.txt", b"from other")
            await wait_for(reactor, lambda: read(home, "down.txt") == b"from other", what="download while one is down")
            write(home, "up.txt", b"while one is down")
            await wait_for(reactor, lambda: read(other.config.folder, "up.txt") == b"while one is down",
                           what="upload while one is down")
            assert read(one.root, "queued.txt") is None
        finally:
            text = await daemon.stop(reactor)
    finally:
        for server in servers:
            await server.stop()
    assert "Traceback (most recent call last)" not in text


@pytest_twisted.ensureDeferred
async def test_one_folder_that_cannot_write_never_stalls_the_other(reactor, tmp_path, clients):
    """The daemon runs under a file-size limit (tests/test_e2e_disk_full.py: a write fails
    as on a full disk): one folder's download of a large file fails again and again while
    the other folder goes on syncing both ways."""
    big = os.urandom(3 * LIMIT)
    write(str(tmp_path / "s1" / "root"), "big.bin", big)  # on server one from its start
    servers, config = await work_and_home(reactor, tmp_path)
    one, two = servers
    try:
        daemon = Daemon(tmp_path, "--config", config, preexec_fn=limit_file_size)
        try:
            other = await clients.start(two, "other")
            home = str(tmp_path / "home")
            await wait_for(reactor, lambda: daemon.log_path.read_text().count("download of big.bin failed") >= 2,
                           what="the large download failing twice")
            write(other.config.folder, "down.txt", b"from other")
            write(home, "up.txt", b"from home")
            await wait_for(reactor, lambda: read(home, "down.txt") == b"from other", what="home's download")
            await wait_for(reactor, lambda: read(other.config.folder, "up.txt") == b"from home", what="home's upload")
            assert "download of big.bin failed" in daemon.log_path.read_text()
        finally:
            text = await daemon.stop(reactor)
    finally:
        for server in servers:
            await server.stop()
    assert not os.path.exists(tmp_path / "work" / "big.bin") and read(one.root, "big.bin") == big
    assert "Traceback (most recent call last)" not in text
