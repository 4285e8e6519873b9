#!/usr/bin/env python3
"""Soak test: a server and three client daemons under a random workload and scheduled faults.

    PYTHONPATH=$PWD .venv/bin/python bench/soak.py --minutes 30 [--seed N] [--base DIR]

Starts ``twistd -n quantum-sync`` and three ``twistd -n quantum-sync-client`` daemons (folders
a, b and c) as subprocesses on 127.0.0.1; client a reaches the server through a TCP proxy in
this process. For ``--minutes`` it makes random creates, updates, deletes and moves of files
and folders in the three folders (``--rate`` a second in all), and in rounds it injects one
fault each (``--faults``): the server killed with SIGKILL and restarted, the proxy stalled,
client c stopped and started, once with its state folder (``.quantum-sync/``) deleted while
it is stopped, once the server's state folder deleted while it is down. After each fault the
workload pauses and the time until all four trees are identical is measured. At the end it
quiesces, waits (``--converge-timeout``) for convergence and checks that the three folders and
the server's root hold the same tree (paths and SHA-256) and that no write the harness made
is lost (bench/README.md gives the rule). Prints one table; exits 1 when anything is lost,
the trees diverge or a fault never converged.

With ``auth`` (tokens of a 20 s life) only when the client has ``--password-file``; else the
table says "auth: off". Everything it starts it stops (by PID). Only 127.0.0.1 is used.
"""

import argparse
import contextlib
import ctypes
import hashlib
import json
import os
import random
import re
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
STATE = ".quantum-sync"
CLIENTS = ("a", "b", "c")
#: the client behind the stalling proxy, and the one stopped and started
PROXIED, RESTARTED = "a", "c"
USER, TOKEN_TTL = "soak", 20
#: every fault the harness knows; the default plan of a long soak uses all of them
FAULTS = ("server-kill", "proxy-stall", "client-restart", "client-state-loss", "server-state-loss")
#: faults injected once per run at most (the others repeat in turn)
ONCE = ("client-state-loss", "server-state-loss")
#: a folder delete is kept under the client's mass-delete guard (more than 10 files)
MAX_FILES_IN_DELETED_DIR = 8
MARKER = b"quantum-sync soak write "


# -- the ledger and the trees: pure --------------------------------------------------------


@dataclass(frozen=True)
class Write:
    """One content the harness wrote into a folder (unique: its marker names it)."""

    number: int
    folder: str
    path: str
    sha256: str
    size: int
    at: float


@dataclass
class Ledger:
    """Every content written and every content a folder's user removed having seen it."""

    writes: dict = field(default_factory=dict)  # sha256 -> Write
    superseded: set = field(default_factory=set)  # sha256 of contents overwritten or deleted

    def wrote(self, write: Write) -> None:
        self.writes[write.sha256] = write

    def removed(self, sha256: str) -> None:
        self.superseded.add(sha256)

    def lost(self, trees) -> list:
        """Writes whose content is in none of ``trees`` and was never superseded."""
        present = {value for tree in trees for value in tree.values() if value != DIR}
        return sorted((w for h, w in self.writes.items() if h not in present and h not in self.superseded),
                      key=lambda w: w.number)


DIR = "dir"


def diverging(trees: dict) -> dict:
    """``{path: {name: sha256, "dir" or None}}`` for each path not the same in all ``trees``."""
    paths = set().union(*trees.values())
    out = {}
    for path in sorted(paths):
        values = {name: tree.get(path) for name, tree in trees.items()}
        if len(set(values.values())) > 1:
            out[path] = values
    return out


