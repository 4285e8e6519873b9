"""Password hashes for the config's ``password_hash`` (contract §6): scrypt from the
standard library, memory-hard, salted, in the modular-crypt form passlib also reads::

    $scrypt$ln=15,r=8,p=1$<salt, base64 without padding>$<key, base64 without padding>

``ln`` is log2 of scrypt's N. The defaults (N=2^15, r=8: 32 MiB, roughly 0.1 s) follow
OWASP's scrypt recommendation. Pure and blocking: callers on the reactor run
:func:`verify_password` in a thread.
"""

import base64
import functools
import hashlib
import hmac
import re
import secrets

DEFAULT_LN = 15
DEFAULT_R = 8
DEFAULT_P = 1
SALT_BYTES = 16
KEY_BYTES = 32
#: Longest password hashed at all: longer ones are refused before any work is done.
MAX_PASSWORD_BYTES = 1024

_FORMAT = re.compile(
    r"^\$scrypt\$ln=(?P<ln>\d{1,2}),r=(?P<r>\d{1,2}),p=(?P<p>\d{1,2})"
    r"\$(?P<salt>[A-Za-z0-9+/]{16,88})\$(?P<key>[A-Za-z0-9+/]{32,88})$"
)


class InvalidHash(ValueError):
    """A stored hash that is not in the format above (or asks for absurd costs)."""


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


def _scrypt(password: bytes, salt: bytes, ln: int, r: int, p: int, length: int) -> bytes:
    n = 1 << ln
    # scrypt needs 128 * r * N bytes (plus a little); hashlib's default cap is 32 MiB.
    return hashlib.scrypt(
        password, salt=salt, n=n, r=r, p=p, dklen=length, maxmem=128 * r * n * p + (1 << 20)
    )


def _encode(password) -> bytes:
    raw = password.encode("utf-8") if isinstance(password, str) else bytes(password)
    if len(raw) > MAX_PASSWORD_BYTES:
        raise ValueError(f"passwords are limited to {MAX_PASSWORD_BYTES} bytes")
    return raw


def hash_password(password, ln: int = DEFAULT_LN, r: int = DEFAULT_R, p: int = DEFAULT_P) -> str:
    """A new salted hash of ``password`` (str or bytes) in the format above."""
    salt = secrets.token_bytes(SALT_BYTES)
    key = _scrypt(_encode(password), salt, ln, r, p, KEY_BYTES)
    return f"$scrypt$ln={ln},r={r},p={p}${_b64(salt)}${_b64(key)}"


def parse_hash(stored: str) -> dict:
    """The parameters of a stored hash, or :class:`InvalidHash` saying why not."""
    if not isinstance(stored, str):
        raise InvalidHash("a password hash must be a string")
    match = _FORMAT.match(stored)
    if match is None:
        raise InvalidHash(
            "not a quantum-sync password hash ($scrypt$ln=..,r=..,p=..$salt$key); "
            "make one with quantum-sync-passwd"
        )
    params = {k: int(match[k]) for k in ("ln", "r", "p")}
    if not (10 <= params["ln"] <= 20 and 1 <= params["r"] <= 32 and 1 <= params["p"] <= 16):
        raise InvalidHash("scrypt cost parameters out of range (ln 10..20, r 1..32, p 1..16)")
    params["salt"] = _unb64(match["salt"])
    params["key"] = _unb64(match["key"])
    return params


def verify_password(password, stored) -> bool:
    """True when ``password`` matches ``stored`` (compared in constant time). A
    malformed hash or an over-long password is simply False."""
    try:
        params = parse_hash(stored)
        raw = _encode(password)
    except (InvalidHash, ValueError, TypeError):
        return False
    key = _scrypt(raw, params["salt"], params["ln"], params["r"], params["p"], len(params["key"]))
    return hmac.compare_digest(key, params["key"])


@functools.cache
def dummy_hash() -> str:
    """A hash of a random password, verified against when the user does not exist, so
    that an unknown name costs the same time as a wrong password (no enumeration)."""
    return hash_password(secrets.token_hex(16))
