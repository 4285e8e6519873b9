#!/usr/bin/env python3
"""Transfer benchmark: quantum-sync vs an rsync daemon vs cp, same file, same run.

    .venv/bin/python bench/bench_transfer.py [--size-mib 1024] [--runs 3]

Starts ``twistd -n quantum-sync`` and ``rsync --daemon`` on 127.0.0.1, uploads and
downloads one random file of ``--size-mib`` MiB ``--runs`` times with each, and prints
medians in MB/s (10^6 bytes a second), the ratio to rsync, the server's peak RSS
(VmHWM of the twistd process) and ``/api/metadata`` requests a second.

SHA-256 verification is on for quantum-sync both ways: uploads carry
``X-Content-SHA256`` (the server hashes while receiving and refuses a mismatch, then
fsyncs and renames), downloads are hashed by the client while reading and compared with
the ETag. Installs rsync with apt-get when it is missing. Stops everything it started.
"""

import argparse
import hashlib
import http.client
import json
import os
import queue
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

CHUNK = 1024 * 1024
HERE = os.path.dirname(os.path.abspath(__file__))
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on 127.0.0.1:{port}")


def ensure_rsync() -> str:
    path = shutil.which("rsync")
    if path:
        return path
    print("rsync is missing: apt-get install -y rsync", file=sys.stderr)
    subprocess.run(["apt-get", "install", "-y", "rsync"], check=False,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    path = shutil.which("rsync")
    if not path:
        raise SystemExit("rsync could not be installed")
    return path


def make_file(path: str, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            block = os.urandom(min(CHUNK * 8, left))
            digest.update(block)
            f.write(block)
            left -= len(block)
    return digest.hexdigest()


def status_field(pid: int, name: str) -> int:
    """A ``VmHWM``/``VmRSS`` figure of ``pid`` in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(name + ":"):
                return int(line.split()[1])
    return 0


class QuantumServer:
    """``twistd -n quantum-sync`` in a subprocess on a fresh root."""

    def __init__(self, workdir: str, **handler):
        """``handler``: further keys of the file_sync handler (``versions``, ...)."""
        self.port = free_port()
        self.root = os.path.join(workdir, "qs-root")
        config = {"apps": {"http": {"servers": {"bench": {
            "listen": [f"127.0.0.1:{self.port}"],
            "routes": [{"match": [{"path": ["/api/*", "/ws"]}],
                        "handle": [{"handler": "file_sync", "root": self.root,
                                    "enable_upload": True, **handler}]}],
        }}}}}
        config_path = os.path.join(workdir, "bench-sync.json")
        with open(config_path, "w") as f:
            json.dump(config, f)
        self.log = open(os.path.join(workdir, "server.log"), "wb")
        self.process = subprocess.Popen(
            [TWISTD, "-n", "--pidfile=", "--logfile", os.path.join(workdir, "twistd.log"),
             "quantum-sync", "--config", config_path],
            cwd=workdir, stdout=self.log, stderr=self.log)
        wait_port(self.port, time.monotonic() + 30)

    def connection(self):
        return http.client.HTTPConnection("127.0.0.1", self.port, blocksize=CHUNK, timeout=300)

    def upload(self, source: str, name: str, digest: str) -> float:
        size = os.path.getsize(source)
        conn = self.connection()
        started = time.perf_counter()
        with open(source, "rb") as body:
            conn.request("PUT", "/api/upload?" + urllib.parse.urlencode({"path": name}), body=body,
                         headers={"Content-Length": str(size), "X-Content-SHA256": digest,
                                  "Content-Type": "application/octet-stream"})
            response = conn.getresponse()
            answer = response.read()
        elapsed = time.perf_counter() - started
        conn.close()
        if response.status != 200 or json.loads(answer)["hash"] != digest:
            raise SystemExit(f"upload failed: {response.status} {answer[:200]!r}")
        return elapsed

    def download(self, name: str, destination: str) -> float:
        """GET into ``destination`` while a second thread hashes (as a real client
        would: verify without a second read of the file)."""
        conn = self.connection()
        digest = hashlib.sha256()
        chunks = queue.Queue(maxsize=16)

        def hash_chunks():
            while (chunk := chunks.get()) is not None:
                digest.update(chunk)

        hasher = threading.Thread(target=hash_chunks)
        hasher.start()
        started = time.perf_counter()
        conn.request("GET", "/api/download?" + urllib.parse.urlencode({"path": name}))
        response = conn.getresponse()
        try:
            with open(destination, "wb") as out:
                while chunk := response.read(CHUNK):
                    chunks.put(chunk)
                    out.write(chunk)
        finally:
            chunks.put(None)
            hasher.join()
        elapsed = time.perf_counter() - started
        etag = response.getheader("ETag", "").strip('"')
        conn.close()
        if response.status != 200 or digest.hexdigest() != etag:
            raise SystemExit(f"download failed or hash mismatch: {response.status}")
        return elapsed

    def metadata_rate(self, name: str, seconds: float = 3.0) -> float:
        conn = self.connection()
        url = "/api/metadata?" + urllib.parse.urlencode({"path": name})
        count, deadline = 0, time.perf_counter() + seconds
        started = time.perf_counter()
        while time.perf_counter() < deadline:
            conn.request("GET", url)
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                raise SystemExit(f"metadata failed: {response.status}")
            count += 1
        rate = count / (time.perf_counter() - started)
        conn.close()
        return rate

    def delete(self, name: str) -> None:
        conn = self.connection()
        body = json.dumps({"operations": [{"Delete": {"path": name}}]})
        conn.request("POST", "/api/sync", body=body, headers={"Content-Type": "application/json"})
        conn.getresponse().read()
        conn.close()

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


class RsyncDaemon:
    """``rsync --daemon`` on 127.0.0.1 exporting one writable module."""

    def __init__(self, rsync: str, workdir: str, port=None):
        self.rsync = rsync
        self.port = port or free_port()
        self.module_dir = os.path.join(workdir, "rsync-module")
        os.makedirs(self.module_dir)
        config = os.path.join(workdir, "rsyncd.conf")
        with open(config, "w") as f:
            f.write(f"use chroot = no\npid file = {workdir}/rsyncd.pid\n"
                    f"[bench]\npath = {self.module_dir}\nread only = no\n"
                    f"uid = {os.getuid()}\ngid = {os.getgid()}\n")
        self.process = subprocess.Popen(
            [rsync, "--daemon", "--no-detach", f"--config={config}", f"--port={self.port}",
             "--address=127.0.0.1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, time.monotonic() + 30)

    def url(self, name: str = "") -> str:
        return f"rsync://127.0.0.1:{self.port}/bench/{name}"

    def upload(self, source: str, name: str) -> float:
        target = os.path.join(self.module_dir, name)
        if os.path.exists(target):
            os.unlink(target)
        return timed([self.rsync, "-q", source, self.url(name)])

    def download(self, name: str, destination: str) -> float:
        if os.path.exists(destination):
            os.unlink(destination)
        return timed([self.rsync, "-q", self.url(name), destination])

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def timed(command) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - started


def cp(source: str, destination: str) -> float:
    if os.path.exists(destination):
        os.unlink(destination)
    return timed(["cp", source, destination])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", default=None, help="work directory (default: a new temp dir)")
    args = parser.parse_args()
    size = args.size_mib * 1024 * 1024
    rsync = ensure_rsync()
    workdir = tempfile.mkdtemp(prefix="qs-bench-", dir=args.dir)
    server = daemon = None
    try:
        source = os.path.join(workdir, "source.bin")
        started = time.perf_counter()
        digest = make_file(source, size)
        hash_seconds = time.perf_counter() - started
        server = QuantumServer(workdir)
        daemon = RsyncDaemon(rsync, workdir)
        idle_rss = status_field(server.process.pid, "VmRSS")
        results = {key: [] for key in ("qs_up", "qs_down", "rsync_up", "rsync_down", "cp_up", "cp_down")}
        fetched = os.path.join(workdir, "fetched.bin")
        for run in range(args.runs):
            server.delete("bench.bin")
            results["qs_up"].append(server.upload(source, "bench.bin", digest))
            results["qs_down"].append(server.download("bench.bin", fetched))
            os.unlink(fetched)
            results["rsync_up"].append(daemon.upload(source, "bench.bin"))
            results["rsync_down"].append(daemon.download("bench.bin", fetched))
            os.unlink(fetched)
            results["cp_up"].append(cp(source, os.path.join(workdir, "cp-target.bin")))
            results["cp_down"].append(cp(os.path.join(workdir, "cp-target.bin"), fetched))
            os.unlink(fetched)
            print(f"run {run + 1}/{args.runs}: " + ", ".join(
                f"{key} {size / results[key][-1] / 1e6:.0f} MB/s" for key in results), file=sys.stderr)
        metadata_rate = server.metadata_rate("bench.bin")
        peak_rss = status_field(server.process.pid, "VmHWM")
    finally:
        if server is not None:
            server.stop()
        if daemon is not None:
            daemon.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    rate = {key: size / statistics.median(values) / 1e6 for key, values in results.items()}
    print(f"\nquantum-sync transfer benchmark: {args.size_mib} MiB file, loopback 127.0.0.1, "
          f"median of {args.runs} runs, MB/s = 10^6 bytes/s")
    print(f"{'direction':<10} {'quantum-sync':>13} {'rsync daemon':>13} {'cp':>9} {'qs/rsync':>9}")
    for direction in ("up", "down"):
        qs, rs, copy = rate[f"qs_{direction}"], rate[f"rsync_{direction}"], rate[f"cp_{direction}"]
        name = "upload" if direction == "up" else "download"
        print(f"{name:<10} {qs:>13.0f} {rs:>13.0f} {copy:>9.0f} {qs / rs:>8.2f}x")
    print(f"server peak RSS (VmHWM): {peak_rss / 1024:.1f} MiB (idle before transfers: "
          f"{idle_rss / 1024:.1f} MiB)")
    print(f"/api/metadata: {metadata_rate:.0f} requests/s (one keep-alive connection)")
    print(f"client-side SHA-256 of the source while writing it: {size / hash_seconds / 1e6:.0f} MB/s")


if __name__ == "__main__":
    main()
