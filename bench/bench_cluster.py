#!/usr/bin/env python3
"""Cluster benchmark: three nodes on PostgreSQL and Redis beside an embedded server.

    .venv/bin/python bench/bench_cluster.py                       # defaults (a few minutes)
    .venv/bin/python bench/bench_cluster.py --clients 1000 --runs 2   # a quick look

Starts three ``twistd -n quantum-sync`` cluster nodes on one root (a fresh PostgreSQL
schema in ``QS_BENCH_DATABASE``, default postgresql://root@127.0.0.1:5432/test, dropped
at the end; Redis at ``QS_BENCH_REDIS``, default redis://127.0.0.1:6379) and one embedded
server, all on 127.0.0.1, and measures in the same run:

- propagation: a WebSocket client on node 1 sends a FileOperation (a new folder); the
  time until a client on node 1 (same node) and a client on node 2 (across nodes, through
  Redis) hear it, p50 and p99 over ``--broadcasts`` operations;
- small files a second: ``--files`` uploads of 4 KiB with ``If-None-Match: *`` at each
  ``--concurrency`` through a cluster node and through the embedded server, one right
  after the other, the order flipped every run, median of ``--runs`` runs (the cost of
  PostgreSQL, the head row and the advisory locks), and the same files as the client
  sends them: ``/api/batch/upload`` requests of 64 files, two at a time;
- one broadcast to ``--clients`` WebSocket clients on each of the three nodes (sent on
  node 1): the time until the last client has it, p50 and p99 over 20 broadcasts; then
  the same number of clients all on the embedded server, as the baseline. Each node's
  clients are held by a receiving process of its own (so that no one process of the
  load drives every socket), which reports when its last client has each broadcast by
  CLOCK_MONOTONIC, one clock for every process of the machine.

Targets (issue 15): cross-node p50 < 15 ms and p99 < 50 ms; cluster small files at least
0.7 of embedded; a broadcast to 3 x 3,000 clients, last client p50 < 100 ms.
"""

import argparse
import hashlib
import json
import multiprocessing
import multiprocessing.connection
import os
import select
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
from ws_load import Load, cpu_seconds, raise_fd_limit  # noqa: E402

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
    the time each receiver heard each message is kept."""

    def __init__(self, ports):
        super().__init__(ports[0], 0, compress=True)
        self.ports = ports
        self._turn = 0
        self.heard = {}  # (connection, message number) -> perf_counter

    def open(self, client_id, receiver=True, port=None):
        self.port = port or self.ports[self._turn % len(self.ports)]
        if port is None and receiver:
            self._turn += 1
        return super().open(client_id, receiver)

    def _counted(self, connection):
        super()._counted(connection)
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
    load = SpreadLoad(ports[:2])
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


def now() -> float:
    """CLOCK_MONOTONIC: one clock for every process of this machine."""
    return time.clock_gettime(time.CLOCK_MONOTONIC)


class Receivers:
    """The subscribed receivers of a :class:`Load`, read from here on by a bare epoll loop
    that only counts their messages: a read holding one whole text frame (what a
    broadcast is) costs a ``recv_into`` and a look at its header, where the Load spends
    a selector key, a method chain and a frame parser per read. Anything else (a partial
    frame, several, a ping, a close) goes to the Load's own parser, so nothing is lost."""

    def __init__(self, load: Load, base: int, stop_fd: int):
        self.load = load
        self.epoll = select.epoll()
        self.stop_fd = stop_fd  # readable: :meth:`poll` says stop
        self.epoll.register(stop_fd, select.EPOLLIN)
        self.by_fd = {}
        for connection in load.connections:
            if connection.receiver and connection.state == "open":
                # (still in the Load's selector too, which is no longer polled: the
                # Load's parser may modify it when it answers a ping)
                fd = connection.sock.fileno()
                self.by_fd[fd] = (connection, connection.sock.recv_into)
                self.epoll.register(fd, select.EPOLLIN)
        load.probe = None  # (no message is decoded: only counted)
        self.receivers = len(self.by_fd)
        self.maxevents = self.receivers + 1
        # counts from the ``base``-th message on, which every receiver has:
        # reached[k], the receivers with at least k more
        self.counts = {fd: connection.messages - base for fd, (connection, _) in self.by_fd.items()}
        self.reached = [0] * (max(self.counts.values(), default=0) + 1)
        for count in self.counts.values():
            for k in range(count + 1):
                self.reached[k] += 1

    def poll(self, timeout: float) -> bool:
        """Read what arrived (waiting up to ``timeout``); False once told to stop."""
        scratch, by_fd, counts, reached = self.load.scratch, self.by_fd, self.counts, self.reached
        going = True
        for fd, _ in self.epoll.poll(timeout, self.maxevents):
            if fd == self.stop_fd:
                going = False
                continue
            connection, recv_into = by_fd[fd]
            try:
                size = recv_into(scratch)
            except BlockingIOError:
                continue
            except OSError:
                size = 0
            length = scratch[1] if size >= 2 else 127
            if (scratch[0] & 0x8F == 0x81 and not connection.buffer
                    and (size == length + 2 if length < 126
                         else length == 126 and size >= 4 and size == 4 + (scratch[2] << 8 | scratch[3]))):
                count = counts[fd] = counts[fd] + 1
                if count == len(reached):
                    reached.append(0)
                reached[count] += 1
            else:
                self._slow(fd, connection, size)
        return going

    def _slow(self, fd: int, connection, size: int) -> None:
        """Anything but one whole text frame: through the Load's parser (which also
        answers pings), and its messages counted here."""
        load = self.load
        before = connection.messages
        if size:
            connection.buffer += memoryview(load.scratch)[:size]
            load._frames(connection)
        else:
            load._fail(connection)
        for _ in range(connection.messages - before):
            count = self.counts[fd] = self.counts[fd] + 1
            if count == len(self.reached):
                self.reached.append(0)
            self.reached[count] += 1
        if connection.state == "closed":  # (its socket closed: epoll forgot it)
            del self.by_fd[fd]

    def delivered_to_all(self) -> int:
        """The number of broadcasts after the ``base``-th that every receiver has."""
        k = len(self.reached) - 1
        while k > 0 and self.reached[k] < self.receivers:
            k -= 1
        return k


