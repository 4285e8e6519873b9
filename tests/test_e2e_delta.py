"""End to end: large files changed in place travel as deltas, both ways, with real
clients on real folders and a real server on 127.0.0.1; the bytes on the wire are the
server's own count (its metrics)."""

import hashlib
import os
import random

import pytest
import pytest_twisted

from quantum_sync import delta
from quantum_sync.delta import wanted
from quantum_sync.blocklists import BlockLists
from quantum_sync.blocks import Chunker, encode_blocks
from quantum_sync.client import localfs
from quantum_sync.client.delta import Deltas
from quantum_sync.client.transfer import PreconditionFailed
from clients import converged, read, write
from support import wait_for

SIZE = delta.DELTA_MIN + 2 * 1024 * 1024
MiB = 1024 * 1024


def content(seed: int, size: int = SIZE) -> bytes:
    return random.Random(seed).randbytes(size)


async def pair(group, running, delta="always"):
    """Clients a and b (deltas always: the server is on the loopback) and their folders."""
    a = await group.start(running, "a", delta=delta)
    b = await group.start(running, "b", delta=delta)
    return a, b, a.config.folder, b.config.folder


def deltas_of(client) -> Deltas:
    return client.engine.actions.deltas


@pytest_twisted.ensureDeferred
async def test_edits_of_a_large_file_travel_as_deltas_both_ways(reactor, servers, clients):
    a, b, A, B = await pair(clients, servers[0])
    base = content(1)
    write(A, "big.bin", base)
    await converged(reactor, A, B, servers[0].root)
    # a asked the server to keep the list while its upload streamed in (no one asked yet)
    assert os.listdir(os.path.join(servers[0].root, ".quantum-sync", "blocks")) == [hashlib.sha256(base).hexdigest()]
    metrics = servers[0].service.metrics
    edits = [
        ("middle", lambda old: old[:3 * MiB] + os.urandom(100_000) + old[3 * MiB + 100_000:]),
        ("insert at the start", lambda old: b"!" + old),
        ("append", lambda old: old + os.urandom(MiB)),
        ("truncate", lambda old: old[:5 * MiB]),
    ]
    for name, edit in edits:
        new = edit(read(A, "big.bin"))
        before = (metrics.bytes_transferred, deltas_of(a).sent, deltas_of(b).received, deltas_of(b).lists_offered)
        write(A, "big.bin", new)
        await wait_for(reactor, lambda: read(B, "big.bin") == new, what=f"{name} at b")
        await wait_for(reactor, lambda: read(servers[0].root, "big.bin") == new, what=f"{name} on the server")
        moved = metrics.bytes_transferred - before[0]
        # whole, it would be the file twice (up and down): 12 MiB and more
        assert moved < 3 * MiB, (name, moved)
        assert deltas_of(a).sent > before[1], name
        assert deltas_of(b).received > before[2], name
        # the new version's list came with its broadcast: b did not ask for it
        assert deltas_of(b).lists_offered == before[3] + 1, name
    # a's file was read once for each edit: its block list was made with its hash
    assert deltas_of(a).lists_reread == 0
    await converged(reactor, A, B, servers[0].root)


