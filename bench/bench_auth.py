#!/usr/bin/env python3
"""What authentication costs: one command, prints a table.

    .venv/bin/python bench/bench_auth.py [--requests 2000] [--runs 5]

Starts two real servers (``twistd -n quantum-sync``, loopback only) on the same kind of
root: one open (no ``auth`` section), one with ``auth`` (default scrypt cost). Against
each, in the same run and alternating, a keep-alive client sends ``--requests``
``GET /api/metadata`` calls (with ``Authorization: Bearer`` on the secured one), and
the medians of ``--runs`` runs are compared: requests a second and the secured/open
ratio. It also reports the median time of a login (scrypt in a thread), and of the pure
parts in this process: one token check and one password check. Stops what it started.
"""

import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from quantum_sync import passwords  # noqa: E402

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
PASSWORD = "bench-password-1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(workdir, name, auth):
    root = os.path.join(workdir, name)
    os.makedirs(root)
    with open(os.path.join(root, "a.txt"), "wb") as f:
        f.write(b"alpha" * 100)
    port = free_port()
    handler = {"handler": "file_sync", "root": root, "enable_upload": True}
    if auth:
        handler["auth"] = {
            "users": {"bench": {"password_hash": passwords.hash_password(PASSWORD), "role": "admin"}},
            "secret_file": os.path.join(workdir, name + "-secret"),
        }
    config = {"apps": {"http": {"servers": {"s": {
        "listen": [f"tcp:{port}:interface=127.0.0.1"],
        "routes": [{"match": [{"path": ["/api/*", "/ws"]}], "handle": [handler]}],
    }}}}}
    config_path = os.path.join(workdir, name + ".json")
    with open(config_path, "w") as f:
        json.dump(config, f)
    process = subprocess.Popen(
        [TWISTD, "-n", "--pidfile=", "--logfile=" + os.path.join(workdir, name + ".log"),
         "quantum-sync", "--config", config_path],
        cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/ws/health")
            if connection.getresponse().status == 200:
                connection.close()
                return process, port
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit(f"the {name} server did not start (see {workdir}/{name}.log)")


def login(port):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    started = time.perf_counter()
    connection.request("POST", "/api/v1/auth/login",
                       body=json.dumps({"username": "bench", "password": PASSWORD}))
    response = connection.getresponse()
    body = json.loads(response.read())
    elapsed = time.perf_counter() - started
    connection.close()
    return body["data"]["token"], elapsed


def requests_per_second(port, count, token=None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    started = time.perf_counter()
    for _ in range(count):
        connection.request("GET", "/api/metadata?path=a.txt", headers=headers)
        response = connection.getresponse()
        response.read()
        assert response.status == 200, response.status
    elapsed = time.perf_counter() - started
    connection.close()
    return count / elapsed


def pure_costs():
    """Median seconds of one token check and one password check, in this process."""
    from twisted.internet.task import Clock

    from quantum_sync.server.auth import Account, TokenAuthorizer

    stored = passwords.hash_password(PASSWORD)
    authorizer = TokenAuthorizer({"bench": Account("bench", stored, "admin")}, os.urandom(32), 3600, Clock(),
                                 run_in_thread=None)  # only tokens are checked here
    authorizer.clock.advance(time.time())
    token = authorizer.issue_token("bench")["token"]
    checks = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(2000):
            authorizer.authorize_token(token, "read")
        checks.append((time.perf_counter() - started) / 2000)
    hashes = []
    for _ in range(5):
        started = time.perf_counter()
        passwords.verify_password(PASSWORD, stored)
        hashes.append(time.perf_counter() - started)
    return statistics.median(checks), statistics.median(hashes)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="qs-bench-auth-")
    processes = []
    try:
        open_process, open_port = start_server(workdir, "open", auth=False)
        processes.append(open_process)
        auth_process, auth_port = start_server(workdir, "secured", auth=True)
        processes.append(auth_process)
        token, _ = login(auth_port)
        requests_per_second(open_port, 200)  # warm up both
        requests_per_second(auth_port, 200, token)
        open_rates, auth_rates, ratios, logins = [], [], [], []
        for _ in range(args.runs):
            open_rate = requests_per_second(open_port, args.requests)
            auth_rate = requests_per_second(auth_port, args.requests, token)
            open_rates.append(open_rate)
            auth_rates.append(auth_rate)
            ratios.append(auth_rate / open_rate)
            logins.append(login(auth_port)[1])
        check, verify = pure_costs()
        rows = [
            ("GET /api/metadata, open server (req/s)", f"{statistics.median(open_rates):.0f}"),
            ("GET /api/metadata, Bearer token (req/s)", f"{statistics.median(auth_rates):.0f}"),
            ("secured / open, same run", f"{statistics.median(ratios):.3f}"),
            ("login, HTTP round trip (ms)", f"{statistics.median(logins) * 1000:.1f}"),
            ("token check, in process (us)", f"{check * 1e6:.1f}"),
            ("password check, scrypt ln=15 (ms)", f"{verify * 1000:.1f}"),
        ]
        width = max(len(name) for name, _ in rows)
        print(f"runs={args.runs} requests/run={args.requests} (medians)")
        for name, value in rows:
            print(f"{name:<{width}}  {value:>10}")
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
