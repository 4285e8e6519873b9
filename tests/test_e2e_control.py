"""End to end: ``quantum-sync-client status|pause|resume`` against a running daemon.

The daemon is ``twistd quantum-sync-client --config`` in a subprocess; the server runs in
the test's reactor, and the command runs as a process the reactor waits for (a blocking
call would stop the server the daemon talks to).
"""

import json
import os
import stat
import sys

import pytest_twisted
from twisted.internet.utils import getProcessOutputAndValue

from support import HttpClient, start_server, wait_for
from stallproxy import StallingProxy
from test_e2e_folders import Daemon, write_config
from clients import read, write


async def cli(reactor, *args):
    """``(exit status, stdout, stderr)`` of ``quantum-sync-client ARGS``."""
    out, err, code = await getProcessOutputAndValue(
        sys.executable, ["-m", "quantum_sync.client.cli", *args], env=dict(os.environ), reactor=reactor)
    return code, out.decode(), err.decode()


async def status_json(reactor, config, folder="docs"):
    """The folder's status; its daemon is running (waits for its control socket)."""
    deadline = reactor.seconds() + 30
    while True:
        code, out, err = await cli(reactor, "--config", config, "status", "--json", folder)
        (answer,) = json.loads(out)["folders"]
        if code == 0:
            return answer
        assert code == 3 and answer["state"] == "not running", err
        assert reactor.seconds() < deadline, "the daemon never answered"


