"""Pure parts of authentication: password hashes, the secret file, JWT issue/verify,
roles, and login throttling with an injected Clock (no reactor, no network)."""

import base64
import json
import os
import stat

import attrs
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.web.test.requesthelper import DummyRequest

from quantum_sync import passwords
from quantum_sync.errors import SyncError
from quantum_sync.server import auth
from quantum_sync.server.throttle import FailureWindow, LoginThrottle

FAST = {"ln": 10, "r": 8, "p": 1}  # cheap hashes for tests; the default is ln=15


class RecordingHub:
    """Stands in for the hub: records alerts."""

    def __init__(self):
        self.alerts = []

    def alert(self, kind, data):
        self.alerts.append((kind, data))


def run_now(function, *args):
    return defer.succeed(function(*args))


def result_of(deferred):
    """The result of an already-fired Deferred, raising its failure."""
    results = []
    deferred.addBoth(results.append)
    assert results, "the Deferred has not fired"
    if isinstance(results[0], Exception) or hasattr(results[0], "raiseException"):
        results[0].raiseException()
    return results[0]


@pytest.fixture
def clock():
    c = Clock()
    c.advance(1_700_000_000)
    return c


@pytest.fixture
def users():
    return {
        "alice": {"password_hash": passwords.hash_password("alice-pw", **FAST), "role": "admin"},
        "wendy": {"password_hash": passwords.hash_password("wendy-pw", **FAST), "role": "write"},
        "rita": {"password_hash": passwords.hash_password("rita-pw", **FAST), "role": "read"},
    }


@pytest.fixture
def hub():
    return RecordingHub()


@pytest.fixture
def authorizer(users, clock, hub, tmp_path):
    built = auth.build_authorizer(
        {"users": users, "secret_file": str(tmp_path / "secret"), "token_ttl": 600},
        str(tmp_path / "state"),
        clock,
        hub,
        run_in_thread=run_now,
    )
    return built


def login(authorizer, user, password, address="192.0.2.1"):
    return result_of(authorizer.login(user, password, address))


def refused(code, function, *args):
    with pytest.raises(SyncError) as raised:
        function(*args)
    assert raised.value.code == code, raised.value
    return raised.value


# --- password hashes -------------------------------------------------------------------


def test_hash_round_trip_and_format():
    stored = passwords.hash_password("pässword", **FAST)
    assert stored.startswith("$scrypt$ln=10,r=8,p=1$")
    assert passwords.verify_password("pässword", stored)
    assert not passwords.verify_password("password", stored)
    assert stored != passwords.hash_password("pässword", **FAST)  # salted


@pytest.mark.parametrize(
    "stored",
    ["", "plain", "$scrypt$ln=10,r=8,p=1$short$short", "$scrypt$ln=40,r=8,p=1$" + "A" * 22 + "$" + "B" * 43,
     "$2b$12$abcdefghijklmnopqrstuv", None, 12],
)
def test_malformed_hashes_never_verify(stored):
    assert not passwords.verify_password("x", stored)
    with pytest.raises(passwords.InvalidHash):
        passwords.parse_hash(stored)


def test_overlong_password_is_not_hashed():
    stored = passwords.hash_password("x", **FAST)
    assert not passwords.verify_password("x" * 2000, stored)
    with pytest.raises(ValueError):
        passwords.hash_password("x" * 2000)


# --- the secret file -------------------------------------------------------------------


def test_secret_file_created_0600_then_reused(tmp_path):
    path = tmp_path / "state" / "secret"
    key = auth.load_or_create_secret(str(path))
    assert len(key) == 32
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    text = path.read_text().strip()
    assert len(text) == 64 and bytes.fromhex(text) == key
    assert auth.load_or_create_secret(str(path)) == key


@pytest.mark.parametrize("content", ["", "abc", "z" * 64, "a" * 63, "a" * 65])
def test_bad_secret_file_is_a_config_error(tmp_path, content):
    path = tmp_path / "secret"
    path.write_text(content)
    with pytest.raises(auth.AuthConfigError, match="64 hex characters"):
        auth.load_or_create_secret(str(path))


