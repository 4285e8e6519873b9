"""Versions on a cluster: two nodes in one process on one shared root and versions
area, with a real PostgreSQL and Redis. Only the leader runs the pruning passes; the
node that takes over runs them; the count and space limits hold as either node keeps;
a restore on one node holds its version from every node's prunings."""

import contextlib
import hashlib
import os
import threading

import pytest_twisted
from twisted.internet import task
from twisted.internet.defer import Deferred

from quantum_sync.server.cluster.pgindex import PgIndex
from quantum_sync.server.versions import AREA_NAME, DAY, ORPHAN_AGE, PRUNE_INTERVAL
from test_versions import area_of, limits_hold_for_a_group_of_many_paths
from test_versions_api import wall_clock
from tests.support import HttpClient, server_document, start_service, wait_for


@pytest_twisted.ensureDeferred
async def test_only_the_leader_prunes_and_the_next_leader_takes_over(reactor, tmp_path, cluster_block):
    root = tmp_path / "root"
    clocks, services = [wall_clock(), wall_clock()], []
    try:
        for n, clock in enumerate(clocks, 1):
            service, _ = await start_service(
                reactor, server_document(root=str(root), cluster=cluster_block(f"node-{n}")),
                str(tmp_path), {"clock": clock})
            services.append(service)
        first, second = services
        await wait_for(reactor, lambda: first.node.leadership.leading)
        assert first.versions.pruning and not second.versions.pruning
        passes = []
        prune = second.versions.prune

        def counted():
            passes.append(clocks[1].seconds())
            return prune()

        second.versions.prune = counted
        stray = os.path.join(str(root), ".quantum-sync", AREA_NAME, "ab" * 12)
        with open(stray, "wb") as f:  # no row names it
            f.write(b"orphan")
        clocks[1].advance(ORPHAN_AGE + PRUNE_INTERVAL)  # a pass were it pruning (a LoopingCall)
        assert passes == [] and os.path.exists(stray)
        await first.stopService()
        await wait_for(reactor, lambda: second.node.leadership.leading, timeout=15)
        assert second.versions.pruning and len(passes) == 1  # a pass at once, on its clock
        await wait_for(reactor, lambda: not os.path.exists(stray), what="the new leader's sweep")
    finally:
        for service in services:
            if service.running:
                await service.stopService()


@pytest_twisted.ensureDeferred
async def test_count_and_space_limits_hold_as_versions_are_kept_on_either_node(reactor, tmp_path, cluster_block):
    root = tmp_path / "root"
    services, urls, clocks = [], [], [task.Clock(), task.Clock()]
    http = HttpClient(reactor)
    try:
        for n, clock in zip((1, 2), clocks):
            service, (port,) = await start_service(
                reactor, server_document(root=str(root), cluster=cluster_block(f"node-{n}"),
                                         versions={"keep_per_file": 2, "max_bytes": 2500}),
                str(tmp_path), {"clock": clock})
            services.append(service)
            urls.append(f"http://127.0.0.1:{port}")
        for n in range(5):
            for path in ("a.bin", "b.bin"):
                await http.json("POST", f"{urls[n % 2]}/api/upload", params={"path": path},
                                data=bytes([n]) * 1000)
                for clock in clocks:  # distinct kept-at times
                    clock.advance(1)
        kept = {}
        for path in ("a.bin", "b.bin"):
            _, answer = await http.json("GET", f"{urls[1]}/api/versions", params={"path": path})
            kept[path] = [v["hash"] for v in answer["versions"]]
        newest = hashlib.sha256(bytes([3]) * 1000).hexdigest()
        assert kept == {"a.bin": [newest], "b.bin": [newest]}  # 2 per file, then 2,500 bytes
        area = os.path.join(str(root), ".quantum-sync", AREA_NAME)
        await wait_for(reactor, lambda: len(os.listdir(area)) == 2, what="the files of the rest gone")
    finally:
        await http.close()
        for service in services:
            if service.running:
                await service.stopService()


async def _nodes_with_clocks(reactor, tmp_path, cluster_block, clocks, services, **handler) -> list:
    """A node per Clock of ``clocks`` on one root (added to ``services``): their URLs."""
    urls = []
    for n, clock in enumerate(clocks, 1):
        service, (port,) = await start_service(
            reactor, server_document(root=str(tmp_path / "root"), cluster=cluster_block(f"node-{n}"), **handler),
            str(tmp_path), {"clock": clock})
        services.append(service)
        urls.append(f"http://127.0.0.1:{port}")
    return urls


