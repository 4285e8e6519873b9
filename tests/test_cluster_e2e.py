"""Three real server processes (``twistd -n quantum-sync``) on one shared root, one
PostgreSQL schema and Redis, with real clients on different nodes; a node killed with
SIGKILL in the middle of uploads; start-up refusals."""

import hashlib
import json
import os
import signal
import subprocess
import sys

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, gatherResults

from cluster_support import free_port
from tests.clients import converged, read, tree, write
from tests.support import HttpClient, server_document, wait_for

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Node:
    """One ``twistd -n quantum-sync`` process of the cluster."""

    def __init__(self, tmp_path, name, root, block):
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = tmp_path / f"{name}.json"
        self.log_path = tmp_path / f"{name}.log"
        document = server_document(root, listen=f"127.0.0.1:{self.port}", cluster=block)
        self.config.write_text(json.dumps(document))
        self.process = None
        self.cwd = str(tmp_path)

    def start(self):
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [TWISTD, "-n", "--pidfile=", "quantum-sync", "--config", str(self.config)],
            stdout=log, stderr=subprocess.STDOUT, cwd=self.cwd)
        log.close()

    def kill(self, sig=signal.SIGKILL):
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(30)


async def listening(reactor, http, node, timeout=60):
    async def answers():
        try:
            response = await http.get(node.url + "/api/changes")
            await response.content()
            return response.code == 200
        except Exception:
            return False

    deadline = reactor.seconds() + timeout
    while not await answers():
        assert node.process.poll() is None, node.log_path.read_text()[-2000:]
        assert reactor.seconds() < deadline, f"{node.name} did not start"
        await wait_for(reactor, lambda: True)
        from twisted.internet.task import deferLater

        await deferLater(reactor, 0.1, lambda: None)


@pytest.fixture
def cluster(reactor, tmp_path, cluster_block):
    root = tmp_path / "root"
    root.mkdir()
    nodes = [Node(tmp_path, f"n{n}", root, cluster_block(f"n{n}")) for n in (1, 2, 3)]
    for node in nodes:
        node.start()
    http = HttpClient(reactor, persistent=False)
    try:
        for node in nodes:
            pytest_twisted.blockon(Deferred.fromCoroutine(listening(reactor, http, node)))
    except BaseException:
        for node in nodes:
            node.kill()
        raise
    yield nodes, root, http
    pytest_twisted.blockon(Deferred.fromCoroutine(http.close()))
    for node in nodes:
        node.kill(signal.SIGTERM)
    for node in nodes:
        text = node.log_path.read_text()
        assert "Traceback (most recent call last)" not in text, text[-3000:]


class At:
    """What Clients.start needs of a server: its URL."""

    def __init__(self, url):
        self.url = url


async def journals(http, nodes) -> list:
    answers = []
    for node in nodes:
        _, answer = await http.json("GET", node.url + "/api/changes", params={"limit": "10000"})
        answers.append(answer)
    return answers


async def one_journal(reactor, http, nodes) -> dict:
    """The journal as every node of ``nodes`` gives it, once all give the same one (a client may
    still be sending a last change when the trees already agree)."""
    async def same():
        answers = await journals(http, nodes)
        return answers[0] if all(answer == answers[0] for answer in answers) else None
    return await wait_for(reactor, same, what="one journal on every node")


