#!/usr/bin/env python3
"""Delta transfers: a large file changed in place, end to end, beside whole-file
transfers, an rsync daemon and (when installed) a Syncthing pair, same run, loopback only.

    .venv/bin/python bench/bench_delta.py [--size-mib 64] [--append-base-mib 256] [--runs 3]
                                          [--no-syncthing] [--no-whole] [--no-rsync]
                                          [--link-mbit N]

Three edits, each made ``--runs`` times (plus one warm-up edit, not counted) to a file
already synced everywhere:

- ``change``: 1 MiB overwritten in the middle of a ``--size-mib`` MiB file,
- ``insert``: 1 byte inserted at the start of a ``--size-mib`` MiB file (saved as editors
  do: a new file written beside it, then renamed over it),
- ``append``: 1 MiB appended to a ``--append-base-mib`` MiB file.

Per system, the seconds from the start of the edit until B's copy is the new version
(B's file replaced, of the new size; its bytes checked afterwards, outside the time), and
the bytes on the wire for one edit:

- quantum-sync delta: a server and clients A and B (``--delta always``: the server is on
  the loopback, where ``auto`` sends whole files), ``twistd`` subprocesses; bytes are
  the server's ``bytes_transferred`` (HTTP bodies and WebSocket payloads, from
  ``/ws/metrics``: headers not counted, a few hundred bytes a request);
- quantum-sync whole: the same with ``--delta never`` clients;
- rsync: ``rsync`` from A's copy to a daemon on 127.0.0.1, then from the daemon to B's
  copy (two hops, as A → server → B), its delta algorithm on (the default over a
  daemon); bytes are the sum of its ``--stats`` "Total bytes sent" and "received";
- Syncthing (unless ``--no-syncthing`` or not installed): two instances sharing a folder
  (/work/shared/tools/syncthing_pair.py, fsWatcherDelayS=1: a change waits at least 1 s
  for the watcher); bytes from the instances' connection totals.

``--link-mbit N`` (root only; needs ``tc``) gives each direction to and from each
quantum-sync server and the rsync daemon its own N Mbit/s link on ``lo`` (as remote
clients would have; Syncthing is then left out: its ports are not shaped). The shaping is
removed afterwards, whatever happens.

Prints one table of medians. Everything it starts it stops, and its files are removed.
"""

import argparse
import hashlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from bench_large import shape, unshape  # noqa: E402
from bench_sync import PAIR, QuantumPair, SyncthingPair, free_port, wait  # noqa: E402
from bench_transfer import RsyncDaemon, ensure_rsync  # noqa: E402

MiB = 1 << 20
POLL = 0.002
NAME = "big.bin"