@contextlib.asynccontextmanager
async def _restore_held(reactor, http, url, service, version_id):
    """A restore of version ``version_id`` of ``a.txt`` (content ``one``) through ``url``
    (``service``'s), held once it holds its version until the block ends; then it must
    succeed."""
    reading, go = threading.Event(), threading.Event()
    area = service.versions.area
    copy_out = area.copy_out

    def held(version):
        reading.set()
        assert go.wait(30), "the test never let the restore go"
        return copy_out(version)

    area.copy_out = held
    restoring = Deferred.fromCoroutine(http.json(
        "POST", url + "/api/restore", expect=None, json={"path": "a.txt", "id": version_id}))
    try:
        await wait_for(reactor, reading.is_set, what="the restore reading")
        yield
    finally:
        go.set()
    code, restored = await restoring
    assert (code, restored["hash"]) == (200, hashlib.sha256(b"one").hexdigest())


async def _stop(http, services) -> None:
    await http.close()
    for service in services:
        if service.running:
            await service.stopService()


@pytest_twisted.ensureDeferred
async def test_a_restore_on_one_node_holds_its_version_from_the_leader_s_pass(reactor, tmp_path, cluster_block):
    clocks, services = [wall_clock(), wall_clock()], []
    http = HttpClient(reactor)
    try:
        first, second = await _nodes_with_clocks(reactor, tmp_path, cluster_block, clocks, services,
                                                 versions={"keep_days": 1})
        leader, other = services
        await wait_for(reactor, lambda: leader.node.leadership.leading)
        for data in (b"one", b"two"):
            await http.json("PUT", second + "/api/upload", params={"path": "a.txt"}, data=data)
        _, answer = await http.json("GET", second + "/api/versions", params={"path": "a.txt"})
        (version,) = answer["versions"]
        kept = os.path.join(str(tmp_path / "root"), ".quantum-sync", AREA_NAME, version["id"])
        passes = []
        prune = leader.versions.prune

        async def counted():
            passes.append(await prune())

        leader.versions.prune = counted
        async with _restore_held(reactor, http, second, other, version["id"]):
            clocks[0].advance(2 * DAY)  # the leader's pass (a LoopingCall), the version past keep_days
            await wait_for(reactor, lambda: passes, what="the leader's pass")
            assert passes == [0] and os.path.exists(kept)  # held by the restore on node 2
        assert (tmp_path / "root" / "a.txt").read_bytes() == b"one"

        clocks[0].advance(PRUNE_INTERVAL)  # the next pass takes it (and the one the restore kept)
        await wait_for(reactor, lambda: len(passes) == 2, what="the leader's next pass")
        assert passes[1] == 2 and not os.path.exists(kept)
    finally:
        await _stop(http, services)


@pytest_twisted.ensureDeferred
async def test_a_restore_on_one_node_holds_its_version_from_another_node_s_count_limit(
        reactor, tmp_path, cluster_block):
    """The limits a recording applies: an upload on node 1 pushes the version node 2
    restores past ``keep_per_file``; it stays until the next recording."""
    clocks, services = [task.Clock(), task.Clock()], []
    http = HttpClient(reactor)

    async def upload(data):
        await http.json("PUT", first + "/api/upload", params={"path": "a.txt"}, data=data)
        clocks[0].advance(1)  # distinct kept-at times

    async def kept():
        _, answer = await http.json("GET", first + "/api/versions", params={"path": "a.txt"})
        return [v["id"] for v in answer["versions"]]

    try:
        first, second = await _nodes_with_clocks(reactor, tmp_path, cluster_block, clocks, services,
                                                 versions={"keep_per_file": 1})
        for data in (b"one", b"two"):
            await upload(data)
        (version,) = await kept()
        async with _restore_held(reactor, http, second, services[1], version):
            await upload(b"three")
            assert version in await kept()  # past the limit, held
        await upload(b"four")
        assert len(await kept()) == 1 and version not in await kept()
    finally:
        await _stop(http, services)


@pytest_twisted.ensureDeferred
async def test_limits_hold_for_a_group_of_many_paths_on_postgresql(reactor, tmp_path, pg_schema):
    index = PgIndex(pg_schema, retention=100, reactor=reactor)
    await index.open()
    try:
        await limits_hold_for_a_group_of_many_paths(index, area_of(tmp_path)[1])
    finally:
        index.stopService()
