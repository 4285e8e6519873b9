#!/usr/bin/env python3
"""zstd transfers: a new large file from A to B with ``--compress always`` and ``never``,
same run, loopback only (optionally shaped).

    .venv/bin/python bench/bench_compress.py [--size-mib 32] [--runs 3] [--link-mbit N]

Two quantum-sync setups (a server and clients A and B each, ``twistd`` subprocesses), one
with both clients at ``--compress always``, one at ``--compress never``. Each run writes
a new file into A's folder of each setup in turn and times it until B holds the same
bytes: a text file (words and numbers: zstd shrinks it several times) and a random one
(its sample does not shrink, so it goes as it is either way). Bytes on the wire are the
server's ``bytes_transferred`` (HTTP bodies and WebSocket payloads). ``--link-mbit N``
(root, ``tc``) gives each direction to and from each server its own N Mbit/s link on
``lo``; removed afterwards, whatever happens.

Prints one table of medians.
"""

import argparse
import json
import os
import shutil
import statistics
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from bench_large import shape, unshape  # noqa: E402
from bench_sync import QuantumPair, wait  # noqa: E402

MiB = 1 << 20


def text(size):
    words = [os.urandom(8).hex().encode() for _ in range(512)]
    return b" ".join(words[i % 509] + str(i).encode() for i in range(size // 20 + 1))[:size]


def wire_bytes(pair):
    with urllib.request.urlopen(pair.url + "/ws/metrics", timeout=5) as answer:
        return json.load(answer)["bytes_transferred"]


def one(pair, name, data):
    target = os.path.join(pair.dir_b, name)
    before = wire_bytes(pair)
    start = time.perf_counter()
    with open(os.path.join(pair.dir_a, name), "wb") as f:
        f.write(data)

    def arrived():
        try:
            if os.stat(target).st_size != len(data):
                return False
            with open(target, "rb") as f:
                return f.read() == data
        except OSError:
            return False

    wait(arrived, 300, f"{name} at B", 0.005)
    seconds = time.perf_counter() - start
    time.sleep(0.3)  # the last answers counted too
    return seconds, wire_bytes(pair) - before


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-mib", type=int, default=32)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--base", default="/tmp/qs-bench-compress")
    ap.add_argument("--link-mbit", type=int, default=0)
    args = ap.parse_args()
    if os.path.exists(args.base):
        shutil.rmtree(args.base)
    pairs = {mode: QuantumPair(os.path.join(args.base, mode), client_args=["--compress", mode])
             for mode in ("always", "never")}
    samples = {(mode, kind): [] for mode in pairs for kind in ("text", "random")}
    try:
        if args.link_mbit:
            shape([pair.port for pair in pairs.values()], args.link_mbit)
        for pair in pairs.values():
            pair.start()
        for run in range(args.runs):
            contents = {"text": text(args.size_mib * MiB), "random": os.urandom(args.size_mib * MiB)}
            for mode, pair in pairs.items():
                for kind, data in contents.items():
                    samples[mode, kind].append(one(pair, f"{kind}-{run}.bin", data))
            print(f"run {run + 1}: {json.dumps({f'{m} {k}': v[-1] for (m, k), v in samples.items()})}",
                  file=sys.stderr, flush=True)
    finally:
        for pair in pairs.values():
            pair.stop()
        if args.link_mbit:
            unshape()
        shutil.rmtree(args.base, ignore_errors=True)
    link = f"{args.link_mbit} Mbit/s links" if args.link_mbit else "loopback"
    print(f"a new {args.size_mib} MiB file from A to B, medians of {args.runs} ({link}); ms / MiB on the wire")
    print(f"{'content':<10}{'--compress always':>26}{'--compress never':>26}{'time ratio':>12}")
    for kind in ("text", "random"):
        cells = []
        for mode in pairs:
            seconds = statistics.median(s for s, _ in samples[mode, kind])
            wire = statistics.median(w for _, w in samples[mode, kind])
            cells.append((seconds, wire))
        line = f"{kind:<10}" + "".join(f"{f'{s * 1000:.0f} ms / {w / MiB:.1f} MiB':>26}" for s, w in cells)
        print(line + f"{cells[0][0] / cells[1][0]:>11.2f}x")


if __name__ == "__main__":
    main()
