#!/usr/bin/env python3
"""What keeping the cluster's journal in commit order costs: one command, a table.

    PYTHONPATH=$PWD .venv/bin/python bench/bench_journal_appends.py [--groups 200] [--runs 3]

The PostgreSQL index takes a group's seqs by updating the one row of ``journal_head``,
whose lock it holds to commit, so appends are serialised (a later seq never becomes
visible before an earlier one). This appends ``--groups`` groups of 8 entries through
1 and 4 concurrent writers (each a :class:`PgIndex` with its own pool) and, as the
baseline, the same with seqs from a plain PostgreSQL sequence (not serialised, so not
safe for readers: shown only for the cost), each in a fresh schema of
``QS_BENCH_DATABASE`` (default postgresql://root@127.0.0.1:5432/test), dropped after.
Prints the median groups a second of ``--runs`` runs and the ratio.
"""

import argparse
import os
import statistics
import sys
import time
import uuid
from urllib.parse import quote

import psycopg
from twisted.internet import defer, task
from twisted.internet.defer import Deferred

from quantum_sync.protocol import Delete
from quantum_sync.server.cluster.pgindex import PgIndex

DATABASE = os.environ.get("QS_BENCH_DATABASE", "postgresql://root@127.0.0.1:5432/test")
GROUP = 8


def _unordered_journal(index, txn, entries, timestamp):
    """The baseline: seqs from a sequence, no lock held (appends may commit out of order)."""
    txn.execute("SELECT nextval('unordered') FROM generate_series(1, %s)", (len(entries),))
    seqs = [row[0] for row in txn.fetchall()]
    txn.executemany("INSERT INTO journal (seq, operation, source_client, timestamp) VALUES (%s, %s, %s, %s)",
                    [(seq, '{"Delete":{"path":"x"}}', source, timestamp) for seq, (_, source) in zip(seqs, entries)])
    return seqs


async def groups_a_second(reactor, writers: int, ordered: bool, groups: int) -> float:
    schema = "qs_bench_" + uuid.uuid4().hex[:10]
    with psycopg.connect(DATABASE, autocommit=True) as connection:
        connection.execute(f"CREATE SCHEMA {schema}")
    joiner = "&" if "?" in DATABASE else "?"
    url = f"{DATABASE}{joiner}options={quote(f'-csearch_path={schema}')}"
    indexes = [PgIndex(url, 10**9, reactor) for _ in range(writers)]
    try:
        for index in indexes:
            await index.open()
        if not ordered:
            with psycopg.connect(url, autocommit=True) as connection:
                connection.execute("CREATE SEQUENCE unordered")
            for index in indexes:
                index._journal = _unordered_journal.__get__(index)

        async def write(index, name):
            for n in range(groups // writers):
                await index.record_each([([], [], Delete(f"{name}-{n}-{k}"), name) for k in range(GROUP)], "t")

        started = time.perf_counter()
        await defer.gatherResults([Deferred.fromCoroutine(write(index, f"w{n}"))
                                   for n, index in enumerate(indexes)])
        return groups / (time.perf_counter() - started)
    finally:
        for index in indexes:
            index.stopService()
        with psycopg.connect(DATABASE, autocommit=True) as connection:
            connection.execute(f"DROP SCHEMA {schema} CASCADE")


async def main(reactor, args):
    rates = {}
    for _ in range(args.runs):
        for writers in (1, 4):
            for ordered in (True, False):
                rates.setdefault((writers, ordered), []).append(
                    await groups_a_second(reactor, writers, ordered, args.groups))
    print(f"\n{args.groups} groups of {GROUP} journal entries, median of {args.runs} run(s), "
          f"{os.cpu_count()} CPU(s)")
    print(f"{'writers':>7} | {'head row (ordered)':>18} | {'sequence (unordered)':>20} | ratio")
    print("-" * 64)
    for writers in (1, 4):
        ordered = statistics.median(rates[(writers, True)])
        unordered = statistics.median(rates[(writers, False)])
        print(f"{writers:>7} | {ordered:>12.0f} grp/s | {unordered:>14.0f} grp/s | {ordered / unordered:.2f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--groups", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    options = parser.parse_args()
    sys.exit(task.react(lambda reactor: Deferred.fromCoroutine(main(reactor, options))))
