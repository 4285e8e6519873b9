"""The server's configuration (contract section 2): parse and validate, nothing else.

Pure: reads no files except through :func:`load` (which only reads the one JSON file),
touches no sockets. The Caddy-v2-style document becomes a frozen :class:`ServerConfig`;
anything not understood (unknown key, wrong type, bad value) is a :class:`ConfigError`
whose message names the file, the key path and the reason, on one line.
"""

import fnmatch
import json
import os
import re

from typing import NamedTuple

import attrs

#: Endpoint-string prefixes that mark a listen entry as a Twisted endpoint description
#: rather than Caddy's ``HOST:PORT`` form.
ENDPOINT_TYPES = ("tcp", "tcp6", "ssl", "unix", "systemd", "le", "lets", "onion")

ROLES = ("read", "write", "admin")

#: Accept-queue length for ``:PORT`` and ``HOST:PORT`` entries (Twisted's default of 50
#: overflows when hundreds of clients connect at once; endpoint strings take ``backlog=``).
LISTEN_BACKLOG = 1024


class ConfigError(Exception):
    """An unusable configuration: ``str(error)`` is the one line shown to the operator."""


@attrs.frozen
class WebSocketConfig:
    """The ``websocket`` handler block (limits and timers of the real-time hub).

    ``storage_alert_free_bytes``: a ``storage_alert`` is published when free space on the
    root's filesystem drops below it (0 disables). ``performance_alert_ms``: a
    ``performance_alert`` is published when the average response time exceeds it (0 disables).
    ``rate_limit`` and ``metrics_interval``: 0 turns them off; the other timers must be
    more than 0 (and ``stale_timeout`` more than ``ping_interval``).
    """

    max_connections: int = 1000
    max_message_size: int = 1048576
    max_send_queue: int = 4194304
    rate_limit: float = 100
    ping_interval: float = 30
    stale_timeout: float = 300
    cleanup_interval: float = 60
    metrics_interval: float = 10
    allowed_origins: tuple = ("*",)
    storage_alert_free_bytes: int = 100 * 1024 * 1024
    performance_alert_ms: float = 1000


class User(NamedTuple):
    """One account of the ``auth`` block (a ``(password_hash, role)`` pair)."""

    password_hash: str
    role: str


@attrs.frozen
class AuthConfig:
    """The ``auth`` handler block: ``users`` maps a name to a :class:`User`
    ``(password_hash, role)``; ``secret_file`` is absolute, or ``""`` for the default
    (``<state_dir>/auth-secret``)."""

    users: dict
    secret_file: str
    token_ttl: int = 3600


#: What a node id may hold (it names the node's temp folder and its heartbeat).
_NODE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,63}$")


@attrs.frozen
class ClusterConfig:
    """The ``cluster`` handler block: the index and journal live in PostgreSQL
    (``database``, a ``postgresql://`` URL), broadcasts between nodes go through Redis
    (``redis``, a ``redis://`` URL); ``node_id`` names this node ("" until the server
    picks its default: host name and port)."""

    database: str
    redis: str
    node_id: str = ""


@attrs.frozen
class VersionsConfig:
    """The ``versions`` handler block: how long and how many old versions (and deleted
    files) are kept. ``keep_days`` 0 turns keeping off; ``keep_per_file`` and
    ``max_bytes`` None mean no limit."""

    keep_days: float = 30
    keep_per_file: int | None = 100
    max_bytes: int | None = None

    @property
    def enabled(self) -> bool:
        return self.keep_days > 0 and self.keep_per_file != 0


@attrs.frozen
class HandlerConfig:
    """The ``file_sync`` handler: where files live and what the API allows."""

    root: str
    enable_upload: bool = False
    state_dir: str = ""
    max_upload_size: int | None = None
    journal_retention: int = 1000000
    #: large uploads announced (``upload_started``) and readable at /api/relay while
    #: they arrive (:mod:`quantum_sync.server.relay`)
    relay: bool = True
    #: the web UI at ``/`` and ``/ui/*`` (:mod:`quantum_sync.server.webui`)
    ui: bool = True
    websocket: WebSocketConfig = WebSocketConfig()
    auth: AuthConfig | None = None
    #: seconds between full rescans of the root (0: none); inotify misses writes made
    #: over NFS or by other hosts, and drops events when its queue overflows
    rescan_interval: float = 3600
    versions: VersionsConfig = VersionsConfig()
    #: several nodes on PostgreSQL and Redis (:mod:`quantum_sync.server.cluster`)
    cluster: ClusterConfig | None = None


