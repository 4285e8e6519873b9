"""``twistd quantum-sync-client``: command-line options (contract section 1) and ``makeService``.

Every option error ends the process with exit status 1 and one line on stderr.
"""

import os
import re
import sys
from urllib.parse import urlsplit

import txaio
from twisted.python import usage

from quantum_sync.client.clientconfig import ConfigError, load as load_client_config
from quantum_sync.client.credentials import read_secret_file
from quantum_sync.client.folders import FoldersService
from quantum_sync.client.progress import ProgressBars, wants_bars
from quantum_sync.client.reconcile import STRATEGIES
from quantum_sync.client.service import ClientConfig, SyncClientService, folder_problem
from quantum_sync.delta import MODES
from quantum_sync.gctune import tune_garbage_collector


def fail(line: str, status: int = 1):
    """One line on stderr, then exit (before the reactor runs)."""
    sys.stderr.write(line.rstrip("\n") + "\n")
    sys.stderr.flush()
    raise SystemExit(status)


def _check_servers(servers: list) -> None:
    """Refuse no ``--server``, or one that is not ``http(s)://HOST:PORT``."""
    if not servers:
        raise ValueError("--server URL is required")
    for server in servers:
        parts = urlsplit(server)
        try:
            parts.port
        except ValueError:
            raise ValueError(f"--server {server}: invalid port") from None
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/") or parts.query:
            raise ValueError(f"--server {server}: expected http://HOST:PORT or https://HOST:PORT")


def _check_trust_root(ca_cert: str) -> None:
    """Refuse a ``--ca-cert`` file that holds no usable trust root."""
    from quantum_sync.tls import TLSConfigError, load_trust_root

    try:
        load_trust_root(ca_cert)
    except TLSConfigError as e:
        raise ValueError(str(e)) from None


