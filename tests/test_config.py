"""Config parsing and validation (contract section 2): pure, no reactor."""

import json
import os

import pytest

from quantum_sync.config import (
    ConfigError, User, WebSocketConfig, listen_to_endpoint, load, parse,
)

SEED = {"apps": {"http": {"servers": {"file_sync_server": {
    "listen": [":8080"],
    "routes": [{
        "match": [{"matcher": "path", "paths": ["/api/*", "/ws"]}],
        "handle": [{"handler": "file_sync", "root": "./sync-data", "enable_upload": True}],
    }],
}}}}}


def document(**handler):
    copy = json.loads(json.dumps(SEED))
    copy["apps"]["http"]["servers"]["file_sync_server"]["routes"][0]["handle"][0].update(handler)
    return copy


def test_seed_file_verbatim(tmp_path):
    config = parse(SEED, base_dir=str(tmp_path))
    (listener,) = config.listeners
    assert listener.endpoint == "tcp:8080:backlog=1024"
    assert listener.path_patterns == ("/api/*", "/ws")
    handler = config.handler
    assert handler.root == str(tmp_path / "sync-data")
    assert handler.enable_upload is True
    assert handler.state_dir == str(tmp_path / "sync-data" / ".quantum-sync")
    assert handler.max_upload_size is None
    assert handler.journal_retention == 1000000
    assert handler.relay is True
    assert handler.ui is True
    assert handler.websocket == WebSocketConfig()
    assert handler.websocket.max_connections == 1000
    assert handler.websocket.allowed_origins == ("*",)
    assert handler.auth is None


def test_repository_etc_sync_json_is_the_seed():
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(here, "etc", "sync.json")) as f:
        assert json.load(f) == SEED
    assert load(os.path.join(here, "etc", "sync.json")).handler.enable_upload is True


def test_route_matching():
    (listener,) = parse(SEED, base_dir="/x").listeners
    for path in ("/api/list", "/api/v1/auth/login", "/ws"):
        assert listener.routes_to_handler(path), path
    for path in ("/", "/api", "/wsx", "/ws/x", "/other", "/API/list"):
        assert not listener.routes_to_handler(path), path


def test_caddy_matcher_form_and_defaults():
    copy = document()
    route = copy["apps"]["http"]["servers"]["file_sync_server"]["routes"][0]
    route["match"] = [{"path": ["/api/*"]}, {"path": ["/ws"]}]
    del route["handle"][0]["enable_upload"]
    config = parse(copy, base_dir="/srv")
    assert config.listeners[0].path_patterns == ("/api/*", "/ws")
    assert config.handler.enable_upload is False
    del route["match"]
    assert parse(copy, base_dir="/srv").listeners[0].routes_to_handler("/anything")


@pytest.mark.parametrize("entry,endpoint", [
    (":8080", "tcp:8080:backlog=1024"),
    ("127.0.0.1:9000", "tcp:9000:interface=127.0.0.1:backlog=1024"),
    ("localhost:80", "tcp:80:interface=localhost:backlog=1024"),
    ("[::1]:8443", "tcp6:8443:interface=\\:\\:1:backlog=1024"),
    ("tcp:8080:interface=127.0.0.1", "tcp:8080:interface=127.0.0.1"),
    ("ssl:8443:privateKey=key.pem:certKey=cert.pem", "ssl:8443:privateKey=key.pem:certKey=cert.pem"),
    ("systemd:domain=INET:index=0", "systemd:domain=INET:index=0"),
    ("unix:/run/qs.sock", "unix:/run/qs.sock"),
])
def test_listen_forms(entry, endpoint):
    assert listen_to_endpoint(entry) == endpoint


@pytest.mark.parametrize("entry", ["", "8080", ":", ":99999", "host:", " :80", "a:b:c", "tcp"])
def test_bad_listen_entries(entry):
    with pytest.raises(ValueError):
        listen_to_endpoint(entry)