def test_secret_file_in_unwritable_place(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(auth.AuthConfigError, match="cannot create"):
        auth.load_or_create_secret(str(tmp_path / "file" / "secret"))


def test_default_secret_lives_in_state_dir(users, clock, tmp_path):
    built = auth.build_authorizer({"users": users}, str(tmp_path / "st"), clock, run_in_thread=run_now)
    assert (tmp_path / "st" / auth.DEFAULT_SECRET_NAME).exists()
    assert built.token_ttl == auth.DEFAULT_TOKEN_TTL


# --- tokens ----------------------------------------------------------------------------


def test_login_token_identifies_the_user_and_role(authorizer, clock):
    data = login(authorizer, "wendy", "wendy-pw")
    assert set(data) >= {"token", "expires_at"}
    assert data["expires_at"] == "2023-11-14T22:23:20Z"  # 1_700_000_000 + 600
    assert authorizer.authorize_token(data["token"], "write") == auth.Identity("wendy", "write")
    refused("PERMISSION_DENIED", authorizer.authorize_token, data["token"], "admin")


def test_token_expires_on_the_clock(authorizer, clock):
    token = login(authorizer, "rita", "rita-pw")["token"]
    clock.advance(599)
    assert authorizer.authorize_token(token, "read").user == "rita"
    clock.advance(1)
    refused("AUTH_EXPIRED", authorizer.authorize_token, token, "read")


def test_role_comes_from_the_current_config(authorizer):
    token = login(authorizer, "alice", "alice-pw")["token"]
    authorizer.accounts["alice"] = auth.Account("alice", authorizer.accounts["alice"].password_hash, "read")
    refused("PERMISSION_DENIED", authorizer.authorize_token, token, "admin")
    del authorizer.accounts["alice"]
    refused("AUTH_FAILED", authorizer.authorize_token, token, "read")


def _claims(clock, **changes):
    claims = {
        "sub": "alice", "role": "admin", "iat": int(clock.seconds()),
        "exp": int(clock.seconds()) + 600, "iss": "quantum-sync", "aud": "quantum-sync",
    }
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def _b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unsigned(header, claims):
    return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}."


def signing_key(tmp_path) -> bytes:
    """The key the ``authorizer`` fixture signs with (its secret file, read as it does)."""
    return auth.load_or_create_secret(str(tmp_path / "secret"))


def forged_tokens(key, clock):
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    good = _claims(clock)
    return {
        "alg none": _unsigned({"alg": "none", "typ": "JWT"}, good),
        "alg None": _unsigned({"alg": "None", "typ": "JWT"}, good),
        "wrong key": jwt.encode(good, b"\x00" * 32, algorithm="HS256"),
        "HS512 with the right key": jwt.encode(good, key, algorithm="HS512"),
        "RS256": jwt.encode(good, rsa_key, algorithm="RS256"),
        # HS/RS confusion: an HMAC keyed with a public key
        "HS256 keyed with a public key": jwt.encode(good, public_pem[:64].hex(), algorithm="HS256"),
        "no exp": jwt.encode(_claims(clock, exp=None), key, algorithm="HS256"),
        "string exp": jwt.encode(_claims(clock, exp="never"), key, algorithm="HS256"),
        "no sub": jwt.encode(_claims(clock, sub=None), key, algorithm="HS256"),
        "unknown user": jwt.encode(_claims(clock, sub="mallory"), key, algorithm="HS256"),
        "sub not a string": jwt.encode(_claims(clock, sub=["alice"]), key, algorithm="HS256"),
        "wrong audience": jwt.encode(_claims(clock, aud="other"), key, algorithm="HS256"),
        "wrong issuer": jwt.encode(_claims(clock, iss="other"), key, algorithm="HS256"),
        "kid traversal": jwt.encode(good, b"\x00" * 32, algorithm="HS256",
                                    headers={"kid": "../../dev/null"}),
        "tampered payload": _tamper(jwt.encode(_claims(clock, sub="rita"), key, algorithm="HS256"), clock),
        "garbage": "not.a.token",
        "huge": "a" * 100_000,
        "not a string": {"token": 1},
    }


def _tamper(token, clock):
    header, _, signature = token.split(".")
    return f"{header}.{_b64(json.dumps(_claims(clock)).encode())}.{signature}"


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")  # HS512 forgery
def test_forged_tokens_are_refused(authorizer, clock, tmp_path):
    for name, token in forged_tokens(signing_key(tmp_path), clock).items():
        with pytest.raises(SyncError) as raised:
            authorizer.authorize_token(token, "read")
        assert raised.value.code == "AUTH_FAILED", name


def test_correctly_signed_token_is_accepted(authorizer, clock, tmp_path):
    token = jwt.encode(_claims(clock), signing_key(tmp_path), algorithm="HS256")
    assert authorizer.authorize_token(token, "admin").user == "alice"


@pytest.mark.parametrize("token", [None, ""])
def test_missing_token_is_auth_required(authorizer, token):
    refused("AUTH_REQUIRED", authorizer.authorize_token, token, "read")


def test_role_order():
    assert auth.role_allows("admin", "write") and auth.role_allows("write", "read")
    assert not auth.role_allows("read", "write") and not auth.role_allows("write", "admin")


# --- requests --------------------------------------------------------------------------


