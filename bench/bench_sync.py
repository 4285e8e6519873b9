#!/usr/bin/env python3
"""Sync benchmark: quantum-sync beside a pair of Syncthing instances, same run, loopback only.

    .venv/bin/python bench/bench_sync.py [--trials 100] [--small 2000] [--large-mib 256] [--no-syncthing]

Starts a quantum-sync server and two ``twistd quantum-sync-client`` daemons (folders A and
B) on 127.0.0.1, and (unless --no-syncthing) two Syncthing instances sharing one folder
(/work/shared/tools/syncthing_pair.py, fsWatcherDelayS=1). For each system it measures:

- latency: a 1 KiB file written in A until identical bytes are readable in B
  (``--trials`` new files, one at a time; p50/p90/p99), then each renamed, then each
  deleted, until B shows it, then up to ten more deleted one at a time while an
  ``rm -rf`` of a synced folder is held (``--latency-only``: nothing else),
- small files: ``--small`` files of 4 KiB created at once in A until all are in B (files/s),
- large file: one ``--large-mib`` MiB file written in A until it is complete in B (MB/s).

Prints one table. Everything it starts it stops (by PID), whatever happens.
"""

import argparse
import hashlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
PAIR = "/work/shared/tools/syncthing_pair.py"
POLL = 0.0005
#: Polling a folder of thousands of names every 0.5 ms would take a core from the
#: daemons being measured; the many-file count polls at this pace instead.
LISTING_POLL = 0.005


#: Seconds to wait after removing an earlier run's files. On an ext4 without a journal
#: (such as this machine's root file system) the inode allocator skips every inode freed
#: in the last 60 s, or the last 360 s while its inode table block is dirty (and the new
#: files written nearby dirty it again), reading an inode table block for each: thousands
#: of files just removed make every file creation cost a millisecond of kernel CPU, for
#: both systems measured. A fresh file system for ``--base`` needs no wait (README).
SETTLE_AFTER_REMOVAL = 365


def clear_base(base, wait=True):
    """Remove an earlier run's files under ``base`` before anything is measured, then
    (``wait``) let the file system forget them (see :data:`SETTLE_AFTER_REMOVAL`)."""
    if not os.path.exists(base):
        return
    shutil.rmtree(base)
    os.sync()
    if wait:
        print(f"removed the previous run's files; waiting {SETTLE_AFTER_REMOVAL} s before measuring "
              "(see SETTLE_AFTER_REMOVAL)", file=sys.stderr, flush=True)
        time.sleep(SETTLE_AFTER_REMOVAL)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(predicate, timeout, what, poll=POLL):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(poll)


