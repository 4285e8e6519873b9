"""quantum_sync.threads: a service's own sized thread pool."""

import threading

import pytest
import pytest_twisted
from twisted.internet import defer

from clients import converged, write
from support import start_server
from quantum_sync.client.service import thread_pool_size
from quantum_sync.threads import ThreadPoolService

WAIT = 10  # seconds any thread hand-over may take at most


@pytest_twisted.ensureDeferred
async def test_work_runs_in_the_pools_own_threads_even_when_handed_over_before_the_start(reactor):
    threads = ThreadPoolService(reactor, 2, "test-own")
    early = threads.defer(lambda: threading.current_thread().name)
    threads.startService()
    try:
        name = await early.addTimeout(WAIT, reactor)
        assert "test-own" in name  # the pool's, not the reactor's
        assert await threads.defer(lambda a, b=0: a + b, 1, b=2) == 3
        with pytest.raises(ZeroDivisionError):
            await threads.defer(lambda: 1 / 0)
    finally:
        threads.stopService()
    assert threads.pool.threads == []  # a fresh pool waits for the next start


@pytest_twisted.ensureDeferred
async def test_no_more_than_size_run_at_once(reactor):
    threads = ThreadPoolService(reactor, 2, "test-size")
    lock = threading.Lock()
    running, most = [0], [0]
    release = threading.Event()

    def job():
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
            if running[0] == 2:  # both threads busy at once: let everyone go
                release.set()
        release.wait(WAIT)
        with lock:
            running[0] -= 1

    threads.startService()
    try:
        jobs = [threads.defer(job) for _ in range(5)]
        await defer.gatherResults(jobs).addTimeout(WAIT, reactor)
    finally:
        release.set()
        threads.stopService()
    assert most[0] == 2 and threads.pool.max == 2


@pytest_twisted.ensureDeferred
async def test_a_stopped_pool_starts_again(reactor):
    threads = ThreadPoolService(reactor, 1, "test-again")
    threads.startService()
    threads.stopService()
    threads.stopService()  # twice: nothing more
    threads.startService()
    try:
        assert await threads.defer(lambda: "again").addTimeout(WAIT, reactor) == "again"
    finally:
        threads.stopService()


def test_a_pool_needs_a_thread(reactor):
    with pytest.raises(ValueError):
        ThreadPoolService(reactor, 0, "none")


@pytest_twisted.ensureDeferred
async def test_a_folders_blocking_work_runs_in_its_own_pool_stopped_with_it(reactor, server, clients):
    a, b, folder_a, folder_b = await clients.pair(server, concurrency=9)
    assert a.threads.running and a.threads.size == thread_pool_size(9) == 13
    assert list(a)[0] is a.threads  # the first child: started before the rest
    assert a.engine.threads is a.server.threads is a.engine.actions.deltas.threads is a.threads
    write(folder_a, "x.txt", b"hashed in the folder's pool")
    await converged(reactor, folder_a, folder_b)
    assert any("quantum-sync-folder" in t.name for t in a.threads.pool.threads)
    assert a.link.service in list(a) and a.link.service.running  # the WebSocket's, a child too
    used = a.threads.pool
    await clients.stop(a)
    assert not a.threads.running and used.joined and not any(t.is_alive() for t in used.threads)
    assert not a.link.service.running


def test_a_folder_pool_is_never_smaller_than_a_reactors():
    assert thread_pool_size(1) == 10 and thread_pool_size(8) == 12


@pytest_twisted.ensureDeferred
async def test_a_servers_pool_and_index_are_children_stopped_after_everything_else(reactor, tmp_path):
    running = await start_server(reactor, tmp_path)
    service = running.service
    assert list(service)[:2] == [service.threads, service.index]  # started first
    assert service.threads.running and service.index.running
    order = []
    for child in list(service)[2:]:  # every other part notes when its stop is over
        stopping = child.stopService

        def noted(stopping=stopping, child=child):
            done = defer.maybeDeferred(stopping)
            done.addCallback(lambda _: order.append(child))
            return done

        child.stopService = noted
    index_stop = service.index.stopService
    service.index.stopService = lambda: (order.append("index"), index_stop())[1]
    used = service.threads.pool
    await running.stop()
    assert order[-1] == "index" and len(order) == len(list(service)) - 1
    assert not service.threads.running and used.joined
