"""``twistd quantum-sync-client`` options: every error is one line and exit status 1."""

import os
import subprocess
import sys

import pytest

from quantum_sync.client.tap import Options

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


def parse(args):
    options = Options()
    options.parseOptions(args)
    return options.config


def test_defaults(tmp_path):
    config = parse(["--server", "http://127.0.0.1:8080", "--local-path", str(tmp_path)])
    assert config.server == "http://127.0.0.1:8080"
    assert config.folder == os.path.realpath(tmp_path)
    assert config.realtime and not config.initial_sync and not config.allow_mass_delete
    assert config.interval == 30.0 and config.settle == 0.2 and config.strategy == "rename"
    assert config.client_id is None and config.token is None


def test_all_options(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    folder = tmp_path / "new-folder"  # missing, but its parent exists: created
    config = parse([
        "--server", "https://sync.example:8443/", "--local-path", str(folder), "--client-id", "laptop-1",
        "--no-realtime", "--initial-sync", "--interval", "5", "--token-file", str(token_file),
        "--conflict-strategy", "keep-server", "--settle", "50", "--allow-mass-delete",
    ])
    assert folder.is_dir()
    assert (config.server, config.client_id, config.realtime, config.initial_sync) == (
        "https://sync.example:8443", "laptop-1", False, True)
    assert (config.interval, config.token, config.strategy, config.settle, config.allow_mass_delete) == (
        5.0, "s3cret", "keep-server", 0.05, True)


@pytest.mark.parametrize(
    "args,message",
    [
        (["--local-path", "{tmp}"], "--server URL is required"),
        (["--server", "ftp://x", "--local-path", "{tmp}"], "expected http://HOST:PORT"),
        (["--server", "http://x:99999", "--local-path", "{tmp}"], "invalid port"),
        (["--server", "http://x"], "--local-path DIR is required"),
        (["--server", "http://x", "--local-path", "{tmp}/no/such/parent"], "parent directory"),
        (["--server", "http://x", "--local-path", "{tmp}/file"], "not a directory"),
        (["--server", "http://x", "--local-path", "{tmp}", "--interval", "soon"], "--interval soon: not a number"),
        (["--server", "http://x", "--local-path", "{tmp}", "--interval", "0"], "more than 0"),
        (["--server", "http://x", "--local-path", "{tmp}", "--settle", "-1"], "--settle"),
        (["--server", "http://x", "--local-path", "{tmp}", "--conflict-strategy", "newest"], "--conflict-strategy newest"),
        (["--server", "http://x", "--local-path", "{tmp}", "--token", "a", "--token-file", "{tmp}/file"], "exclude each other"),
        (["--server", "http://x", "--local-path", "{tmp}", "--token-file", "{tmp}/missing"], "--token-file"),
        (["--server", "http://x", "--local-path", "{tmp}", "--ca-cert", "{tmp}/file"], "--ca-cert"),
        (["--server", "http://x", "--local-path", "{tmp}", "--client-id", "a b"], "--client-id"),
        (["--server", "http://x", "--local-path", "{tmp}", "--bogus"], "bogus"),
    ],
)
def test_option_errors_are_one_line_and_exit_1(tmp_path, capsys, args, message):
    (tmp_path / "file").write_text("not a certificate")
    with pytest.raises(SystemExit) as exit_info:
        parse([a.replace("{tmp}", str(tmp_path)) for a in args])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and err.startswith("quantum-sync-client: ")


def test_twistd_reports_a_bad_option_in_one_line(tmp_path):
    result = subprocess.run(
        [TWISTD, "-n", "--pidfile=", "quantum-sync-client", "--server", "http://127.0.0.1:1",
         "--local-path", str(tmp_path / "absent" / "folder")],
        capture_output=True, text=True, timeout=60, cwd=str(tmp_path),
    )
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and "parent directory" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "absent").exists()


def test_user_and_password_file(tmp_path):
    password = tmp_path / "password"
    password.write_text("wonderland\n")
    os.chmod(password, 0o600)
    config = parse(["--server", "http://x", "--local-path", str(tmp_path), "--user", "alice",
                    "--password-file", str(password)])
    assert (config.user, config.password, config.token) == ("alice", "wonderland", None)
    assert "wonderland" not in repr(config)


@pytest.mark.parametrize(
    "args,mode,message",
    [
        (["--user", "alice", "--password-file", "{tmp}/password"], 0o644, "readable by group or others"),
        (["--user", "alice", "--password-file", "{tmp}/password"], 0o640, "readable by group or others"),
        (["--user", "alice", "--password-file", "{tmp}/missing"], 0o600, "--password-file"),
        (["--user", "alice"], 0o600, "go together"),
        (["--password-file", "{tmp}/password"], 0o600, "go together"),
        (["--user", "alice", "--password-file", "{tmp}/password", "--token", "t"], 0o600, "excludes --token"),
    ],
)
def test_password_file_errors_are_one_line_and_exit_1(tmp_path, capsys, args, mode, message):
    password = tmp_path / "password"
    password.write_text("wonderland\n")
    os.chmod(password, mode)
    with pytest.raises(SystemExit) as exit_info:
        parse(["--server", "http://x", "--local-path", str(tmp_path)] + [a.replace("{tmp}", str(tmp_path)) for a in args])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "wonderland" not in err


LOG_LEVEL_SCRIPT = """
import sys, txaio
from twisted.internet import reactor
from quantum_sync.client import tap
options = tap.Options()
options.parseOptions(["--server", "http://127.0.0.1:9", "--local-path", sys.argv[1]])
txaio.set_global_log_level("debug")
tap.makeService(options, reactor)
print(txaio.get_global_log_level())
"""


def test_the_daemon_keeps_autobahns_frame_level_debug_lines_out(tmp_path):
    # in a subprocess: makeService also tunes this process's garbage collector
    result = subprocess.run([sys.executable, "-c", LOG_LEVEL_SCRIPT, str(tmp_path)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-1] == "info"
