#!/usr/bin/env python3
"""What a delta costs in memory, hop by hop, as the file grows: the peak RSS each of the
sending client, the server and the receiving client adds while it does its part of a
delta of a large file, in the product's own functions.

    .venv/bin/python bench/bench_delta_memory.py [--size-gib 1 4] [--dir /tmp]

Per size, a base file and a new one (the base with 1 byte changed in the middle; every
block distinct: a 64 MiB random pool, stamped with a counter every 16 KiB), their block
lists kept as each side keeps them, and then each hop in a process of its own:

- ``server-blocks``: ``GET /api/blocks``'s work, the kept list of the new version, as
  the server hands it to the response (``Deltas.block_list``);
- ``client-hash``: the sender's read of the changed file (its SHA-256 and block list,
  ``BlockLists.hash_and_keep``), as the client's scan or watcher makes it;
- ``client-upload``: the sender's delta: the server's list of the base as
  ``GET /api/blocks`` brings it, the plan against the kept list of the new version, the
  delta body, and the new list kept when the server accepts it;
- ``server-build``: ``/api/upload-delta``'s work (``Deltas._build``, given the base's
  kept list opened as ``Deltas.build`` opens it): the plan read, the reuse checked
  against the base's list, the new file assembled and hashed, its list kept;
- ``client-download``: the receiver's: the new version's list as it comes, the local
  copy's kept list, the plan, the new file assembled from the local copy and the bytes
  sent (read here from the new file: the Range requests are the network's).

Each process reports its VmRSS just before its hop and its VmHWM (peak) after; the
difference is the hop's peak. Files are deleted at the end.
"""

import argparse
import os
import shutil
import struct
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

MiB = 1 << 20
POOL = 64 * MiB
STAMP_EVERY = 16 * 1024

HOP = r'''
import json, os, sys
sys.path.insert(0, {root!r})
from quantum_sync.blocklists import BlockLists
from quantum_sync.blocks import decode_blocks
from quantum_sync.client import delta as client_delta
from quantum_sync.server.delta import Deltas

def kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])

work, hop, base_hash, new_hash = sys.argv[1:5]
base, new = os.path.join(work, "base"), os.path.join(work, "new")
server_lists = BlockLists(os.path.join(work, "server-lists"))
client_lists = BlockLists(os.path.join(work, "client-lists"))
staging = os.path.join(work, "staging")

class Store:
    temp_dir = staging

class Stat:
    def __init__(self, path):
        st = os.stat(path)
        self.size, self.mtime_ns = st.st_size, st.st_mtime_ns

def server_blocks():
    return len(server_lists.read(new_hash))

def client_hash():
    lists = BlockLists(os.path.join(work, "hash-lists"))
    fd = os.open(new, os.O_RDONLY)
    try:
        return lists.hash_and_keep(fd) == new_hash
    finally:
        os.close(fd)

def client_upload():
    sha256 = new_hash
    base_blocks = decode_blocks(server_lists.read(base_hash))
    name, length, blocks, _ = client_delta._delta_body(client_lists, new, sha256, base_blocks, staging)
    client_lists.keep(sha256, blocks)
    os.replace(name, os.path.join(work, "body"))
    return length

def server_build():
    deltas = Deltas(Store(), server_lists, reactor=None, threads=object())
    fd = os.open(base, os.O_RDONLY)
    try:
        built = deltas._build(os.dup(fd), lambda: open(os.path.join(work, "body"), "rb"),
                              server_lists.open(base_hash), new_hash)
    finally:
        os.close(fd)
    os.unlink(built.path)
    return built.stat.st_size

def client_download():
    new_blocks = decode_blocks(server_lists.read(new_hash))
    local = client_delta._local_list(client_lists, base, base_hash, Stat(base))
    plan = client_delta.plan_delta(local, new_blocks)
    sent = os.path.join(staging, "sent")
    with open(new, "rb") as source, open(sent, "wb") as out:
        for offset, length in client_delta.delta.runs(plan):
            source.seek(offset)
            out.write(source.read(length))
    staged = client_delta._assemble(plan, base, Stat(base), sent, staging, new_hash)
    os.unlink(sent)
    os.unlink(staged)
    return len(plan)

before = kb("VmRSS")
result = {{"server-blocks": server_blocks, "client-hash": client_hash, "client-upload": client_upload, "server-build": server_build,
           "client-download": client_download}}[hop]()
print(json.dumps({{"before_kb": before, "peak_kb": kb("VmHWM"), "result": result}}))
'''


def write_pair(base, new, size):
    """``base`` of ``size`` bytes of distinct blocks, and ``new``: it with one byte changed
    in the middle; each written once, 1 MiB at a time."""
    pool = os.urandom(POOL)
    middle, counter = size // 2, 0
    fds = [os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644) for path in (base, new)]
    try:
        for offset in range(0, size, MiB):
            start = (offset * 7) % (POOL - MiB)
            chunk = bytearray(pool[start:start + MiB])
            for at in range(0, MiB, STAMP_EVERY):
                struct.pack_into(">Q", chunk, at, counter)
                counter += 1
            os.write(fds[0], chunk)
            if offset <= middle < offset + MiB:
                chunk[middle - offset] ^= 0xFF
            os.write(fds[1], chunk)
    finally:
        for fd in fds:
            os.close(fd)


def hop(work, name, base_hash, new_hash):
    import json
    out = subprocess.run([sys.executable, "-c", HOP.format(root=ROOT), work, name, base_hash, new_hash],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def run(size_gib, work):
    from quantum_sync.blocklists import BlockLists
    base, new = os.path.join(work, "base"), os.path.join(work, "new")
    write_pair(base, new, int(size_gib * (1 << 30)))
    os.makedirs(os.path.join(work, "staging"))
    server_lists = BlockLists(os.path.join(work, "server-lists"))
    client_lists = BlockLists(os.path.join(work, "client-lists"))
    hashes = []
    for path in (base, new):
        fd = os.open(path, os.O_RDONLY)
        try:
            hashes.append(server_lists.hash_and_keep(fd))
        finally:
            os.close(fd)
    for sha256 in hashes:  # (the sender's list of the new version: as its hash made it)
        shutil.copyfile(os.path.join(server_lists.directory, sha256), os.path.join(client_lists.directory, sha256))
    entries = os.path.getsize(os.path.join(server_lists.directory, hashes[0])) // 36
    rows = []
    for name in ("server-blocks", "client-hash", "client-upload", "server-build", "client-download"):
        figures = hop(work, name, *hashes)
        rows.append((name, figures["peak_kb"] - figures["before_kb"], figures["before_kb"], figures["peak_kb"]))
    return entries, rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-gib", type=float, nargs="+", default=[1, 4])
    ap.add_argument("--dir", default=tempfile.gettempdir())
    args = ap.parse_args()
    print(f"{'size':>8} {'blocks':>8} {'hop':<16} {'peak - before':>14} {'before':>10} {'peak':>10}")
    for size in args.size_gib:
        work = tempfile.mkdtemp(prefix="qs-deltamem-", dir=args.dir)
        try:
            entries, rows = run(size, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        for name, extra, before, peak in rows:
            print(f"{size:>6g}Gi {entries:>8} {name:<16} {extra / 1024:>11.1f} MiB {before / 1024:>6.1f} MiB "
                  f"{peak / 1024:>6.1f} MiB", flush=True)


if __name__ == "__main__":
    main()
