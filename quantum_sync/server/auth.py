"""Authentication and roles (contract §6).

Without an ``auth`` section the server is open (:class:`OpenAuthorizer`, the seed's
default). With one, :func:`build_authorizer` makes a :class:`TokenAuthorizer`:

- accounts come from the config (``users: {name: {password_hash, role}}``); hashes are
  scrypt (:mod:`quantum_sync.passwords`, made with ``quantum-sync-passwd``) and are
  checked in a thread, with the same cost for unknown names;
- a login returns a JWT signed HS256 with the 32-byte key in ``secret_file`` (64 hex
  characters, created mode 0600 when missing). Verification pins the algorithm to
  HS256 (``alg: none`` and RS/HS swaps are refused), requires ``exp``, ``iat``, ``sub``,
  ``iss`` and ``aud``, and takes the role from the *current* config, so a removed user
  or a lowered role takes effect at once;
- tokens arrive as ``Authorization: Bearer T``, ``?token=T`` or the WebSocket ``auth``
  message (:meth:`TokenAuthorizer.authorize_token`);
- an upload's token is checked when its head arrives (:meth:`TokenAuthorizer.admit_head`,
  401 before a byte of the body is read) and its expiry judged at that moment: a long
  body may outlive the token it started with, so it is never refused after it is all in
  and sent again (the account and role are checked again at the end);
- failed logins are throttled per address and per user (:mod:`.throttle`): 429
  RATE_LIMIT_EXCEEDED with ``retryAfter``, announced as a ``security_alert``.

Tokens and passwords are never logged.
"""

import os
import secrets
import stat
import uuid

import attrs
import jwt
from twisted.internet import defer
from twisted.logger import Logger

from quantum_sync import passwords
from quantum_sync.config import ConfigError
from quantum_sync.errors import SyncError
from quantum_sync.paths import STATE_DIR_NAME
from quantum_sync.protocol import format_time
from quantum_sync.server.throttle import LoginThrottle

ROLES = ("read", "write", "admin")

log = Logger()

ALGORITHM = "HS256"
ISSUER = "quantum-sync"
AUDIENCE = "quantum-sync"
DEFAULT_TOKEN_TTL = 3600
DEFAULT_SECRET_NAME = "auth-secret"
#: Longer "tokens" are refused without parsing (ours are about 300 characters).
MAX_TOKEN_LENGTH = 4096
MAX_USERNAME_LENGTH = 256
#: The request attribute holding the identity its head was admitted with (:meth:`TokenAuthorizer.admit_head`).
ADMITTED = "quantum_sync_admitted"


def role_allows(have: str, need: str) -> bool:
    """``admin`` ⊃ ``write`` ⊃ ``read``."""
    return ROLES.index(have) >= ROLES.index(need)


@attrs.frozen
class Identity:
    """Who made a request, and what they may do; ``expires`` (epoch seconds) is when
    the token it came from runs out (None: never, as for the open server). Two
    identities are equal when user and role are."""

    user: str
    role: str
    expires: float | None = attrs.field(default=None, eq=False)


ANONYMOUS_ADMIN = Identity("anonymous", "admin")


class AuthConfigError(ConfigError, ValueError):
    """The ``auth`` section or its secret file cannot be used; the message is one line
    naming the key or file and why (the server reports it and exits with status 1)."""


class OpenAuthorizer:
    """No ``auth`` section in the config: everyone may do everything (the seed's default)."""

    enabled = False

    def authorize_request(self, request, role: str) -> Identity:
        """The caller's identity if it holds ``role``; raises SyncError otherwise
        (AUTH_REQUIRED, AUTH_FAILED, AUTH_EXPIRED, PERMISSION_DENIED)."""
        return ANONYMOUS_ADMIN

    def authorize_token(self, token, role: str) -> Identity:
        """Same for a bare token (the WebSocket ``auth`` message)."""
        return ANONYMOUS_ADMIN

    def admit_head(self, request, role: str) -> Identity:
        """:meth:`authorize_request` for a request whose head is in and whose body is not
        yet read (an upload); the identity is kept on the request for the check at its end."""
        return ANONYMOUS_ADMIN

    def login(self, username, password, address: str) -> dict:
        """``POST /api/v1/auth/login``: the contract's answer ``data`` or a SyncError."""
        raise SyncError("NOT_FOUND", "authentication is not configured on this server")

    def recheck(self, identity: Identity, role: str) -> Identity:
        """For long-lived connections: may ``identity`` (authenticated earlier) still do
        what needs ``role``? The current identity, or a SyncError."""
        return identity


