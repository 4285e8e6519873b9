#!/usr/bin/env python3
"""Cluster benchmark: three nodes on PostgreSQL and Redis beside an embedded server.

    .venv/bin/python bench/bench_cluster.py                       # defaults (about a minute)
    .venv/bin/python bench/bench_cluster.py --clients 1000 --runs 1   # a quick look

Starts three ``twistd -n quantum-sync`` cluster nodes on one root (a fresh PostgreSQL
schema in ``QS_BENCH_DATABASE``, default postgresql://root@127.0.0.1:5432/test, dropped
at the end; Redis at ``QS_BENCH_REDIS``, default redis://127.0.0.1:6379) and one embedded
server, all on 127.0.0.1, and measures in the same run:

- propagation: a WebSocket client on node 1 sends a FileOperation (a new folder); the
  time until a client on node 1 (same node) and a client on node 2 (across nodes, through
  Redis) hear it, p50 and p99 over ``--broadcasts`` operations;
- small files a second: ``--files`` uploads of 4 KiB with ``If-None-Match: *`` at each
  ``--concurrency`` through a cluster node and through the embedded server, alternating,
  median of ``--runs`` runs (the cost of PostgreSQL, the head row and the advisory locks),
  and the same files as the client sends them: ``/api/batch/upload`` requests of 64 files,
  two at a time;
- one broadcast to ``--clients`` WebSocket clients on each of the three nodes (sent on
  node 1): the time until the last client has it, p50 and p99 over 20 broadcasts; then
  the same number of clients all on the embedded server, as the baseline.

Targets (issue 15): cross-node p50 < 15 ms and p99 < 50 ms; cluster small files at least
0.7 of embedded; a broadcast to 3 x 3,000 clients, last client p50 < 100 ms.
"""

import argparse
import hashlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from urllib.parse import quote

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bench_small_uploads import upload_all  # noqa: E402
from bench_transfer import TWISTD, free_port, wait_port  # noqa: E402
from ws_load import Load, raise_fd_limit  # noqa: E402

import http.client  # noqa: E402

DATABASE = os.environ.get("QS_BENCH_DATABASE", "postgresql://root@127.0.0.1:5432/test")
REDIS = os.environ.get("QS_BENCH_REDIS", "redis://127.0.0.1:6379")
#: WebSocket settings of every server: room for the load, timers out of the way.
WEBSOCKET = {"max_connections": 10000, "rate_limit": 1000000, "ping_interval": 3600,
             "stale_timeout": 7200, "cleanup_interval": 3600, "metrics_interval": 3600}


class Server:
    """``twistd -n quantum-sync`` in a subprocess (``cluster``: its cluster block)."""

    def __init__(self, workdir: str, name: str, root: str, cluster=None):
        self.port = free_port()
        handler = {"handler": "file_sync", "root": root, "enable_upload": True,
                   "websocket": WEBSOCKET, **({"cluster": cluster} if cluster else {})}
        config = {"apps": {"http": {"servers": {name: {
            "listen": [f"127.0.0.1:{self.port}"],
            "routes": [{"match": [{"path": ["/api/*", "/ws"]}], "handle": [handler]}],
        }}}}}
        config_path = os.path.join(workdir, f"{name}.json")
        with open(config_path, "w") as f:
            json.dump(config, f)
        self.log = open(os.path.join(workdir, f"{name}.out"), "wb")
        self.process = subprocess.Popen(
            [TWISTD, "-n", "--pidfile=", "--logfile", os.path.join(workdir, f"{name}.log"),
             "quantum-sync", "--config", config_path], cwd=workdir, stdout=self.log, stderr=self.log)
        wait_port(self.port, time.monotonic() + 60)

    def connection(self):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=300)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


class SpreadLoad(Load):
    """ws_load's raw WebSocket clients, each opened on the next of ``ports`` in turn;
    the time each receiver heard each message is kept when ``timed``."""

    def __init__(self, ports, timed=False):
        super().__init__(ports[0], 0, compress=True)
        self.ports = ports
        self._turn = 0
        self.timed = timed
        self.heard = {}  # (connection, message number) -> perf_counter

    def open(self, client_id, receiver=True, port=None):
        self.port = port or self.ports[self._turn % len(self.ports)]
        if port is None and receiver:
            self._turn += 1
        return super().open(client_id, receiver)

    def _counted(self, connection):
        super()._counted(connection)
        if self.timed:
            self.heard[(connection, connection.messages)] = time.perf_counter()


