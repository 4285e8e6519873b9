#!/usr/bin/env python3
"""Small-upload benchmark: many concurrent 4 KiB uploads against one server.

    .venv/bin/python bench/bench_small_uploads.py [--files 2000] [--size 4096]
        [--concurrency 1,8,32] [--runs 3]

Starts ``twistd -n quantum-sync`` on 127.0.0.1 (a fresh root in a temp directory) and,
for each concurrency level, uploads ``--files`` new files of ``--size`` random bytes with
that many threads, each over its own persistent HTTP/1.1 connection, every upload with
``X-Content-SHA256`` and ``If-None-Match: *`` (so each is hashed, fsynced, renamed,
preconditioned and journalled as a client's would be). Every run writes into a new
directory. Prints the median files/s of ``--runs`` runs, p50/p99 latency of the
median run and the median CPU milliseconds the server process used per upload. Stops
the server it started.
"""

import argparse
import hashlib
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_transfer import QuantumServer  # noqa: E402


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by process ``pid``."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def upload_all(server, names, payloads, concurrency, create_only=True):
    """Upload ``names[i]`` with ``payloads[i]`` on ``concurrency`` connections (each with
    ``If-None-Match: *`` when ``create_only``, else replacing what is there);
    returns (seconds, latencies)."""
    condition = {"If-None-Match": "*"} if create_only else {}
    next_item = iter(range(len(names)))
    lock = threading.Lock()
    latencies, failures = [], []

    def worker():
        conn = server.connection()
        while True:
            with lock:
                i = next(next_item, None)
            if i is None:
                break
            body, digest = payloads[i]
            started = time.perf_counter()
            conn.request("PUT", "/api/upload?" + urllib.parse.urlencode({"path": names[i]}),
                         body=body, headers={"X-Content-SHA256": digest, **condition,
                                             "X-Client-Id": "bench",
                                             "Content-Type": "application/octet-stream"})
            response = conn.getresponse()
            answer = response.read()
            latencies.append(time.perf_counter() - started)
            if response.status != 200 or json.loads(answer)["hash"] != digest:
                failures.append((names[i], response.status, answer[:200]))
        conn.close()

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if failures:
        raise SystemExit(f"{len(failures)} upload(s) failed, first: {failures[0]}")
    return elapsed, latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--size", type=int, default=4096, help="bytes a file")
    parser.add_argument("--concurrency", default="1,8,32", help="comma-separated levels")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", default=None, help="work directory (default: a new temp dir)")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]

    workdir = args.dir or tempfile.mkdtemp(prefix="qs-small-")
    os.makedirs(workdir, exist_ok=True)
    payloads = []
    for _ in range(args.files):
        body = os.urandom(args.size)
        payloads.append((body, hashlib.sha256(body).hexdigest()))
    server = QuantumServer(workdir)
    rows = []
    try:
        for level in levels:
            rates, runs, cpu = [], [], []
            for run in range(args.runs):
                names = [f"c{level}-r{run}/f{i:05d}.bin" for i in range(args.files)]
                before = cpu_seconds(server.process.pid)
                elapsed, latencies = upload_all(server, names, payloads, level)
                cpu.append((cpu_seconds(server.process.pid) - before) * 1000 / args.files)
                rates.append(args.files / elapsed)
                runs.append((args.files / elapsed, sorted(latencies)))
            runs.sort(key=lambda r: r[0])
            latencies = runs[len(runs) // 2][1]
            rows.append((level, statistics.median(rates), min(rates), max(rates),
                         latencies[len(latencies) // 2] * 1000,
                         latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
                         statistics.median(cpu)))
    finally:
        server.stop()

    print(f"\n{args.files} uploads of {args.size} B a run, median of {args.runs} run(s), "
          f"127.0.0.1, {os.cpu_count()} CPU(s)")
    print(f"{'concurrency':>11} | {'files/s':>8} | {'min':>7} | {'max':>7} | {'p50 ms':>7} | {'p99 ms':>7}"
          f" | {'server CPU ms/file':>18}")
    print("-" * 84)
    for level, median, low, high, p50, p99, cpu in rows:
        print(f"{level:>11} | {median:>8.0f} | {low:>7.0f} | {high:>7.0f} | {p50:>7.1f} | {p99:>7.1f}"
              f" | {cpu:>18.2f}")


if __name__ == "__main__":
    main()