@attrs.frozen
class ListenerConfig:
    """One listen entry as a Twisted server endpoint string, with the routes of its server."""

    endpoint: str
    server: str
    path_patterns: tuple

    def routes_to_handler(self, path: str) -> bool:
        """True when request ``path`` matches one of this server's route patterns."""
        return any(_path_matches(pattern, path) for pattern in self.path_patterns)


@attrs.frozen
class ServerConfig:
    """The server configuration: a ``file_sync`` handler and the listeners that route to
    it; ``others`` holds one more ServerConfig per further, different handler (its own
    root, index, journal and hub, in the same process)."""

    listeners: tuple
    handler: HandlerConfig
    source: str = "<config>"
    others: tuple = ()


def _inside(path: str, directory: str) -> bool:
    return os.path.commonpath([path, directory]) == directory


def _path_matches(pattern: str, path: str) -> bool:
    # Caddy's path matcher: exact, or with '*' wildcards (matching across '/').
    if "*" not in pattern:
        return path == pattern
    return fnmatch.fnmatchcase(path, pattern.replace("[", "[[]"))


# -- validation helpers ---------------------------------------------------------------


class _Reader:
    """Walks the JSON document remembering the key path for error messages."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, where: str, reason: str):
        raise ConfigError(f"{self.source}: {where}: {reason}")

    def expect(self, value, kinds, where: str, what: str):
        kinds = kinds if isinstance(kinds, tuple) else (kinds,)
        ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
        if not ok:
            self.fail(where, f"must be {what}, not {_json_type(value)}")
        return value

    def obj(self, value, where: str, allowed, required=()):
        self.expect(value, dict, where, "an object")
        for key in value:
            if key not in allowed:
                self.fail(f"{where}.{key}", "unknown key")
        for key in required:
            if key not in value:
                self.fail(f"{where}.{key}", "missing")
        return value

    def number(self, value, where: str, minimum=0, integer=False):
        kinds = int if integer else (int, float)
        self.expect(value, kinds, where, "an integer" if integer else "a number")
        if value < minimum:
            self.fail(where, f"must be at least {minimum}")
        return value

    def strings(self, value, where: str, nonempty=True):
        self.expect(value, list, where, "a list of strings")
        for i, item in enumerate(value):
            self.expect(item, str, f"{where}[{i}]", "a string")
        if nonempty and not value:
            self.fail(where, "must not be empty")
        return tuple(value)


def _json_type(value) -> str:
    return {
        bool: "a boolean", int: "a number", float: "a number", str: "a string",
        list: "a list", dict: "an object", type(None): "null",
    }.get(type(value), type(value).__name__)


# -- listen entries -------------------------------------------------------------------

_HOST_PORT = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[^:\[\]]*):(?P<port>\d{1,5})$")


def listen_to_endpoint(entry: str) -> str:
    """A Twisted server endpoint string for a listen entry, or raise ValueError.

    ``":8080"`` → ``tcp:8080:backlog=1024``; ``"HOST:8080"`` →
    ``tcp:8080:interface=HOST:backlog=1024``; endpoint strings (``tcp:``, ``ssl:``,
    ``systemd:`` ...) are kept as they are.
    """
    if not entry or entry != entry.strip():
        raise ValueError("an empty or padded listen entry")
    kind = entry.split(":", 1)[0]
    if kind in ENDPOINT_TYPES:
        if ":" not in entry:
            raise ValueError(f"endpoint {entry!r} has no parameters")
        return entry
    match = _HOST_PORT.match(entry)
    if not match:
        raise ValueError(f"{entry!r} is neither ':PORT', 'HOST:PORT' nor a Twisted endpoint string")
    port = int(match["port"])
    if port > 65535:
        raise ValueError(f"port {port} is out of range")
    host = match["host"].strip("[]")
    if not host:
        return f"tcp:{port}:backlog={LISTEN_BACKLOG}"
    if ":" in host:
        return f"tcp6:{port}:interface={host.replace(':', chr(92) + ':')}:backlog={LISTEN_BACKLOG}"
    return f"tcp:{port}:interface={host}:backlog={LISTEN_BACKLOG}"


# -- the document ---------------------------------------------------------------------

_WEBSOCKET_NUMBERS = {
    "max_connections": True, "max_message_size": True, "max_send_queue": True,
    "rate_limit": False, "ping_interval": False, "stale_timeout": False,
    "cleanup_interval": False, "metrics_interval": False,
    "storage_alert_free_bytes": True, "performance_alert_ms": False,
}


#: The timers that cannot be turned off.
_WEBSOCKET_TIMERS = ("ping_interval", "stale_timeout", "cleanup_interval")


def _websocket(r: _Reader, value, where: str) -> WebSocketConfig:
    r.obj(value, where, set(_WEBSOCKET_NUMBERS) | {"allowed_origins"})
    fields = {}
    for key, integer in _WEBSOCKET_NUMBERS.items():
        if key in value:
            fields[key] = r.number(value[key], f"{where}.{key}", integer=integer)
    if "allowed_origins" in value:
        fields["allowed_origins"] = r.strings(
            value["allowed_origins"], f"{where}.allowed_origins", nonempty=False)
    for key in _WEBSOCKET_TIMERS:  # at 0 a LoopingCall spins, or everyone is stale at once
        if fields.get(key) == 0:
            r.fail(f"{where}.{key}", "must be more than 0")
    config = WebSocketConfig(**fields)
    if config.stale_timeout <= config.ping_interval:
        r.fail(f"{where}.stale_timeout", f"must be more than ping_interval ({config.ping_interval:g} s)")
    return config


def _auth(r: _Reader, value, where: str, base_dir: str) -> AuthConfig:
    r.obj(value, where, {"users", "secret_file", "token_ttl"}, required=("users",))
    users = {}
    r.obj(value["users"], f"{where}.users", value["users"])
    for name, user in value["users"].items():
        at = f"{where}.users.{name}"
        r.obj(user, at, {"password_hash", "role"}, required=("password_hash", "role"))
        r.expect(user["password_hash"], str, f"{at}.password_hash", "a string")
        r.expect(user["role"], str, f"{at}.role", "a string")
        if user["role"] not in ROLES:
            r.fail(f"{at}.role", f"must be one of {', '.join(ROLES)}")
        users[name] = User(user["password_hash"], user["role"])
    if not users:
        r.fail(f"{where}.users", "must name at least one user")
    secret = r.expect(value.get("secret_file", ""), str, f"{where}.secret_file", "a string")
    ttl = r.number(value.get("token_ttl", 3600), f"{where}.token_ttl", minimum=1, integer=True)
    return AuthConfig(users=users, secret_file=os.path.join(base_dir, secret) if secret else "",
                      token_ttl=ttl)


def _versions(r: _Reader, value, where: str) -> VersionsConfig:
    r.obj(value, where, {"keep_days", "keep_per_file", "max_bytes"})
    fields = {}
    if "keep_days" in value:
        fields["keep_days"] = r.number(value["keep_days"], f"{where}.keep_days")
    for key in ("keep_per_file", "max_bytes"):
        if key in value:  # null: no limit
            fields[key] = None if value[key] is None else r.number(
                value[key], f"{where}.{key}", integer=True)
    return VersionsConfig(**fields)


_HANDLER_KEYS = {
    "handler", "root", "enable_upload", "state_dir", "max_upload_size",
    "journal_retention", "relay", "ui", "websocket", "auth", "rescan_interval", "versions",
    "cluster",
}


def _url(r: _Reader, value, where: str, schemes: tuple) -> str:
    r.expect(value, str, where, "a string")
    scheme, sep, rest = value.partition("://")
    if not sep or scheme not in schemes or not rest or value != value.strip():
        r.fail(where, f"must be a URL starting with {' or '.join(s + '://' for s in schemes)}")
    return value


def _cluster(r: _Reader, value, where: str) -> ClusterConfig:
    r.obj(value, where, {"database", "redis", "node_id"}, required=("database", "redis"))
    node_id = value.get("node_id", "")
    r.expect(node_id, str, f"{where}.node_id", "a string")
    if "node_id" in value and not _NODE_ID.match(node_id):
        r.fail(f"{where}.node_id", "must be 1 to 64 letters, digits or . _ : @ - (starting"
                                   " with a letter or digit)")
    return ClusterConfig(
        database=_url(r, value["database"], f"{where}.database", ("postgresql", "postgres")),
        redis=_url(r, value["redis"], f"{where}.redis", ("redis",)),
        node_id=node_id,
    )


def _handler(r: _Reader, value, where: str, base_dir: str) -> HandlerConfig:
    r.obj(value, where, _HANDLER_KEYS, required=("handler", "root"))
    if value["handler"] != "file_sync":
        r.fail(f"{where}.handler", f"unknown handler {value['handler']!r} (only file_sync)")
    root = r.expect(value["root"], str, f"{where}.root", "a string")
    if not root:
        r.fail(f"{where}.root", "must not be empty")
    root = os.path.abspath(os.path.join(base_dir, root))
    state_dir = value.get("state_dir", "")
    r.expect(state_dir, str, f"{where}.state_dir", "a string")
    max_upload = value.get("max_upload_size")
    if max_upload is not None:
        r.number(max_upload, f"{where}.max_upload_size", minimum=1, integer=True)
    return HandlerConfig(
        root=root,
        enable_upload=r.expect(value.get("enable_upload", False), bool,
                               f"{where}.enable_upload", "true or false"),
        state_dir=os.path.abspath(os.path.join(base_dir, state_dir)) if state_dir else "",
        max_upload_size=max_upload,
        journal_retention=r.number(value.get("journal_retention", 1000000),
                                   f"{where}.journal_retention", minimum=1, integer=True),
        relay=r.expect(value.get("relay", True), bool, f"{where}.relay", "true or false"),
        ui=r.expect(value.get("ui", True), bool, f"{where}.ui", "true or false"),
        websocket=_websocket(r, value.get("websocket", {}), f"{where}.websocket"),
        auth=_auth(r, value["auth"], f"{where}.auth", base_dir) if "auth" in value else None,
        rescan_interval=r.number(value.get("rescan_interval", 3600), f"{where}.rescan_interval"),
        versions=_versions(r, value.get("versions", {}), f"{where}.versions"),
        cluster=_cluster(r, value["cluster"], f"{where}.cluster") if "cluster" in value else None,
    )


def _matchers(r: _Reader, value, where: str) -> tuple:
    r.expect(value, list, where, "a list of matchers")
    patterns = []
    for i, matcher in enumerate(value):
        at = f"{where}[{i}]"
        r.expect(matcher, dict, at, "an object")
        if "matcher" in matcher:  # the seed's form {"matcher": "path", "paths": [...]}
            r.obj(matcher, at, {"matcher", "paths"}, required=("paths",))
            if matcher["matcher"] != "path":
                r.fail(f"{at}.matcher", f"unknown matcher {matcher['matcher']!r} (only path)")
            found = r.strings(matcher["paths"], f"{at}.paths")
        else:  # Caddy's own form {"path": [...]}
            r.obj(matcher, at, {"path"}, required=("path",))
            found = r.strings(matcher["path"], f"{at}.path")
        for j, pattern in enumerate(found):
            if not pattern.startswith(("/", "*")):
                r.fail(f"{at}[{j}]", "a path pattern starts with '/' or '*'")
        patterns.extend(found)
    return tuple(patterns)


def _server(r: _Reader, name, value, where: str, base_dir: str):
    """``(endpoints, path patterns, its one HandlerConfig or None)`` of one server."""
    r.obj(value, where, {"listen", "routes"}, required=("listen", "routes"))
    listen = r.strings(value["listen"], f"{where}.listen")
    endpoints = []
    for i, entry in enumerate(listen):
        try:
            endpoints.append(listen_to_endpoint(entry))
        except ValueError as e:
            r.fail(f"{where}.listen[{i}]", str(e))
    r.expect(value["routes"], list, f"{where}.routes", "a list of routes")
    patterns, handlers = [], []
    for i, route in enumerate(value["routes"]):
        at = f"{where}.routes[{i}]"
        r.obj(route, at, {"match", "handle"}, required=("handle",))
        route_patterns = _matchers(r, route["match"], f"{at}.match") if "match" in route else ("*",)
        r.expect(route["handle"], list, f"{at}.handle", "a list of handlers")
        if len(route["handle"]) != 1:
            r.fail(f"{at}.handle", "must hold exactly one file_sync handler")
        handlers.append(_handler(r, route["handle"][0], f"{at}.handle[0]", base_dir))
        patterns.extend(route_patterns)
    if any(h != handlers[0] for h in handlers[1:]):
        r.fail(f"{where}.routes", "the routes of one server must share one file_sync handler"
                                  " configuration (give another handler a server of its own)")
    return endpoints, tuple(patterns), handlers[0] if handlers else None


def parse(document, source: str = "<config>", base_dir: str | None = None,
          listen: str | None = None, root: str | None = None) -> ServerConfig:
    """A validated :class:`ServerConfig` from the decoded JSON ``document``.

    ``base_dir`` anchors relative paths (the working directory, as in Caddy).
    ``listen`` (one endpoint or listen entry) replaces every listen entry;
    ``root`` replaces the handler's root (both are the command-line overrides).
    """
    base_dir = os.getcwd() if base_dir is None else base_dir
    r = _Reader(source)
    groups = _handler_groups(r, _servers(r, document), base_dir)
    if len(groups) > 1 and (root is not None or listen is not None):
        raise ConfigError(f"{'--root' if root is not None else '--listen'}: the configuration has"
                          f" {len(groups)} different file_sync handlers; give it one, or leave"
                          " the option out")
    parts = [_finish(r, handler, listeners, base_dir, listen, root, source) for handler, listeners in groups]
    _check_apart(r, parts)
    return attrs.evolve(parts[0], others=tuple(parts[1:]))


def _servers(r: _Reader, document) -> dict:
    """The ``apps.http.servers`` object of ``document`` (at least one server)."""
    r.obj(document, "(top)", {"apps"}, required=("apps",))
    r.obj(document["apps"], "apps", {"http"}, required=("http",))
    r.obj(document["apps"]["http"], "apps.http", {"servers"}, required=("servers",))
    servers = document["apps"]["http"]["servers"]
    r.expect(servers, dict, "apps.http.servers", "an object")
    if not servers:
        r.fail("apps.http.servers", "must name at least one server")
    return servers


def _handler_groups(r: _Reader, servers: dict, base_dir: str) -> list:
    """``[handler, [listeners]]`` per distinct handler of ``servers``, in the order first
    met; the listeners of servers without a route to a handler (they answer 404) go to
    the first."""
    groups = []
    bare = []
    for name, server in servers.items():
        at = f"apps.http.servers.{name}"
        endpoints, patterns, handler = _server(r, name, server, at, base_dir)
        if handler is None:
            bare.extend(ListenerConfig(e, name, patterns) for e in endpoints)
            continue
        group = next((g for g in groups if g[0] == handler), None)
        if group is None:
            group = [handler, []]
            groups.append(group)
        group[1].extend(ListenerConfig(e, name, patterns) for e in endpoints)
    if not groups:
        r.fail("apps.http.servers", "no route has a file_sync handler")
    groups[0][1].extend(bare)
    return groups


def _check_apart(r: _Reader, parts: list) -> None:
    """Refuse two different handlers sharing a root, a state_dir or a cluster database."""
    for n, part in enumerate(parts):
        for other in parts[:n]:
            for mine, theirs, what in ((part.handler.root, other.handler.root, "root"),
                                       (part.handler.state_dir, other.handler.state_dir, "state_dir"),
                                       (_database(part), _database(other), "cluster database")):
                if mine is not None and mine == theirs:
                    r.fail(f"apps.http.servers.{part.listeners[0].server}",
                           f"its file_sync handler differs from that of server"
                           f" {other.listeners[0].server!r} but has the same {what} {mine};"
                           " configure them identically or give each its own")


def _database(config: ServerConfig):
    return config.handler.cluster.database if config.handler.cluster is not None else None


def _finish(r: _Reader, handler: HandlerConfig, listeners: list, base_dir: str, listen, root,
            source: str) -> ServerConfig:
    """One handler's :class:`ServerConfig`: overrides applied, state_dir defaulted."""
    if root is not None:
        if not root:
            raise ConfigError("--root: must not be empty")
        handler = attrs.evolve(handler, root=os.path.abspath(os.path.join(base_dir, root)))
    internal = os.path.join(handler.root, ".quantum-sync")
    if not handler.state_dir:
        handler = attrs.evolve(handler, state_dir=internal)
    elif _inside(handler.state_dir, handler.root) and not _inside(handler.state_dir, internal):
        r.fail("state_dir", f"{handler.state_dir} lies inside the root {handler.root}, where"
                            " clients could read or delete it; use a directory outside the"
                            f" root or {internal}")
    if listen is not None:
        try:
            endpoint = listen_to_endpoint(listen)
        except ValueError as e:
            raise ConfigError(f"--listen: {e}") from None
        patterns = tuple(dict.fromkeys(p for lc in listeners for p in lc.path_patterns))
        listeners = [ListenerConfig(endpoint, "--listen", patterns)]
    return ServerConfig(listeners=tuple(listeners), handler=handler, source=source)


def load(path: str, listen: str | None = None, root: str | None = None) -> ServerConfig:
    """Read and validate the JSON file at ``path`` (relative paths inside it are taken
    from the working directory)."""
    return parse(read_document(path), source=path, listen=listen, root=root)


def read_document(path: str):
    """The JSON document in the file at ``path``; any problem is a one-line :class:`ConfigError`."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the configuration: {e.strerror}") from None
    try:
        document = json.loads(raw.decode("utf-8"), parse_constant=_not_json)
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except _NotJSON as e:
        raise ConfigError(f"{path}: invalid JSON: {e} is not a number JSON allows") from None
    return document


class _NotJSON(ValueError):
    """NaN, Infinity or -Infinity: Python's json reads them, JSON has no such numbers
    (a NaN interval would pass every ``<`` check)."""


def _not_json(name):
    raise _NotJSON(name)