def cpu_seconds(pid):
    """``(user, system)`` CPU seconds used so far by process ``pid`` (from /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0, 0.0
    return int(fields[11]) / os.sysconf("SC_CLK_TCK"), int(fields[12]) / os.sysconf("SC_CLK_TCK")


def content(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


class QuantumPair:
    """A server and two client daemons, each a twistd subprocess."""

    name = "quantum-sync"

    def __init__(self, base, client_args=(), port=None, sides="AB"):
        self.base = base
        self.procs = []
        self.pids = {}
        self.client_args = list(client_args)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.root = os.path.join(base, "root")
        self.sides = sides  # one client daemon a letter, folder base/<letter>
        self.dir_a = os.path.join(base, "A")
        self.dir_b = os.path.join(base, "B")

    def start(self, timeout=30):
        os.makedirs(self.base, exist_ok=True)
        config = {"apps": {"http": {"servers": {"bench": {
            "listen": [f"tcp:{self.port}:interface=127.0.0.1"],
            "routes": [{"match": [{"matcher": "path", "paths": ["/api/*", "/ws"]}],
                        "handle": [{"handler": "file_sync", "root": self.root, "enable_upload": True}]}],
        }}}}}
        config_path = os.path.join(self.base, "sync.json")
        with open(config_path, "w") as f:
            json.dump(config, f)
        self._spawn("server", ["quantum-sync", "--config", config_path])
        wait(self._healthy, timeout, "server health")
        for side in self.sides:
            self._spawn(f"client{side}", ["quantum-sync-client", "--server", self.url, "--local-path",
                                          os.path.join(self.base, side), "--client-id", f"bench-{side}",
                                          *self.client_args])
        for side in self.sides:
            wait(lambda: "realtime: connected" in self._log(f"client{side}"), timeout, f"client {side} subscribed")

    def wait_rm_rf(self, removed_in_b):
        """Until client A has held the mass delete of a removed folder."""
        wait(lambda: "are gone from the folder" in self._log("clientA"), 60, "the mass delete held")

    def _spawn(self, name, args):
        log = open(os.path.join(self.base, name + ".log"), "wb")
        proc = subprocess.Popen([TWISTD, "-n", "--pidfile=", *args], stdout=log, stderr=subprocess.STDOUT, cwd=self.base)
        self.procs.append((proc, log))
        self.pids[name] = proc.pid

    def _log(self, name):
        with open(os.path.join(self.base, name + ".log"), errors="replace") as f:
            return f.read()

    def _healthy(self):
        try:
            with urllib.request.urlopen(self.url + "/ws/health", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    def stop(self):
        for proc, _ in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc, log in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()
        self.procs = []


class SyncthingPair:
    """Debian's Syncthing, two instances on loopback (the shared tool starts and stops them)."""

    name = "Syncthing"

    def __init__(self, base):
        self.base = base

    def _pair(self, *args, timeout=300):
        return subprocess.run([sys.executable, PAIR, "--base", self.base, *args], check=True, capture_output=True,
                              text=True, timeout=timeout).stdout

    def start(self):
        try:
            self._pair("start", "--fresh", "--delay", "1")
        except subprocess.CalledProcessError as e:
            # a first start sometimes times out while the instances pair: stop and retry once
            print(f"syncthing start failed ({e.stderr.strip()[-300:]}); retrying", file=sys.stderr)
            self.stop()
            self._pair("start", "--fresh", "--delay", "1")
        env = dict(line.split("=", 1) for line in self._pair("env").splitlines() if "=" in line)
        self.dir_a, self.dir_b = env["ST_A_DIR"], env["ST_B_DIR"]

    def wait_rm_rf(self, removed_in_b):
        """Until the removed folder is gone in B too (Syncthing holds no mass delete)."""
        wait(lambda: not os.path.exists(removed_in_b), 120, "the removed folder gone in B")

    def stop(self):
        try:
            self._pair("stop", timeout=60)
        except Exception as e:  # keep going: the table is still worth printing
            print(f"syncthing stop: {e}", file=sys.stderr)


def measure_latency(pair, trials):
    """Creates, then renames, then deletes of ``trials`` 1 KiB files, one at a time: each
    until B shows it. The folder holds as many files again that stay, so deleting the
    trial files one after another is never more than half of the synced files (a mass
    delete, which the client holds)."""
    folder = "lat-%d" % time.time_ns()
    os.makedirs(os.path.join(pair.dir_a, folder, "stay"))
    for i in range(trials + 1):
        with open(os.path.join(pair.dir_a, folder, "stay", f"k{i:03}.bin"), "wb") as f:
            f.write(os.urandom(64))
    last = os.path.join(pair.dir_b, folder, "stay", f"k{trials:03}.bin")
    wait(lambda: os.path.exists(last), 120, "latency folder")
    a, b = os.path.join(pair.dir_a, folder), os.path.join(pair.dir_b, folder)
    creates, renames, deletes = [], [], []
    for i in range(trials):
        data = os.urandom(1024)
        target = os.path.join(b, f"t{i:03}.bin")
        start = time.perf_counter()
        with open(os.path.join(a, f"t{i:03}.bin"), "wb") as f:
            f.write(data)
        wait(lambda: content(target) == data, 60, f"create trial {i}")
        creates.append(time.perf_counter() - start)
    for i in range(trials):
        old, new = os.path.join(b, f"t{i:03}.bin"), os.path.join(b, f"r{i:03}.bin")
        start = time.perf_counter()
        os.rename(os.path.join(a, f"t{i:03}.bin"), os.path.join(a, f"r{i:03}.bin"))
        wait(lambda: os.path.exists(new) and not os.path.exists(old), 60, f"rename trial {i}")
        renames.append(time.perf_counter() - start)
    for i in range(trials):
        gone = os.path.join(b, f"r{i:03}.bin")
        start = time.perf_counter()
        os.unlink(os.path.join(a, f"r{i:03}.bin"))
        wait(lambda: not os.path.exists(gone), 60, f"delete trial {i}")
        deletes.append(time.perf_counter() - start)
    result = percentiles(creates)
    result["rename"], result["delete"] = percentiles(renames), percentiles(deletes)
    result["delete_beside_rm_rf"] = measure_deletes_beside_rm_rf(pair, a, b, HELD_TRIALS)
    return result


#: Single deletes timed while an ``rm -rf`` is held, each its own burst: they come
#: DELETES_APART seconds apart, more than the delete gate's quiet time (0.3 s), as deletes
#: made by hand do (more than ten deletes in one burst while so many files are missing
#: would be held as part of the mass delete).
HELD_TRIALS = 10
DELETES_APART = 0.5