def test_several_servers_and_listen_entries():
    copy = document()
    servers = copy["apps"]["http"]["servers"]
    servers["file_sync_server"]["listen"] = [":8080", "127.0.0.1:8081"]
    servers["second"] = json.loads(json.dumps(servers["file_sync_server"]))
    servers["second"]["listen"] = ["tcp:9090"]
    servers["second"]["routes"][0]["match"] = [{"path": ["/api/*"]}]
    config = parse(copy, base_dir="/srv")
    assert [(l.endpoint, l.server) for l in config.listeners] == [
        ("tcp:8080:backlog=1024", "file_sync_server"),
        ("tcp:8081:interface=127.0.0.1:backlog=1024", "file_sync_server"),
        ("tcp:9090", "second")]
    assert not config.listeners[2].routes_to_handler("/ws")
    servers["second"]["routes"][0]["handle"][0]["root"] = "./other"
    config = parse(copy, base_dir="/srv")  # two handlers: two roots in one process
    assert config.handler.root == "/srv/sync-data" and len(config.listeners) == 2
    (other,) = config.others
    assert other.handler.root == "/srv/other" and other.handler.state_dir == "/srv/other/.quantum-sync"
    assert [(l.endpoint, l.server) for l in other.listeners] == [("tcp:9090", "second")]
    for option in ("listen", "root"):
        with pytest.raises(ConfigError, match=f"^--{option}: the configuration has 2 different"):
            parse(copy, base_dir="/srv", **{option: "127.0.0.1:1"})
    servers["second"]["routes"][0]["handle"][0].update(root="./sync-data", enable_upload=False)
    with pytest.raises(ConfigError, match="servers.second: its file_sync handler differs from that"
                                          " of server 'file_sync_server' but has the same root"):
        parse(copy, base_dir="/srv")
    servers["second"]["routes"][0]["handle"][0].update(
        root="./other", state_dir="/srv/sync-data/.quantum-sync")
    with pytest.raises(ConfigError, match="but has the same state_dir"):
        parse(copy, base_dir="/srv")
    servers["second"]["routes"].append(json.loads(json.dumps(servers["second"]["routes"][0])))
    servers["second"]["routes"][1]["handle"][0]["root"] = "./third"
    with pytest.raises(ConfigError, match="servers.second.routes: the routes of one server must share"):
        parse(copy, base_dir="/srv")


def test_overrides(tmp_path):
    config = parse(SEED, base_dir=str(tmp_path), listen="127.0.0.1:7000", root="data")
    assert [l.endpoint for l in config.listeners] == ["tcp:7000:interface=127.0.0.1:backlog=1024"]
    assert config.listeners[0].routes_to_handler("/api/list")
    assert config.handler.root == str(tmp_path / "data")
    assert config.handler.state_dir == str(tmp_path / "data" / ".quantum-sync")
    with pytest.raises(ConfigError, match="^--listen: "):
        parse(SEED, base_dir=str(tmp_path), listen="nonsense")


def test_all_handler_keys():
    config = parse(document(
        state_dir="/var/lib/qs", max_upload_size=1024, journal_retention=10, relay=False,
        ui=False, websocket={"max_connections": 5, "max_message_size": 100, "max_send_queue": 1000,
                   "rate_limit": 2.5, "ping_interval": 1, "stale_timeout": 3,
                   "cleanup_interval": 1, "metrics_interval": 1,
                   "allowed_origins": ["https://app.example"],
                   "storage_alert_free_bytes": 0, "performance_alert_ms": 250},
        auth={"users": {"alice": {"password_hash": "h", "role": "admin"}},
              "secret_file": "secret.hex", "token_ttl": 60},
    ), base_dir="/srv")
    handler = config.handler
    assert handler.state_dir == "/var/lib/qs"
    assert (handler.max_upload_size, handler.journal_retention, handler.relay) == (1024, 10, False)
    assert handler.ui is False
    assert handler.websocket.rate_limit == 2.5
    assert handler.websocket.allowed_origins == ("https://app.example",)
    assert handler.websocket.performance_alert_ms == 250
    assert handler.auth.users == {"alice": User("h", "admin")}
    assert handler.auth.users["alice"].role == "admin"
    assert handler.auth.secret_file == "/srv/secret.hex"
    assert handler.auth.token_ttl == 60