# --- the secret file -------------------------------------------------------------------


def load_or_create_secret(path: str) -> bytes:
    """The 32-byte signing key in ``path`` (64 hex characters); a missing file is
    created with a fresh random key, mode 0600 (its directory 0700 when made here)."""
    try:
        parent = os.path.dirname(path) or "."
        if not os.path.isdir(parent):
            os.makedirs(parent, mode=0o700)
    except OSError as e:
        raise AuthConfigError(f"auth.secret_file {path}: cannot create it ({e.strerror})") from None
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        return _read_secret(path)
    except OSError as e:
        raise AuthConfigError(f"auth.secret_file {path}: cannot create it ({e.strerror})") from None
    key = secrets.token_bytes(32)
    with os.fdopen(fd, "w") as f:
        f.write(key.hex() + "\n")
        f.flush()
        os.fsync(f.fileno())
    log.info("created a new token signing key in {path} (mode 0600)", path=path)
    return key


def _read_secret(path: str) -> bytes:
    try:
        with open(path, encoding="ascii") as f:
            text = f.read(1024).strip()
            mode = os.fstat(f.fileno()).st_mode
    except (OSError, UnicodeDecodeError) as e:
        reason = getattr(e, "strerror", None) or "not ASCII text"
        raise AuthConfigError(f"auth.secret_file {path}: cannot read it ({reason})") from None
    if len(text) != 64 or any(c not in "0123456789abcdefABCDEF" for c in text):
        raise AuthConfigError(f"auth.secret_file {path}: must hold exactly 64 hex characters")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warn(
            "auth.secret_file {path} is readable by others (mode {mode:o}); chmod 600 it",
            path=path,
            mode=stat.S_IMODE(mode),
        )
    return bytes.fromhex(text)


# --- the authorizer --------------------------------------------------------------------


@attrs.frozen
class Account:
    """A configured user."""

    name: str
    password_hash: str
    role: str


def _bearer_token(request):
    header = request.getHeader(b"authorization")
    if header:
        scheme, _, value = header.decode("latin-1").strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        raise SyncError("AUTH_FAILED", "the Authorization header must be 'Bearer <token>'")
    values = (getattr(request, "args", None) or {}).get(b"token")
    if values:
        return values[0].decode("latin-1")
    return None


def _may_match(username: str, password: str) -> bool:
    """Whether ``username`` and ``password`` are short enough to be worth the (slow)
    password check; one with a lone surrogate (valid JSON) is nobody's password."""
    try:
        password_bytes = len(password.encode("utf-8"))
    except UnicodeEncodeError:
        return False
    return len(username) <= MAX_USERNAME_LENGTH and password_bytes <= passwords.MAX_PASSWORD_BYTES