def receive(port, count, prefix, pipe) -> None:
    """A receiving process: ``count`` WebSocket clients on ``port``, each subscribed.
    Reports ``("ready", receivers, delivered)`` once they are, then
    ``("delivered", k, when)`` as soon as every one of them has the k-th broadcast,
    until told to stop."""
    load = Load(port, 0, compress=True)
    load.connect_all(count, prefix)
    load.settle(1.0)
    base = load.delivered_to_all()
    receivers = Receivers(load, base, pipe.fileno())
    done = 0
    pipe.send(("ready", receivers.receivers, base))
    while receivers.poll(1.0):  # (no wake-ups while idle: the pipe's "stop" ends it)
        reached, when = receivers.delivered_to_all(), now()
        while done < reached:
            done += 1
            pipe.send(("delivered", base + done, when))
    for connection in load.connections:
        connection.sock.close()


def wait_idle(pids, timeout=60.0, share=0.05) -> None:
    """Wait (up to ``timeout`` s) until the processes ``pids`` together use under
    ``share`` of a CPU, so that a broadcast is timed, and its CPU counted, without what
    the connections' arrival left them to do (the peer events each node relays)."""
    deadline = now() + timeout
    while now() < deadline:
        before = sum(cpu_seconds(pid) for pid in pids)
        time.sleep(0.5)
        if sum(cpu_seconds(pid) for pid in pids) - before < share * 0.5:
            return