def _request(header=None, query_token=None):
    request = DummyRequest([b"api", b"list"])
    if header is not None:
        request.requestHeaders.setRawHeaders(b"authorization", [header])
    if query_token is not None:
        request.args[b"token"] = [query_token]
    return request


def test_request_bearer_and_query_token(authorizer):
    token = login(authorizer, "rita", "rita-pw")["token"]
    for request in (_request(header=f"Bearer {token}".encode()),
                    _request(header=f"bearer   {token} ".encode()),
                    _request(query_token=token.encode())):
        assert authorizer.authorize_request(request, "read").user == "rita"


def test_request_refusals(authorizer):
    token = login(authorizer, "rita", "rita-pw")["token"]
    request = _request()
    refused("AUTH_REQUIRED", authorizer.authorize_request, request, "read")
    assert request.responseHeaders.getRawHeaders(b"www-authenticate") == [b'Bearer realm="quantum-sync"']
    refused("AUTH_FAILED", authorizer.authorize_request, _request(header=b"Basic YTpi"), "read")
    refused("AUTH_FAILED", authorizer.authorize_request, _request(header=b"Bearer"), "read")
    refused("AUTH_FAILED", authorizer.authorize_request, _request(header=b"Bearer \xff\xfe"), "read")
    refused("PERMISSION_DENIED", authorizer.authorize_request,
            _request(header=f"Bearer {token}".encode()), "write")


def test_open_authorizer_lets_everyone_in():
    open_auth = auth.build_authorizer(None, "/nonexistent", Clock(), run_in_thread=run_now)
    assert not open_auth.enabled
    assert open_auth.authorize_request(_request(), "admin").role == "admin"
    refused("NOT_FOUND", open_auth.login, "a", "b", "c")


# --- logins and throttling -------------------------------------------------------------


def test_login_refusals(authorizer):
    refused("AUTH_FAILED", login, authorizer, "alice", "wrong")
    refused("AUTH_FAILED", login, authorizer, "nobody", "alice-pw")
    refused("AUTH_FAILED", login, authorizer, "alice", "x" * 5000)
    refused("INVALID_REQUEST", login, authorizer, None, "x")
    refused("INVALID_REQUEST", login, authorizer, "alice", ["alice-pw"])


def test_failed_logins_per_address_are_throttled_and_announced(authorizer, clock, hub):
    for _ in range(5):
        refused("AUTH_FAILED", login, authorizer, "alice", "guess", "198.51.100.7")
    assert [kind for kind, _ in hub.alerts] == ["security_alert"]
    assert hub.alerts[0][1]["kind"] == "address" and hub.alerts[0][1]["address"] == "198.51.100.7"
    # even the right password is refused while locked, and without trying it
    error = refused("RATE_LIMIT_EXCEEDED", login, authorizer, "alice", "alice-pw", "198.51.100.7")
    assert error.extra["retryAfter"] == 60 and error.status == 429
    # another address is not affected
    assert login(authorizer, "alice", "alice-pw", "198.51.100.8")["token"]
    clock.advance(30)
    error = refused("RATE_LIMIT_EXCEEDED", login, authorizer, "wendy", "wendy-pw", "198.51.100.7")
    assert error.extra["retryAfter"] == 30
    clock.advance(30)
    assert login(authorizer, "alice", "alice-pw", "198.51.100.7")["token"]
    assert len(hub.alerts) == 1


def test_failed_logins_per_user_are_throttled_across_addresses(authorizer, clock, hub):
    for i in range(10):
        refused("AUTH_FAILED", login, authorizer, "wendy", "guess", f"203.0.113.{i}")
    assert [data["kind"] for _, data in hub.alerts] == ["user"]
    refused("RATE_LIMIT_EXCEEDED", login, authorizer, "wendy", "wendy-pw", "203.0.113.99")
    assert login(authorizer, "rita", "rita-pw", "203.0.113.99")["token"]


def test_success_clears_failures(authorizer, hub):
    for _ in range(4):
        refused("AUTH_FAILED", login, authorizer, "alice", "guess")
    login(authorizer, "alice", "alice-pw")
    for _ in range(4):
        refused("AUTH_FAILED", login, authorizer, "alice", "guess")
    assert hub.alerts == []


def test_unknown_names_only_count_per_address(clock):
    throttle = LoginThrottle(clock)
    for i in range(1000):
        throttle.failed(f"10.0.{i // 256}.{i % 256}", None)
    assert len(throttle.by_user) == 0


def test_failure_window_is_bounded(clock):
    window = FailureWindow(clock, limit=3, window=60, max_keys=100)
    for i in range(1000):
        window.record(f"key{i}")
    assert len(window) <= 100
    assert window.retry_after("key999") is None