@pytest_twisted.ensureDeferred
async def test_a_base_changed_during_a_delta_upload_is_412_then_both_are_kept(reactor, servers, clients, http,
                                                                               monkeypatch):
    a, b, A, B = await pair(clients, servers[0])
    base = content(2)
    write(A, "big.bin", base)
    await converged(reactor, A, B, servers[0].root)
    theirs = base[:MiB] + b"b's edit" + base[MiB + 8:]
    ours = base + b"a's edit"
    refused = []
    real_list, real_upload = Deltas._server_list, Deltas.upload

    async def list_then_b_edits(self, path, sha256):
        blocks = await real_list(self, path, sha256)
        if self is deltas_of(a) and not refused:
            # b's edit reaches the server between a's decision and a's delta upload
            await http.json("PUT", f"{servers[0].url}/api/upload", params={"path": "big.bin"}, data=theirs,
                            headers={"X-Content-SHA256": hashlib.sha256(theirs).hexdigest(),
                                     "If-Match": f'"{sha256}"', "X-Client-Id": "someone-else"})
        return blocks

    async def watched_upload(self, *args, **kwargs):
        try:
            return await real_upload(self, *args, **kwargs)
        except PreconditionFailed:
            refused.append(args[0])
            raise

    monkeypatch.setattr(Deltas, "_server_list", list_then_b_edits)
    monkeypatch.setattr(Deltas, "upload", watched_upload)
    await clients.stop(b)  # b's own copy stays as it is; its edit goes straight to the server
    write(A, "big.bin", ours)
    final = await converged(reactor, A, servers[0].root, timeout=30)
    assert refused == ["big.bin"]
    copies = [p for p in final if ".sync-conflict-" in p]
    assert len(copies) == 1
    assert {read(A, "big.bin"), read(A, copies[0])} == {ours, theirs}


@pytest_twisted.ensureDeferred
async def test_a_delta_that_fails_falls_back_to_the_whole_file(reactor, servers, clients):
    a, b, A, B = await pair(clients, servers[0])
    base = content(3)
    write(A, "big.bin", base)
    await converged(reactor, A, B, servers[0].root)
    old = hashlib.sha256(base).hexdigest()
    new = base[:2 * MiB] + b"edit" + base[2 * MiB + 4:]
    # wrong lists kept on both sides, the new blocks three bytes off: a's plan reuses
    # ranges the server's blocks do not cut (409), b would assemble something else than
    # the new version (its hash is checked)
    for client in (a, b):
        lists = deltas_of(client).lists
        lists.keep(old, encode_blocks(lists.chunker.blocks(b"xyz" + new)))
    write(A, "big.bin", new)
    await wait_for(reactor, lambda: read(B, "big.bin") == new, what="the edit at b")
    assert read(servers[0].root, "big.bin") == new
    assert deltas_of(a).sent == 0 and deltas_of(b).received == 0  # both went whole
    assert deltas_of(a).failed == 1 and deltas_of(b).failed == 1
    # the wrong lists were dropped: the next edit goes as a delta both ways
    newer = new + b"more"
    write(A, "big.bin", newer)
    await wait_for(reactor, lambda: read(B, "big.bin") == newer, what="the next edit at b")
    assert deltas_of(a).sent > 0 and deltas_of(b).received > 0


@pytest_twisted.ensureDeferred
async def test_without_deltas_a_changed_file_travels_whole(reactor, servers, clients):
    a, b, A, B = await pair(clients, servers[0], delta="never")
    base = content(5)
    write(A, "big.bin", base)
    await converged(reactor, A, B, servers[0].root)
    before = servers[0].service.metrics.bytes_transferred
    new = b"!" + base
    write(A, "big.bin", new)
    await wait_for(reactor, lambda: read(B, "big.bin") == new, what="the edit at b")
    assert servers[0].service.metrics.bytes_transferred - before >= 2 * len(new)
    assert deltas_of(a).sent == 0 and deltas_of(b).received == 0


def test_the_delta_option_and_its_default_off_on_the_loopback(tmp_path, capsys):
    from quantum_sync.client.tap import Options

    def mode(*flags):
        options = Options()
        options.parseOptions(["--server", "http://127.0.0.1:8080", "--local-path", str(tmp_path), *flags])
        return options.config.delta

    assert (mode(), mode("--delta", "always"), mode("--delta", "never")) == ("auto", "always", "never")
    with pytest.raises(SystemExit):
        Options().parseOptions(["--server", "http://x", "--local-path", str(tmp_path), "--delta", "sometimes"])
    assert "--delta sometimes" in capsys.readouterr().err
    assert [wanted("auto", url) for url in ("http://127.0.0.1:1", "http://[::1]:1", "http://localhost:1",
                                             "https://sync.example", "http://192.0.2.1:8080")] == \
        [False, False, False, True, True]
    assert wanted("always", "http://127.0.0.1:1") and not wanted("never", "https://sync.example")