@pytest_twisted.ensureDeferred
async def test_three_nodes_clients_converge_one_journal(reactor, cluster, clients):
    nodes, root, http = cluster
    a = await clients.start(At(nodes[0].url), "a")
    b = await clients.start(At(nodes[1].url), "b")
    c = await clients.start(At(nodes[2].url), "c")
    folders = [a.config.folder, b.config.folder, c.config.folder]
    write(folders[0], "docs/one.txt", b"from a on n1")
    write(folders[1], "two.txt", b"from b on n2")
    write(folders[2], "deep/er/three.txt", b"from c on n3")
    await converged(reactor, *folders, str(root))
    write(folders[1], "docs/one.txt", b"edited by b on n2")
    os.remove(os.path.join(folders[2], "two.txt"))
    os.makedirs(os.path.join(folders[0], "empty/dir"))
    await wait_for(reactor, lambda: read(folders[2], "docs/one.txt") == b"edited by b on n2", what="edit")
    os.rename(os.path.join(folders[0], "deep"), os.path.join(folders[0], "moved"))
    final = await converged(reactor, *folders, str(root))
    assert "moved/er/three.txt" in final and "two.txt" not in final and "empty/dir" in final
    journal = await one_journal(reactor, http, nodes)
    seqs = [change["seq"] for change in journal["changes"]]
    assert seqs == list(range(1, len(seqs) + 1))

    # racing uploads to one path on two nodes: one winner, one 412, no mixed file
    base = sha(b"edited by b on n2")
    bodies = [b"X" * 300_000, b"Y" * 300_000]

    async def put(node, body):
        response = await http.request("PUT", node.url + "/api/upload", params={"path": "docs/one.txt"},
                                      data=body, headers={"If-Match": base, "X-Client-Id": "racer"})
        await response.content()
        return response.code

    codes = await gatherResults([Deferred.fromCoroutine(put(node, body))
                                 for node, body in zip(nodes[:2], bodies)])
    assert sorted(codes) == [200, 412]
    winner = bodies[codes.index(200)]
    assert (root / "docs" / "one.txt").read_bytes() == winner
    await wait_for(reactor, lambda: all(read(f, "docs/one.txt") == winner for f in folders), what="winner")


@pytest_twisted.ensureDeferred
async def test_node_killed_mid_uploads_clients_move_on(reactor, cluster, clients):
    nodes, root, http = cluster
    writer = await clients.start(At(nodes[2].url), "writer", fallbacks=(nodes[0].url, nodes[1].url))
    reader = await clients.start(At(nodes[1].url), "reader")
    files = {f"batch/{n:03d}.bin": os.urandom(20_000 + n) for n in range(60)}
    for n, (name, data) in enumerate(files.items()):
        write(writer.config.folder, name, data)
        if n == 20:
            await wait_for(reactor, lambda: any(os.scandir(root / "batch")) if (root / "batch").exists() else False,
                           what="first uploads")
            nodes[2].kill()  # SIGKILL, uploads in flight
    expected = {name: sha(data) for name, data in files.items()}
    await wait_for(reactor, lambda: all(tree(reader.config.folder).get(n) == h for n, h in expected.items()),
                   timeout=60, what="every file at the reader")
    assert {n: h for n, h in tree(str(root)).items() if n.startswith("batch/")} == expected
    assert writer.server.server_url != nodes[2].url  # moved to another node
    journal = await one_journal(reactor, http, nodes[:2])
    seqs = [change["seq"] for change in journal["changes"]]
    assert seqs == list(range(1, len(seqs) + 1))  # none skipped, none doubled
    created = [c["operation"]["Create"]["metadata"]["path"] for c in journal["changes"]
               if "Create" in c["operation"] and not c["operation"]["Create"]["metadata"]["is_directory"]]
    assert sorted(set(created)) == sorted(files)


def _refused_start(tmp_path, block):
    config = tmp_path / "refused.json"
    config.write_text(json.dumps(server_document(tmp_path / "root", listen=f"127.0.0.1:{free_port()}",
                                                 cluster=block)))
    (tmp_path / "root").mkdir(exist_ok=True)
    return subprocess.run([TWISTD, "-n", "--pidfile=", "quantum-sync", "--config", str(config)],
                          capture_output=True, text=True, timeout=60, cwd=str(tmp_path))


def test_unreachable_database_or_redis_at_start_is_one_line_and_exit_1(tmp_path, cluster_block):
    dead = free_port()
    result = _refused_start(tmp_path, cluster_block("x", database=f"postgresql://root@127.0.0.1:{dead}/test"))
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "cluster.database: cannot use the database" in result.stderr
    result = _refused_start(tmp_path, cluster_block("x", redis=f"redis://127.0.0.1:{dead}"))
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1, result.stderr
    assert f"cluster.redis: cannot reach Redis at 127.0.0.1:{dead}" in result.stderr


def test_a_newer_schema_is_refused_at_start(tmp_path, cluster_block, pg_schema):
    import psycopg

    from quantum_sync.server.cluster.pgindex import SCHEMA_VERSION, create_schema

    with psycopg.connect(pg_schema) as connection:
        with connection.cursor() as cursor:
            create_schema(cursor)
            cursor.execute("UPDATE schema_version SET version = %s", (SCHEMA_VERSION + 1,))
    result = _refused_start(tmp_path, cluster_block("x"))
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert f"cluster.database: the database's schema is version {SCHEMA_VERSION + 1}" in result.stderr
