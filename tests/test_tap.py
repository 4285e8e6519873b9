"""``twistd quantum-sync`` as a real subprocess: start-up errors and a clean run."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
SEED = {"apps": {"http": {"servers": {"file_sync_server": {
    "listen": [":8080"],
    "routes": [{
        "match": [{"matcher": "path", "paths": ["/api/*", "/ws"]}],
        "handle": [{"handler": "file_sync", "root": "./sync-data", "enable_upload": True}],
    }],
}}}}}


def twistd(cwd, *args, timeout=30, logger=None):
    command = [TWISTD, "-n", "--pidfile="]
    if logger:
        command.append(f"--logger={logger}")
    return subprocess.run(command + ["quantum-sync", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def write_config(directory, document, name="sync.json"):
    path = directory / name
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening_socket() -> socket.socket:
    """A socket listening on a free port of 127.0.0.1 (use it in a ``with``)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


def stop_cleanly(process) -> tuple:
    """SIGTERM ``process``; assert it shut down without a traceback; ``(out, err)``."""
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=20)
    # twistd re-raises the terminating signal after a clean shutdown
    assert process.returncode in (0, -signal.SIGTERM), err
    assert "Traceback" not in out + err
    return out, err


def assert_one_line_error(result, *fragments):
    assert result.returncode == 1, (result.returncode, result.stderr, result.stdout[-2000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert "Usage:" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def with_handler(**changes):
    document = json.loads(json.dumps(SEED))
    server = document["apps"]["http"]["servers"]["file_sync_server"]
    server["routes"][0]["handle"][0].update(changes)
    return document


BAD_CONFIGS = [
    ("not json {", "invalid JSON"),
    ({"apps": {}}, "apps.http: missing"),
    (with_handler(bogus=1), "handle[0].bogus: unknown key"),
    (with_handler(enable_upload="yes"), "enable_upload: must be true or false"),
    (with_handler(max_upload_size=-5), "max_upload_size: must be at least 1"),
    (with_handler(websocket={"ping_interval": "fast"}), "websocket.ping_interval: must be a number"),
    (with_handler(websocket={"nope": 1}), "websocket.nope: unknown key"),
    (with_handler(handler="static"), "handler: unknown handler"),
    (with_handler(root="./missing-parent/data"), "parent directory does not exist"),
    (with_handler(auth={"users": {"alice": {"password_hash": "x", "role": "boss"}}}),
     "auth.users.alice.role"),
]


@pytest.mark.parametrize("document,fragment", BAD_CONFIGS)
def test_config_errors_exit_1_with_one_line(tmp_path, document, fragment):
    write_config(tmp_path, document)
    result = twistd(tmp_path, "--config", "sync.json")
    assert_one_line_error(result, "sync.json", fragment)


def test_option_errors_exit_1_with_one_line(tmp_path):
    write_config(tmp_path, SEED)
    assert_one_line_error(twistd(tmp_path, "--config", "missing.json"), "missing.json", "cannot read")
    assert_one_line_error(twistd(tmp_path, "--frobnicate"), "--frobnicate")
    (tmp_path / "etc").mkdir()
    write_config(tmp_path, SEED, name="etc/sync.json")  # the default --config
    assert_one_line_error(twistd(tmp_path, "--listen", "tcp:notaport"), "--listen", "notaport")
    assert_one_line_error(twistd(tmp_path, "--listen", "99999"), "--listen")
    assert_one_line_error(twistd(tmp_path, "--root", str(tmp_path / "a" / "b")), "root",
                          "parent directory does not exist")


def test_busy_port_exits_1_with_one_line(tmp_path):
    write_config(tmp_path, SEED)
    with listening_socket() as busy:
        port = busy.getsockname()[1]
        result = twistd(tmp_path, "--config", "sync.json", "--listen", f"127.0.0.1:{port}")
    assert_one_line_error(result, str(port), "Address already in use")


def wait_for_health(url, deadline):
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status, json.loads(response.read())
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"{url} never answered")


def test_serves_with_seed_config_and_json_logs(tmp_path):
    """The seed's file verbatim (root ./sync-data relative to the working directory)."""
    write_config(tmp_path, SEED)
    port = free_port()
    process = subprocess.Popen(
        [TWISTD, "-n", "--pidfile=", "--logger=quantum_sync.logs.json_observer", "quantum-sync",
         "--config", "sync.json", "--listen", f"127.0.0.1:{port}"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        status, body = wait_for_health(f"http://127.0.0.1:{port}/ws/health", time.monotonic() + 20)
        assert status == 200 and body["status"] == "ok"
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/upload?path=hello.txt&token=s3cret", data=b"hi",
            method="PUT")
        with urllib.request.urlopen(request, timeout=5) as response:
            assert json.loads(response.read())["size"] == 2
        assert (tmp_path / "sync-data" / "hello.txt").read_bytes() == b"hi"
    finally:
        out, _ = stop_cleanly(process)
    events = [json.loads(line) for line in out.splitlines() if line.strip()]
    access = [e for e in events if e.get("log_namespace") == "quantum_sync.access"]
    upload = [e for e in access if e["method"] == "PUT"]
    assert upload and upload[0]["status"] == 200 and upload[0]["bytes_in"] == 2
    assert "token=REDACTED" in upload[0]["path"] and "s3cret" not in out
    assert all(isinstance(e["duration_ms"], float) for e in access)


#: Plays systemd's part in socket activation: the listening socket becomes fd 3 with
#: LISTEN_PID/LISTEN_FDS/LISTEN_FDNAMES set, then the process becomes twistd.
SOCKET_ACTIVATE = """
import os, sys
fd = int(sys.argv[1])
os.dup2(fd, 3)
os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS="1", LISTEN_FDNAMES="quantum-sync")
os.execv(sys.argv[2], sys.argv[2:])
"""


def test_socket_activation(tmp_path):
    """The systemd unit's way to listen: an inherited socket named quantum-sync."""
    write_config(tmp_path, SEED)
    with listening_socket() as listening:
        port = listening.getsockname()[1]
        process = subprocess.Popen(
            [sys.executable, "-c", SOCKET_ACTIVATE, str(listening.fileno()), TWISTD, "-n",
             "--pidfile=", "quantum-sync", "--config", "sync.json",
             "--listen", "systemd:domain=INET:name=quantum-sync"],
            cwd=tmp_path, pass_fds=[listening.fileno()], stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)
    try:
        status, body = wait_for_health(f"http://127.0.0.1:{port}/ws/health", time.monotonic() + 20)
        assert status == 200 and body["status"] == "ok"
    finally:
        stop_cleanly(process)


def test_busy_port_when_daemonising_exits_1(tmp_path):
    """``twistd quantum-sync`` (daemonised): the launcher reports the busy port and exits 1
    (twistd's own two-line wording), leaving no pidfile."""
    write_config(tmp_path, SEED)
    with listening_socket() as busy:
        port = busy.getsockname()[1]
        result = subprocess.run(
            [TWISTD, f"--pidfile={tmp_path / 'qs.pid'}", f"--logfile={tmp_path / 'qs.log'}",
             "quantum-sync", "--config", "sync.json", "--listen", f"127.0.0.1:{port}"],
            cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert result.returncode == 1, result.stderr
    assert f"127.0.0.1:{port}" in result.stderr and "Address already in use" in result.stderr
    assert not (tmp_path / "qs.pid").exists()
