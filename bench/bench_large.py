#!/usr/bin/env python3
"""Large files through the server, with and without the relay, same run, loopback only.

    .venv/bin/python bench/bench_large.py [--size-mib 256] [--rounds 5] [--link-mbit 1000]

Starts two quantum-sync setups side by side (a server and clients A and B each, as
bench_sync.py does): in one, B fetches A's large uploads from the server's relay while
they arrive (the default); in the other, B runs with ``--no-relay`` and downloads each
file once the server has stored it. Each round writes one ``--size-mib`` MiB file into
A's folder of each setup in turn and times three moments from the start of the write:

- written: the benchmark closed the file,
- stored: the file is in the server's root (uploaded, verified, fsynced, renamed),
- arrived: identical bytes are in B's folder.

Everything runs on one machine, so A's upload, the server and B's download share its
cores, disk and loopback. ``--link-mbit N`` (root only; needs ``tc``) gives each direction
to and from each server its own N Mbit/s link on ``lo``, as two remote clients would
have: upload and download then no longer share one pipe. The shaping is removed
afterwards, whatever happens.

Prints one table of medians; the files are removed after each round.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from bench_sync import QuantumPair, clear_base, free_port, wait  # noqa: E402

POLL = 0.001


def shape(ports, mbit):
    """One ``mbit`` link per direction per server port on ``lo`` (tc htb)."""
    commands = [["qdisc", "add", "dev", "lo", "root", "handle", "1:", "htb", "default", "99"],
                ["class", "add", "dev", "lo", "parent", "1:", "classid", "1:99", "htb", "rate", "100gbit"]]
    for i, port in enumerate(ports):
        for j, direction in enumerate(("dport", "sport")):
            classid = f"1:{10 + 2 * i + j}"
            commands += [["class", "add", "dev", "lo", "parent", "1:", "classid", classid, "htb",
                          "rate", f"{mbit}mbit", "ceil", f"{mbit}mbit", "burst", "1mb"],
                         ["filter", "add", "dev", "lo", "parent", "1:", "protocol", "ip", "u32",
                          "match", "ip", direction, str(port), "0xffff", "flowid", classid]]
    for command in commands:
        subprocess.run(["tc", *command], check=True, capture_output=True)


def unshape():
    subprocess.run(["tc", "qdisc", "del", "dev", "lo", "root"], capture_output=True)


def one_round(pair, mib, name):
    """Seconds from the start of the write to: written, stored, arrived."""
    block = os.urandom(1 << 20)
    chunks = [block[:-8] + i.to_bytes(8, "big") for i in range(mib)]
    source, stored, target = (os.path.join(d, name) for d in (pair.dir_a, os.path.join(pair.base, "root"), pair.dir_b))
    size = mib << 20
    start = time.perf_counter()
    with open(source, "wb") as f:
        for chunk in chunks:
            f.write(chunk)
    moments = {"written": time.perf_counter() - start}

    def has(path):
        try:
            return os.stat(path).st_size == size
        except OSError:
            return False

    deadline = start + 600
    while "arrived" not in moments:
        if time.perf_counter() > deadline:
            raise TimeoutError(f"{name} did not arrive")
        if "stored" not in moments and has(stored):
            moments["stored"] = time.perf_counter() - start
        if has(target):
            moments["arrived"] = time.perf_counter() - start
            moments.setdefault("stored", moments["arrived"])
        time.sleep(POLL)
    with open(target, "rb") as f:
        identical = all(f.read(len(chunk)) == chunk for chunk in chunks)
    os.remove(source)
    wait(lambda: not os.path.exists(target) and not os.path.exists(stored), 120, "removal")
    os.sync()
    return moments, identical


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--link-mbit", type=int, default=0, help="per-direction link per server (root, tc)")
    ap.add_argument("--base", default="/tmp/qs-bench-large")
    args = ap.parse_args()
    if args.link_mbit and not shutil.which("tc"):
        sys.exit("bench_large: --link-mbit needs tc (apt-get install -y iproute2)")
    clear_base(args.base, wait=False)
    setups = {
        "relay": QuantumPair(os.path.join(args.base, "relay"), port=free_port()),
        "no relay": QuantumPair(os.path.join(args.base, "norelay"), client_args=["--no-relay"], port=free_port()),
    }
    results = {label: [] for label in setups}
    try:
        for pair in setups.values():
            pair.start()
        if args.link_mbit:
            shape([pair.port for pair in setups.values()], args.link_mbit)
        for i in range(args.rounds):
            for label, pair in setups.items():
                moments, identical = one_round(pair, args.size_mib, f"large-{i}.bin")
                if not identical:
                    raise SystemExit(f"bench_large: {label} round {i}: the bytes in B differ")
                results[label].append(moments)
                print(f"round {i} {label}: " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in moments.items()),
                      file=sys.stderr, flush=True)
    finally:
        if args.link_mbit:
            unshape()
        for pair in setups.values():
            pair.stop()
    print_table(results, args)


def print_table(results, args):
    link = f"{args.link_mbit} Mbit/s per direction" if args.link_mbit else "loopback, unshaped"
    print(f"{args.size_mib} MiB file, {args.rounds} rounds, {link}; medians")
    print(f"{'':<10}{'written ms':>12}{'stored ms':>12}{'arrived ms':>12}{'MB/s':>10}")
    rates = {}
    for label, rounds in results.items():
        med = {k: statistics.median(r[k] for r in rounds) for k in ("written", "stored", "arrived")}
        rates[label] = statistics.median((args.size_mib << 20) / r["arrived"] / 1e6 for r in rounds)
        print(f"{label:<10}" + "".join(f"{med[k] * 1000:>12.0f}" for k in ("written", "stored", "arrived"))
              + f"{rates[label]:>10.1f}")
    print(f"relay / no relay: {rates['relay'] / rates['no relay']:.2f}x")


if __name__ == "__main__":
    main()
