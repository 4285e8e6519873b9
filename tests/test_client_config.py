"""The client's configuration file: every key checked, every error one line and exit 1."""

import json
import os
import subprocess
import sys

import pytest

from certs import make_ca

from quantum_sync.client.clientconfig import load
from quantum_sync.client.selection import Selection
from quantum_sync.client.tap import Options
from quantum_sync.config import ConfigError

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


def write_config(tmp_path, document):
    path = tmp_path / "client.json"
    path.write_text(json.dumps(document) if not isinstance(document, str) else document)
    return str(path)


def test_two_folders_with_every_key(tmp_path):
    (tmp_path / "pw").write_text("secret\n")
    os.chmod(tmp_path / "pw", 0o600)
    (tmp_path / "token").write_text("tok\n")
    os.rename(make_ca(tmp_path).cert_path, tmp_path / "ca.pem")
    path = write_config(tmp_path, {"folders": [
        {"name": "docs", "server": "http://127.0.0.1:8080/", "local_path": "docs", "client_id": "laptop",
         "auth": {"user": "me", "password_file": "pw"}, "conflict_strategy": "keep-server", "interval": 5,
         "settle_ms": 50, "allow_mass_delete": True, "realtime": False, "initial_sync": True, "relay": False,
         "include": ["/projects/"], "exclude": ["*.iso"], "delta": "never", "compress": "always"},
        {"server": ["https://sync.example:8443", "https://b.example:8443/"], "local_path": str(tmp_path / "photos"),
         "auth": {"token_file": "token"}, "ca_cert": "ca.pem"},
    ]})
    docs, photos = load(path)
    assert docs.name == "docs" and photos.name == "photos"  # the default name: the path's last part
    c = docs.client
    assert (c.server, c.folder, c.client_id, c.user, c.password) == (
        "http://127.0.0.1:8080", os.path.realpath(tmp_path / "docs"), "laptop", "me", "secret")
    assert (c.strategy, c.interval, c.settle, c.allow_mass_delete, c.realtime, c.initial_sync, c.relay) == (
        "keep-server", 5.0, 0.05, True, False, True, False)
    assert c.selection == Selection(["/projects/"], ["*.iso"])
    assert (c.delta, c.compress, c.ca_cert) == ("never", "always", None)
    assert (tmp_path / "docs").is_dir() and (tmp_path / "photos").is_dir()  # created: their parent exists
    p = photos.client
    assert (p.token, p.token_file, p.user, p.strategy, p.interval, p.settle, p.realtime) == (
        "tok", str(tmp_path / "token"), None, "rename", 30.0, 0.2, True)
    assert p.selection.everything
    assert (p.server, p.fallbacks, p.ca_cert) == ("https://sync.example:8443", ("https://b.example:8443",), str(tmp_path / "ca.pem"))
    assert (p.delta, p.compress) == ("auto", "auto")


