"""End to end: a local write that fails (the disk is full) is never taken for a local edit.

The client daemon runs with a file-size limit (RLIMIT_FSIZE, SIGXFSZ ignored), so writing
a download beyond it fails with EFBIG exactly where a full disk fails with ENOSPC: in the
middle of the staged file. Nothing may be left half-written in the folder, and nothing may
be uploaded over the server's good copy."""

import hashlib
import os
import resource
import signal
import subprocess
import sys

import pytest_twisted
import treq

from clients import read, write
from support import wait_for

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
LIMIT = 2 << 20


def limit_file_size():
    """In the child before exec: writes beyond LIMIT fail with EFBIG (SIGXFSZ ignored)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, LIMIT))


async def journal(url):
    response = await treq.get(url + "/api/changes?since=0", timeout=10)
    return (await response.json())["changes"]


@pytest_twisted.ensureDeferred
async def test_a_download_that_cannot_be_written_changes_nothing(reactor, tmp_path, servers, clients):
    big = os.urandom(3 * LIMIT)
    b = await clients.start(servers[0], "b")
    write(b.config.folder, "big.bin", big)
    write(b.config.folder, "small.txt", b"fits")
    await wait_for(reactor, lambda: read(servers[0].root, "big.bin") == big and read(servers[0].root, "small.txt") == b"fits")
    folder = tmp_path / "full"
    log = open(tmp_path / "full.log", "wb")
    daemon = subprocess.Popen(
        [TWISTD, "-n", "--pidfile=", "quantum-sync-client", "--server", servers[0].url, "--local-path", str(folder),
         "--client-id", "full", "--interval", "1", "--settle", "50"],
        stdout=log, stderr=subprocess.STDOUT, cwd=str(tmp_path), preexec_fn=limit_file_size,
    )
    try:
        await wait_for(reactor, lambda: read(str(folder), "small.txt") == b"fits", what="the small file")
        await wait_for(reactor, lambda: "download of big.bin failed" in (tmp_path / "full.log").read_text(),
                       what="the failed write reported")
        # two more attempts (retries, reconciles at --interval 1) fail the same way
        await wait_for(reactor, lambda: (tmp_path / "full.log").read_text().count("download of big.bin failed") >= 3,
                       what="two more failed writes")
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=30)
        log.close()
    assert not os.path.exists(folder / "big.bin")
    staging = folder / ".quantum-sync" / "tmp"
    assert not staging.exists() or os.listdir(staging) == []
    assert hashlib.sha256(read(servers[0].root, "big.bin")).digest() == hashlib.sha256(big).digest()
    assert [c for c in await journal(servers[0].url) if c["source_client"] == "full"] == []
    text = (tmp_path / "full.log").read_text()
    assert "Traceback (most recent call last)" not in text
