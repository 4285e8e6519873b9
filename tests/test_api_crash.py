"""A server killed (SIGKILL) in the middle of many uploads loses nothing it acknowledged
and never shows a partial file (reliability notes F1, scaled down to stay fast)."""

import concurrent.futures
import hashlib
import http.client
import json
import os
import random
import signal
import subprocess
import time
import urllib.parse
import urllib.request

from tests.test_tap import SEED, TWISTD, free_port, wait_for_health, write_config


def start(tmp_path, port):
    process = subprocess.Popen(
        [TWISTD, "-n", "--pidfile=", "quantum-sync", "--config", "sync.json",
         "--listen", f"127.0.0.1:{port}"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_for_health(f"http://127.0.0.1:{port}/ws/health", time.monotonic() + 20)
    return process


def put(port, path, data):
    """True when the server acknowledged the upload with 200 and the right hash."""
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("PUT", "/api/upload?" + urllib.parse.urlencode({"path": path}), body=data,
                     headers={"X-Content-SHA256": hashlib.sha256(data).hexdigest()})
        response = conn.getresponse()
        body = response.read()
        conn.close()
        return response.status == 200 and json.loads(body)["hash"] == hashlib.sha256(data).hexdigest()
    except (OSError, http.client.HTTPException):
        return False


def test_sigkill_during_uploads_loses_nothing_acknowledged(tmp_path):
    write_config(tmp_path, SEED)
    root = tmp_path / "sync-data"
    rng = random.Random(7)
    versions = {}  # path -> every body ever sent for it
    acked = {}  # path -> bodies the server acknowledged
    for round_number in range(3):
        port = free_port()
        process = start(tmp_path, port)
        jobs = []
        for i in range(120):
            path = f"r{round_number}/f{i}.bin" if i % 4 else "shared.bin"
            data = os.urandom(rng.randint(1024, 1024 * 1024))
            versions.setdefault(path, []).append(data)
            jobs.append((path, data))
        # the kill comes once a random share of the round is acknowledged (a fixed delay
        # misses when the server is fast), so it always lands among running uploads
        kill_after = rng.randint(5, 60)
        with concurrent.futures.ThreadPoolExecutor(max_workers=40) as pool:
            futures = {pool.submit(put, port, path, data): (path, data) for path, data in jobs}
            deadline = time.monotonic() + 30
            while sum(f.done() and f.result() for f in futures) < kill_after \
                    and time.monotonic() < deadline:
                time.sleep(0.002)
            process.send_signal(signal.SIGKILL)
            for future in concurrent.futures.as_completed(futures):
                if future.result():
                    path, data = futures[future]
                    acked.setdefault(path, []).append(data)
        process.wait(timeout=10)

    port = free_port()
    process = start(tmp_path, port)
    try:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if d != ".quantum-sync"]
            for name in filenames:
                path = os.path.relpath(os.path.join(dirpath, name), root).replace(os.sep, "/")
                with open(os.path.join(dirpath, name), "rb") as f:
                    content = f.read()
                assert content in versions[path], f"{path} holds a partial or foreign body"
        for path, bodies in acked.items():
            assert (root / path).exists(), f"acknowledged {path} is gone"
            if path != "shared.bin":  # one version each, so exactly that one
                assert (root / path).read_bytes() == bodies[0]
        assert os.listdir(root / ".quantum-sync" / "tmp") == []
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/list", timeout=10) as response:
            listing = json.loads(response.read())
        on_disk = {e["path"] for e in listing if not e["is_directory"]}
        assert on_disk >= set(acked)
        assert not any(".quantum-sync" in p or "upload-" in p for p in on_disk)
        sent, kept = sum(map(len, versions.values())), sum(map(len, acked.values()))
        assert 0 < kept < sent, f"{kept} of {sent} acknowledged: the kills missed the uploads"
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=20)