class TokenAuthorizer:
    """Accounts from the config, HS256 JWTs, roles, and failed-login throttling."""

    enabled = True

    def __init__(
        self,
        accounts: dict,
        key: bytes,
        token_ttl: int,
        clock,
        hub=None,
        throttle=None,
        *,
        run_in_thread,
    ):
        self.accounts = accounts
        self._key = key
        self.token_ttl = token_ttl
        self.clock = clock
        self.hub = hub
        self.throttle = throttle if throttle is not None else LoginThrottle(clock)
        self._run_in_thread = run_in_thread
        passwords.dummy_hash()  # made now, so the first unknown name costs no extra time

    # tokens

    def issue_token(self, user: str) -> dict:
        """A signed token for ``user`` and when it expires (the login answer's ``data``)."""
        now = int(self.clock.seconds())
        expires = now + self.token_ttl
        claims = {
            "sub": user,
            "role": self.accounts[user].role,
            "iat": now,
            "exp": expires,
            "iss": ISSUER,
            "aud": AUDIENCE,
            "jti": uuid.uuid4().hex,
        }
        token = jwt.encode(claims, self._key, algorithm=ALGORITHM)
        return {
            "token": token,
            "expires_at": format_time(expires),
            "role": claims["role"],
        }

    def identify(self, token) -> Identity:
        """The identity behind ``token``; AUTH_REQUIRED / AUTH_FAILED / AUTH_EXPIRED."""
        if token is None or token == "":
            raise SyncError("AUTH_REQUIRED", "authentication required: send a token")
        if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH:
            raise SyncError("AUTH_FAILED", "invalid token")
        claims = self._claims(token)
        expires, user = claims["exp"], claims["sub"]
        if not isinstance(expires, (int, float)) or isinstance(expires, bool):
            raise SyncError("AUTH_FAILED", "invalid token")
        if self.clock.seconds() >= expires:
            raise SyncError("AUTH_EXPIRED", "the token has expired; log in again")
        account = self.accounts.get(user) if isinstance(user, str) else None
        if account is None:
            raise SyncError("AUTH_FAILED", "invalid token")
        return Identity(account.name, account.role, expires)

    def _claims(self, token: str) -> dict:
        """The claims of a token this server signed (its expiry not yet checked);
        AUTH_FAILED for any other."""
        try:
            return jwt.decode(
                token,
                self._key,
                algorithms=[ALGORITHM],
                audience=AUDIENCE,
                issuer=ISSUER,
                options={
                    "require": ["exp", "iat", "sub", "iss", "aud"],
                    # expiry is checked by the caller against the injected clock
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                },
            )
        except jwt.InvalidTokenError:
            raise SyncError("AUTH_FAILED", "invalid token") from None

    def recheck(self, identity: Identity, role: str) -> Identity:
        """For long-lived connections (the WebSocket): the identity authenticated earlier,
        checked again against the clock and the current accounts, so an expired token
        (AUTH_EXPIRED), a removed user (AUTH_FAILED) or a lowered role
        (PERMISSION_DENIED) takes effect without a reconnect."""
        if identity.expires is not None and self.clock.seconds() >= identity.expires:
            raise SyncError("AUTH_EXPIRED", "the token has expired; log in again")
        account = self.accounts.get(identity.user)
        if account is None:
            raise SyncError("AUTH_FAILED", "the account no longer exists")
        current = Identity(account.name, account.role, identity.expires)
        if not role_allows(current.role, role):
            raise SyncError("PERMISSION_DENIED", f"this needs the {role!r} role")
        return current

    def authorize_token(self, token, role: str) -> Identity:
        """The identity behind a bare token if it holds ``role``; raises SyncError
        otherwise (AUTH_REQUIRED, AUTH_FAILED, AUTH_EXPIRED, PERMISSION_DENIED)."""
        identity = self.identify(token)
        if not role_allows(identity.role, role):
            raise SyncError("PERMISSION_DENIED", f"this needs the {role!r} role")
        return identity

    def authorize_request(self, request, role: str) -> Identity:
        """Same for an HTTP request (Bearer header, else ``?token=``). A request admitted
        by :meth:`admit_head` is judged as its head was: the token's expiry then, the
        account and role now."""
        try:
            admitted = getattr(request, ADMITTED, None)
            if admitted is not None:
                return self.recheck(attrs.evolve(admitted, expires=None), role)
            return self.authorize_token(_bearer_token(request), role)
        except SyncError as e:
            if e.status == 401:
                request.setHeader(b"www-authenticate", b'Bearer realm="quantum-sync"')
            raise

    def admit_head(self, request, role: str) -> Identity:
        """Check the token of a request whose head is in, before its body is read (an
        upload: refused with 401 at once rather than after its last byte). The identity
        is kept on the request, so a body that takes longer than the token has left is
        not refused at its end as expired (and sent again by the client)."""
        identity = self.authorize_request(request, role)
        setattr(request, ADMITTED, identity)
        return identity

    # logins

    def login(self, username, password, address: str):
        """``POST /api/v1/auth/login``: a Deferred firing with the answer's ``data``
        (``token``, ``expires_at``, ``role``) or failing with a SyncError
        (INVALID_REQUEST, AUTH_FAILED, RATE_LIMIT_EXCEEDED)."""
        return defer.ensureDeferred(self._login(username, password, address))

    async def _login(self, username, password, address):
        if not isinstance(username, str) or not isinstance(password, str):
            raise SyncError("INVALID_REQUEST", "username and password must be strings")
        address = str(address)
        account = self.accounts.get(username)
        user = account.name if account is not None else None
        self.throttle.check(address, user)
        # Counted before the (slow) check, so parallel guesses cannot pass the limit;
        # a correct password clears it again.
        lockouts = self.throttle.failed(address, user)
        if not _may_match(username, password):
            ok = False
        else:
            stored = account.password_hash if account is not None else passwords.dummy_hash()
            ok = await self._run_in_thread(passwords.verify_password, password, stored)
            ok = ok and account is not None
        if ok:
            self.throttle.succeeded(address, user)
            log.info("login of {user} from {address}", user=user, address=address)
            return self.issue_token(user)
        log.warn(
            "failed login for {user!r} from {address}",
            user=username[:64],
            address=address,
        )
        for lockout in lockouts:
            self._announce(lockout, address, username)
        raise SyncError("AUTH_FAILED", "wrong user name or password")

    def _announce(self, lockout, address, username):
        log.warn(
            "login throttled: {failures} failed logins in {window} s for {kind} {key!r}",
            failures=lockout.failures,
            window=lockout.window,
            kind=lockout.kind,
            key=lockout.key[:64],
        )
        if self.hub is not None:
            self.hub.alert(
                "security_alert",
                {
                    "event": "login_throttled",
                    "kind": lockout.kind,
                    "address": address,
                    "user": username[:64],
                    "failures": lockout.failures,
                    "window": lockout.window,
                },
            )


