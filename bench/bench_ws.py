"""WebSocket hub benchmark: one command, prints a table.

    .venv/bin/python bench/bench_ws.py                    # 1,000 and 10,000 clients, 3 runs
    .venv/bin/python bench/bench_ws.py --clients 1000 --runs 1

For each client count N it starts the real server (``twistd -n quantum-sync`` on a
temporary root, loopback only) and, as a separate process, bench/ws_load.py with N
subscribed WebSocket clients that negotiate permessage-deflate. It reports:

- the time from one FileOperation (sent over the WebSocket by one more client) until the
  last of the N clients has its broadcast, p50 and p99 over 20 broadcasts;
- sustained broadcasts a second delivered to all N clients;
- the server's RSS per connection, idle and after the compressed broadcasts.

The same run measures a bare Autobahn server (bench/ws_bare_server.py: defaults, zlib at
its default sizes) with the same load as the baseline, and prints ours/bare ratios.
Targets (issue 3): 10,000 clients in one process; 1,000-client broadcast p50 < 50 ms;
< 20 KiB per idle connection; < 64 KiB per connection after compressed broadcasts.
"""

import argparse
import json
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.path.dirname(sys.executable)


def raise_fd_limit() -> int:
    """Children inherit it: the server and the load each hold N sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_listening(port: int, process, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listening on {port} after {timeout}s")


def server_config(workdir: str, port: int, clients: int) -> str:
    """A config for the real server: limits sized for the load, timers out of the way,
    the rate limit lifted for the one sender."""
    websocket = {"max_connections": clients + 100, "rate_limit": 1000000, "ping_interval": 3600,
                 "stale_timeout": 7200, "cleanup_interval": 3600, "metrics_interval": 3600}
    handler = {"handler": "file_sync", "root": os.path.join(workdir, "root"), "enable_upload": True,
               "websocket": websocket}
    document = {"apps": {"http": {"servers": {"bench": {
        "listen": [f"tcp:{port}:interface=127.0.0.1:backlog=1024"],
        "routes": [{"match": [{"matcher": "path", "paths": ["/api/*", "/ws"]}], "handle": [handler]}],
    }}}}}
    os.makedirs(handler["root"])
    path = os.path.join(workdir, "sync.json")
    with open(path, "w") as f:
        json.dump(document, f)
    return path


def start_server(kind: str, workdir: str, port: int, clients: int):
    log = open(os.path.join(workdir, f"{kind}.log"), "wb")
    if kind == "quantum-sync":
        config = server_config(workdir, port, clients)
        command = [os.path.join(BIN, "twistd"), "-n", "--pidfile=", "quantum-sync", "--config", config]
    else:
        command = [sys.executable, os.path.join(HERE, "ws_bare_server.py"), str(port)]
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
    wait_listening(port, process)
    if kind == "quantum-sync":
        urllib.request.urlopen(f"http://127.0.0.1:{port}/ws/health", timeout=10).read()
    return process


def stop(process) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def measure(kind: str, clients: int, args, run: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-ws-") as workdir:
        port = free_port()
        server = start_server(kind, workdir, port, clients)
        try:
            load = subprocess.run(
                [sys.executable, os.path.join(HERE, "ws_load.py"), "--port", str(port),
                 "--server-pid", str(server.pid), "--clients", str(clients),
                 "--broadcasts", str(args.broadcasts), "--seconds", str(args.seconds),
                 "--run", f"{run}"],
                capture_output=True, text=True, timeout=900,
            )
        finally:
            stop(server)
        if load.returncode != 0:
            raise SystemExit(f"load for {kind} N={clients} failed:\n{load.stdout}{load.stderr}")
        result = json.loads(load.stdout.strip().splitlines()[-1])
        result["server"] = kind
        return result


COLUMNS = [
    ("server", "server", "{:<13}"),
    ("clients", "clients", "{:>7}"),
    ("connect_seconds", "connect s", "{:>9}"),
    ("p50_ms", "p50 ms", "{:>8}"),
    ("p99_ms", "p99 ms", "{:>8}"),
    ("broadcasts_per_second", "bcast/s", "{:>8}"),
    ("server_cpu_ms_per_broadcast", "srv cpu ms", "{:>10}"),
    ("load_cpu_ms_per_broadcast", "load cpu ms", "{:>11}"),
    ("idle_kib_per_connection", "KiB/conn idle", "{:>13}"),
    ("after_kib_per_connection", "KiB/conn after", "{:>14}"),
]


def print_table(title: str, rows) -> None:
    print(f"\n{title}")
    print("  ".join(fmt.format(label) for _, label, fmt in COLUMNS) + "  closes/failures")
    for row in rows:
        cells = "  ".join(fmt.format(row[key]) for key, _, fmt in COLUMNS)
        print(f"{cells}  {row['closed'] or '-'}/{row['failed']}")


def median_row(rows) -> dict:
    merged = dict(rows[0])
    for key, _, _ in COLUMNS[2:]:
        merged[key] = round(statistics.median(r[key] for r in rows), 2)
    merged["failed"] = sum(r["failed"] for r in rows)
    return merged


def main(argv=None):
    parser = argparse.ArgumentParser(description="WebSocket hub benchmark")
    parser.add_argument("--clients", default="1000,10000", help="comma-separated client counts")
    parser.add_argument("--baseline-clients", default="1000,10000",
                        help="client counts for the bare Autobahn baseline ('' for none)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--broadcasts", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=5.0, help="sustained phase length")
    args = parser.parse_args(argv)
    limit = raise_fd_limit()
    counts = [int(n) for n in args.clients.split(",") if n]
    baseline = [int(n) for n in args.baseline_clients.split(",") if n]
    if max(counts + baseline) + 200 > limit:
        raise SystemExit(f"open-file limit {limit} is too low for {max(counts + baseline)} clients")
    results = {}
    for run in range(1, args.runs + 1):
        rows = []
        for clients in counts:
            rows.append(measure("quantum-sync", clients, args, run))
            if clients in baseline:
                rows.append(measure("bare-autobahn", clients, args, run))
        for row in rows:
            results.setdefault((row["server"], row["clients"]), []).append(row)
        print_table(f"run {run}", rows)
    medians = [median_row(rows) for rows in results.values()]
    print_table(f"median of {args.runs} run(s)", medians)
    print("\nratio quantum-sync / bare-autobahn (same run, medians)")
    for row in medians:
        bare = results.get(("bare-autobahn", row["clients"]))
        if row["server"] == "quantum-sync" and bare:
            base = median_row(bare)
            ratios = {key: (row[key] / base[key] if base[key] else float("nan"))
                      for key in ("p50_ms", "p99_ms", "broadcasts_per_second",
                                  "idle_kib_per_connection", "after_kib_per_connection")}
            print(f"  N={row['clients']}: " + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()))


if __name__ == "__main__":
    main()