@pytest_twisted.ensureDeferred
async def test_a_start_drops_the_kept_lists_of_versions_no_longer_synced(reactor, servers, clients):
    a, b, A, B = await pair(clients, servers[0])
    for name, seed in (("one.bin", 6), ("two.bin", 7)):
        write(A, name, content(seed))
    await converged(reactor, A, B, servers[0].root)
    first, second = content(6) + b"edit", content(7) + b"edit"  # deltas: their lists are kept
    write(A, "one.bin", first)
    write(A, "two.bin", second)
    await wait_for(reactor, lambda: read(B, "one.bin") == first and read(B, "two.bin") == second, what="edits at b")
    lists = deltas_of(a).lists.directory
    assert sorted(os.listdir(lists)) == sorted(hashlib.sha256(d).hexdigest() for d in (first, second))
    os.unlink(os.path.join(A, "two.bin"))
    await wait_for(reactor, lambda: read(B, "two.bin") is None, what="the delete at b")
    await clients.stop(a)
    a = await clients.start(servers[0], "a", delta="always")
    assert os.listdir(lists) == [hashlib.sha256(first).hexdigest()]


def test_the_client_config_file_takes_delta_and_compress(tmp_path):
    from quantum_sync.client import clientconfig
    from quantum_sync.config import ConfigError

    folder = {"server": "http://127.0.0.1:8080", "local_path": str(tmp_path)}
    (only,) = clientconfig.parse({"folders": [folder]})
    assert (only.client.delta, only.client.compress) == ("auto", "auto")
    (only,) = clientconfig.parse({"folders": [dict(folder, delta="always", compress="never")]})
    assert (only.client.delta, only.client.compress) == ("always", "never")
    with pytest.raises(ConfigError, match=r"folders\[0\]\.delta"):
        clientconfig.parse({"folders": [dict(folder, delta="sometimes")]})


@pytest_twisted.ensureDeferred
async def test_a_version_coming_from_the_relay_is_not_fetched_again_as_a_delta(reactor, servers, clients):
    a = await clients.start(servers[0], "a", delta="never")  # uploads whole: relayed
    b = await clients.start(servers[0], "b", delta="always")
    A, B = a.config.folder, b.config.folder
    base = content(8, 9 * MiB)
    write(A, "big.bin", base)
    await converged(reactor, A, B, servers[0].root)
    new = base[:MiB] + b"edit" + base[MiB + 4:]
    write(A, "big.bin", new)
    await wait_for(reactor, lambda: read(B, "big.bin") == new, what="the edit at b")
    assert deltas_of(b).received == 0 and deltas_of(b).failed == 0


@pytest_twisted.ensureDeferred
async def test_scattered_edits_come_in_one_multi_range_request(reactor, servers, clients):
    a, b, A, B = await pair(clients, servers[0])
    base = content(9)
    write(A, "big.bin", base)
    await converged(reactor, A, B, servers[0].root)
    new = bytearray(base)
    for i in range(5):  # five edits, far apart: five runs of missing bytes
        at = 300_000 + i * 1_200_000
        new[at:at + 10] = b"0123456789"
    new = bytes(new)
    before = deltas_of(b).range_requests
    write(A, "big.bin", new)
    await wait_for(reactor, lambda: read(B, "big.bin") == new, what="the edits at b")
    assert deltas_of(b).range_requests - before == 1
    assert 0 < deltas_of(b).received < len(new) / 2


