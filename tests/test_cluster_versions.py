"""Versions on a cluster: two nodes in one process on one shared root and versions
area, with a real PostgreSQL and Redis. Only the leader runs the pruning passes; the
node that takes over runs them; the count and space limits hold as either node keeps."""

import hashlib
import os

import pytest_twisted
from twisted.internet import task

from quantum_sync.server.cluster.pgindex import PgIndex
from quantum_sync.server.versions import AREA_NAME, ORPHAN_AGE, PRUNE_INTERVAL
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


@pytest_twisted.ensureDeferred
async def test_limits_hold_for_a_group_of_many_paths_on_postgresql(reactor, tmp_path, pg_schema):
    index = PgIndex(pg_schema, retention=100, reactor=reactor)
    await index.open()
    try:
        await limits_hold_for_a_group_of_many_paths(index, area_of(tmp_path)[1])
    finally:
        index.stopService()
