"""End to end: large uploads go as zstd where a sample shows it pays (real clients and a
real server on 127.0.0.1; bytes on the wire are the server's own count)."""

import hashlib
import os

import pytest_twisted
import zstandard
from twisted.internet.defer import succeed

from quantum_sync.client.compress import ZstdFileBody, inflate_file, sample_pays
from quantum_sync.compression import pays
from clients import converged, read, write
from support import wait_for

SIZE = 6 * 1024 * 1024


def compressible(size: int) -> bytes:
    """``size`` bytes of text that zstd shrinks several times over."""
    words = [os.urandom(8).hex().encode() for _ in range(512)]
    return b" ".join(words[i % 509] + str(i).encode() for i in range(size // 20))[:size]


async def moved_for_a_new_file(reactor, server, clients, compress, data, receiver="never"):
    a = await clients.start(server, "a", compress=compress)
    b = await clients.start(server, "b", compress=receiver)
    before = server.service.metrics.bytes_transferred
    write(a.config.folder, "f.txt", data)
    await wait_for(reactor, lambda: read(b.config.folder, "f.txt") == data, what="the file at b")
    await converged(reactor, a.config.folder, b.config.folder, server.root)
    return server.service.metrics.bytes_transferred - before


@pytest_twisted.ensureDeferred
async def test_a_compressible_file_goes_up_compressed(reactor, servers, clients):
    data = compressible(SIZE)
    moved = await moved_for_a_new_file(reactor, servers[0], clients, "always", data)
    # down whole (SIZE), up compressed: far less than twice the file
    assert moved < 1.3 * SIZE, moved


@pytest_twisted.ensureDeferred
async def test_a_compressible_file_comes_down_compressed_too(reactor, servers, clients):
    data = compressible(SIZE)
    moved = await moved_for_a_new_file(reactor, servers[0], clients, "always", data, receiver="always")
    assert moved < 0.6 * SIZE, moved


@pytest_twisted.ensureDeferred
async def test_with_a_loopback_server_auto_sends_it_plain(reactor, servers, clients):
    moved = await moved_for_a_new_file(reactor, servers[0], clients, "auto", compressible(SIZE))  # the loopback
    assert moved >= 2 * SIZE


def test_only_a_file_whose_sample_shrinks_is_compressed(tmp_path):
    text, noise = tmp_path / "text", tmp_path / "noise"
    text.write_bytes(compressible(SIZE))
    noise.write_bytes(os.urandom(SIZE))
    assert sample_pays(str(text)) and not sample_pays(str(noise))
    assert not sample_pays(str(tmp_path / "missing")) and not pays(b"")


def test_a_compressed_download_that_does_not_inflate_to_its_hash_is_dropped(tmp_path):
    data = compressible(100_000)
    for body, expected, limit in ((zstandard.ZstdCompressor().compress(data), hashlib.sha256(b"other").hexdigest(), None),
                                  (b"not zstd", hashlib.sha256(data).hexdigest(), None),
                                  (zstandard.ZstdCompressor().compress(data), hashlib.sha256(data).hexdigest(), 1000)):
        (tmp_path / "dl-z").write_bytes(body)
        assert inflate_file(str(tmp_path / "dl-z"), str(tmp_path), expected, limit) is None
        assert sorted(p.name for p in tmp_path.iterdir()) == []
    (tmp_path / "dl-z").write_bytes(zstandard.ZstdCompressor().compress(data))
    staged = inflate_file(str(tmp_path / "dl-z"), str(tmp_path), hashlib.sha256(data).hexdigest(), len(data))
    assert open(staged, "rb").read() == data and os.listdir(tmp_path) == [os.path.basename(staged)]


def test_the_compress_option(tmp_path):
    from quantum_sync.client.tap import Options

    for flags, expected in (([], "auto"), (["--compress", "always"], "always"), (["--compress", "never"], "never")):
        options = Options()
        options.parseOptions(["--server", "http://127.0.0.1:8080", "--local-path", str(tmp_path), *flags])
        assert options.config.compress == expected


class _InlineThreads:
    """Runs the body's compression at once, in the test's thread."""

    def defer(self, f, *args, **kwargs):
        return succeed(f(*args, **kwargs))


def test_a_stopped_compressed_body_never_fires(tmp_path):
    """IBodyProducer: once stopped, startProducing's Deferred never fires (Twisted logs
    a failed one on a lost connection as an unhandled error)."""
    (tmp_path / "f").write_bytes(compressible(3 * 1024 * 1024))
    written = []
    with open(tmp_path / "f", "rb") as f:
        body = ZstdFileBody(f, _InlineThreads())
        body.pauseProducing()
        done = body.startProducing(type("Sink", (), {"write": staticmethod(written.append)}))
        body.stopProducing()
        fired = []
        done.addBoth(fired.append)
    assert fired == [] and written == []
