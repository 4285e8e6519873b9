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

    .venv/bin/python bench/bench_versions.py --recording [--history 50] [--runs 9]

measures instead, in this process, the CPU the versions' part of a group commit's
transaction takes (groups of 8 replaced files, each path with ``--history`` versions
already): the rows alone (an INSERT), and the rows with the limits applied as they are
kept (the space total and a count of each path's rows; with ``max_bytes`` set, its
total read too; at ``keep_per_file``, the oldest row of the path forgotten each time:
its file's removal, which the hourly pass would make anyway, is not counted), and the
link of a replaced 4 KiB file into the versions area (``keep_replaced`` as the install
calls it), in µs per replaced file, medians of ``--runs`` runs in turn, to set against
the server's CPU per replaced file above.
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


GROUP = 8


def recording_cost(history: int, runs: int, groups: int = 300) -> None:
    """Thread CPU per replaced file of the versions' part of a group's transaction."""
    import sqlite3
    import time

    from quantum_sync.config import VersionsConfig
    from quantum_sync.server.index import _create_schema, _prepare_connection
    from quantum_sync.server.store import Store
    from quantum_sync.server.versions import _COLUMNS, Version, VersionArea, create_schema

    class Clock:
        def seconds(self):
            return time.time()

    def rows_only(kept):  # what a recording did before the limits applied at keep time
        def record(txn):
            txn.executemany(f"INSERT INTO versions ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                            [(v.id, v.path, v.modified_ns, v.size, v.hash, v.source_client,
                              int(v.deleted), v.kept) for v in kept])
        return record

    workdir = tempfile.mkdtemp(prefix="qs-recording-")
    try:
        store = Store(os.path.join(workdir, "root"))
        store.prepare()
        area = VersionArea(store, Clock())
        area.prepare()
        setups = {"rows only": (rows_only, None),
                  "rows + keep_per_file": (area.recorder, VersionsConfig(keep_per_file=history + groups)),
                  "rows + both limits": (area.recorder, VersionsConfig(keep_per_file=history + groups,
                                                                       max_bytes=1 << 60)),
                  "rows + at keep_per_file": (area.recorder, VersionsConfig(keep_per_file=history))}
        figures = {name: [] for name in setups}
        figures["link (keep_replaced)"] = []
        for run in range(runs):
            figures["link (keep_replaced)"].append(link_cost(store, area, GROUP * groups // 4))
            for number, (name, (recorder, policy)) in enumerate(setups.items()):
                connection = sqlite3.connect(os.path.join(workdir, f"{run}-{number}.db"))  # a new index
                _prepare_connection(connection)
                txn = connection.cursor()
                _create_schema(txn)
                create_schema(txn)
                paths = [f"dir/file-{i:05d}.bin" for i in range(GROUP * 4)]
                seed = [(os.urandom(12).hex(), path, 0, 4096, "0" * 64, "", 0, float(n))
                        for path in paths for n in range(history)]
                txn.executemany(f"INSERT INTO versions ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", seed)
                connection.commit()
                area.policy = policy
                spent = 0.0
                for g in range(groups):
                    kept = [Version(os.urandom(12).hex(), paths[(g * GROUP + i) % len(paths)], 0, 4096,
                                    "1" * 64, "c", False, time.time()) for i in range(GROUP)]
                    started = time.thread_time()
                    recorder(kept)(txn)
                    spent += time.thread_time() - started
                    connection.commit()
                connection.close()
                figures[name].append(spent / (groups * GROUP) * 1e6)
        print(f"\nversions' part of a group commit's transaction, {GROUP} replaced files a group,"
              f" {history} versions a path before, and the link of a replaced file,"
              f" median of {runs} runs, thread CPU")
        print(f"{'recording':<23} | {'µs per replaced file':>20}")
        print("-" * 46)
        for name, values in figures.items():
            print(f"{name:<23} | {statistics.median(values):>20.1f}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def link_cost(store, area, files: int) -> float:
    """Thread CPU per file of keeping a replaced 4 KiB file's version on its side of the
    file system (:meth:`VersionArea.keep_replaced` as the install calls it: the path
    walked already, for the rename)."""
    import time

    from quantum_sync.protocol import FileMetadata

    os.makedirs(os.path.join(store.root, "dir"), exist_ok=True)
    spent = 0.0
    for n in range(files):
        path = f"dir/replaced-{n:05d}.bin"
        absolute = store.walk(path)[0]
        with open(absolute, "wb") as f:
            f.write(os.urandom(4096))
        st = os.lstat(absolute)
        current = (FileMetadata(path, st.st_size, st.st_mtime_ns / 1e9, "0" * 64), st.st_mtime_ns)
        started = time.thread_time()
        kept = area.keep_replaced(path, current, None, absolute)
        spent += time.thread_time() - started
        area.discard(kept)
        os.unlink(absolute)
    return spent / files * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recording", action="store_true",
                        help="measure the versions' part of a group commit's transaction instead")
    parser.add_argument("--history", type=int, default=50)
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", default=None, help="work directory (default: a new temp dir)")
    args = parser.parse_args()
    if args.recording:
        recording_cost(args.history, args.runs)
        return
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