class Options(usage.Options):
    """Options of the ``quantum-sync-client`` twistd plugin."""

    synopsis = "--server URL [--server URL ...] --local-path DIR [options]"
    optParameters = [
        ["local-path", "d", None, "the folder to keep in sync (created if its parent exists)"],
        ["client-id", None, None, "this client's id (default: a UUID remembered in the folder's state)"],
        ["interval", "i", "30", "seconds between full reconciles (also the fallback while the WebSocket is down)"],
        ["token", None, None, "bearer token for the server"],
        ["token-file", None, None, "read the bearer token from this file (read again when it changes)"],
        ["user", None, None, "log in as this user (with --password-file); the token is renewed before it expires"],
        ["password-file", None, None, "the password for --user, on one line (the file must not be readable by group or others)"],
        ["conflict-strategy", None, "rename", "rename (keep both), keep-client or keep-server"],
        ["delta", None, "auto", "send and fetch only the changed blocks of large files: auto (not with a server"
                                " on this machine), always or never"],
        ["compress", None, "auto", "send large files as zstd where a sample shows it pays: auto (not with a"
                                   " server on this machine), always or never"],
        ["ca-cert", None, None, "PEM file with the trust roots for https/wss"],
        ["settle", None, "200", "milliseconds a still-changing file must be quiet before it is sent"],
        ["config", "c", None, "a JSON file of folders to sync, instead of all the options above"],
    ]
    optFlags = [
        ["realtime", None, "receive changes over the WebSocket (the default)"],
        ["no-realtime", None, "periodic sync only"],
        ["initial-sync", None, "pull everything the server has before anything else"],
        ["allow-mass-delete", None, "confirm a reconcile that deletes more than half of the synced files"],
        ["no-relay", None, "fetch other clients' large files only once stored, not while they are uploaded"],
    ]

    def opt_server(self, url):
        """the server, http://HOST:PORT or https://HOST:PORT (again for each further
        node of one cluster, tried in turn)"""
        self.setdefault("servers", []).append(url)

    opt_s = opt_server

    def parseOptions(self, options=None):
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            fail(f"quantum-sync-client: {e}")

    def postOptions(self):
        self.folders = None
        if self["config"] is not None:
            self.folders = self._load_config()
            return
        try:
            self.config = self._validate()
        except ValueError as e:
            fail(f"quantum-sync-client: {e}")

    def _load_config(self):
        given = sorted(name for name, value in self.items() if name != "config" and value and value != self.defaults.get(name))
        if given:
            option = "server" if given[0] == "servers" else given[0]  # --server may be given several times
            fail(f"quantum-sync-client: --config excludes --{option} (set it in the file)")
        try:
            return load_client_config(self["config"])
        except ConfigError as e:
            fail(f"quantum-sync-client: {e}")

    def _validate(self) -> ClientConfig:
        servers = self.get("servers", [])
        _check_servers(servers)
        server = servers[0]
        folder = self["local-path"]
        if not folder:
            raise ValueError("--local-path DIR is required")
        folder = os.path.abspath(folder)
        interval, settle = self._timing()
        strategy = self._choices()
        client_id = self["client-id"]
        if client_id is not None and not re.fullmatch(r"[A-Za-z0-9._:@-]{1,128}", client_id):
            raise ValueError("--client-id: 1 to 128 letters, digits or . _ : @ -")
        token = self._token()
        user, password = self._login()
        ca_cert = self["ca-cert"]
        if ca_cert is not None:
            _check_trust_root(ca_cert)
        problem = folder_problem(folder)
        if problem:
            raise ValueError(problem)
        return ClientConfig(
            server=server.rstrip("/"),
            folder=os.path.realpath(folder),
            client_id=client_id,
            realtime=not self["no-realtime"],
            initial_sync=bool(self["initial-sync"]),
            interval=interval,
            token=token,
            token_file=self["token-file"],
            user=user,
            password=password,
            strategy=strategy,
            ca_cert=ca_cert,
            settle=settle / 1000.0,
            allow_mass_delete=bool(self["allow-mass-delete"]),
            relay=not self["no-relay"],
            delta=self["delta"],
            compress=self["compress"],
            safety_interval=max(10 * interval, 300.0),
            fallbacks=tuple(url.rstrip("/") for url in servers[1:]),
        )

    def _timing(self) -> tuple:
        """``(--interval seconds, --settle milliseconds)``, checked."""
        interval = _number("--interval", self["interval"], float)
        settle = _number("--settle", self["settle"], int)
        if interval <= 0:
            raise ValueError("--interval must be more than 0 seconds")
        if settle < 0:
            raise ValueError("--settle must not be negative")
        return interval, settle

    def _choices(self) -> str:
        """Check the options taking one of a few words; the conflict strategy."""
        strategy = self["conflict-strategy"]
        if strategy not in STRATEGIES:
            raise ValueError(f"--conflict-strategy {strategy}: expected one of {', '.join(STRATEGIES)}")
        for name in ("delta", "compress"):
            if self[name] not in MODES:
                raise ValueError(f"--{name} {self[name]}: expected one of {', '.join(MODES)}")
        if self["realtime"] and self["no-realtime"]:
            raise ValueError("--realtime and --no-realtime exclude each other")
        return strategy

    def _token(self):
        if self["token"] and self["token-file"]:
            raise ValueError("--token and --token-file exclude each other")
        if self["token-file"]:
            self["token-file"] = os.path.abspath(self["token-file"])  # twistd may chdir
            return read_secret_file(self["token-file"], "--token-file", private=False)
        return self["token"] or None

    def _login(self):
        user, password_file = self["user"], self["password-file"]
        if user is None and password_file is None:
            return None, None
        if user is None or password_file is None:
            raise ValueError("--user and --password-file go together")
        if self["token"] or self["token-file"]:
            raise ValueError("--user excludes --token and --token-file")
        _check_user(user)
        return user, read_secret_file(password_file, "--password-file", private=True)


def _check_user(user: str) -> None:
    if not user or len(user) > 256 or any(ord(c) < 32 for c in user):
        raise ValueError("--user: 1 to 256 characters, no control characters")


def _number(option, text, kind):
    try:
        return kind(text)
    except (TypeError, ValueError):
        raise ValueError(f"{option} {text}: not a number") from None


def makeService(options, reactor=None):
    """The client's service for parsed ``options``."""
    if reactor is None:
        from twisted.internet import reactor
    if options.folders is not None:
        service = FoldersService(options.folders, reactor)
        folders = service.folders
    else:
        service = SyncClientService(options.config, reactor)
        folders = {service.folder_name: service}
    parent = getattr(options, "parent", None) or {}
    if wants_bars(parent.get("nodaemon", False), sys.__stderr__):
        ProgressBars(reactor, folders, sys.__stderr__).setServiceParent(service)
    txaio.set_global_log_level("info")  # Autobahn's frame-level debug lines are not for admins
    tune_garbage_collector()
    return service