@pytest.mark.parametrize("document,message", [
    ("{", "invalid JSON at line 1"),
    ([], "top level: must be an object"),
    ({}, "folders: missing"),
    ({"folders": [], "x": 1}, "x: unknown key"),
    ({"folders": []}, "folders: must not be empty"),
    ({"folders": [{"local_path": "a"}]}, "folders[0].server: missing"),
    ({"folders": [{"server": "ftp://x", "local_path": "a"}]}, "expected http://HOST:PORT"),
    ({"folders": [{"server": ["http://x:1", "http://y:99999"], "local_path": "a"}]}, "invalid port"),
    ({"folders": [{"server": "http://x", "local_path": "a", "colour": 1}]}, "folders[0].colour: unknown key"),
    ({"folders": [{"server": "http://x", "local_path": "a", "interval": "5"}]}, "interval: must be a number"),
    ({"folders": [{"server": "http://x", "local_path": "a", "interval": 0}]}, "more than 0"),
    ('{"folders": [{"server": "http://x", "local_path": "a", "interval": NaN}]}', "NaN is not a number JSON allows"),
    ('{"folders": [{"server": "http://x", "local_path": "a", "interval": Infinity}]}', "Infinity is not a number"),
    ({"folders": [{"server": "http://x", "local_path": "a", "interval": True}]}, "interval: must be a number"),
    ({"folders": [{"server": "http://x", "local_path": "a", "settle_ms": -1}]}, "settle_ms: must be at least 0"),
    ({"folders": [{"server": "http://x", "local_path": "a", "delta": "sometimes"}]}, "folders[0].delta: expected one of"),
    ({"folders": [{"server": "http://x", "local_path": "a", "compress": 1}]}, "folders[0].compress: expected one of"),
    ({"folders": [{"server": "http://x", "local_path": "a", "initial_sync": 1}]}, "initial_sync: must be true or false"),
    ({"folders": [{"server": "http://x", "local_path": "a", "auth": {"token_file": "t", "user": "me"}}]},
     "token_file excludes user"),
    ({"folders": [{"server": "http://x", "local_path": "a", "auth": {"user": "", "password_file": "pw"}}]},
     "auth.user: 1 to 256 characters"),
    ({"folders": [{"server": [], "local_path": "a"}]}, "folders[0].server: must not be empty"),
    ({"folders": [{"server": "http://x", "local_path": "a", "settle_ms": 0.5}]}, "settle_ms: must be an integer"),
    ({"folders": [{"server": "http://x", "local_path": "a", "realtime": "yes"}]}, "realtime: must be true or false"),
    ({"folders": [{"server": "http://x", "local_path": "a", "conflict_strategy": "newest"}]}, "conflict_strategy"),
    ({"folders": [{"server": "http://x", "local_path": "a", "client_id": "a b"}]}, "client_id"),
    ({"folders": [{"server": "http://x", "local_path": "a", "name": "a/b"}]}, "folders[0].name"),
    ({"folders": [{"server": "http://x", "local_path": "a", "include": "*.txt"}]}, "include: must be a list"),
    ({"folders": [{"server": "http://x", "local_path": "a", "exclude": [1]}]}, "exclude[0]: must be a string"),
    ({"folders": [{"server": "http://x", "local_path": "a", "auth": {"user": "me"}}]}, "expected user and password_file"),
    ({"folders": [{"server": "http://x", "local_path": "a", "auth": {"token_file": "missing"}}]}, "token_file"),
    ({"folders": [{"server": "http://x", "local_path": "a", "auth": {"user": "me", "password_file": "open"}}]},
     "readable by group or others"),
    ({"folders": [{"server": "http://x", "local_path": "a", "ca_cert": "open"}]}, "ca_cert"),
    ({"folders": [{"server": "http://x", "local_path": "no/such/parent"}]}, "folders[0].local_path"),
    ({"folders": [{"server": "http://x", "local_path": "a"}, {"server": "http://y", "local_path": "a/b"}]}, "overlap"),
    ({"folders": [{"server": "http://x", "local_path": "a"}, {"server": "http://y", "local_path": "b", "name": "a"}]},
     "names two folders"),
])
def test_errors_are_one_line_naming_the_key(tmp_path, capsys, document, message):
    (tmp_path / "open").write_text("not a certificate, readable by all\n")
    os.chmod(tmp_path / "open", 0o644)
    path = write_config(tmp_path, document)
    with pytest.raises(ConfigError) as error:
        load(path)
    assert message in str(error.value) and "\n" not in str(error.value) and str(error.value).startswith(path)
    with pytest.raises(SystemExit) as exit_info:
        Options().parseOptions(["--config", path])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and err.startswith("quantum-sync-client: ")


def test_config_excludes_the_single_folder_options(tmp_path, capsys):
    path = write_config(tmp_path, {"folders": [{"server": "http://x", "local_path": "a"}]})
    with pytest.raises(SystemExit):
        Options().parseOptions(["--config", path, "--server", "http://y"])
    assert "--config excludes --server" in capsys.readouterr().err
    options = Options()
    options.parseOptions(["--config", path])
    assert [f.name for f in options.folders] == ["a"]


def test_twistd_reports_a_bad_config_in_one_line(tmp_path):
    path = write_config(tmp_path, {"folders": [{"server": "http://x", "local_path": "a", "interval": -1}]})
    result = subprocess.run([TWISTD, "-n", "--pidfile=", "quantum-sync-client", "--config", path],
                            capture_output=True, text=True, timeout=60, cwd=str(tmp_path))
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and "folders[0].interval" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