def broadcast(ports, per_port, pids, broadcasts=20):
    """Last-client latencies of ``broadcasts`` broadcasts sent on ``ports[0]``, heard by
    ``per_port`` clients on each of ``ports``, each port's held by a process of its own
    (so that no one process of the load drives every socket); the receivers; and the CPU
    seconds the server processes ``pids``, and the receiving processes together, spent a
    broadcast."""
    context = multiprocessing.get_context("fork")
    pipes, processes = [], []
    for n, port in enumerate(ports):
        ours, theirs = context.Pipe()
        process = context.Process(target=receive, args=(port, per_port, f"fan{n}", theirs), daemon=True)
        process.start()
        pipes.append(ours)
        processes.append(process)
    try:
        delivered, receivers = {}, 0
        for pipe in pipes:
            if not pipe.poll(300):
                raise SystemExit("a receiving process did not get its clients subscribed")
            _, count, done = pipe.recv()
            receivers += count
            delivered[pipe] = done
        wait_idle(pids)
        load = SpreadLoad(ports[:1])
        load.sender = connected_sender(load, ports[0])
        load.settle(1.0)
        latencies = []
        cpu = sum(cpu_seconds(pid) for pid in pids)
        receiving = sum(cpu_seconds(process.pid) for process in processes)
        for _ in range(broadcasts):
            wanted = {pipe: done + 1 for pipe, done in delivered.items()}
            started = now()
            load.send(load.sender, load.operation("fan"))
            last = started
            while any(delivered[pipe] < wanted[pipe] for pipe in pipes):
                load.poll(0)
                ready = multiprocessing.connection.wait(pipes, 60)
                if not ready:
                    raise SystemExit("a broadcast did not reach every client in 60 s")
                for pipe in ready:
                    _, done, when = pipe.recv()
                    delivered[pipe] = done
                    if done == wanted[pipe]:
                        last = max(last, when)
            latencies.append(last - started)
            load.settle(0.05)
        cpu = (sum(cpu_seconds(pid) for pid in pids) - cpu) / broadcasts
        receiving = (sum(cpu_seconds(process.pid) for process in processes) - receiving) / broadcasts
        load.sender.sock.close()
        return latencies, receivers, cpu, receiving
    finally:
        for pipe in pipes:
            pipe.send("stop")
        for process in processes:
            process.join(30)


def small_files(cluster, embedded, args) -> dict:
    """Small uploads a second through ``cluster`` (a node) and ``embedded``, one run of
    each after the other, the order flipped every run (so that a change in the machine's
    load weighs on both): ``{(kind, name): [{"cluster": rate, "embedded": rate}, ...]}``."""
    payloads = []
    for _ in range(args.files):
        body = os.urandom(4096)
        payloads.append((body, hashlib.sha256(body).hexdigest()))
    kinds = [(f"concurrency {level}", f"one PUT a file, {level} at once", int(level))
             for level in args.concurrency.split(",")]
    kinds.append(("batches", "batches of 64, 2 in flight (the client)", None))
    rates = {(kind, name): [] for kind, name, _ in kinds}
    for run in range(args.runs):
        order = [("cluster", cluster), ("embedded", embedded)]
        for kind, name, level in kinds:
            row = {}
            for label, server in order if run % 2 == 0 else order[::-1]:
                prefix = f"small-{label}-{kind.replace(' ', '')}-r{run}"
                if level is None:
                    elapsed = batch_upload_all(server, prefix, payloads)
                else:
                    names = [f"{prefix}/f{i:05d}.bin" for i in range(args.files)]
                    elapsed, _ = upload_all(server, names, payloads, level)
                row[label] = args.files / elapsed
            rates[(kind, name)].append(row)
    return rates


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
    parser.add_argument("--files", type=int, default=300, help="small uploads a run")
    parser.add_argument("--runs", type=int, default=8, help="small-file runs (each: cluster and embedded)")
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

        rates = small_files(servers[0], embedded, args)

        fan, receivers, fan_cpu, fan_receiving = broadcast(ports, args.clients, [s.process.pid for s in servers[:3]])
        # the same clients (and receiving processes) on the embedded server: what one
        # server process does with all of them
        fan_one, _, fan_one_cpu, fan_one_receiving = broadcast([embedded.port] * len(ports), args.clients, [embedded.process.pid])
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
    print(f"server CPU a broadcast: the three nodes {fan_cpu * ms:.1f} ms together, the embedded server"
          f" {fan_one_cpu * ms:.1f} ms; the receiving processes {fan_receiving * ms:.1f} /"
          f" {fan_one_receiving * ms:.1f} ms")
    print(f"\n{'small files a second (4 KiB)':<44} | {'median':>9} | runs (cluster / embedded of each)")
    print("-" * 80)
    for kind, name in rates:
        rows = rates[(kind, name)]
        medians = {label: statistics.median(row[label] for row in rows) for label in ("embedded", "cluster")}
        for label in ("embedded", "cluster"):
            print(f"{f'{label}, {name}':<44} | {medians[label]:9.0f} | "
                  + ", ".join(f"{row[label]:.0f}" for row in rows))
        ratios = [row["cluster"] / row["embedded"] for row in rows]
        print(f"{f'cluster / embedded, {kind}':<44} | {medians['cluster'] / medians['embedded']:8.2f}x"
              f" | median of the runs' {statistics.median(ratios):.2f}x ("
              + ", ".join(f"{r:.2f}" for r in ratios) + "); target >= 0.7x")


if __name__ == "__main__":
    main()
