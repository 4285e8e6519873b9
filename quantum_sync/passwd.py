"""``quantum-sync-passwd``: turn a password into the config's ``password_hash``.

Reads the password from standard input (on a terminal it prompts twice, without echo;
otherwise the first line is the password), prints the scrypt hash on one line::

    $ quantum-sync-passwd
    Password:
    Password (again):
    $scrypt$ln=15,r=8,p=1$...$...

    $ printf '%s\\n' "$PASSWORD" | quantum-sync-passwd
"""

import argparse
import getpass
import sys

from quantum_sync import passwords


class PasswordError(Exception):
    """Why no hash was printed (one line for stderr)."""


def read_password(stdin) -> str:
    """The password from ``stdin``: prompted twice on a terminal, else its first line."""
    if stdin.isatty():
        first = getpass.getpass("Password: ")
        if getpass.getpass("Password (again): ") != first:
            raise PasswordError("the passwords do not match")
        password = first
    else:
        password = stdin.readline().rstrip("\r\n")
    if not password:
        raise PasswordError("the password is empty")
    if len(password.encode("utf-8")) > passwords.MAX_PASSWORD_BYTES:
        raise PasswordError(f"the password is longer than {passwords.MAX_PASSWORD_BYTES} bytes")
    return password


def main(argv=None, stdin=None, stdout=None, stderr=None) -> int:
    """Entry point of the console script; returns the exit status."""
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    parser = argparse.ArgumentParser(
        prog="quantum-sync-passwd",
        description="Read a password from standard input and print its hash for the "
        "auth.users.NAME.password_hash key of the quantum-sync config.",
    )
    parser.parse_args(argv)
    try:
        password = read_password(stdin)
    except PasswordError as e:
        print(f"quantum-sync-passwd: {e}", file=stderr)
        return 1
    except (EOFError, KeyboardInterrupt):
        print("quantum-sync-passwd: no password given", file=stderr)
        return 1
    print(passwords.hash_password(password), file=stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