def batch_upload_all(server, prefix, payloads, per_batch=64, in_flight=2):
    """The client's way for small files: ``/api/batch/upload`` requests of ``per_batch``
    files, ``in_flight`` at once (threads, one connection each). Returns seconds."""
    from quantum_sync import batch

    groups = [list(enumerate(payloads))[i:i + per_batch] for i in range(0, len(payloads), per_batch)]
    lock = threading.Lock()
    failures = []

    def worker():
        conn = server.connection()
        while True:
            with lock:
                if not groups:
                    break
                group = groups.pop()
            manifest = batch.upload_manifest([(f"{prefix}/f{i:05d}.bin", len(body), digest, None)
                                              for i, (body, digest) in group])
            conn.request("POST", "/api/batch/upload", body=batch.encode(manifest, [body for _, (body, _) in group]),
                         headers={"X-Client-Id": "bench", "Content-Type": "application/octet-stream"})
            response = conn.getresponse()
            answer = json.loads(response.read())
            if response.status != 200 or any("error" in result for result in answer["results"]):
                failures.append(answer)
        conn.close()

    threads = [threading.Thread(target=worker) for _ in range(in_flight)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise SystemExit(f"batch uploads failed: {str(failures[0])[:300]}")
    return time.perf_counter() - started


def quantile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))]


def connected_sender(load, port):
    sender = load.open("bench-sender", receiver=False, port=port)
    deadline = time.monotonic() + 30
    while sender.state != "open" and time.monotonic() < deadline:
        load.poll(0.05)
    if sender.state != "open":
        raise SystemExit("the sender could not connect")
    return sender


def propagation(ports, broadcasts):
    """``(same-node latencies, cross-node latencies)`` in seconds."""
    load = SpreadLoad(ports[:2], timed=True)
    load.sender = connected_sender(load, ports[0])
    load.connect_all(2, "prop")  # one receiver on node 1, one on node 2
    same, cross = sorted((c for c in load.connections if c.receiver), key=lambda c: ports.index(
        c.sock.getpeername()[1]))
    load.settle(0.5)
    base = same.messages
    same_times, cross_times = [], []
    for n in range(1, broadcasts + 1):
        started = time.perf_counter()
        load.send(load.sender, load.operation("prop"))
        load.wait_delivered(base + n, 30)
        same_times.append(load.heard[(same, base + n)] - started)
        cross_times.append(load.heard[(cross, base + n)] - started)
        load.settle(0.005)
    for connection in load.connections:
        connection.sock.close()
    return same_times, cross_times


def broadcast(ports, per_node):
    """Last-client latencies of 20 broadcasts to ``per_node`` clients on each node."""
    load = SpreadLoad(ports)
    load.sender = connected_sender(load, ports[0])
    load.connect_all(per_node * len(ports), "fan")
    load.settle(2.0)
    delivered = load.delivered_to_all()
    latencies = []
    for _ in range(20):
        started = time.perf_counter()
        load.send(load.sender, load.operation("fan"))
        delivered += 1
        latencies.append(load.wait_delivered(delivered, 60) - started)
        load.settle(0.05)
    for connection in load.connections:
        connection.sock.close()
    return latencies, load.receivers


def make_schema():
    import psycopg

    schema = "qs_bench_" + uuid.uuid4().hex[:10]
    with psycopg.connect(DATABASE, autocommit=True) as connection:
        connection.execute(f"CREATE SCHEMA {schema}")
    joiner = "&" if "?" in DATABASE else "?"
    return schema, f"{DATABASE}{joiner}options={quote(f'-csearch_path={schema}')}"


