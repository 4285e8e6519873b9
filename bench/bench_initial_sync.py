#!/usr/bin/env python3
"""Initial sync benchmark: how long the client's reactor stalls while a fresh folder
pulls a large tree from the server.

    .venv/bin/python bench/bench_initial_sync.py [--files 5000 50000] [--size 64]

For each count: writes that many small files (1000 a directory) into a new server root,
starts the server (a ``twistd quantum-sync`` subprocess) and waits until it has journalled
them, then runs one client in this process on the default reactor with an empty folder.
A probe on the same reactor ticks every 5 ms; its longest gap beyond 5 ms is the reactor's
longest stall (target: under 100 ms for 50,000 files). The garbage collector is tuned as
the daemon tunes it (quantum_sync.gctune); its longest pause is reported beside. Timed from the client's start until
its first reconcile is done and every file is in its folder. Prints one table.
"""

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

from twisted.internet import defer, reactor, task  # noqa: E402

from bench_sync import TWISTD, free_port, wait  # noqa: E402
from bench_ws import stop  # noqa: E402
from quantum_sync.client.service import ClientConfig, SyncClientService  # noqa: E402
from quantum_sync.gctune import tune_garbage_collector  # noqa: E402

PROBE = 0.005
PER_DIRECTORY = 1000


class StallProbe:
    """Ticks every PROBE seconds on the reactor and keeps the gaps beyond that; also the
    longest pause of the garbage collector (it stops every thread)."""

    def __init__(self):
        self.worst = 0.0
        self.over_100ms = 0
        self.worst_gc = 0.0
        self._gc_started = None
        self._last = None
        self._loop = task.LoopingCall(self._tick)

    def start(self):
        self._last = time.monotonic()
        gc.callbacks.append(self._collecting)
        self._loop.start(PROBE, now=False)

    def _collecting(self, phase, info):
        if phase == "start":
            self._gc_started = time.monotonic()
        elif self._gc_started is not None:
            self.worst_gc = max(self.worst_gc, time.monotonic() - self._gc_started)

    def _tick(self):
        now = time.monotonic()
        stall = now - self._last - PROBE
        self._last = now
        self.worst = max(self.worst, stall)
        self.over_100ms += stall > 0.1

    def stop(self):
        self._loop.stop()
        gc.callbacks.remove(self._collecting)


def make_files(root, count, size):
    payload = os.urandom(size)
    for i in range(count):
        directory = os.path.join(root, f"d{i // PER_DIRECTORY:03d}")
        if i % PER_DIRECTORY == 0:
            os.makedirs(directory)
        with open(os.path.join(directory, f"f{i:06d}.bin"), "wb") as f:
            f.write(payload[: size - 8] + i.to_bytes(8, "big"))


def journal_head(url):
    try:
        with urllib.request.urlopen(url + "/ws/metrics", timeout=5) as r:
            return json.load(r).get("journal_head") or 0
    except OSError:
        return 0


def start_server(base, count):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    config = {"apps": {"http": {"servers": {"bench": {
        "listen": [f"tcp:{port}:interface=127.0.0.1"],
        "routes": [{"match": [{"matcher": "path", "paths": ["/api/*", "/ws"]}],
                    "handle": [{"handler": "file_sync", "root": os.path.join(base, "root"), "enable_upload": True}]}],
    }}}}}
    with open(os.path.join(base, "sync.json"), "w") as f:
        json.dump(config, f)
    log = open(os.path.join(base, "server.log"), "wb")
    proc = subprocess.Popen([TWISTD, "-n", "--pidfile=", "quantum-sync", "--config", os.path.join(base, "sync.json")],
                            stdout=log, stderr=subprocess.STDOUT, cwd=base)
    wait(lambda: journal_head(url) >= count, 600, "the server's journal of the files", poll=0.5)
    return proc, log, url


def count_files(folder):
    return sum(len(files) for _, _, files in os.walk(folder))


async def sync_once(url, folder, count):
    """The client's first sync of ``folder``: (seconds, probe)."""
    probe = StallProbe()
    client = SyncClientService(ClientConfig(server=url, folder=folder, client_id="bench-initial", interval=3600.0),
                               reactor)
    probe.start()
    started = time.monotonic()
    client.startService()
    try:
        await client.ready
        seconds = time.monotonic() - started
    finally:
        probe.stop()
        await client.stopService()
    found = count_files(folder) - count_files(os.path.join(folder, ".quantum-sync"))
    if found != count:
        raise SystemExit(f"only {found} of {count} files synced")
    return seconds, probe


async def measure(count, size, keep):
    base = tempfile.mkdtemp(prefix=f"qs-initial-{count}-")
    proc = log = None
    try:
        make_files(os.path.join(base, "root"), count, size)
        proc, log, url = start_server(base, count)
        seconds, probe = await sync_once(url, os.path.join(base, "client"), count)
        return {"files": count, "seconds": seconds, "files_per_s": count / seconds,
                "worst_stall_ms": probe.worst * 1000, "stalls_over_100ms": probe.over_100ms,
                "worst_gc_pause_ms": probe.worst_gc * 1000}
    finally:
        if proc is not None:
            stop(proc)
            log.close()
        if not keep:
            shutil.rmtree(base, ignore_errors=True)


def print_table(results):
    print(f"{'files':>8} {'seconds':>9} {'files/s':>9} {'longest stall (ms)':>19} {'stalls >100 ms':>15} "
          f"{'longest GC (ms)':>16}  target")
    print("-" * 96)
    for r in results:
        print(f"{r['files']:>8} {r['seconds']:>9.1f} {r['files_per_s']:>9.0f} {r['worst_stall_ms']:>19.1f} "
              f"{r['stalls_over_100ms']:>15} {r['worst_gc_pause_ms']:>16.1f}  stall <100 ms")


async def run(args):
    results = []
    for count in args.files:
        results.append(await measure(count, args.size, args.keep))
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, nargs="+", default=[5000, 50000])
    parser.add_argument("--size", type=int, default=64, help="bytes per file (at least 8)")
    parser.add_argument("--keep", action="store_true", help="keep the files and logs (printed on stderr)")
    args = parser.parse_args()
    tune_garbage_collector()  # as the client daemon's makeService does
    outcome = {}

    def done(result):
        outcome["result"] = result
        reactor.stop()

    def failed(failure):
        outcome["failure"] = failure
        reactor.stop()

    reactor.callWhenRunning(lambda: defer.ensureDeferred(run(args)).addCallbacks(done, failed))
    reactor.run()
    if "failure" in outcome:
        outcome["failure"].printTraceback()
        raise SystemExit(1)
    print_table(outcome["result"])


if __name__ == "__main__":
    main()