def test_failure_window_slides(clock):
    window = FailureWindow(clock, limit=2, window=10)
    assert not window.record("k")
    clock.advance(4)
    assert window.record("k")
    assert window.retry_after("k") == 6
    clock.advance(6)
    assert window.retry_after("k") is None
    window.record("k")
    assert window.retry_after("k") == 4  # the failure at t=4 and the new one


# --- the config ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "section, message",
    [
        ({"users": {}}, "auth.users: at least one user"),
        ({"users": {"bob": {"password_hash": "x", "role": "read"}}}, "auth.users.bob.password_hash"),
        ({"users": {"bob": {"password_hash": "x", "role": "root"}}}, "auth.users.bob.role"),
        ({"users": {"bob": {"role": "read"}}}, "auth.users.bob.password_hash"),
        ("USERS", "auth.token_ttl"),
    ],
)
def test_config_errors_name_the_key(section, message, users, tmp_path):
    if section == "USERS":
        section = {"users": users, "token_ttl": -5}
    with pytest.raises(auth.AuthConfigError, match=message.replace(".", r"\.")):
        auth.build_authorizer(section, str(tmp_path), Clock(), run_in_thread=run_now)


def test_password_checks_run_on_the_pool_passed_in(users, tmp_path):
    """No authorizer falls back to the reactor's global thread pool: the caller's runner
    is required, and logins check the password on it."""
    section = {"users": users, "secret_file": str(tmp_path / "secret")}
    with pytest.raises(TypeError, match="run_in_thread"):
        auth.build_authorizer(section, str(tmp_path), Clock())
    calls = []

    def recording(function, *args):
        calls.append(function)
        return run_now(function, *args)

    built = auth.build_authorizer(section, str(tmp_path), Clock(), run_in_thread=recording)
    assert login(built, "alice", "alice-pw")["token"]
    assert calls == [passwords.verify_password]


def test_attrs_style_config_is_accepted(users, tmp_path):
    import attrs

    @attrs.frozen
    class User:
        password_hash: str
        role: str

    @attrs.frozen
    class Section:
        users: dict
        secret_file: str
        token_ttl: int

    section = Section({n: User(**u) for n, u in users.items()}, str(tmp_path / "s"), 60)
    built = auth.build_authorizer(section, str(tmp_path), Clock(), run_in_thread=run_now)
    assert built.enabled and built.token_ttl == 60 and built.accounts["rita"].role == "read"


def test_config_module_auth_section_is_accepted(users, tmp_path):
    from quantum_sync.config import AuthConfig, ConfigError

    section = AuthConfig(
        users={n: (u["password_hash"], u["role"]) for n, u in users.items()},
        secret_file=str(tmp_path / "secret"),
        token_ttl=120,
    )
    built = auth.build_authorizer(section, str(tmp_path), Clock(), run_in_thread=run_now)
    assert built.accounts["wendy"] == auth.Account("wendy", users["wendy"]["password_hash"], "write")
    bad = AuthConfig(users={"x": ("nohash", "read")}, secret_file=str(tmp_path / "secret"))
    with pytest.raises(ConfigError, match="auth.users.x.password_hash"):
        auth.build_authorizer(bad, str(tmp_path), Clock(), run_in_thread=run_now)


def test_secret_file_inside_the_root_is_refused(users, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    section = {"users": users, "secret_file": str(root / "docs" / "secret")}
    with pytest.raises(auth.AuthConfigError, match="inside the synced root"):
        auth.build_authorizer(section, str(root / ".quantum-sync"), Clock(), root=str(root), run_in_thread=run_now)
    assert not (root / "docs").exists()
    # in the state directory, or outside the root, it is fine
    for place in (root / ".quantum-sync" / "secret", tmp_path / "elsewhere" / "secret"):
        section["secret_file"] = str(place)
        auth.build_authorizer(section, str(root / ".quantum-sync"), Clock(), root=str(root), run_in_thread=run_now)
        assert place.exists()


def test_recheck_follows_the_clock_and_the_config(authorizer, clock):
    identity = authorizer.authorize_token(login(authorizer, "wendy", "wendy-pw")["token"], "read")
    assert identity.expires == clock.seconds() + 600
    assert authorizer.recheck(identity, "write") == auth.Identity("wendy", "write")
    authorizer.accounts["wendy"] = attrs.evolve(authorizer.accounts["wendy"], role="read")
    refused("PERMISSION_DENIED", authorizer.recheck, identity, "write")
    assert authorizer.recheck(identity, "read").role == "read"
    clock.advance(600)
    refused("AUTH_EXPIRED", authorizer.recheck, identity, "read")
    del authorizer.accounts["wendy"]
    refused("AUTH_FAILED", authorizer.recheck, auth.Identity("wendy", "read"), "read")
    assert auth.OpenAuthorizer().recheck(auth.ANONYMOUS_ADMIN, "admin") is auth.ANONYMOUS_ADMIN