@pytest.mark.parametrize("changes,where", [
    ({"bogus": 1}, "handle[0].bogus: unknown key"),
    ({"root": 5}, "handle[0].root: must be a string, not a number"),
    ({"root": ""}, "handle[0].root: must not be empty"),
    ({"enable_upload": 1}, "enable_upload: must be true or false, not a number"),
    ({"max_upload_size": 0}, "max_upload_size: must be at least 1"),
    ({"max_upload_size": 1.5}, "max_upload_size: must be an integer"),
    ({"journal_retention": True}, "journal_retention: must be an integer, not a boolean"),
    ({"relay": "no"}, "handle[0].relay: must be true or false, not a string"),
    ({"ui": 1}, "handle[0].ui: must be true or false, not a number"),
    ({"state_dir": ["x"]}, "state_dir: must be a string"),
    ({"websocket": []}, "websocket: must be an object, not a list"),
    ({"websocket": {"rate_limit": -1}}, "websocket.rate_limit: must be at least 0"),
    ({"websocket": {"allowed_origins": "*"}}, "websocket.allowed_origins: must be a list"),
    ({"websocket": {"allowed_origins": [1]}}, "allowed_origins[0]: must be a string"),
    ({"websocket": {"maxConnections": 1}}, "websocket.maxConnections: unknown key"),
    ({"auth": {"users": {}}}, "auth.users: must name at least one user"),
    ({"auth": {"users": {"a": {"password_hash": "h"}}}}, "auth.users.a.role: missing"),
    ({"auth": {"users": {"a": {"password_hash": "h", "role": "root"}}}}, "auth.users.a.role: must be one of"),
    ({"auth": {"users": {"a": {"password_hash": "h", "role": "read", "x": 1}}}}, "auth.users.a.x: unknown key"),
    ({"auth": {"users": {"a": {"password_hash": "h", "role": "read"}}, "token_ttl": 0}}, "token_ttl: must be at least 1"),
    ({"handler": "static"}, "handler: unknown handler"),
    ({"versions": True}, "handle[0].versions: must be an object, not a boolean"),
    ({"versions": {"keep": 3}}, "versions.keep: unknown key"),
    ({"versions": {"keep_days": "30"}}, "versions.keep_days: must be a number, not a string"),
    ({"versions": {"keep_days": -1}}, "versions.keep_days: must be at least 0"),
    ({"versions": {"keep_per_file": 2.5}}, "versions.keep_per_file: must be an integer"),
    ({"versions": {"keep_per_file": False}}, "versions.keep_per_file: must be an integer, not a boolean"),
    ({"versions": {"max_bytes": -5}}, "versions.max_bytes: must be at least 0"),
    ({"versions": {"max_bytes": "1G"}}, "versions.max_bytes: must be an integer, not a string"),
])
def test_handler_errors_name_the_key(changes, where):
    with pytest.raises(ConfigError) as info:
        parse(document(**changes), source="etc/sync.json", base_dir="/srv")
    message = str(info.value)
    assert message.startswith("etc/sync.json: apps.http.servers.file_sync_server.routes[0]")
    assert where in message
    assert "\n" not in message


@pytest.mark.parametrize("mutate,where", [
    (lambda d: d.update(extra=1), "(top).extra: unknown key"),
    (lambda d: d["apps"].update(tls={}), "apps.tls: unknown key"),
    (lambda d: d["apps"]["http"].update(servers=[]), "apps.http.servers: must be an object"),
    (lambda d: d["apps"]["http"].update(servers={}), "apps.http.servers: must name at least one"),
    (lambda d: d["apps"]["http"]["servers"]["file_sync_server"].update(listen=[]), "listen: must not be empty"),
    (lambda d: d["apps"]["http"]["servers"]["file_sync_server"].update(listen=":80"), "listen: must be a list"),
    (lambda d: d["apps"]["http"]["servers"]["file_sync_server"].update(listen=["x y"]), "listen[0]:"),
    (lambda d: d["apps"]["http"]["servers"]["file_sync_server"].update(routes=[]), "no route has a file_sync handler"),
    (lambda d: d["apps"]["http"]["servers"]["file_sync_server"]["routes"][0].update(match=[{"matcher": "host", "paths": ["/"]}]), "matcher: unknown matcher"),
    (lambda d: d["apps"]["http"]["servers"]["file_sync_server"]["routes"][0].update(match=[{"path": ["api"]}]), "starts with '/'"),
    (lambda d: d["apps"]["http"]["servers"]["file_sync_server"]["routes"][0].update(handle=[]), "exactly one file_sync handler"),
    (lambda d: d["apps"]["http"]["servers"]["file_sync_server"]["routes"][0].update(terminal=True), "terminal: unknown key"),
])
def test_structure_errors(mutate, where):
    copy = document()
    mutate(copy)
    with pytest.raises(ConfigError, match="^sync.json: ") as info:
        parse(copy, source="sync.json", base_dir="/srv")
    assert where in str(info.value)