def make_file(path, size):
    """A random file of ``size`` bytes (written in 1 MiB pieces)."""
    block = os.urandom(MiB)
    with open(path, "wb") as f:
        for i in range(size // MiB):
            f.write(block[:-8] + i.to_bytes(8, "big"))
        f.write(os.urandom(size % MiB))


def edit(path, kind, round_):
    """Make edit ``kind`` to the file at ``path`` in place; its new size."""
    size = os.stat(path).st_size
    if kind == "change":
        with open(path, "r+b") as f:
            f.seek(size // 2 - MiB + round_ * 64 * 1024)
            f.write(os.urandom(MiB))
    elif kind == "insert":
        with open(path, "rb") as f:
            data = bytes([round_ & 0xFF]) + f.read()
        with open(path + ".new", "wb") as f:  # (the new content ready: written at once)
            f.write(data)
        os.rename(path + ".new", path)
        size += 1
    else:
        with open(path, "ab") as f:
            f.write(os.urandom(MiB))
        size += MiB
    return size


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while piece := f.read(MiB):
            digest.update(piece)
    return digest.hexdigest()


def replaced(path, before, size):
    """True once ``path`` is another file than ``before`` (an ``os.stat``), ``size`` bytes long."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    return st.st_size == size and (st.st_ino, st.st_mtime_ns) != (before.st_ino, before.st_mtime_ns)


# -- the systems: each puts a file in place at A and B, then times edits --------------------


class QuantumSystem:
    def __init__(self, name, base, client_args=()):
        self.name = name
        self.pair = QuantumPair(base, client_args=client_args)
        self.port = self.pair.port

    def start(self):
        self.pair.start()
        self.dir_a, self.dir_b = self.pair.dir_a, self.pair.dir_b

    def wire_bytes(self):
        with urllib.request.urlopen(self.pair.url + "/ws/metrics", timeout=5) as answer:
            return json.load(answer)["bytes_transferred"]

    def place(self, size):
        make_file(os.path.join(self.dir_a, NAME), size)
        wait(lambda: os.path.exists(os.path.join(self.dir_b, NAME))
             and os.stat(os.path.join(self.dir_b, NAME)).st_size == size, 300, "the base at B", POLL)
        wait(lambda: sha256_of(os.path.join(self.dir_b, NAME)) == sha256_of(os.path.join(self.dir_a, NAME)),
             300, "the base whole at B", 0.2)

    def timed_edit(self, kind, round_):
        target = os.path.join(self.dir_b, NAME)
        before, wire = os.stat(target), self.wire_bytes()
        start = time.perf_counter()
        size = edit(os.path.join(self.dir_a, NAME), kind, round_)
        wait(lambda: replaced(target, before, size), 300, f"{kind} at B", POLL)
        seconds = time.perf_counter() - start
        check_same(self.dir_a, self.dir_b)
        time.sleep(0.3)  # the last answers of the change counted too
        return seconds, self.wire_bytes() - wire

    def remove(self):
        os.unlink(os.path.join(self.dir_a, NAME))
        wait(lambda: not os.path.exists(os.path.join(self.dir_b, NAME)), 60, "the removal at B", 0.01)

    def stop(self):
        self.pair.stop()


class RsyncSystem:
    name = "rsync daemon"

    def __init__(self, base):
        self.base = base
        self.port = free_port()

    def start(self):
        self.rsync = ensure_rsync()
        os.makedirs(self.base)
        self.daemon = RsyncDaemon(self.rsync, self.base, self.port)
        self.dir_a, self.dir_b = os.path.join(self.base, "A"), os.path.join(self.base, "B")
        os.makedirs(self.dir_a)
        os.makedirs(self.dir_b)

    def _hop(self, source, target):
        answer = subprocess.run([self.rsync, "--stats", "-t", "--ignore-times", source, target],
                                check=True, capture_output=True, text=True).stdout
        sent = int(re.search(r"Total bytes sent: ([\d,.]+)", answer).group(1).replace(",", "").replace(".", ""))
        received = int(re.search(r"Total bytes received: ([\d,.]+)", answer).group(1).replace(",", "").replace(".", ""))
        return sent + received

    def _both_hops(self):
        return self._hop(os.path.join(self.dir_a, NAME), self.daemon.url(NAME)) \
            + self._hop(self.daemon.url(NAME), os.path.join(self.dir_b, NAME))

    def place(self, size):
        make_file(os.path.join(self.dir_a, NAME), size)
        self._both_hops()

    def timed_edit(self, kind, round_):
        start = time.perf_counter()
        edit(os.path.join(self.dir_a, NAME), kind, round_)
        wire = self._both_hops()
        seconds = time.perf_counter() - start
        check_same(self.dir_a, self.dir_b)
        return seconds, wire

    def remove(self):
        for folder in (self.dir_a, self.dir_b, self.daemon.module_dir):
            os.unlink(os.path.join(folder, NAME))

    def stop(self):
        self.daemon.stop()


class SyncthingSystem:
    name = "Syncthing"

    def __init__(self, base):
        self.pair = SyncthingPair(base)

    def start(self):
        self.pair.start()
        self.dir_a, self.dir_b = self.pair.dir_a, self.pair.dir_b

    def wire_bytes(self):
        """Bytes A's instance sent and received over all its connections (only to B)."""
        env = dict(line.split("=", 1) for line in subprocess.run(
            [sys.executable, PAIR, "--base", self.pair.base, "env"], check=True, capture_output=True,
            text=True).stdout.splitlines() if "=" in line)
        request = urllib.request.Request(env["ST_A_URL"] + "/rest/system/connections",
                                         headers={"X-API-Key": env["ST_A_APIKEY"]})
        with urllib.request.urlopen(request, timeout=5) as answer:
            total = json.load(answer)["total"]
        return total["inBytesTotal"] + total["outBytesTotal"]

    place = QuantumSystem.place
    remove = QuantumSystem.remove

    def timed_edit(self, kind, round_):
        target = os.path.join(self.dir_b, NAME)
        before, wire = os.stat(target), self.wire_bytes()
        start = time.perf_counter()
        size = edit(os.path.join(self.dir_a, NAME), kind, round_)
        wait(lambda: replaced(target, before, size) and sha256_of(target) == sha256_of(os.path.join(self.dir_a, NAME)),
             300, f"{kind} at B", 0.01)
        seconds = time.perf_counter() - start
        time.sleep(1)  # the totals are counted by the second
        return seconds, self.wire_bytes() - wire

    def stop(self):
        self.pair.stop()


def check_same(dir_a, dir_b):
    if sha256_of(os.path.join(dir_a, NAME)) != sha256_of(os.path.join(dir_b, NAME)):
        raise SystemExit(f"{dir_b}/{NAME} is not {dir_a}/{NAME}")


def measure(system, cases, runs):
    """Per case ``(median seconds, median wire bytes)`` over ``runs`` edits after a warm-up."""
    results = {}
    system.start()
    try:
        for kind, size in cases:
            system.place(size)
            system.timed_edit(kind, 0)  # warm-up: lists kept, connections open
            samples = [system.timed_edit(kind, round_) for round_ in range(1, runs + 1)]
            results[kind] = (statistics.median(s for s, _ in samples), statistics.median(w for _, w in samples))
            print(f"{system.name} {kind}: {[f'{s * 1000:.0f} ms / {w / MiB:.2f} MiB' for s, w in samples]}",
                  file=sys.stderr, flush=True)
            system.remove()
    finally:
        system.stop()
    return results


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    # the sizes are 256 and 1024 (about 4.5 minutes here); these fit a shared machine
    ap.add_argument("--size-mib", type=int, default=64)
    ap.add_argument("--append-base-mib", type=int, default=256)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--base", default="/tmp/qs-bench-delta")
    ap.add_argument("--no-syncthing", action="store_true")
    ap.add_argument("--no-whole", action="store_true", help="leave out the whole-file transfers")
    ap.add_argument("--link-mbit", type=int, default=0, help="shape each server's link on lo (root, tc)")
    ap.add_argument("--no-rsync", action="store_true", help="leave out the rsync daemon")
    args = ap.parse_args()
    if os.path.exists(args.base):
        shutil.rmtree(args.base)
    cases = [("change", args.size_mib * MiB), ("insert", args.size_mib * MiB), ("append", args.append_base_mib * MiB)]
    systems = [QuantumSystem("quantum-sync delta", os.path.join(args.base, "qs-delta"), ["--delta", "always"])]
    if not args.no_whole:
        systems.append(QuantumSystem("quantum-sync whole", os.path.join(args.base, "qs-whole"), ["--delta", "never"]))
    if not args.no_rsync:
        systems.append(RsyncSystem(os.path.join(args.base, "rsync")))
    if args.link_mbit:
        shape([system.port for system in systems], args.link_mbit)
    elif not args.no_syncthing:
        if shutil.which("syncthing"):
            systems.append(SyncthingSystem(os.path.join(args.base, "st")))
        else:
            print("syncthing is not installed: left out", file=sys.stderr)
    results = {}
    try:
        for system in systems:
            results[system.name] = measure(system, cases, args.runs)
    except BaseException:
        print(f"failed: the logs stay in {args.base}", file=sys.stderr)
        raise
    else:
        shutil.rmtree(args.base, ignore_errors=True)
    finally:
        if args.link_mbit:
            unshape()
    print_table(results, args)


def print_table(results, args):
    labels = {"change": f"1 MiB changed in {args.size_mib} MiB", "insert": f"1 byte inserted at the start of {args.size_mib} MiB",
              "append": f"1 MiB appended to {args.append_base_mib} MiB"}
    changed = {"change": MiB, "insert": 1, "append": MiB}  # (the insert: per changed byte)
    names = list(results)
    link = f"{args.link_mbit} Mbit/s links" if args.link_mbit else "loopback"
    print(f"medians of {args.runs} edits ({link}); ms end to end / MiB on the wire")
    header = f"{'edit':<40}" + "".join(f"{n:>24}" for n in names)
    print(header)
    print("-" * len(header))
    for kind, label in labels.items():
        line = f"{label:<40}"
        for name in names:
            seconds, wire = results[name][kind]
            line += f"{f'{seconds * 1000:.0f} ms / {wire / MiB:.2f} MiB':>24}"
        print(line)
    delta = results.get("quantum-sync delta")
    if delta:
        print()
        for kind, label in labels.items():
            seconds, wire = delta[kind]
            ratios = ", ".join(f"{seconds / results[n][kind][0]:.2f}x {n}" for n in names[1:] if results[n][kind][0])
            print(f"{label}: delta {wire / 2 / MiB:.2f} MiB a hop ({wire / 2 / changed[kind]:.1f}x the changed"
                  f" bytes); time {ratios}")


if __name__ == "__main__":
    main()