def test_a_large_file_unchanged_since_it_was_hashed_is_not_read_again(tmp_path):
    """A file saved by a rename over the old one is looked at as a move, then as a
    change: its hash and list come from one read."""
    deltas = Deltas(None, BlockLists(str(tmp_path / "lists")), None)
    path = str(tmp_path / "big.bin")
    data = content(31, delta.DELTA_MIN)
    with open(path, "wb") as f:
        f.write(data)
    nothing_growing = lambda size: None  # noqa: E731
    hashes = [deltas.prehashed(path, nothing_growing)(len(data)) for _ in range(2)]
    assert hashes == [hashlib.sha256(data).hexdigest()] * 2 and deltas.files_hashed == 1
    assert deltas.lists.blocks(hashes[0]) == Chunker().blocks(data)
    new = b"!" + data
    with open(path + ".new", "wb") as f:
        f.write(new)
    os.rename(path + ".new", path)  # another inode: read
    assert deltas.prehashed(path, nothing_growing)(len(new)) == hashlib.sha256(new).hexdigest()
    assert deltas.files_hashed == 2
    assert deltas.prehashed(path, nothing_growing)(len(new)) == hashlib.sha256(new).hexdigest()
    assert deltas.files_hashed == 2


def whole_hashes(monkeypatch) -> list:
    """The paths the client hashes whole from here on (a plain SHA-256 read: no block list)."""
    from quantum_sync.client import localfs

    hashed, real = [], localfs.sha256_file
    monkeypatch.setattr(localfs, "sha256_file", lambda path: hashed.append(os.path.basename(path)) or real(path))
    return hashed


def one_byte_changed(data: bytes) -> bytes:
    return data[:len(data) // 2] + bytes([data[len(data) // 2] ^ 0xFF]) + data[len(data) // 2 + 1:]


@pytest_twisted.ensureDeferred
async def test_a_file_changed_while_the_client_was_away_is_read_once_and_goes_as_a_delta(reactor, servers, clients,
                                                                                         monkeypatch):
    a = await clients.start(servers[0], "a", delta="always")
    A = a.config.folder
    base = content(12)
    write(A, "big.bin", base)
    await converged(reactor, A, servers[0].root)
    # the upload recorded too (stopped before its answer, the client would come back to
    # no base: the edit below, beside the server's version, a conflict)
    synced = os.path.join(A, "big.bin")
    await wait_for(reactor, lambda: localfs.unchanged(localfs.lstat(synced), a.engine.state.base("big.bin")),
                   what="the upload recorded")
    await clients.stop(a)
    new = one_byte_changed(base)
    write(A, "big.bin", new, mtime=os.stat(os.path.join(A, "big.bin")).st_mtime + 10)
    hashed = whole_hashes(monkeypatch)
    a = await clients.start(servers[0], "a", delta="always")
    await wait_for(reactor, lambda: read(servers[0].root, "big.bin") == new, what="the edit on the server")
    # the start's scan hashed it with its block list: one read, the delta plan from the
    # kept lists of both versions (no second read, nothing asked of the server)
    assert hashed == [] and deltas_of(a).files_hashed == 1
    assert deltas_of(a).lists_reread == 0
    assert 0 < deltas_of(a).sent < MiB


@pytest_twisted.ensureDeferred
async def test_a_large_file_changed_on_its_way_through_a_move_is_read_once(reactor, servers, clients, monkeypatch):
    a = await clients.start(servers[0], "a", delta="always")
    A = a.config.folder
    base = content(13)
    write(A, "big.bin", base)
    await converged(reactor, A, servers[0].root)
    await a.watcher.stopService()  # the move is reported here, as the watcher would
    os.rename(os.path.join(A, "big.bin"), os.path.join(A, "moved.bin"))
    new = one_byte_changed(base)
    write(A, "moved.bin", new)
    hashed = whole_hashes(monkeypatch)
    before = deltas_of(a).files_hashed
    await a.engine.local_moved("big.bin", "moved.bin")
    await a.engine.idle()
    assert read(servers[0].root, "moved.bin") == new and read(servers[0].root, "big.bin") is None
    # hashed once, with its block list, for the move and the upload that followed
    assert hashed == [] and deltas_of(a).files_hashed == before + 1