def drop_schema(schema):
    import psycopg

    with psycopg.connect(DATABASE, autocommit=True) as connection:
        connection.execute(f"DROP SCHEMA {schema} CASCADE")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--broadcasts", type=int, default=200, help="propagation samples")
    parser.add_argument("--files", type=int, default=500, help="small uploads a run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--clients", type=int, default=3000, help="WebSocket clients a node")
    parser.add_argument("--concurrency", default="8,32", help="small uploads at once (comma-separated)")
    args = parser.parse_args()
    raise_fd_limit()
    workdir = tempfile.mkdtemp(prefix="qs-cluster-")
    schema, database = make_schema()
    servers = []
    try:
        root = os.path.join(workdir, "root")
        os.makedirs(root)
        for n in (1, 2, 3):
            servers.append(Server(workdir, f"node{n}", root,
                                  {"database": database, "redis": REDIS, "node_id": f"bench-{n}"}))
        embedded_root = os.path.join(workdir, "embedded")
        os.makedirs(embedded_root)
        embedded = Server(workdir, "embedded", embedded_root)
        servers.append(embedded)
        ports = [server.port for server in servers[:3]]

        same, cross = propagation(ports, args.broadcasts)

        payloads = []
        for _ in range(args.files):
            body = os.urandom(4096)
            payloads.append((body, hashlib.sha256(body).hexdigest()))
        levels = [int(level) for level in args.concurrency.split(",")]
        rates = {(label, level): [] for label in ("cluster", "embedded") for level in levels}
        for run in range(args.runs):
            for level in levels:
                for label, server in (("cluster", servers[0]), ("embedded", embedded)):
                    names = [f"small-c{level}-r{run}/f{i:05d}.bin" for i in range(args.files)]
                    elapsed, _ = upload_all(server, names, payloads, level)
                    rates[(label, level)].append(args.files / elapsed)
            for label, server in (("cluster", servers[0]), ("embedded", embedded)):
                elapsed = batch_upload_all(server, f"batch-r{run}", payloads)
                rates.setdefault((label, "batch"), []).append(args.files / elapsed)

        fan, receivers = broadcast(ports, args.clients)
        # the same clients on the embedded server: what one process does with all of them
        fan_one, _ = broadcast([embedded.port], args.clients * len(ports))
    finally:
        for server in servers:
            server.stop()
        drop_schema(schema)
        shutil.rmtree(workdir, ignore_errors=True)

    ms = 1000
    print(f"\nthree cluster nodes and one embedded server on 127.0.0.1, {os.cpu_count()} CPU(s)")
    print(f"{'measure':<44} | {'p50':>9} | {'p99':>9} | target")
    print("-" * 80)
    print(f"{'propagation, same node (node 1 -> node 1)':<44} | {statistics.median(same) * ms:7.2f}ms"
          f" | {quantile(same, 0.99) * ms:7.2f}ms | baseline")
    print(f"{'propagation, across nodes (node 1 -> node 2)':<44} | {statistics.median(cross) * ms:7.2f}ms"
          f" | {quantile(cross, 0.99) * ms:7.2f}ms | p50 < 15 ms, p99 < 50 ms")
    print(f"{f'broadcast to 3 x {args.clients} clients, last client':<44} | {statistics.median(fan) * ms:7.2f}ms"
          f" | {quantile(fan, 0.99) * ms:7.2f}ms | p50 < 100 ms ({receivers} subscribed)")
    print(f"{f'the same {len(ports) * args.clients} clients on the embedded server':<44}"
          f" | {statistics.median(fan_one) * ms:7.2f}ms | {quantile(fan_one, 0.99) * ms:7.2f}ms | baseline")
    print(f"\n{'small files a second (4 KiB)':<44} | {'median':>9} | runs")
    print("-" * 80)
    for level in levels:
        medians = {}
        for label in ("embedded", "cluster"):
            medians[label] = statistics.median(rates[(label, level)])
            print(f"{f'{label}, concurrency {level}':<44} | {medians[label]:9.0f} | "
                  + ", ".join(f"{r:.0f}" for r in rates[(label, level)]))
        print(f"{f'cluster / embedded, concurrency {level}':<44} | "
              f"{medians['cluster'] / medians['embedded']:8.2f}x | target >= 0.7x")
    medians = {}
    for label in ("embedded", "cluster"):
        medians[label] = statistics.median(rates[(label, "batch")])
        print(f"{f'{label}, batches of 64, 2 in flight (the client)':<44} | {medians[label]:9.0f} | "
              + ", ".join(f"{r:.0f}" for r in rates[(label, "batch")]))
    print(f"{'cluster / embedded, batches':<44} | {medians['cluster'] / medians['embedded']:8.2f}x"
          " | target >= 0.7x")


if __name__ == "__main__":
    main()
