"""The client's configuration file (``twistd quantum-sync-client --config client.json``).

Parse and validate only: the JSON document becomes one frozen :class:`FolderConfig` per
folder (each with its :class:`~quantum_sync.client.service.ClientConfig`); anything not
understood (unknown key, wrong type, bad value, a secret file that cannot be read) is a
:class:`~quantum_sync.config.ConfigError` whose message names the file, the key path
and the reason, on one line. The only I/O: reading the file, its secret files and the
trust roots, and looking at the local paths (as the command line does).
"""

import os
import re
from urllib.parse import urlsplit

import attrs

from quantum_sync.client.credentials import CredentialsError, read_secret_file
from quantum_sync.client.reconcile import STRATEGIES
from quantum_sync.client.selection import Selection
from quantum_sync.client.service import ClientConfig, folder_problem
from quantum_sync.config import ConfigError, _Reader, read_document
from quantum_sync.delta import MODES

CLIENT_ID = re.compile(r"[A-Za-z0-9._:@-]{1,128}")
FOLDER_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")

_FOLDER_KEYS = (
    "name", "server", "local_path", "client_id", "auth", "ca_cert", "conflict_strategy", "interval",
    "settle_ms", "allow_mass_delete", "realtime", "initial_sync", "relay", "include", "exclude",
    "delta", "compress",
)


@attrs.frozen
class FolderConfig:
    """One folder of the file: its ``name`` (for ``status``/``pause``), its client config."""

    name: str
    client: ClientConfig


def load(path: str) -> tuple:
    """The folders of the client configuration file at ``path`` (relative paths in it are
    taken from the file's directory)."""
    return parse(read_document(path), source=path, base_dir=os.path.dirname(os.path.abspath(path)))


def parse(document, source="<config>", base_dir=".") -> tuple:
    """The :class:`FolderConfig` tuple for the JSON ``document``."""
    r = _Reader(source)
    r.obj(document, "top level", ("folders",), required=("folders",))
    folders = r.expect(document["folders"], list, "folders", "a list of folder objects")
    if not folders:
        r.fail("folders", "must not be empty")
    parsed = tuple(_folder(r, value, f"folders[{i}]", base_dir) for i, value in enumerate(folders))
    _check_distinct(r, parsed)
    return parsed


def _folder(r, value, where, base_dir) -> FolderConfig:
    r.obj(value, where, _FOLDER_KEYS, required=("server", "local_path"))
    servers = _servers(r, value["server"], f"{where}.server")
    local_path = _path(r, value["local_path"], f"{where}.local_path", base_dir)
    name, client_id = _names(r, value, where, local_path)
    interval = r.number(value.get("interval", 30), f"{where}.interval")
    if interval <= 0:
        r.fail(f"{where}.interval", "must be more than 0 seconds")
    settle = r.number(value.get("settle_ms", 200), f"{where}.settle_ms", integer=True)
    strategy, flags, modes = _choices(r, value, where)
    auth = _auth(r, value.get("auth"), f"{where}.auth", base_dir)
    ca_cert = _ca_cert(r, value.get("ca_cert"), f"{where}.ca_cert", base_dir)
    selection = Selection(_patterns(r, value.get("include", []), f"{where}.include"),
                          _patterns(r, value.get("exclude", []), f"{where}.exclude"))
    problem = folder_problem(local_path, f"{where}.local_path")
    if problem:
        raise ConfigError(f"{r.source}: {problem}")
    client = ClientConfig(
        server=servers[0], folder=os.path.realpath(local_path), client_id=client_id, interval=float(interval),
        settle=settle / 1000.0, strategy=strategy, ca_cert=ca_cert, safety_interval=max(10 * interval, 300.0),
        selection=selection, **auth, **flags, **modes, **_fallbacks(r, servers, f"{where}.server"),
    )
    return FolderConfig(name, client)


def _names(r, value, where, local_path) -> tuple:
    """``(the folder's name, its client id or None)``."""
    name = value.get("name", os.path.basename(local_path))
    if not isinstance(name, str) or not FOLDER_NAME.fullmatch(name):
        r.fail(f"{where}.name", "1 to 64 letters, digits or . _ - (default: the local path's last part)")
    client_id = value.get("client_id")
    if client_id is not None and not (isinstance(client_id, str) and CLIENT_ID.fullmatch(client_id)):
        r.fail(f"{where}.client_id", "1 to 128 letters, digits or . _ : @ -")
    return name, client_id


