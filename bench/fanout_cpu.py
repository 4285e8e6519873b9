#!/usr/bin/env python3
"""What one subscribed client costs the server a broadcast, for code trees side by side.

    .venv/bin/python bench/fanout_cpu.py --variants before=/tmp/old,after=$PWD --rounds 6 --clients 3000
    .venv/bin/python bench/fanout_cpu.py --variants before=/tmp/old,after=$PWD --clients 1000 --count 10 --valgrind

For each variant (a quantum-sync source tree, put first on the server's PYTHONPATH), in
alternating order each round: starts the real server in a process of its own, connects
``--small`` clients of bench/ws_load.py (permessage-deflate) and times ``--count``
broadcasts, then connects the others up to ``--clients`` and times as many again. The
difference, divided by the clients added, is what one client costs a broadcast, without
what a broadcast costs once (the request, the journal): server CPU (user and kernel, from
/proc) or, with ``--valgrind``, the server's user-space instructions (callgrind, counted
only while the broadcasts run), which the machine's load does not change. Each
broadcast is a directory Create sent over the WebSocket, or with ``--upload`` a
100-byte ``PUT /api/upload`` (a group commit: its broadcast is made in a burst).
Prints each run and the medians.
"""

import argparse
import glob
import hashlib
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bench_ws import free_port, server_config, wait_listening  # noqa: E402
from ws_load import Load, own_cpu_seconds, raise_fd_limit  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def serve(config: str) -> None:
    """The server of ``config`` in this process (``--serve``: run under callgrind)."""
    from twisted.internet import reactor

    from quantum_sync.server.tap import Options, makeService

    options = Options()
    options.parseOptions(["--config", config])
    options.parent = {"nodaemon": True}
    service = makeService(options, reactor)
    service.startService()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()


def cpu(pid: int) -> tuple:
    """(user, kernel) CPU seconds of process ``pid``."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICK, int(fields[12]) / TICK


class Broadcasts:
    """Sends broadcasts one at a time and waits until every client of ``load`` has each."""

    def __init__(self, load: Load, upload: bool):
        self.load = load
        self.upload = upload
        self.uploads = 0
        self.delivered = load.delivered_to_all()

    def one(self) -> None:
        if self.upload:
            self.uploads += 1
            body = os.urandom(100)
            connection = http.client.HTTPConnection("127.0.0.1", self.load.port, timeout=60)
            connection.request("PUT", f"/api/upload?path=fanout-{self.uploads}.bin", body=body, headers={
                "X-Content-SHA256": hashlib.sha256(body).hexdigest(), "X-Client-Id": "bench",
                "Content-Type": "application/octet-stream"})
            response = connection.getresponse()
            response.read()
            connection.close()
            if response.status != 200:
                raise SystemExit(f"upload refused: {response.status}")
        else:
            self.load.send(self.load.sender, self.load.operation("fanout"))
        self.delivered += 1
        self.load.wait_delivered(self.delivered, 60)
        self.load.settle(0.02)

    def timed(self, pid: int, count: int) -> dict:
        user, kernel = cpu(pid)
        load = own_cpu_seconds()
        for _ in range(count):
            self.one()
        after_user, after_kernel = cpu(pid)
        return {"user": (after_user - user) / count, "kernel": (after_kernel - kernel) / count,
                "load": (own_cpu_seconds() - load) / count}


def grind(pid: int, *args) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], check=True, capture_output=True, timeout=600)


def dumped_instructions(workdir: str) -> list:
    """The instruction totals of the callgrind dumps in ``workdir``, oldest first."""
    totals = []
    for path in sorted(glob.glob(os.path.join(workdir, "callgrind.out.*.*")),
                       key=lambda p: int(p.rsplit(".", 1)[1])):
        with open(path) as f:
            totals.append(next(int(line.split()[1]) for line in f if line.startswith(("summary:", "totals:"))))
    return totals


def measured(broadcasts: Broadcasts, pid: int, count: int, valgrind: bool) -> dict:
    if valgrind:
        grind(pid, "-z")
        grind(pid, "-i", "on")
    figures = broadcasts.timed(pid, count)
    if valgrind:
        grind(pid, "-d")
        grind(pid, "-i", "off")
    return figures


def run(code: str, args) -> dict:
    with tempfile.TemporaryDirectory(prefix="fanout-") as workdir:
        port = free_port()
        config = server_config(workdir, port, args.clients + 10)
        grinding = (["valgrind", "--tool=callgrind", "--instr-atstart=no",
                     f"--callgrind-out-file={workdir}/callgrind.out.%p"] if args.valgrind else [])
        log = open(os.path.join(workdir, "server.log"), "wb")
        server = subprocess.Popen([*grinding, sys.executable, os.path.abspath(__file__), "--serve", config],
                                  env=dict(os.environ, PYTHONPATH=code), cwd=workdir, stdout=log,
                                  stderr=subprocess.STDOUT)
        load = Load(port, server.pid, compress=True)
        try:
            wait_listening(port, server, 300 if args.valgrind else 30)
            load.sender = load.open("fanout-sender", receiver=False)
            deadline = time.monotonic() + 60
            while load.sender.state != "open" and time.monotonic() < deadline:
                load.poll(0.05)
            load.connect_all(args.small, "few")
            load.settle(1.0)
            broadcasts = Broadcasts(load, args.upload)
            broadcasts.timed(server.pid, 3)  # warm-up
            few = measured(broadcasts, server.pid, args.count, args.valgrind)
            load.connect_all(args.clients - args.small, "many")
            load.settle(2.0)
            broadcasts.delivered = load.delivered_to_all()
            broadcasts.timed(server.pid, 3)
            many = measured(broadcasts, server.pid, args.count, args.valgrind)
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(60)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
            log.close()
            for connection in load.connections:
                connection.sock.close()
        added = args.clients - args.small
        if args.valgrind:  # (CPU times under valgrind are valgrind's)
            few_ir, many_ir = dumped_instructions(workdir)[-2:]
            return {"instructions": (many_ir - few_ir) / added / args.count}
        result = {f"{key}_us": (many[key] - few[key]) / added * 1e6 for key in ("user", "kernel", "load")}
        result["server_us"] = result["user_us"] + result["kernel_us"]
        return result


def main() -> None:
    if sys.argv[1:2] == ["--serve"]:
        serve(sys.argv[2])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", required=True, help="name=source tree, comma-separated")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=3000)
    parser.add_argument("--small", type=int, default=100, help="clients of the first measurement")
    parser.add_argument("--count", type=int, default=40, help="broadcasts a measurement")
    parser.add_argument("--valgrind", action="store_true", help="count instructions with callgrind")
    parser.add_argument("--upload", action="store_true", help="broadcasts of uploads (bursts)")
    args = parser.parse_args()
    raise_fd_limit()
    variants = [entry.split("=", 1) for entry in args.variants.split(",")]
    results = {name: [] for name, _ in variants}
    for round_ in range(args.rounds):
        for name, code in variants if round_ % 2 == 0 else variants[::-1]:
            result = run(code, args)
            results[name].append(result)
            print(round_, name, json.dumps({key: round(value, 2) for key, value in result.items()}), flush=True)
    print("\nmedians, a client and broadcast (us of CPU; instructions with --valgrind)")
    for name, rows in results.items():
        print(name, {key: round(statistics.median(row[key] for row in rows), 2) for key in rows[0]})


if __name__ == "__main__":
    main()
