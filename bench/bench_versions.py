#!/usr/bin/env python3
"""What keeping versions costs: two servers side by side, versions on (the default) and
off (``"versions": {"keep_days": 0}``), same run, loopback only.

    .venv/bin/python bench/bench_versions.py [--size-mib 256] [--files 1000]
        [--concurrency 8] [--runs 3]

Per run and per server, in turn:

- large: one ``--size-mib`` MiB upload to a new name and one over an existing file of
  the same size (which goes first alternates from run to run; each starts after a
  ``sync``, so that neither pays for the writeback of the other) (with versions on, its old inode is linked into the versions area; off,
  it is freed by the rename), each timed from the request to the answer;
- small: ``--files`` uploads of 4 KiB to new names on ``--concurrency`` connections, then
  ``--files`` uploads replacing them (no precondition), in files/s, and the server
  process's CPU milliseconds per file (user + system) of each.

Prints medians: MB/s of a new large file and of a replacement and their ratio (the
replacement against the new file of the same server and run), and the small-file rates
with the on/off ratio. Stops both servers and removes their roots.
"""

import argparse
import hashlib
import os
import shutil
import statistics
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from bench_small_uploads import cpu_seconds, upload_all  # noqa: E402
from bench_transfer import QuantumServer, make_file  # noqa: E402

SETUPS = {"on": {}, "off": {"versions": {"keep_days": 0}}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", default=None, help="work directory (default: a new temp dir)")
    args = parser.parse_args()
    size = args.size_mib * 1024 * 1024
    workdir = tempfile.mkdtemp(prefix="qs-versions-", dir=args.dir)
    servers = {}
    results = {(name, key): [] for name in SETUPS for key in ("new", "replace", "ratio", "small_new", "small_replace", "cpu_new", "cpu_replace")}
    try:
        sources = [os.path.join(workdir, f"source-{i}.bin") for i in range(2)]
        digests = [make_file(path, size) for path in sources]
        payloads = []
        for _ in range(args.files):
            body = os.urandom(4096)
            payloads.append((body, hashlib.sha256(body).hexdigest()))
        for name, handler in SETUPS.items():
            os.makedirs(os.path.join(workdir, name))
            servers[name] = QuantumServer(os.path.join(workdir, name), **handler)
            servers[name].upload(sources[0], "same.bin", digests[0])
        for run in range(args.runs):
            # on and off in turn first, so that neither always runs in the other's wake
            for name, server in sorted(servers.items(), reverse=bool(run % 2)):
                # each from a clean page cache (no writeback of the one before in its time),
                # and in turn first
                if run % 2:
                    os.sync()
                    replace = server.upload(sources[(run + 1) % 2], "same.bin", digests[(run + 1) % 2])
                os.sync()
                new = server.upload(sources[run % 2], f"new-{run}.bin", digests[run % 2])
                if not run % 2:
                    os.sync()
                    replace = server.upload(sources[(run + 1) % 2], "same.bin", digests[(run + 1) % 2])
                server.delete(f"new-{run}.bin")
                results[(name, "new")].append(size / new / 1e6)
                results[(name, "replace")].append(size / replace / 1e6)
                results[(name, "ratio")].append(new / replace)
                names = [f"small-{run}/f{i:05d}.bin" for i in range(args.files)]
                before = cpu_seconds(server.process.pid)
                elapsed, _ = upload_all(server, names, payloads, args.concurrency)
                results[(name, "small_new")].append(args.files / elapsed)
                middle = cpu_seconds(server.process.pid)
                elapsed, _ = upload_all(server, names, payloads[::-1], args.concurrency, create_only=False)
                results[(name, "small_replace")].append(args.files / elapsed)
                results[(name, "cpu_new")].append((middle - before) * 1000 / args.files)
                results[(name, "cpu_replace")].append((cpu_seconds(server.process.pid) - middle) * 1000 / args.files)
                print(f"run {run + 1}/{args.runs} versions {name}: " + ", ".join(
                    f"{key} {results[(name, key)][-1]:.2f}" for key in
                    ("new", "replace", "ratio", "small_new", "small_replace", "cpu_replace")), file=sys.stderr)
    finally:
        for server in servers.values():
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    median = {key: statistics.median(values) for key, values in results.items()}
    print(f"\nversions on vs off, same run: {args.size_mib} MiB files, {args.files} small files of 4 KiB"
          f" at concurrency {args.concurrency}, median of {args.runs} runs, 127.0.0.1, {os.cpu_count()} CPU(s)")
    print(f"{'versions':<9} | {'new MB/s':>9} | {'replace MB/s':>12} | {'replace/new':>11} |"
          f" {'small new/s':>11} | {'small replace/s':>15} | {'CPU ms/new':>10} | {'CPU ms/replace':>14}")
    print("-" * 112)
    for name in SETUPS:
        print(f"{name:<9} | {median[(name, 'new')]:>9.0f} | {median[(name, 'replace')]:>12.0f} |"
              f" {median[(name, 'ratio')]:>10.2f}x | {median[(name, 'small_new')]:>11.0f} |"
              f" {median[(name, 'small_replace')]:>15.0f} | {median[(name, 'cpu_new')]:>10.2f} |"
              f" {median[(name, 'cpu_replace')]:>14.2f}")
    for key in ("small_new", "small_replace", "cpu_new", "cpu_replace"):
        ratios = [on / off for on, off in zip(results[("on", key)], results[("off", key)])]
        print(f"{key.replace('_', ' ')}: versions on / off = {statistics.median(ratios):.3f}"
              f" (median of per-run ratios)")


if __name__ == "__main__":
    main()