def measure_deletes_beside_rm_rf(pair, a, b, trials):
    """``trials`` files of ``stay/`` deleted one at a time, DELETES_APART seconds apart,
    each until B shows it (the control: a delete after a pause costs more than one right
    after another, the daemons and caches having gone idle); then ``rm -rf`` of a synced
    folder holding more than half of the synced files (a mass delete, which quantum-sync
    holds; Syncthing sends it), and ``trials`` more deleted the same way beside it."""
    stay = sorted(os.listdir(os.path.join(a, "stay")))
    trials = min(trials, len(stay) // 2)
    result = {"control": spaced_deletes(a, b, stay[:trials])}
    count = len(stay) - trials + 12  # more than half of all, and more than ten
    bulk_a, bulk_b = os.path.join(a, "bulk"), os.path.join(b, "bulk")
    os.makedirs(bulk_a)
    for i in range(count):
        with open(os.path.join(bulk_a, f"m{i:03}.bin"), "wb") as f:
            f.write(os.urandom(64))
    wait(lambda: os.path.isdir(bulk_b) and len(os.listdir(bulk_b)) == count, 120, "the folder to remove")
    time.sleep(1)  # A has had the answers of its uploads: each delete follows a finished upload
    shutil.rmtree(bulk_a)
    pair.wait_rm_rf(bulk_b)
    result.update(spaced_deletes(a, b, stay[trials:2 * trials]))
    result["held"] = os.path.isdir(bulk_b) and len(os.listdir(bulk_b)) > 0
    return result


def spaced_deletes(a, b, names):
    """The percentiles of deleting ``stay/NAME`` in A for each of ``names``,
    DELETES_APART seconds apart, each until B shows it."""
    deletes = []
    for name in names:
        gone = os.path.join(b, "stay", name)
        time.sleep(DELETES_APART)
        start = time.perf_counter()
        os.unlink(os.path.join(a, "stay", name))
        wait(lambda: not os.path.exists(gone), 60, f"delete of {name}")
        deletes.append(time.perf_counter() - start)
    return percentiles(deletes)


def percentiles(samples):
    """p50, p90 and p99 of ``samples`` (seconds) in milliseconds."""
    samples = sorted(samples)

    def pct(p):
        return samples[min(len(samples) - 1, int(round(p / 100 * (len(samples) - 1))))] * 1000

    return {"p50": statistics.median(samples) * 1000, "p90": pct(90), "p99": pct(99)}


def measure_small(pair, count):
    folder = "small-%d" % time.time_ns()
    payloads = [os.urandom(4096) for _ in range(count)]
    os.makedirs(os.path.join(pair.dir_a, folder))
    start = time.perf_counter()
    for i, data in enumerate(payloads):
        with open(os.path.join(pair.dir_a, folder, f"s{i:05}.bin"), "wb") as f:
            f.write(data)
    target = os.path.join(pair.dir_b, folder)
    last = os.path.join(target, f"s{count - 1:05}.bin")

    def arrived():
        # listing thousands of names every few ms would take CPU from the daemons: the
        # folder is listed only once the last file written is there
        if not os.path.exists(last):
            return False
        try:
            return len([n for n in os.listdir(target) if n.startswith("s") and n.endswith(".bin")]) >= count
        except OSError:
            return False

    wait(arrived, 600, "small files", poll=LISTING_POLL)
    elapsed = time.perf_counter() - start
    wrong = sum(1 for i, data in enumerate(payloads) if content(os.path.join(target, f"s{i:05}.bin")) != data)
    return {"files_per_s": count / elapsed, "seconds": elapsed, "wrong": wrong}


def measure_small_cpu(pair, count):
    """:func:`measure_small`, plus the CPU milliseconds per file each daemon used meanwhile."""
    pids = getattr(pair, "pids", {})
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    result = measure_small(pair, count)
    after = {name: cpu_seconds(pid) for name, pid in pids.items()}
    result["cpu_ms_per_file"] = {name: (sum(after[name]) - sum(before[name])) * 1000 / count for name in pids}
    result["sys_ms_per_file"] = {name: (after[name][1] - before[name][1]) * 1000 / count for name in pids}
    return result


def measure_large(pair, mib):
    name = "large-%d.bin" % time.time_ns()
    block = os.urandom(1 << 20)
    digest = hashlib.sha256()
    start = time.perf_counter()
    with open(os.path.join(pair.dir_a, name), "wb") as f:
        for i in range(mib):
            chunk = block[:-8] + i.to_bytes(8, "big")
            digest.update(chunk)
            f.write(chunk)
    target = os.path.join(pair.dir_b, name)

    def arrived():
        try:
            return os.stat(target).st_size == mib << 20
        except OSError:
            return False

    wait(arrived, 900, "large file")
    elapsed = time.perf_counter() - start
    h = hashlib.sha256()
    with open(target, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return {"mb_per_s": (mib << 20) / elapsed / 1e6, "seconds": elapsed, "identical": h.hexdigest() == digest.hexdigest()}


def run(pair, args):
    pair.start()
    try:
        results = {}
        measures = [("latency", measure_latency, args.trials)]
        if not args.latency_only:
            measures += [("small", measure_small_cpu, args.small), ("large", measure_large, args.large_mib)]
        for name, measure, size in measures:
            # each measure starts with nothing left to write back from the one before (the
            # previous system's large file among it): its fsyncs wait for its own data only
            os.sync()
            results[name] = measure(pair, size)
        return results
    finally:
        pair.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=100)
    ap.add_argument("--small", type=int, default=2000)
    ap.add_argument("--large-mib", type=int, default=256)
    ap.add_argument("--base", default="/tmp/qs-bench")
    ap.add_argument("--no-syncthing", action="store_true")
    ap.add_argument("--no-settle", action="store_true", help="measure at once after removing an earlier run's files")
    ap.add_argument("--latency-only", action="store_true", help="only the create, rename and delete latencies")
    args = ap.parse_args()
    clear_base(args.base, wait=not args.no_settle)
    results = {}
    results["quantum-sync"] = run(QuantumPair(os.path.join(args.base, "qs")), args)
    print(json.dumps(results), file=sys.stderr, flush=True)  # kept even if the baseline fails
    if not args.no_syncthing:
        results["Syncthing"] = run(SyncthingPair(os.path.join(args.base, "st")), args)
    print_table(results, args)


def print_table(results, args):
    rows = [
        (f"create p50 (ms, 1 KiB, {args.trials} trials)", lambda r: r["latency"]["p50"], "<25"),
        ("create p90 (ms)", lambda r: r["latency"]["p90"], ""),
        ("create p99 (ms)", lambda r: r["latency"]["p99"], "<100"),
        ("rename p50 (ms)", lambda r: r["latency"]["rename"]["p50"], ""),
        ("delete p50 (ms)", lambda r: r["latency"]["delete"]["p50"], "<20"),
        ("delete p90 (ms)", lambda r: r["latency"]["delete"]["p90"], ""),
        ("delete p50, 0.5 s apart (ms)", lambda r: r["latency"]["delete_beside_rm_rf"]["control"]["p50"], ""),
        ("the same beside a held rm -rf (ms)", lambda r: r["latency"]["delete_beside_rm_rf"]["p50"], "tens of ms"),
    ]
    if not args.latency_only:
        rows += [
            (f"small files/s ({args.small} x 4 KiB)", lambda r: r["small"]["files_per_s"], ">=1000"),
            (f"large file MB/s ({args.large_mib} MiB)", lambda r: r["large"]["mb_per_s"], ">=2x Syncthing"),
        ]
    names = list(results)
    header = f"{'measure':<40}" + "".join(f"{n:>15}" for n in names) + (f"{'ratio':>10}" if len(names) == 2 else "") + f"{'target':>16}"
    print(header)
    print("-" * len(header))
    for label, get, target in rows:
        values = [get(results[n]) for n in names]
        line = f"{label:<40}" + "".join(f"{v:>15.1f}" for v in values)
        if len(values) == 2:
            line += f"{values[0] / values[1] if values[1] else float('inf'):>10.2f}"
        print(line + f"{target:>16}")
    for n in names:
        r = results[n]
        print(f"{n}: delete p50 / create p50 = {r['latency']['delete']['p50'] / r['latency']['p50']:.2f}; "
              f"the rm -rf beside the last deletes held: {r['latency']['delete_beside_rm_rf']['held']}")
        if args.latency_only:
            continue
        print(f"{n}: small files wrong={r['small']['wrong']}, large file identical={r['large']['identical']}")
        cpu = r["small"].get("cpu_ms_per_file")
        if cpu:
            print(f"{n}: CPU ms per small file: " + ", ".join(f"{k} {v:.2f}" for k, v in cpu.items()) + f", total {sum(cpu.values()):.2f}"
                  + " (of which in the kernel: " + ", ".join(f"{k} {v:.2f}" for k, v in r["small"]["sys_ms_per_file"].items()) + ")")


if __name__ == "__main__":
    main()
