"""Changes the root watcher cannot see are journalled all the same: a full rescan when
inotify lost events (watchdog's EventsLostEvent: its queue overflowed), logged and counted
in /ws/metrics and /metrics, and a periodic one every ``rescan_interval`` seconds.

A file in the root that is a hard link of a file outside it is the test's unseen change:
writing through the outside name makes no inotify event in the root (inotify reports a
write to the directory of the name used), as a write over NFS or by another host."""

import hashlib
import os

import pytest_twisted
from watchdog.events import EventsLostEvent

from tests.logcapture import LogCapture
from tests.support import start_server, wait_for

WITHIN = 10  # seconds a rescan may take on a loaded machine


def _linked(tmp_path) -> str:
    """``outside/data`` linked into the root as ``linked.txt``; the outside name."""
    (tmp_path / "root").mkdir()
    (tmp_path / "outside").mkdir()
    outside = str(tmp_path / "outside" / "data")
    with open(outside, "wb") as f:
        f.write(b"first")
    os.link(outside, str(tmp_path / "root" / "linked.txt"))
    return outside


def _write_unseen(outside: str, data: bytes) -> None:
    with open(outside, "r+b") as f:
        f.write(data)


async def _stored_hash(http, running):
    _, meta = await http.json("GET", f"{running.url}/api/metadata", params={"path": "linked.txt"})
    return meta["hash"]


async def _journalled(reactor, http, running, data: bytes):
    wanted = hashlib.sha256(data).hexdigest()

    async def check():
        _, answer = await http.json("GET", f"{running.url}/api/changes")
        return wanted in [c["operation"].get("Update", {}).get("metadata", {}).get("hash") for c in answer["changes"]]

    await wait_for(reactor, check, timeout=WITHIN, step=0.05, what="the unseen change journalled")


@pytest_twisted.async_yield_fixture
async def linked(reactor, tmp_path):
    """``await linked(rescan_interval)``: a server on a root holding ``linked.txt`` (see
    :func:`_linked`) and the outside name of that file; the server stops afterwards."""
    started = []

    async def start(rescan_interval):
        outside = _linked(tmp_path)
        started.append(await start_server(reactor, tmp_path, rescan_interval=rescan_interval))
        return started[-1], outside

    yield start
    for running in started:
        await running.stop()


@pytest_twisted.ensureDeferred
async def test_lost_events_start_a_full_rescan_logged_and_counted(reactor, linked, http):
    running, outside = await linked(rescan_interval=0)
    assert await _stored_hash(http, running) == hashlib.sha256(b"first").hexdigest()
    _write_unseen(outside, b"SECOND")
    observer = running.service.watcher.observer
    with LogCapture() as log:
        for emitter in list(observer.emitters):  # as watchdog does on IN_Q_OVERFLOW
            emitter.queue_event(EventsLostEvent(running.root, is_directory=True))
        await _journalled(reactor, http, running, b"SECOND")
    assert "lost events (inotify queue overflow)" in log.text()
    _, figures = await http.json("GET", f"{running.url}/ws/metrics")
    assert figures["events_lost"] == 1 and figures["rescans"] >= 1
    response = await http.get(f"{running.url}/metrics")
    text = (await response.content()).decode()
    assert "quantum_sync_watch_events_lost_total 1.0" in text


@pytest_twisted.ensureDeferred
async def test_the_periodic_rescan_finds_what_no_event_told(reactor, linked, http):
    running, outside = await linked(rescan_interval=0.2)
    _write_unseen(outside, b"THIRD")
    await _journalled(reactor, http, running, b"THIRD")