def test_load_errors(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load(str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text('{"apps": ')
    with pytest.raises(ConfigError, match=r"bad.json: invalid JSON at line 1"):
        load(str(bad))
    bad.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load(str(bad))
    bad.write_text('{"apps": {"http": {"servers": {"s": {"listen": [":0"], "max_body": NaN}}}}}')
    with pytest.raises(ConfigError, match=r"bad.json: invalid JSON: NaN is not a number JSON allows"):
        load(str(bad))


def test_state_dir_must_not_be_addressable():
    with pytest.raises(ConfigError, match="state_dir: .* lies inside the root"):
        parse(document(state_dir="./sync-data/state"), source="s.json", base_dir="/srv")
    inside = parse(document(state_dir="./sync-data/.quantum-sync/db"), base_dir="/srv")
    assert inside.handler.state_dir == "/srv/sync-data/.quantum-sync/db"
    assert parse(document(state_dir="/var/lib/qs"), base_dir="/srv").handler.state_dir == "/var/lib/qs"


def test_seed_document_002_verbatim():
    """The seed's own example (only "/api/*" routed): accepted; /ws then answers 404."""
    original = json.loads(json.dumps(SEED))
    route = original["apps"]["http"]["servers"]["file_sync_server"]["routes"][0]
    route["match"] = [{"matcher": "path", "paths": ["/api/*"]}]
    (listener,) = parse(original, base_dir="/srv").listeners
    assert listener.routes_to_handler("/api/upload") and not listener.routes_to_handler("/ws")


def test_versions_block():
    default = parse(document(), base_dir="/srv").handler.versions
    assert (default.keep_days, default.keep_per_file, default.max_bytes) == (30, 100, None)
    assert default.enabled
    given = parse(document(versions={"keep_days": 7.5, "keep_per_file": None, "max_bytes": 10**12}),
                  base_dir="/srv").handler.versions
    assert (given.keep_days, given.keep_per_file, given.max_bytes) == (7.5, None, 10**12)
    assert given.enabled
    assert not parse(document(versions={"keep_days": 0}), base_dir="/srv").handler.versions.enabled
    assert not parse(document(versions={"keep_per_file": 0}), base_dir="/srv").handler.versions.enabled


CLUSTER = {"database": "postgresql://root@db.example:5432/sync", "redis": "redis://cache.example:6379/2"}


def test_cluster_block():
    assert parse(SEED, base_dir="/x").handler.cluster is None
    cluster = parse(document(cluster=dict(CLUSTER, node_id="node-1")), base_dir="/x").handler.cluster
    assert (cluster.database, cluster.redis, cluster.node_id) == (
        CLUSTER["database"], CLUSTER["redis"], "node-1")
    assert parse(document(cluster=CLUSTER), base_dir="/x").handler.cluster.node_id == ""


@pytest.mark.parametrize("cluster, message", [
    ("postgresql://x", "cluster: must be an object, not a string"),
    ({"redis": "redis://r"}, "cluster.database: missing"),
    ({"database": "postgresql://d"}, "cluster.redis: missing"),
    (dict(CLUSTER, port=1), "cluster.port: unknown key"),
    (dict(CLUSTER, database="mysql://d"), "cluster.database: must be a URL starting with postgresql:// or postgres://"),
    (dict(CLUSTER, database=5), "cluster.database: must be a string, not a number"),
    (dict(CLUSTER, redis="http://r"), "cluster.redis: must be a URL starting with redis://"),
    (dict(CLUSTER, redis="redis://"), "cluster.redis: must be a URL starting with redis://"),
    (dict(CLUSTER, node_id=""), "cluster.node_id: must be 1 to 64"),
    (dict(CLUSTER, node_id="a/b"), "cluster.node_id: must be 1 to 64"),
    (dict(CLUSTER, node_id="x" * 65), "cluster.node_id: must be 1 to 64"),
    (dict(CLUSTER, node_id=7), "cluster.node_id: must be a string, not a number"),
])
def test_cluster_block_refused(cluster, message):
    with pytest.raises(ConfigError) as caught:
        parse(document(cluster=cluster), base_dir="/x")
    assert message in str(caught.value)
