"""Test support for the cluster: a PostgreSQL schema and a Redis of each test's own.

``QS_TEST_DATABASE`` (default ``postgresql://root@127.0.0.1:5432/test``) and
``QS_TEST_REDIS`` (default ``redis://127.0.0.1:6379``) name the services. Each test gets
a fresh schema (dropped afterwards; advisory-lock keys and the Redis channel are made
from the schema and the journal, so tests never meet). A service that cannot be reached
skips the test with the reason, unless ``CI`` is set: then it fails.
"""

import os
import shutil
import socket
import subprocess
import time
import uuid
from urllib.parse import quote

import pytest
import pytest_twisted

DATABASE = os.environ.get("QS_TEST_DATABASE", "postgresql://root@127.0.0.1:5432/test")
REDIS = os.environ.get("QS_TEST_REDIS", "redis://127.0.0.1:6379")


def _unreachable(reason: str):
    from support import skip_or_fail_under_ci

    skip_or_fail_under_ci("cluster tests", reason)


def with_schema(url: str, schema: str) -> str:
    """``url`` with ``search_path`` set to ``schema``."""
    joiner = "&" if "?" in url else "?"
    return f"{url}{joiner}options={quote(f'-csearch_path={schema}')}"


def database_available():
    import psycopg

    try:
        psycopg.connect(DATABASE, connect_timeout=3).close()
    except psycopg.Error as error:
        _unreachable(f"PostgreSQL at {DATABASE}: {' '.join(str(error).split())[:200]}")


def redis_available():
    from quantum_sync.server.cluster.redisbus import RedisAddress

    address = RedisAddress.parse(REDIS)
    try:
        socket.create_connection((address.host, address.port), timeout=3).close()
    except OSError as error:
        _unreachable(f"Redis at {REDIS}: {error}")


@pytest.fixture
def pg_schema():
    """A conninfo URL whose search_path is a new schema, dropped afterwards."""
    import psycopg

    database_available()
    schema = "qs_test_" + uuid.uuid4().hex[:12]
    with psycopg.connect(DATABASE, autocommit=True) as connection:
        connection.execute(f"CREATE SCHEMA {schema}")
    try:
        yield with_schema(DATABASE, schema)
    finally:
        with psycopg.connect(DATABASE, autocommit=True) as connection:
            connection.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture
def cluster_block(pg_schema):
    """A factory of ``cluster`` handler blocks on the test's schema and Redis."""
    redis_available()

    def block(node_id: str, redis: str = REDIS, database: str = pg_schema) -> dict:
        return {"database": database, "redis": redis, "node_id": node_id}

    return block


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PrivateRedis:
    """A redis-server of the test's own on a free loopback port (stopped and started
    again by the test, never the machine's shared one)."""

    def __init__(self, directory):
        self.directory = str(directory)
        self.port = free_port()
        self.process = None
        self.url = f"redis://127.0.0.1:{self.port}"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            _unreachable("redis-server is not installed")
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.directory],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.02)
        raise AssertionError("the private redis-server did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None


@pytest.fixture
def private_redis(tmp_path):
    redis = PrivateRedis(tmp_path)
    redis.start()
    yield redis
    redis.stop()


async def start_node(reactor, tmp_path, root, block, **handler):
    """A cluster node (a ServerService in this process) on ``root``: ``(service, url)``."""
    from tests.support import server_document, start_service

    service, (port,) = await start_service(
        reactor, server_document(root=str(root), cluster=block, **handler), str(tmp_path))
    return service, f"http://127.0.0.1:{port}"


class Nodes:
    """Cluster nodes in this process on one shared root (``node-1``, ``node-2``, ...)."""

    def __init__(self, reactor, tmp_path, cluster_block):
        self.reactor, self.tmp_path, self.block = reactor, tmp_path, cluster_block
        self.root = tmp_path / "root"
        self.services, self.urls = [], []

    async def start(self, count, **handler):
        for n in range(count):
            service, url = await start_node(self.reactor, self.tmp_path, self.root,
                                            self.block(f"node-{len(self.services) + 1}"), **handler)
            self.services.append(service)
            self.urls.append(url)
        return self

    async def stop(self):
        for service in self.services:
            if service.running:
                await service.stopService()


@pytest_twisted.async_yield_fixture
async def nodes(reactor, tmp_path, cluster_block):
    made = Nodes(reactor, tmp_path, cluster_block)
    yield made
    await made.stop()


async def wait_for_async(reactor, read, good, timeout=15):
    """``await read()`` until ``good(value)``; fails after ``timeout`` seconds."""
    from twisted.internet.task import deferLater

    deadline = reactor.seconds() + timeout
    while True:
        value = await read()
        if good(value):
            return value
        assert reactor.seconds() < deadline, value
        await deferLater(reactor, 0.05, lambda: None)