def plan_faults(minutes: float, faults, round_seconds: float) -> list:
    """The fault of each round: ``faults`` in turn, those in :data:`ONCE` once only, as many
    rounds as fit in ``minutes`` (at least one per fault asked for)."""
    repeating = [f for f in faults if f not in ONCE]
    once = [f for f in faults if f in ONCE]
    rounds = max(len(faults), int(minutes * 60 // round_seconds))
    plan, turn = [], 0
    for i in range(rounds):
        # the one-off faults go in the middle third, when the folders are full, once every
        # repeating fault has had its turn
        if once and (i >= max(1, rounds // 3) and turn >= len(repeating) or not repeating):
            plan.append(once.pop(0))
        elif repeating:
            plan.append(repeating[turn % len(repeating)])
            turn += 1
    return plan + once


# -- files ---------------------------------------------------------------------------------


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class TreeReader:
    """The tree of a folder (relative path -> SHA-256 or ``"dir"``, without ``.quantum-sync``),
    hashing only files whose inode, size or times changed since the last look."""

    def __init__(self):
        self._hashes = {}

    def read(self, top: str) -> dict:
        top = os.path.normpath(top)
        tree = {}
        for dirpath, dirnames, filenames in os.walk(top):
            if dirpath == top:
                dirnames[:] = [d for d in dirnames if d != STATE]
            for name in dirnames:
                full = os.path.join(dirpath, name)
                if not os.path.islink(full):
                    tree[os.path.relpath(full, top)] = DIR
            for name in filenames:
                full = os.path.join(dirpath, name)
                digest = self._hash(full)
                if digest is not None:
                    tree[os.path.relpath(full, top)] = digest
        return tree

    def _hash(self, full: str):
        try:
            st = os.lstat(full)
            if not stat.S_ISREG(st.st_mode):
                return None
            key = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            cached = self._hashes.get(full)
            if cached and cached[0] == key:
                return cached[1]
            with open(full, "rb") as f:
                digest = hashlib.file_digest(f, "sha256").hexdigest()
        except FileNotFoundError:
            return None
        self._hashes[full] = (key, digest)
        return digest


_libc = ctypes.CDLL(None, use_errno=True)
_RENAME_NOREPLACE, _AT_FDCWD = 1, -100


def rename_noreplace(source: str, target: str) -> None:
    """Rename that fails (EEXIST) rather than replace anything at ``target``."""
    if _libc.renameat2(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target), _RENAME_NOREPLACE):
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error), source)


# -- the proxy -----------------------------------------------------------------------------


class StallingProxy:
    """A TCP forwarder from a free port of 127.0.0.1 to ``127.0.0.1:target_port``, one thread
    a connection; while stalled it reads nothing from either side (the bytes wait in the
    kernel's buffers), as a sleeping laptop or a congested link would."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self._flowing = threading.Event()
        self._flowing.set()
        self._closed = threading.Event()
        self._threads = [threading.Thread(target=self._accept, name="soak-proxy", daemon=True)]
        self._threads[0].start()

    def stall(self) -> None:
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    def close(self) -> None:
        self._closed.set()
        self._flowing.set()
        for thread in self._threads:
            thread.join(timeout=5)
        self._listener.close()

    def _accept(self):
        while not self._closed.is_set():
            try:
                downstream, _ = self._listener.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            thread = threading.Thread(target=self._pump, args=(downstream,), name="soak-proxy-pump", daemon=True)
            self._threads.append(thread)
            thread.start()

    def _pump(self, downstream):
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
        except OSError:
            downstream.close()
            return
        upstream.settimeout(None)
        downstream.settimeout(None)
        peers = {downstream: upstream, upstream: downstream}
        reading = set(peers)
        try:
            while reading and not self._closed.is_set():
                if not self._flowing.wait(0.2):
                    continue
                ready, _, _ = select.select(list(reading), [], [], 0.2)
                for sock in ready:
                    if not self._flowing.is_set():
                        break
                    data = sock.recv(65536)
                    if data:
                        peers[sock].sendall(data)
                    else:
                        reading.discard(sock)
                        peers[sock].shutdown(socket.SHUT_WR)
        except OSError:
            pass
        finally:
            downstream.close()
            upstream.close()


# -- the daemons ---------------------------------------------------------------------------


class Daemon:
    """One twistd subprocess, restartable; its output appended to ``log``."""

    def __init__(self, name: str, args: list, log: str, cwd: str):
        self.name, self.args, self.log, self.cwd = name, args, log, cwd
        self.process = None
        self.unexpected_exits = 0

    def start(self) -> None:
        with open(self.log, "ab") as log:
            log.write(f"\n==== soak: starting {self.name} at {time.strftime('%H:%M:%S')} ====\n".encode())
            log.flush()
            self.process = subprocess.Popen([TWISTD, "-n", "--pidfile=", *self.args], stdout=log,
                                            stderr=subprocess.STDOUT, cwd=self.cwd)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def check(self) -> bool:
        """False (and counted) when the process ended without being told to."""
        if self.process is not None and self.process.poll() is not None:
            self.unexpected_exits += 1
            self.process = None
            return False
        return True

    def kill(self) -> None:
        if self.running:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)
        self.process = None

    def stop(self) -> None:
        if self.running:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.send_signal(signal.SIGKILL)
                self.process.wait(timeout=30)
        self.process = None

    def log_text(self) -> str:
        try:
            with open(self.log, errors="replace") as f:
                return f.read()
        except OSError:
            return ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def client_supports_password_file() -> bool:
    """Whether this client takes ``--user NAME --password-file FILE`` (its --help says)."""
    result = subprocess.run([TWISTD, "quantum-sync-client", "--help"], capture_output=True, text=True, timeout=60)
    return "--password-file" in result.stdout


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/ws/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def wait_until(predicate, timeout: float, poll: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(poll)
    return True


class Cluster:
    """The server, the proxy and the three clients of one soak, in ``base``."""

    def __init__(self, base: str, auth: bool, client_interval: float):
        self.base = base
        self.auth = auth
        self.root = os.path.join(base, "server-root")
        self.folders = {name: os.path.join(base, name) for name in CLIENTS}
        logs = os.path.join(base, "logs")
        os.makedirs(logs, exist_ok=True)
        for folder in self.folders.values():
            os.makedirs(folder, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = os.path.join(base, "server.json")
        with open(config, "w") as f:
            json.dump(self._server_document(), f)
        self.server = Daemon("server", ["quantum-sync", "--config", config], os.path.join(logs, "server.log"), base)
        self.proxy = StallingProxy(self.port)
        self.clients = {}
        for name, folder in self.folders.items():
            port = self.proxy.port if name == PROXIED else self.port
            args = ["quantum-sync-client", "--server", f"http://127.0.0.1:{port}", "--local-path", folder,
                    "--interval", str(client_interval), "--settle", "100"]
            if auth:
                args += ["--user", USER, "--password-file", os.path.join(base, "password")]
            self.clients[name] = Daemon(f"client {name}", args, os.path.join(logs, f"client-{name}.log"), base)

    def _server_document(self) -> dict:
        handler = {"handler": "file_sync", "root": self.root, "enable_upload": True,
                   "websocket": {"ping_interval": 5}}
        if self.auth:
            from quantum_sync.passwords import hash_password

            password = sha256_of(os.urandom(16))
            path = os.path.join(self.base, "password")
            with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
                f.write(password + "\n")
            handler["auth"] = {"users": {USER: {"password_hash": hash_password(password), "role": "write"}},
                               "token_ttl": TOKEN_TTL}
        return {"apps": {"http": {"servers": {"soak": {
            "listen": [f"tcp:{self.port}:interface=127.0.0.1"],
            "routes": [{"match": [{"matcher": "path", "paths": ["/api/*", "/ws"]}], "handle": [handler]}],
        }}}}}

    def start_server(self, timeout: float = 60) -> bool:
        self.server.start()
        return wait_until(lambda: healthy(self.url) or not self.server.running, timeout) and self.server.running

    def start(self) -> None:
        if not self.start_server():
            raise RuntimeError(f"the server did not start; see {self.server.log}")
        for client in self.clients.values():
            client.start()
        subscribed = wait_until(lambda: all("realtime: connected" in c.log_text() for c in self.clients.values()), 90)
        if not subscribed:
            raise RuntimeError(f"the clients did not connect; see {os.path.join(self.base, 'logs')}")

    def restart_crashed(self) -> None:
        """Start again any daemon that ended by itself (counted in ``unexpected_exits``)."""
        if not self.server.check():
            self.start_server()
        for client in self.clients.values():
            if not client.check():
                client.start()

    def stop(self) -> None:
        for client in self.clients.values():
            client.stop()
        self.server.stop()
        self.proxy.close()

    def trees(self, reader: TreeReader) -> dict:
        trees = {"server": reader.read(self.root)}
        trees.update((name, reader.read(folder)) for name, folder in self.folders.items())
        return trees


def own_root(folder: str) -> str:
    """The one folder a user works in when folders do not contend for paths."""
    return f"only-{folder}"


# -- the workload --------------------------------------------------------------------------


class Raced(Exception):
    """The sync client changed the path under an operation, which then did not happen."""


@dataclass
class Counts:
    applied: dict = field(default_factory=dict)
    raced: int = 0

    def add(self, kind: str) -> None:
        self.applied[kind] = self.applied.get(kind, 0) + 1


class Workload:
    """Random operations on the folders as their users would make them, every content
    unique and written down in the ledger, every content removed having been seen by the
    folder's user marked superseded (bench/README.md has the rule)."""

    #: (operation, weight) while the folders hold fewer files than ``max_files``
    MIX = (("create", 30), ("update", 28), ("delete", 9), ("move", 8), ("mkdir", 7),
           ("move_dir", 4), ("delete_dir", 3))

    #: what a folder's user does while it makes no moves or deletes
    STILL = (("create", 5), ("update", 5), ("mkdir", 1))

    def __init__(self, rng: random.Random, folders: dict, trash: str, ledger: Ledger, max_files: int,
                 contention: bool = True):
        self.rng, self.trash, self.ledger = rng, trash, ledger
        self.folders = {name: os.path.normpath(top) for name, top in folders.items()}
        self.max_files = max_files
        self.contention = contention
        #: folders whose user makes no moves or deletes for now
        self.still = set()
        if not contention:
            for name, top in self.folders.items():
                os.makedirs(os.path.join(top, own_root(name)), exist_ok=True)
        self.counts = Counts()
        self._number = 0
        os.makedirs(trash, exist_ok=True)

    def step(self) -> None:
        folder = self.rng.choice(sorted(self.folders))
        top = self.folders[folder]
        dirs, files = self._listing(top, "" if self.contention else own_root(folder))
        mix = (self.STILL if folder in self.still else self.MIX if len(files) < self.max_files
               else (("update", 3), ("delete", 4), ("delete_dir", 1)))
        kind = self.rng.choices([k for k, _ in mix], [w for _, w in mix])[0]
        try:
            done = getattr(self, "_" + kind)(folder, top, dirs, files)
        except (Raced, OSError):
            self.counts.raced += 1  # the sync client changed the folder under this operation
            return
        if done:
            self.counts.add(kind)

    def _listing(self, top, under):
        """``(dirs, files)`` under ``under`` in the folder, ``under`` itself first in dirs."""
        dirs, files = [under], []
        for dirpath, dirnames, filenames in os.walk(os.path.join(top, under) if under else top):
            if dirpath == top:
                dirnames[:] = [d for d in dirnames if d != STATE]
            rel = os.path.relpath(dirpath, top)
            rel = "" if rel == "." else rel
            dirs.extend(os.path.join(rel, d) for d in dirnames)
            files.extend(os.path.join(rel, f) for f in filenames)
        return dirs, files

    def _content(self, folder: str, path: str) -> bytes:
        self._number += 1
        roll = self.rng.random()
        size = (self.rng.randint(64, 16 << 10) if roll < 0.88 else
                self.rng.randint(64 << 10, 320 << 10) if roll < 0.98 else self.rng.randint(1 << 20, 3 << 20))
        head = MARKER + f"{self._number} in {folder}:{path}\n".encode()
        return head + self.rng.randbytes(max(0, size - len(head)))

    def _record(self, folder, path, data):
        self.ledger.wrote(Write(self._number, folder, path, sha256_of(data), len(data), time.time()))

    def _create(self, folder, top, dirs, files):
        if self.contention and self.rng.random() < 0.15:
            path = f"shared-{self.rng.randint(0, 5)}.txt"  # several folders may create it at once
            if os.path.lexists(os.path.join(top, path)):
                return False
        else:
            path = os.path.join(self.rng.choice(dirs), f"f{self._number + 1}-{folder}.bin")
        data = self._content(folder, path)
        fd = os.open(os.path.join(top, path), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with open(fd, "wb") as f:
            f.write(data)
        self._record(folder, path, data)
        return True

    def _update(self, folder, top, dirs, files):
        """Overwrite a file in place through one descriptor: the bytes replaced are the ones
        read from that descriptor; if the sync client put another file at the name
        meanwhile (a rename over it), the write went to an unlinked inode and counts as
        not made."""
        if not files:
            return False
        path = self.rng.choice(files)
        fd = os.open(os.path.join(top, path), os.O_RDWR | os.O_NOFOLLOW)
        with open(fd, "r+b", buffering=0) as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise Raced(path)
            seen = f.read()
            data = self._content(folder, path)
            f.seek(0)
            f.write(data)
            f.truncate()
            if os.fstat(fd).st_nlink == 0:
                raise Raced(path)  # replaced or removed by the client before this write landed
        self.ledger.removed(sha256_of(seen))
        self._record(folder, path, data)
        return True

    def _delete(self, folder, top, dirs, files):
        if not files:
            return False
        return self._to_trash(top, self.rng.choice(files))

    def _delete_dir(self, folder, top, dirs, files):
        candidates = [d for d in dirs[1:]
                      if sum(1 for f in files if f.startswith(d + os.sep)) <= MAX_FILES_IN_DELETED_DIR]
        if not candidates:
            return False
        return self._to_trash(top, self.rng.choice(candidates))

    def _to_trash(self, top, path):
        """Delete by moving out of the folder: what arrives in the trash is exactly what the
        user removed, and all of it is superseded."""
        self._number += 1
        target = os.path.join(self.trash, str(self._number))
        os.rename(os.path.join(top, path), target)
        if os.path.isdir(target):
            for dirpath, _, filenames in os.walk(target):
                for name in filenames:
                    with open(os.path.join(dirpath, name), "rb") as f:
                        self.ledger.removed(hashlib.file_digest(f, "sha256").hexdigest())
        else:
            with open(target, "rb") as f:
                self.ledger.removed(hashlib.file_digest(f, "sha256").hexdigest())
        return True

    def _mkdir(self, folder, top, dirs, files):
        parent = self.rng.choice([d for d in dirs if d.count(os.sep) < 2 + (not self.contention)])
        self._number += 1
        os.mkdir(os.path.join(top, parent, f"d{self._number}-{folder}"))
        return True

    def _move(self, folder, top, dirs, files):
        if not files:
            return False
        source = self.rng.choice(files)
        self._number += 1
        stem = os.path.basename(source).split(".")[0].split("-m")[0]
        target = os.path.join(self.rng.choice(dirs), f"{stem}-m{self._number}.bin")
        rename_noreplace(os.path.join(top, source), os.path.join(top, target))
        return True

    def _move_dir(self, folder, top, dirs, files):
        if len(dirs) < 2:
            return False
        source = self.rng.choice(dirs[1:])
        parents = [d for d in dirs if d != source and not d.startswith(source + os.sep)
                   and d.count(os.sep) < 2 + (not self.contention)]
        self._number += 1
        target = os.path.join(self.rng.choice(parents), f"d{self._number}-{folder}")
        rename_noreplace(os.path.join(top, source), os.path.join(top, target))
        return True


# -- the run -------------------------------------------------------------------------------


@dataclass
class SoakOptions:
    """What one run does (the command line's options)."""

    minutes: float = 30.0
    seed: int = 1
    base: str = ""
    rate: float = 3.0
    faults: tuple = FAULTS
    round_seconds: float = 0.0  # 0: a tenth of the run, 20 s to 180 s
    converge_timeout: float = 0.0  # 0: a fifth of the run, 60 s to 180 s
    client_interval: float = 3.0
    max_files: int = 300
    #: False: each folder's user works in a subtree of its own (:func:`own_root`), so no two
    #: folders change one path at once; True: all in the whole tree, several creating the
    #: same names, editing, moving and deleting each other's files
    contention: bool = True
    #: False: the stalled client's user makes no moves or deletes while its link is stalled
    removals_while_stalled: bool = True
    #: True: every planned round runs, even past ``minutes`` (the short test: each fault once,
    #: as fast as the machine allows)
    every_round: bool = False

    def __post_init__(self):
        if not self.converge_timeout:
            self.converge_timeout = min(180.0, max(60.0, self.minutes * 12))

    def round_length(self) -> float:
        return self.round_seconds or min(180.0, max(20.0, self.minutes * 6))


@dataclass
class FaultResult:
    """One round's fault and how the folders came back from it."""

    fault: str
    at: float  # seconds into the run
    converged_after: float | None  # seconds from the fault's end, None: not within the timeout
    lost: int | None  # writes lost at that point (only counted once converged)
    diverging: dict  # path -> {tree: value} when it did not converge (the first 20)


@dataclass
class Report:
    """Everything the table prints; ``ok`` decides the exit status."""

    options: SoakOptions
    auth: bool
    counts: Counts
    faults: list
    not_reached: list
    server_restarts: int
    client_restarts: int
    stalls: int
    stall_seconds: float
    writes: int
    superseded: int
    lost: list
    diverging: dict
    final_converged_after: float | None
    unexpected_exits: dict
    tracebacks: dict
    unauthorized: int  # 401 answers in the server's access log
    duration: float

    @property
    def ok(self) -> bool:
        return (not self.lost and not self.diverging and self.final_converged_after is not None
                and all(f.converged_after is not None for f in self.faults))

    @property
    def restarts_survived(self) -> int:
        return sum(1 for f in self.faults if f.fault in ("server-kill", "server-state-loss")
                   and f.converged_after is not None and not f.lost)


class Soak:
    """One run: the cluster, the workload, the faults in rounds, the final check."""

    def __init__(self, options: SoakOptions, log=print):
        self.options = options
        self.log = log
        self.rng = random.Random(options.seed)
        self.ledger = Ledger()
        self.reader = TreeReader()
        self.auth = client_supports_password_file()
        self.cluster = Cluster(options.base, self.auth, options.client_interval)
        self.workload = Workload(self.rng, self.cluster.folders, os.path.join(options.base, "trash"),
                                 self.ledger, options.max_files, options.contention)
        self.results = []
        self.not_reached = []  # faults planned but not started: the time was up
        self.server_restarts = self.client_restarts = self.stalls = 0
        self.stall_seconds = 0.0
        self._t0 = time.monotonic()

    def run(self) -> Report:
        try:
            self.cluster.start()
            self._t0 = time.monotonic()
            plan = plan_faults(self.options.minutes, self.options.faults, self.options.round_length())
            self.log(f"soak: {len(plan)} rounds of about {self.options.round_length():.0f} s: {', '.join(plan)}")
            end = self.options.minutes * 60
            for fault in plan:
                if self._elapsed() < end or self.options.every_round:
                    self._round(fault)
                else:
                    self.not_reached.append(fault)
            if self._elapsed() < end:
                self._work(end - self._elapsed())
            self.log(f"soak: {self._elapsed():.0f} s: quiescing")
            converged = self._converge()
            trees = self.cluster.trees(self.reader)
            return self._report(converged, trees)
        finally:
            self.cluster.stop()

    def _elapsed(self) -> float:
        return time.monotonic() - self._t0

    def _work(self, seconds: float) -> None:
        """Random operations at ``rate`` a second for ``seconds``."""
        end = time.monotonic() + seconds
        while True:
            self.cluster.restart_crashed()
            pause = min(self.rng.expovariate(self.options.rate), 4 / self.options.rate)
            if time.monotonic() + pause >= end:
                time.sleep(max(0.0, end - time.monotonic()))
                return
            time.sleep(pause)
            self.workload.step()

    def _round(self, fault: str) -> None:
        length = self.options.round_length()
        hold = self.rng.uniform(0.15, 0.3) * length
        self._work(self.rng.uniform(0.3, 0.5) * length)
        at = self._elapsed()
        self.log(f"soak: {at:.0f} s: {fault} for {hold:.0f} s")
        getattr(self, "_" + fault.replace("-", "_"))(hold)
        converged = self._converge()
        trees = self.cluster.trees(self.reader)
        lost = len(self.ledger.lost(trees.values())) if converged is not None else None
        apart = dict(list(diverging(trees).items())[:20]) if converged is None else {}
        self.results.append(FaultResult(fault, at, converged, lost, apart))
        self.log(f"soak: {self._elapsed():.0f} s: after {fault}: "
                 + (f"converged in {converged:.1f} s, {lost} lost" if converged is not None
                    else f"NOT converged within {self.options.converge_timeout:.0f} s; apart:\n"
                    + "\n".join(_apart(apart))))

    def _server_kill(self, hold: float, lose_state: bool = False) -> None:
        self.cluster.server.kill()
        if lose_state:
            shutil.rmtree(os.path.join(self.cluster.root, STATE), ignore_errors=True)
        self._work(hold)
        self.server_restarts += 1
        if not self.cluster.start_server():
            self.log("soak: the server did not come back within 60 s")

    def _server_state_loss(self, hold: float) -> None:
        self._server_kill(hold, lose_state=True)

    def _proxy_stall(self, hold: float) -> None:
        self.cluster.proxy.stall()
        if not self.options.removals_while_stalled:
            self.workload.still.add(PROXIED)
        try:
            self._work(hold)
        finally:
            self.cluster.proxy.resume()
            self.workload.still.discard(PROXIED)
        self.stalls += 1
        self.stall_seconds += hold

    def _client_restart(self, hold: float, lose_state: bool = False) -> None:
        client = self.cluster.clients[RESTARTED]
        client.stop()
        self._work(hold / 2)
        if lose_state:
            shutil.rmtree(os.path.join(self.cluster.folders[RESTARTED], STATE))
        self._work(hold / 2)
        client.start()
        self.client_restarts += 1

    def _client_state_loss(self, hold: float) -> None:
        self._client_restart(hold, lose_state=True)

    def _converge(self):
        """Seconds until the four trees are equal (and stay so for 2 s) with the workload
        paused, or None after ``converge_timeout``."""
        start = time.monotonic()
        equal_since = None
        deadline = start + self.options.converge_timeout
        while time.monotonic() < deadline:
            self.cluster.restart_crashed()
            now = time.monotonic()
            trees = list(self.cluster.trees(self.reader).values())
            if all(tree == trees[0] for tree in trees[1:]):
                equal_since = equal_since or now
                if now - equal_since >= 2.0:
                    return equal_since - start
            else:
                equal_since = None
            time.sleep(0.5)
        return None

    def _report(self, converged, trees) -> Report:
        daemons = {"server": self.cluster.server, **{f"client {n}": c for n, c in self.cluster.clients.items()}}
        return Report(
            options=self.options, auth=self.auth, counts=self.workload.counts, faults=self.results,
            not_reached=self.not_reached,
            server_restarts=self.server_restarts, client_restarts=self.client_restarts,
            stalls=self.stalls, stall_seconds=self.stall_seconds,
            writes=len(self.ledger.writes), superseded=len(self.ledger.superseded & set(self.ledger.writes)),
            lost=self.ledger.lost(trees.values()), diverging=diverging(trees),
            final_converged_after=converged,
            unexpected_exits={n: d.unexpected_exits for n, d in daemons.items() if d.unexpected_exits},
            tracebacks={n: d.log_text().count("Traceback (most recent call last)") for n, d in daemons.items()},
            unauthorized=len(re.findall(r" 401 \d+B ", self.cluster.server.log_text())),
            duration=self._elapsed(),
        )


def table(report: Report) -> str:
    """The report as a Markdown table, then the faults, the lost writes and the diverging paths."""
    o = report.options
    counts = report.counts.applied
    worst = max((f for f in report.faults if f.converged_after is not None),
                key=lambda f: f.converged_after, default=None)
    never = [f for f in report.faults if f.converged_after is None]
    rows = [
        ("run", f"{report.duration / 60:.1f} min, seed {o.seed}, {o.rate:g} operations/s, "
                + ("folders contend for paths" if o.contention else "each folder in its own subtree")
                + ("" if o.removals_while_stalled else f", no moves or deletes in {PROXIED} while stalled")
                + f", base {o.base}"),
        ("auth", f"on (token_ttl {TOKEN_TTL} s, --user/--password-file)" if report.auth
         else "off (client has no --password-file)"),
        ("operations applied", f"{sum(counts.values())} (" + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
         + f"); {report.counts.raced} not made (raced with the sync client)"),
        ("server restarts survived", f"{report.restarts_survived} of {report.server_restarts} (SIGKILL)"),
        ("client restarts", f"{report.client_restarts} (client {RESTARTED}"
         + (", state folder deleted once)" if "client-state-loss" in [f.fault for f in report.faults] else ")")),
        ("faults planned but not reached (time up)", ", ".join(report.not_reached) or "none"),
        ("proxy stalls", f"{report.stalls} ({report.stall_seconds:.0f} s in all, client {PROXIED})"),
        ("longest convergence after a fault",
         (f"{worst.converged_after:.1f} s ({worst.fault} at {worst.at:.0f} s)" if worst else "-")
         + (f"; NOT converged within {o.converge_timeout:.0f} s after: "
            + ", ".join(f"{f.fault} at {f.at:.0f} s" for f in never) if never else "")),
        ("writes in the ledger", f"{report.writes} ({report.superseded} superseded)"),
        ("lost writes", str(len(report.lost))),
        ("converged at the end", f"yes, {report.final_converged_after:.1f} s after quiescing"
         if report.final_converged_after is not None else f"NO (waited {o.converge_timeout:.0f} s)"),
        ("paths diverging at the end", str(len(report.diverging))),
        ("daemons that exited by themselves", ", ".join(f"{n} {c}" for n, c in report.unexpected_exits.items())
         or "none"),
        ("401 answers (expired or refused tokens)", str(report.unauthorized)),
        ("tracebacks in the logs", ", ".join(f"{n} {c}" for n, c in report.tracebacks.items() if c) or "none"),
    ]
    lines = ["| figure | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows), "",
             "| fault | at | converged after | lost then |", "|---|---|---|---|"]
    lines += [f"| {f.fault} | {f.at:.0f} s | " + (f"{f.converged_after:.1f} s" if f.converged_after is not None
                                                   else "not converged") + f" | {'-' if f.lost is None else f.lost} |"
              for f in report.faults]
    for f in report.faults:
        if f.diverging:
            lines += ["", f"not converged {o.converge_timeout:.0f} s after {f.fault} at {f.at:.0f} s; apart then:"]
            lines += _apart(f.diverging)
    if report.lost:
        lines += ["", f"lost writes (first 20 of {len(report.lost)}):"]
        lines += [f"  #{w.number} {w.folder}:{w.path} ({w.size} bytes, {w.sha256[:12]})" for w in report.lost[:20]]
    if report.diverging:
        lines += ["", f"diverging paths (first 20 of {len(report.diverging)}):"]
        lines += _apart(dict(list(report.diverging.items())[:20]))
    lines.append("")
    lines.append("PASS" if report.ok else "FAIL")
    return "\n".join(lines)


def _apart(diverging: dict) -> list:
    return [f"  {p}: " + ", ".join(f"{n}={(v or 'absent')[:12]}" for n, v in values.items())
            for p, values in diverging.items()]


def run(options: SoakOptions, log=print) -> Report:
    """Run one soak in ``options.base`` (which must be empty or absent) and report."""
    os.makedirs(options.base, exist_ok=True)
    if os.listdir(options.base):
        raise ValueError(f"--base {options.base}: not empty")
    return Soak(options, log).run()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--base", help="an empty directory for the run (default: a new temp directory)")
    parser.add_argument("--rate", type=float, default=3.0, help="operations a second, all folders together")
    parser.add_argument("--faults", default=",".join(FAULTS), help="comma-separated, of: " + ", ".join(FAULTS))
    parser.add_argument("--round-seconds", type=float, default=0.0, help="0: a tenth of the run, 20 to 180 s")
    parser.add_argument("--converge-timeout", type=float, default=0.0,
                        help="longest wait for convergence after a fault and at the end (0: a fifth of the run, "
                             "60 to 180 s)")
    parser.add_argument("--no-contention", action="store_true",
                        help="each folder's user works in a subtree of its own (no concurrent edits of one path)")
    parser.add_argument("--no-removals-while-stalled", action="store_true",
                        help="no moves or deletes in the proxied client's folder while its link is stalled")
    parser.add_argument("--every-round", action="store_true",
                        help="run every planned round even past --minutes (each fault at least once)")
    parser.add_argument("--keep", action="store_true", help="keep the base directory after a passing run")
    args = parser.parse_args(argv)
    faults = tuple(f for f in args.faults.split(",") if f)
    unknown = [f for f in faults if f not in FAULTS]
    if unknown:
        parser.error(f"unknown fault {', '.join(unknown)}; known: {', '.join(FAULTS)}")
    base = args.base or tempfile.mkdtemp(prefix="qs-soak-")
    options = SoakOptions(minutes=args.minutes, seed=args.seed, base=os.path.abspath(base), rate=args.rate,
                          faults=faults, round_seconds=args.round_seconds, converge_timeout=args.converge_timeout,
                          contention=not args.no_contention,
                          removals_while_stalled=not args.no_removals_while_stalled, every_round=args.every_round)
    report = run(options, log=lambda line: print(line, file=sys.stderr, flush=True))
    print(table(report))
    with open(os.path.join(options.base, "report.json"), "w") as f:
        json.dump({"lost": [w.__dict__ for w in report.lost], "diverging": report.diverging,
                   "faults": [r.__dict__ for r in report.faults]}, f, indent=1)
    if report.ok and not args.keep and not args.base:
        shutil.rmtree(options.base, ignore_errors=True)
    else:
        print(f"logs, trees and report.json kept in {options.base}", file=sys.stderr)
    return 0 if report.ok else 1


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