def _choices(r, value, where) -> tuple:
    """``(conflict strategy, {flag: bool}, {"delta"|"compress": mode})``."""
    strategy = value.get("conflict_strategy", "rename")
    if strategy not in STRATEGIES:
        r.fail(f"{where}.conflict_strategy", f"expected one of {', '.join(STRATEGIES)}")
    flags = {key: _flag(r, value, key, where, default)
             for key, default in (("allow_mass_delete", False), ("realtime", True), ("initial_sync", False), ("relay", True))}
    modes = {key: value.get(key, "auto") for key in ("delta", "compress")}
    for key, mode in modes.items():
        if mode not in MODES:
            r.fail(f"{where}.{key}", f"expected one of {', '.join(MODES)}")
    return strategy, flags, modes


def _ca_cert(r, value, where, base_dir):
    """The trust roots file's path (None: the system's), once it holds usable roots."""
    if value is None:
        return None
    ca_cert = _path(r, value, where, base_dir)
    from quantum_sync.tls import TLSConfigError, load_trust_root

    try:
        load_trust_root(ca_cert)
    except TLSConfigError as e:
        r.fail(where, str(e))
    return ca_cert


def _fallbacks(r, servers, where) -> dict:
    """The ClientConfig field of the servers after the first (none: no field)."""
    if len(servers) < 2:
        return {}
    if "fallbacks" not in attrs.fields_dict(ClientConfig):
        r.fail(where, "one server per folder (several need a client that tries them in turn)")
    return {"fallbacks": servers[1:]}


def _servers(r, value, where) -> tuple:
    urls = (value,) if isinstance(value, str) else r.strings(value, where)
    for url in urls:
        parts = urlsplit(url)
        try:
            parts.port
        except ValueError:
            r.fail(where, f"{url}: invalid port")
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/") or parts.query:
            r.fail(where, f"{url}: expected http://HOST:PORT or https://HOST:PORT")
    return tuple(url.rstrip("/") for url in urls)


def _path(r, value, where, base_dir) -> str:
    r.expect(value, str, where, "a path")
    if not value or "\0" in value:
        r.fail(where, "must be a path")
    return os.path.normpath(os.path.join(base_dir, os.path.expanduser(value)))


def _flag(r, value, key, where, default) -> bool:
    return r.expect(value.get(key, default), bool, f"{where}.{key}", "true or false")


def _patterns(r, value, where) -> tuple:
    patterns = r.strings(value, where, nonempty=False)
    for i, pattern in enumerate(patterns):
        if "\n" in pattern or "\r" in pattern:
            r.fail(f"{where}[{i}]", "one pattern per string")
    return patterns


def _auth(r, value, where, base_dir) -> dict:
    """``{"user", "password_file"}`` or ``{"token_file"}`` (absent: no authentication)."""
    if value is None:
        return {}
    r.obj(value, where, ("user", "password_file", "token_file"))
    try:
        if "token_file" in value:
            if "user" in value or "password_file" in value:
                r.fail(where, "token_file excludes user and password_file")
            token_file = _path(r, value["token_file"], f"{where}.token_file", base_dir)
            return {"token": read_secret_file(token_file, f"{where}.token_file", private=False), "token_file": token_file}
        if "user" not in value or "password_file" not in value:
            r.fail(where, "expected user and password_file, or token_file")
        user = _user(r, value["user"], f"{where}.user")
        password_file = _path(r, value["password_file"], f"{where}.password_file", base_dir)
        return {"user": user, "password": read_secret_file(password_file, f"{where}.password_file", private=True)}
    except CredentialsError as e:
        raise ConfigError(f"{r.source}: {e}") from None


def _user(r, value, where) -> str:
    user = r.expect(value, str, where, "a string")
    if not user or len(user) > 256 or any(ord(c) < 32 for c in user):
        r.fail(where, "1 to 256 characters, no control characters")
    return user


def _check_distinct(r, folders):
    names, paths = set(), []
    for i, folder in enumerate(folders):
        if folder.name in names:
            r.fail(f"folders[{i}].name", f"{folder.name!r} names two folders")
        names.add(folder.name)
        path = folder.client.folder
        for other in paths:
            if os.path.commonpath([path, other]) in (path, other):
                r.fail(f"folders[{i}].local_path", f"{path} and {other} overlap (one folder inside another)")
        paths.append(path)
