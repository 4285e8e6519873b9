#!/usr/bin/env python3
"""Where a delta's time goes, hop by hop, without the network: the work each of the
sender, the server and the receiver does on the file, in the product's own functions.

    .venv/bin/python bench/bench_delta_hops.py [--size-mib 256] [--runs 3] [--dir /tmp]

A base file of ``--size-mib`` MiB (random bytes) and its block list, then per run and
per edit (``change``: 1 MiB overwritten in the middle; ``append``: 1 MiB appended) the
new file, and the time of:

- ``sha256``: one plain SHA-256 pass over the new file (hashlib): the floor of a hop
  that proves the whole file;
- ``sender``: the sending client's read of the changed file (its SHA-256, cut into
  blocks and their hashes, the list kept: ``BlockLists.hash_and_keep``) and the delta
  body (the plan and the blocks sent, read again: only those);
- ``build``: the new file made from the base and the plan in a temp file, its SHA-256
  taken from what was written, fsynced (``deltafile.assemble``): what the server does
  for ``/api/upload-delta`` and the receiving client for its download;
- ``copy``/``fsync`` alone: ``copy_file_range`` of the whole file and its fsync (a
  reflink on XFS or btrfs: then almost nothing).

Prints medians; ``--dir`` chooses the file system (the copy is a reflink only where it
can be). The network and the processes' round trips are bench_delta.py's.
"""

import argparse
import hashlib
import os
import shutil
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from quantum_sync import delta, deltafile  # noqa: E402
from quantum_sync.blocklists import BlockLists  # noqa: E402
from quantum_sync.blocks import decode_blocks, plan_delta  # noqa: E402

MiB = 1 << 20


def write_random(path, size):
    with open(path, "wb") as f:
        for _ in range(size // MiB):
            f.write(os.urandom(MiB))


def timed(function, *args):
    start = time.perf_counter()
    result = function(*args)
    return time.perf_counter() - start, result


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while piece := f.read(4 * MiB):
            digest.update(piece)
    return digest.hexdigest()


def sender(lists, path, base_blocks, body_path):
    """The sender's work: one read for the hash and the list, then the delta body."""
    fd = os.open(path, os.O_RDONLY)
    try:
        plan = plan_delta(base_blocks, lists.blocks(lists.hash_and_keep(fd)))
        with open(body_path, "wb") as body:
            body.write(delta.encode_head(plan))
            for start, length in delta.runs(plan):
                body.write(os.pread(fd, length, start))
    finally:
        os.close(fd)
    return plan


def build(plan, base, body_path, out_dir):
    """The server's (and the receiver's) work: assemble, hash, fsync."""
    base_fd = os.open(base, os.O_RDONLY)
    out_fd, out = tempfile.mkstemp(dir=out_dir)
    try:
        with open(body_path, "rb") as body:
            count = delta.head_steps(body.read(delta.HEAD_FIXED))
            body.read(count * delta.STEP_SIZE)
            digest, _ = deltafile.assemble(plan, base_fd, body, out_fd)
        os.fsync(out_fd)
    finally:
        os.close(base_fd)
        os.close(out_fd)
        os.unlink(out)
    return digest


def copy_and_fsync(base, out_dir):
    size = os.stat(base).st_size
    base_fd = os.open(base, os.O_RDONLY)
    out_fd, out = tempfile.mkstemp(dir=out_dir)
    try:
        copied, start = 0, time.perf_counter()
        while copied < size:
            copied += os.copy_file_range(base_fd, out_fd, size - copied, copied, copied)
        middle = time.perf_counter()
        os.fsync(out_fd)
        return middle - start, time.perf_counter() - middle
    finally:
        os.close(base_fd)
        os.close(out_fd)
        os.unlink(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dir", default=tempfile.gettempdir())
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="qs-hops-", dir=args.dir)
    try:
        run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(args, work):
    size = args.size_mib * MiB
    base = os.path.join(work, "base")
    write_random(base, size)
    lists = BlockLists(os.path.join(work, "lists"))
    fd = os.open(base, os.O_RDONLY)
    base_hash = lists.hash_and_keep(fd)
    os.close(fd)
    base_blocks = decode_blocks(lists.read(base_hash))
    os.sync()
    figures = {}
    for kind in ("change", "append"):
        for _ in range(args.runs):
            new, body = os.path.join(work, "new"), os.path.join(work, "body")
            shutil.copyfile(base, new)
            with open(new, "r+b") as f:
                f.seek(size // 2 if kind == "change" else size)
                f.write(os.urandom(MiB))
            os.sync()
            samples = figures.setdefault(kind, {})
            samples.setdefault("sha256", []).append(timed(sha256_of, new)[0])
            seconds, plan = timed(sender, lists, new, base_blocks, body)
            samples.setdefault("sender", []).append(seconds)
            seconds, digest = timed(build, plan, base, body, work)
            if digest != sha256_of(new):
                raise SystemExit("the file built is not the new file")
            samples.setdefault("build", []).append(seconds)
            copy, sync = copy_and_fsync(base, work)
            samples.setdefault("copy", []).append(copy)
            samples.setdefault("fsync", []).append(sync)
            os.unlink(new)
            os.unlink(body)
    print(f"{args.size_mib} MiB in {args.dir}; medians of {args.runs}, ms")
    columns = ("sha256", "sender", "build", "copy", "fsync")
    print(f"{'edit':<10}" + "".join(f"{c:>10}" for c in columns))
    for kind, samples in figures.items():
        print(f"{kind:<10}" + "".join(f"{statistics.median(samples[c]) * 1000:>10.0f}" for c in columns))


if __name__ == "__main__":
    main()