@pytest_twisted.ensureDeferred
async def test_status_during_a_first_sync_of_2000_files(reactor, tmp_path):
    root = tmp_path / "root"
    for i in range(2000):
        write(str(root), f"d{i % 20:02}/f{i:04}.txt", b"%04d" % i * 64)
    srv = await start_server(reactor, tmp_path, root=str(root))
    http = HttpClient(reactor)
    listing = await (await http.get(srv.url + "/api/list")).content()
    await http.close()
    # the daemon reaches the server through a forwarder that holds everything once the
    # listing and about half the files have come down: the first sync stays half done
    # for as long as the test looks at it
    proxy = StallingProxy(reactor, srv.port)
    proxy.stall(len(listing) + 2000 * 256 // 2, "down")
    url = f"http://127.0.0.1:{await proxy.listen()}"
    config = write_config(tmp_path, [{"name": "docs", "server": url, "local_path": "docs", "interval": 5}])
    daemon = Daemon(tmp_path, "--config", config)
    try:
        deadline = reactor.seconds() + 60
        while True:
            during = await status_json(reactor, config)
            p = during.get("progress")
            if p and not proxy.forwarding:
                break
            assert reactor.seconds() < deadline, f"no progress shown: {during}"
        code, out, err = await cli(reactor, "--config", config, "status", "--json")
        assert code == 0, err
        (parsed,) = json.loads(out)["folders"]  # --json parses, and says the same
        p = parsed["progress"]
        assert p["files_total"] == 2020  # 2,000 files and 20 directories
        assert p["bytes_total"] == 2000 * 256 and 0 <= p["bytes_done"] < 2000 * 256 and p["files_done"] < 2020
        down = parsed["waiting"]["down"]
        assert down["files"] == 2000 - max(p["files_done"] - 20, 0)  # the directories come first
        assert down["bytes"] == 2000 * 256 - p["bytes_done"]
        # syncing; or offline, when a loaded machine kept the held connection long enough
        # for the server to give up on it
        assert parsed["state"] in ("syncing", "offline") and not parsed["in_sync"] and parsed["running"]
        code, text, _ = await cli(reactor, "--config", config, "status")
        assert code == 0 and text.startswith("docs: ") and "/2020 files" in text

        proxy.resume()
        while not (done := await status_json(reactor, config))["in_sync"]:
            assert reactor.seconds() < deadline + 60, f"never in sync: {done}"
        assert done["state"] == "in sync" and done["progress"] is None
        assert done["waiting"]["down"] == {"files": 0, "bytes": 0} and done["journal"]["behind"] == 0
        assert done["server"]["reachable"] is True
        assert sum(1 for _, _, files in os.walk(tmp_path / "docs") for f in files if f.endswith(".txt")) == 2000
        sock = tmp_path / "docs" / ".quantum-sync" / "control.sock"
        assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
    finally:
        proxy.resume()
        text = await daemon.stop(reactor)
        await proxy.port.stopListening()
        await srv.stop()
    assert "Traceback (most recent call last)" not in text
    code, out, _ = await cli(reactor, "--config", config, "status", "--json")
    (answer,) = json.loads(out)["folders"]
    assert code == 3 and answer["state"] == "not running" and not answer["running"]
    code, out, _ = await cli(reactor, "--config", config, "status")
    assert "not running" in out


@pytest_twisted.ensureDeferred
async def test_pause_holds_and_resume_catches_up(reactor, tmp_path, clients):
    srv = await start_server(reactor, tmp_path)
    # a second folder of the same daemon, on the same server, goes on while docs is paused
    config = write_config(tmp_path, [
        {"name": "docs", "server": srv.url, "local_path": "docs", "interval": 1, "settle_ms": 20},
        {"name": "home", "server": srv.url, "local_path": "home", "client_id": "home", "interval": 1, "settle_ms": 20},
    ])
    daemon = Daemon(tmp_path, "--config", config)
    docs = str(tmp_path / "docs")
    texts = []
    try:
        other = await clients.start(srv, "other")
        write(docs, "before.txt", b"synced before the pause")
        await wait_for(reactor, lambda: read(other.config.folder, "before.txt"), what="a first upload")
        code, out, err = await cli(reactor, "pause", docs)
        assert code == 0 and "paused" in out, err

        write(docs, "up.txt", b"written while paused")
        write(other.config.folder, "down.txt", b"from the other side while paused")
        deadline = reactor.seconds() + 30
        while True:  # both noticed (the daemon watches on) and both held
            answer = await status_json(reactor, config, docs)
            waiting = answer["waiting"]
            if (waiting["held_while_paused"] >= 1 and (answer["journal"]["behind"] or 0) >= 1
                    and waiting["up"] == {"files": 1, "bytes": 20} and waiting["down"] == {"files": 1, "bytes": 32}):
                break
            assert reactor.seconds() < deadline, f"never held: {answer}"
        assert answer["paused"] and answer["state"] == "paused" and not answer["in_sync"]
        code, text, _ = await cli(reactor, "--config", config, "status", "docs")
        assert code == 0 and "waiting: up 1 files (20 B), down 1 files (32 B)" in text, text
        assert read(srv.root, "up.txt") is None and read(docs, "down.txt") is None
        write(str(tmp_path / "home"), "home.txt", b"the other folder is not paused")
        await wait_for(reactor, lambda: read(other.config.folder, "home.txt") == b"the other folder is not paused",
                       what="the other folder's upload")
        assert not (await status_json(reactor, config, "home"))["paused"]

        texts = [await daemon.stop(reactor)]  # a pause outlives a restart of the daemon
        daemon = Daemon(tmp_path, "--config", config)
        answer = await status_json(reactor, config, docs)
        deadline = reactor.seconds() + 30
        while answer["state"] == "starting":
            assert reactor.seconds() < deadline, f"never started: {answer}"
            answer = await status_json(reactor, config, docs)
        assert answer["paused"] and answer["state"] == "paused", answer
        assert read(srv.root, "up.txt") is None and read(docs, "down.txt") is None

        code, out, err = await cli(reactor, "--config", config, "resume", "docs")
        assert code == 0, err
        await wait_for(reactor, lambda: read(other.config.folder, "up.txt") == b"written while paused", what="upload")
        await wait_for(reactor, lambda: read(docs, "down.txt") == b"from the other side while paused", what="download")
        deadline = reactor.seconds() + 30
        while not (answer := await status_json(reactor, config))["in_sync"]:  # its own uploads included
            assert reactor.seconds() < deadline, f"never in sync after the resume: {answer}"
        assert not answer["paused"] and answer["journal"]["behind"] == 0 and answer["state"] == "in sync"
        assert answer["waiting"]["up"] == answer["waiting"]["down"] == {"files": 0, "bytes": 0}
    finally:
        texts.append(await daemon.stop(reactor))
        await srv.stop()
    assert "paused: no new transfers" in texts[0] and "is paused (quantum-sync-client resume docs" in texts[1]
    assert "resumed" in texts[1]


@pytest_twisted.ensureDeferred
async def test_usage_errors_are_one_line(reactor, tmp_path):
    code, _, err = await cli(reactor, "--config", str(tmp_path / "missing.json"), "status")
    assert code == 1 and err.count("\n") == 1 and "missing.json" in err
    code, _, err = await cli(reactor, "pause", str(tmp_path / "no-such-folder"))
    assert code == 1 and "neither a configured folder's name nor a directory" in err
    for args, said in ((), "command"), (("status", "--bogus"), "--bogus"), (("pause",), "FOLDER"):
        code, out, err = await cli(reactor, *args)
        assert (code, out, err.count("\n")) == (1, "", 1) and said in err and err.startswith("quantum-sync-client: ")
    deep = tmp_path / ("d" * 100)  # its control socket's path would be too long: the daemon has none
    deep.mkdir()
    code, out, err = await cli(reactor, "status", str(deep))
    assert (code, out, err.count("\n")) == (1, "", 1) and "no control socket" in err and "longer than" in err
    # --config may come after the command too
    code, _, err = await cli(reactor, "status", "--json", "--config", str(tmp_path / "missing.json"))
    assert code == 1 and err.count("\n") == 1 and "missing.json" in err
