"""quantum-sync-passwd, run as the installed console script."""

import os
import pty
import select
import subprocess
import sys
import time

import pytest

from quantum_sync import passwords

SCRIPT = os.path.join(os.path.dirname(sys.executable), "quantum-sync-passwd")


def run(stdin_bytes):
    return subprocess.run([SCRIPT], input=stdin_bytes, capture_output=True, timeout=30)


def test_hash_from_piped_stdin_verifies():
    done = run("correct horse \u00e9\n".encode())
    assert done.returncode == 0, done.stderr
    lines = done.stdout.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("$scrypt$ln=15,r=8,p=1$")
    assert passwords.verify_password("correct horse \u00e9", lines[0])
    assert not passwords.verify_password("correct horse e", lines[0])
    assert done.stderr == b""


def test_two_hashes_of_one_password_differ_by_salt():
    first, second = run(b"pw\n").stdout, run(b"pw\n").stdout
    assert first != second


@pytest.mark.parametrize(
    "stdin, message",
    [(b"", b"empty"), (b"\n", b"empty"), (b"x" * 1025 + b"\n", b"longer than 1024 bytes")],
)
def test_bad_input_is_one_line_and_status_1(stdin, message):
    done = run(stdin)
    assert done.returncode == 1
    assert done.stdout == b""
    assert message in done.stderr and done.stderr.count(b"\n") == 1
    assert b"Traceback" not in done.stderr


def _run_on_terminal(answers):
    """Run the script with a pseudo-terminal as its controlling terminal, typing
    ``answers`` at its prompts; return (exit status, everything it wrote)."""
    pid, master = pty.fork()
    if pid == 0:  # the child: stdin/stdout/stderr are the terminal
        os.execv(SCRIPT, [SCRIPT])
    output, pending = b"", list(answers)
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:
                    break
                if not chunk:
                    break
                output += chunk
                if pending and output.endswith(b": "):
                    os.write(master, pending.pop(0) + b"\n")
            elif os.waitpid(pid, os.WNOHANG) != (0, 0):
                pid = None
                break
    finally:
        os.close(master)
        status = os.waitpid(pid, 0)[1] if pid else 0
    return os.waitstatus_to_exitcode(status) if pid else None, output


def test_terminal_prompts_twice_without_echo():
    status, output = _run_on_terminal([b"s3cret!", b"s3cret!"])
    text = output.decode()
    assert "Password:" in text and "Password (again):" in text
    assert "s3cret!" not in text  # not echoed
    hashed = [line for line in text.splitlines() if line.startswith("$scrypt$")]
    assert len(hashed) == 1 and passwords.verify_password("s3cret!", hashed[0].strip())
    assert status in (0, None)


def test_terminal_mismatch_is_refused():
    status, output = _run_on_terminal([b"one", b"two"])
    assert b"do not match" in output
    assert b"$scrypt$" not in output
    assert status in (1, None)
