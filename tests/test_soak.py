"""The soak harness (bench/soak.py) for about a minute, each fault once: a real server and
three real client daemons, a random workload with the folders contending for the same
paths, a server SIGKILL and restart, a stalled proxy (moves and deletes made behind it), a
client restarted with and without its state folder, the server's state folder lost;
nothing the workload wrote may be lost, and every folder must end with the server's tree.

The rule that decides "lost" is tested on its own first, without daemons."""

import os
import random
import socket
import sys
import threading

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
import soak  # noqa: E402

#: Every fault, each once.
SHORT_FAULTS = soak.FAULTS


def write(number, path="x.bin", folder="a"):
    return soak.Write(number, folder, path, soak.sha256_of(b"%d" % number), 1, 0.0)


def test_a_write_is_lost_only_when_absent_everywhere_and_never_superseded():
    ledger = soak.Ledger()
    kept, moved, overwritten, gone = write(1), write(2), write(3), write(4)
    for w in (kept, moved, overwritten, gone):
        ledger.wrote(w)
    ledger.removed(overwritten.sha256)  # a user read it from its file, then overwrote it
    trees = [{"x.bin": kept.sha256, "d": soak.DIR}, {"elsewhere.sync-conflict-1-a.bin": moved.sha256}]
    assert ledger.lost(trees) == [gone]


def test_diverging_names_each_path_not_the_same_everywhere():
    trees = {"server": {"a": "1", "d": soak.DIR, "b": "2"}, "a": {"a": "1", "d": soak.DIR, "b": "3"},
             "b": {"a": "1", "d": soak.DIR}}
    assert soak.diverging(trees) == {"b": {"server": "2", "a": "3", "b": None}}


def test_fault_plan_repeats_some_and_injects_one_off_faults_once():
    plan = soak.plan_faults(30, soak.FAULTS, 180)
    assert len(plan) == 10
    assert plan.count("client-state-loss") == plan.count("server-state-loss") == 1
    assert plan.count("server-kill") >= 3 and plan.count("proxy-stall") >= 2
    assert soak.plan_faults(1, SHORT_FAULTS, 15) == ["server-kill", "proxy-stall", "client-restart",
                                                     "client-state-loss", "server-state-loss"]
    assert soak.plan_faults(0.1, ("proxy-stall", "client-state-loss"), 20) == ["proxy-stall", "client-state-loss"]


@pytest.mark.parametrize("contention", [True, False])
def test_workload_never_touches_the_state_folder(tmp_path, contention):
    folders = {name: str(tmp_path / name) for name in "abc"}
    state = {}
    for name, top in folders.items():
        os.makedirs(os.path.join(top, soak.STATE, "tmp"))
        with open(os.path.join(top, soak.STATE, "state.db"), "wb") as f:
            f.write(name.encode())
        state[name] = soak.TreeReader().read(os.path.join(top, soak.STATE))
    ledger = soak.Ledger()
    workload = soak.Workload(random.Random(5), folders, str(tmp_path / "trash"), ledger, 60, contention)
    for _ in range(600):
        workload.step()
    assert workload.counts.raced == 0  # nothing else changes these folders
    assert sum(workload.counts.applied.values()) > 500 and len(workload.counts.applied) == len(workload.MIX)
    for name, top in folders.items():
        assert soak.TreeReader().read(os.path.join(top, soak.STATE)) == state[name]
        assert soak.STATE not in {p.split(os.sep)[0] for p in soak.TreeReader().read(top)}
    # every content the workload removed was one it wrote, and every one it wrote is in a
    # folder unless it was removed
    assert ledger.superseded <= set(ledger.writes)
    assert ledger.lost([soak.TreeReader().read(top) for top in folders.values()]) == []


def test_proxy_forwards_both_ways_and_after_a_stall():
    with socket.create_server(("127.0.0.1", 0)) as server:
        proxy = soak.StallingProxy(server.getsockname()[1])
        try:
            client = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
            upstream, _ = server.accept()
            upstream.settimeout(10)
            proxy.stall()
            sent = threading.Thread(target=client.sendall, args=(b"x" * 3_000_000,))
            sent.start()
            proxy.resume()
            received = 0
            while received < 3_000_000:
                chunk = upstream.recv(1 << 20)
                assert chunk
                received += len(chunk)
            upstream.sendall(b"pong")
            assert client.recv(4) == b"pong"
            sent.join(timeout=10)
            client.close()
            assert upstream.recv(1) == b""  # the close travels too
            upstream.close()
        finally:
            proxy.close()


@pytest.mark.timeout(480)
def test_short_soak_loses_nothing_and_converges(tmp_path):
    options = soak.SoakOptions(minutes=1, seed=13, base=str(tmp_path / "soak"), rate=3.0, faults=SHORT_FAULTS,
                               round_seconds=15, converge_timeout=90, every_round=True)
    report = soak.run(options, log=lambda line: print(line, file=sys.stderr))
    text = soak.table(report)
    print(text)
    assert report.not_reached == [], text
    assert report.server_restarts >= 1 and report.stalls >= 1 and report.client_restarts >= 2, text
    assert sum(report.counts.applied.values()) >= 60 and report.writes >= 30, text
    assert report.lost == [], text
    assert all(f.converged_after is not None for f in report.faults), text
    assert report.final_converged_after is not None and report.diverging == {}, text
    assert report.unexpected_exits == {}, text
    assert report.ok