# --- building it from the config -------------------------------------------------------


def _get(section, name, default=None):
    if isinstance(section, (tuple, list)):  # config.AuthConfig's (password_hash, role)
        section = dict(zip(("password_hash", "role"), section))
    if isinstance(section, dict):
        return section.get(name, default)
    return getattr(section, name, default)


def _accounts(users) -> dict:
    if not users:
        raise AuthConfigError("auth.users: at least one user is needed")
    accounts = {}
    for name, entry in dict(users).items():
        where = f"auth.users.{name}"
        role = _get(entry, "role")
        if role not in ROLES:
            raise AuthConfigError(f"{where}.role: must be one of {', '.join(ROLES)}, not {role!r}")
        password_hash = _get(entry, "password_hash")
        try:
            passwords.parse_hash(password_hash)
        except passwords.InvalidHash as e:
            raise AuthConfigError(f"{where}.password_hash: {e}") from None
        accounts[name] = Account(name, password_hash, role)
    return accounts


def _check_secret_location(secret_file: str, root: str) -> None:
    """A key inside the synced root (outside its state directory) would be listed,
    downloadable and synced to every client: refuse it."""
    real = os.path.realpath(secret_file)
    real_root = os.path.realpath(root)
    state = os.path.join(real_root, STATE_DIR_NAME)
    inside = os.path.commonpath([real, real_root]) == real_root
    if inside and os.path.commonpath([real, state]) != state:
        raise AuthConfigError(
            f"auth.secret_file {secret_file}: it is inside the synced root {root}, where it "
            f"would be served and synced; keep it outside (or in {STATE_DIR_NAME}/)"
        )


def build_authorizer(auth_config, state_dir, reactor, hub=None, root=None, *, run_in_thread):
    """The authorizer for the config's ``auth`` section (a dict or an attrs object with
    ``users``, ``secret_file``, ``token_ttl``): :class:`OpenAuthorizer` when it is None.
    A relative ``secret_file`` is taken from the working directory; without one the
    key lives in ``<state_dir>/auth-secret``. With ``root`` given, a key file inside
    the synced root is refused. ``run_in_thread(f, *args)`` (the server's thread pool)
    checks passwords off the reactor. Raises :class:`AuthConfigError`."""
    if auth_config is None:
        return OpenAuthorizer()
    accounts = _accounts(_get(auth_config, "users"))
    ttl = _get(auth_config, "token_ttl", None)
    ttl = DEFAULT_TOKEN_TTL if ttl is None else ttl
    if not isinstance(ttl, int) or isinstance(ttl, bool) or ttl <= 0:
        raise AuthConfigError(f"auth.token_ttl: must be a positive number of seconds, not {ttl!r}")
    secret_file = os.path.abspath(
        _get(auth_config, "secret_file") or os.path.join(state_dir, DEFAULT_SECRET_NAME)
    )
    if root is not None:
        _check_secret_location(secret_file, root)
    key = load_or_create_secret(secret_file)
    return TokenAuthorizer(accounts, key, ttl, reactor, hub, run_in_thread=run_in_thread)
