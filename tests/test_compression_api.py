"""zstd upload bodies (``Content-Encoding: zstd``) against a real server on 127.0.0.1."""

import hashlib
import os

import pytest_twisted
import zstandard

from quantum_sync import delta
from quantum_sync.blocks import Chunker, decode_blocks
from tests.support import start_server


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def compressible(size: int) -> bytes:
    words = [os.urandom(8).hex().encode() for _ in range(512)]
    return b" ".join(words[i % 509] + str(i).encode() for i in range(size // 20))[:size]


async def put(http, server, path, body, expect, **headers):
    headers.setdefault("Content_Encoding", "zstd")
    return await http.json("PUT", f"{server.url}/api/upload", expect=expect, params={"path": path}, data=body,
                           headers={k.replace("_", "-"): v for k, v in headers.items()})


def on_disk(server, path):
    with open(os.path.join(server.root, path), "rb") as f:
        return f.read()


@pytest_twisted.ensureDeferred
async def test_a_compressed_upload_is_stored_inflated_with_its_block_list(server, http):
    for size in (1000, delta.DELTA_MIN + 3 * 1024 * 1024):
        data = compressible(size)
        body = zstandard.ZstdCompressor(level=1).compress(data)
        assert len(body) < len(data) / 2 or size < 10_000
        _, meta = await put(http, server, f"f{size}.txt", body, 200, X_Content_SHA256=sha(data), X_Block_List="keep")
        assert (meta["size"], meta["hash"]) == (len(data), sha(data))
        assert on_disk(server, f"f{size}.txt") == data
    response = await http.get(f"{server.url}/api/blocks", params={"path": f"f{size}.txt"})
    assert decode_blocks(await response.content()) == Chunker().blocks(data)
    # a small content got no list
    assert sorted(os.listdir(os.path.join(server.root, ".quantum-sync", "blocks"))) == [sha(data)]


@pytest_twisted.ensureDeferred
async def test_bad_compressed_uploads_are_refused_and_change_nothing(reactor, tmp_path, http):
    server = await start_server(reactor, tmp_path, max_upload_size=1024 * 1024)
    try:
        bomb = zstandard.ZstdCompressor(level=19).compress(bytes(20 * 1024 * 1024))
        assert len(bomb) < 1024
        _, error = await put(http, server, "bomb.bin", bomb, 413, X_Content_SHA256=sha(b"x"))
        assert error["error"]["code"] == "TOO_LARGE"
        _, error = await put(http, server, "bad.bin", b"not zstd at all" * 100, 400, X_Content_SHA256=sha(b"x"))
        assert error["error"]["code"] == "INVALID_REQUEST"
        _, error = await put(http, server, "gz.bin", b"x", 400, Content_Encoding="gzip", X_Content_SHA256=sha(b"x"))
        assert "Content-Encoding" in error["error"]["message"]
        _, error = await put(http, server, "nohash.bin", zstandard.ZstdCompressor().compress(b"x"), 400)
        assert "X-Content-SHA256" in error["error"]["message"]
        truncated = zstandard.ZstdCompressor().compress(compressible(100_000))[:-20]
        _, error = await put(http, server, "cut.bin", truncated, None, X_Content_SHA256=sha(compressible(100_000)))
        assert error["error"]["code"] in ("HASH_MISMATCH", "INVALID_REQUEST")
        assert sorted(os.listdir(server.root)) == [".quantum-sync"]
        assert os.listdir(os.path.join(server.root, ".quantum-sync", "tmp")) == []
    finally:
        await server.stop()


async def get(http, server, path, **headers):
    response = await http.get(f"{server.url}/api/download", params={"path": path},
                              headers={k.replace("_", "-"): v for k, v in headers.items()})
    return response, await response.content()


@pytest_twisted.ensureDeferred
async def test_a_download_goes_as_zstd_to_who_asks_when_it_shrinks(server, http):
    text, noise = compressible(3 * 1024 * 1024), os.urandom(3 * 1024 * 1024)
    for name, data in (("text.txt", text), ("noise.bin", noise)):
        await http.json("PUT", f"{server.url}/api/upload", params={"path": name}, data=data)
    response, body = await get(http, server, "text.txt", Accept_Encoding="gzip, zstd")
    assert response.code == 200
    assert response.headers.getRawHeaders(b"content-encoding") == [b"zstd"]
    assert response.headers.getRawHeaders(b"etag") == [f'"{sha(text)}"'.encode()]
    assert response.headers.getRawHeaders(b"content-disposition")
    assert len(body) < len(text) / 2
    assert zstandard.ZstdDecompressor().decompressobj().decompress(body) == text
    # not asked, a range, or a content that does not shrink: as it is
    for path, headers in (("text.txt", {}), ("text.txt", {"Accept_Encoding": "zstd", "Range": "bytes=0-9"}),
                          ("noise.bin", {"Accept_Encoding": "zstd"})):
        response, body = await get(http, server, path, **headers)
        assert response.headers.getRawHeaders(b"content-encoding") in (None, [b""]), (path, headers)
        assert body == {"text.txt": text, "noise.bin": noise}[path][:10 if "Range" in headers else None]
    response, body = await get(http, server, "text.txt", Accept_Encoding="zstd", If_None_Match=f'"{sha(text)}"')
    assert response.code == 304 and body == b""
