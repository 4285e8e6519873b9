"""Block lists and delta uploads against a real server on 127.0.0.1 (docs/http-api.md)."""

import base64
import hashlib
import os
import random
import tracemalloc

import pytest
import pytest_twisted

from quantum_sync import delta
from quantum_sync.blocks import Chunker, decode_blocks, encode_blocks, literals, plan_delta, sent_bytes

from tests import test_batch_api

SIZE = delta.DELTA_MIN + 2 * 1024 * 1024
subscribe = test_batch_api.subscribe  # (a fixture: WebSocket subscribers)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def content(seed: int, size: int = SIZE) -> bytes:
    return random.Random(seed).randbytes(size)


async def upload(http, server, path, data, keep="keep"):
    return await http.json("PUT", f"{server.url}/api/upload", params={"path": path}, data=data,
                           headers={"X-Content-SHA256": sha(data), "X-Block-List": keep})


async def block_list(http, server, path, expect=200):
    response = await http.get(f"{server.url}/api/blocks", params={"path": path})
    body = await response.content()
    assert response.code == expect, (response.code, body[:300])
    return response, body


def delta_body(base: bytes, new: bytes, plan=None) -> bytes:
    chunker = Chunker()
    plan = plan_delta(chunker.blocks(base), chunker.blocks(new)) if plan is None else plan
    return delta.encode_head(plan) + literals(plan, new)


async def upload_delta(http, server, path, body, base_hash, new_hash, expect):
    return await http.json("POST", f"{server.url}/api/upload-delta", expect=expect, params={"path": path},
                           data=body, headers={"If-Match": f'"{base_hash}"', "X-Content-SHA256": new_hash})


def on_disk(server, path) -> bytes:
    with open(os.path.join(server.root, path), "rb") as f:
        return f.read()


@pytest_twisted.ensureDeferred
async def test_an_upload_leaves_its_block_list_made_as_it_streamed_in(server, http):
    data = content(1)
    await upload(http, server, "big.bin", data)
    kept = os.path.join(server.root, ".quantum-sync", "blocks", sha(data))
    with open(kept, "rb") as f:
        assert f.read() == encode_blocks(Chunker().blocks(data))  # there before anyone asked
    response, body = await block_list(http, server, "big.bin")
    assert response.headers.getRawHeaders(b"etag") == [f'"{sha(data)}"'.encode()]
    assert decode_blocks(body) == Chunker().blocks(data)


@pytest_twisted.ensureDeferred
async def test_an_upload_that_does_not_ask_gets_its_list_only_when_asked(server, http):
    data = content(12)
    await upload(http, server, "big.bin", data, keep="")
    blocks = os.path.join(server.root, ".quantum-sync", "blocks")
    assert os.listdir(blocks) == []  # not made while it streamed in
    _, body = await block_list(http, server, "big.bin")
    assert decode_blocks(body) == Chunker().blocks(data)
    assert os.listdir(blocks) == [sha(data)]


@pytest_twisted.ensureDeferred
async def test_a_small_file_has_no_block_list(server, http):
    await upload(http, server, "small.txt", b"hello")
    _, body = await block_list(http, server, "small.txt", expect=404)
    assert b"NOT_FOUND" in body
    await upload(http, server, "medium.bin", content(2, delta.DELTA_MIN - 1))
    await block_list(http, server, "medium.bin", expect=404)
    assert os.listdir(os.path.join(server.root, ".quantum-sync", "blocks")) == []


@pytest_twisted.ensureDeferred
async def test_a_file_another_program_wrote_gets_its_list_when_asked(server, http):
    data = content(3)
    with open(os.path.join(server.root, "outside.bin"), "wb") as f:
        f.write(data)
    await server.service.operations.refresh(None)
    _, body = await block_list(http, server, "outside.bin")
    assert decode_blocks(body) == Chunker().blocks(data)


@pytest_twisted.ensureDeferred
async def test_a_delta_upload_sends_only_the_change_and_is_installed(server, http):
    base = content(4)
    await upload(http, server, "f.bin", base)
    edits = {
        "middle": base[:3_000_000] + os.urandom(100_000) + base[3_100_000:],
        "insert at start": b"x" + base,
        "append": base + os.urandom(1_000_000),
        "truncate": base[:5_000_000],
    }
    for name, new in edits.items():
        current = on_disk(server, "f.bin")
        body = delta_body(current, new)
        assert len(body) < len(new) / 4, name
        _, meta = await upload_delta(http, server, "f.bin", body, sha(current), sha(new), 200)
        assert meta["hash"] == sha(new) and meta["size"] == len(new), name
        assert on_disk(server, "f.bin") == new, name
        # the new file's list was made as it was built
        _, listed = await block_list(http, server, "f.bin")
        assert decode_blocks(listed) == Chunker().blocks(new), name
    # a replaced version is kept, and the change journalled
    _, versions = await http.json("GET", f"{server.url}/api/versions", params={"path": "f.bin"})
    assert len(versions["versions"]) >= len(edits)


@pytest_twisted.ensureDeferred
async def test_a_base_that_changed_is_412_and_nothing_changes(server, http):
    base = content(5)
    await upload(http, server, "f.bin", base)
    newer = base + b"newer"
    await upload(http, server, "f.bin", newer)
    new = b"edit" + base
    _, error = await upload_delta(http, server, "f.bin", delta_body(base, new), sha(base), sha(new), 412)
    assert error["error"]["code"] == "PRECONDITION_FAILED"
    assert on_disk(server, "f.bin") == newer


@pytest_twisted.ensureDeferred
async def test_a_reused_block_the_base_lacks_is_409_and_a_wrong_result_422(server, http):
    base = content(6)
    await upload(http, server, "f.bin", base)
    new = base[:100] + b"!" + base[101:]
    # a range that does not start at one of the base's blocks
    from quantum_sync.blocks import Reuse
    plan = (Reuse(1, len(base) - 1),)
    _, error = await upload_delta(http, server, "f.bin", delta.encode_head(plan), sha(base), sha(new), 409)
    assert error["error"]["code"] == "CONFLICT" and error["error"]["reason"] == "BLOCK_NOT_HELD"
    # a plan that builds something other than what X-Content-SHA256 names
    _, error = await upload_delta(http, server, "f.bin", delta_body(base, new), sha(base), sha(b"other"), 422)
    assert error["error"]["code"] == "HASH_MISMATCH"
    assert on_disk(server, "f.bin") == base
    assert [n for n in os.listdir(os.path.join(server.root, ".quantum-sync", "tmp"))] == []
    _, versions = await http.json("GET", f"{server.url}/api/versions", params={"path": "f.bin"})
    assert versions["versions"] == [] or all(v["hash"] != sha(base) for v in versions["versions"])


@pytest_twisted.ensureDeferred
async def test_a_malformed_delta_or_missing_headers_is_400(server, http):
    base = content(7)
    await upload(http, server, "f.bin", base)
    for body in (b"garbage" * 40_000, delta.encode_head(()) + b"x"):
        _, error = await upload_delta(http, server, "f.bin", body, sha(base), sha(base), 400)
        assert error["error"]["code"] == "INVALID_REQUEST"
    _, error = await http.json("POST", f"{server.url}/api/upload-delta", expect=400, params={"path": "f.bin"},
                               data=delta_body(base, base), headers={"X-Content-SHA256": sha(base)})
    assert "If-Match" in error["error"]["message"]
    assert on_disk(server, "f.bin") == base


@pytest_twisted.ensureDeferred
async def test_several_ranges_come_in_one_answer(server, http):
    data = content(8)
    await upload(http, server, "f.bin", data)
    response = await http.get(f"{server.url}/api/download", params={"path": "f.bin"},
                              headers={"Range": "bytes=10-19,5000000-5000009"})
    body = await response.content()
    assert response.code == 206
    assert b"multipart/byteranges" in response.headers.getRawHeaders(b"content-type")[0]
    assert data[10:20] in body and data[5_000_000:5_000_010] in body


def test_plans_for_the_edits_send_little():
    base = content(9)
    chunker = Chunker()
    new = base[:1000] + b"y" + base[1000:]
    plan = plan_delta(chunker.blocks(base), chunker.blocks(new))
    assert sent_bytes(plan) <= 2 * 1024 * 1024


@pytest_twisted.ensureDeferred
async def test_a_start_removes_the_lists_of_contents_no_file_has(server, http):
    old, new = content(10), content(11)
    await upload(http, server, "f.bin", old)
    await upload(http, server, "f.bin", new)
    blocks = os.path.join(server.root, ".quantum-sync", "blocks")
    assert sorted(os.listdir(blocks)) == sorted([sha(old), sha(new)])
    with open(os.path.join(blocks, "list-writing"), "wb"):
        pass  # a list being written (young): stays
    restarted = await server.restart()
    try:
        assert sorted(os.listdir(blocks)) == sorted([sha(new), "list-writing"])
    finally:
        await restarted.stop()


@pytest_twisted.ensureDeferred
async def test_a_short_list_travels_in_the_broadcast_of_its_change(server, http, subscribe, monkeypatch):
    reader = await subscribe("reader")
    base = content(21)
    await upload(http, server, "big.bin", base)
    message = await reader.expect("FileOperation")
    assert base64.b64decode(message["blocks"]) == encode_blocks(Chunker().blocks(base))
    new = base[:100] + b"edit" + base[104:]
    await upload_delta(http, server, "big.bin", delta_body(base, new), sha(base), sha(new), 200)
    message = await reader.expect("FileOperation")
    assert message["operation"]["Update"]["metadata"]["hash"] == sha(new)
    assert decode_blocks(base64.b64decode(message["blocks"])) == Chunker().blocks(new)
    await upload(http, server, "small.txt", b"small")  # no list: no field
    assert "blocks" not in await reader.expect("FileOperation")
    # a list longer than the limit is asked for instead
    monkeypatch.setattr(delta, "BROADCAST_LIST", len(encode_blocks(Chunker().blocks(base))) - 36)
    await upload(http, server, "big.bin", base, keep="keep")
    message = await reader.expect("FileOperation")
    assert message["operation"]["Update"]["metadata"]["hash"] == sha(base) and "blocks" not in message
    assert server.service.api.deltas.offered(sha(base)) is None  # nothing held once broadcast


@pytest_twisted.ensureDeferred
async def test_a_plan_of_many_steps_is_read_as_a_stream(server, http, tmp_path):
    from quantum_sync.blocks import Send
    from quantum_sync.errors import SyncError

    base = content(12)
    await upload(http, server, "f.bin", base)
    metadata, _ = await server.service.index.get("f.bin")
    fd = os.open(os.path.join(server.root, "f.bin"), os.O_RDONLY)
    peaks = []
    try:
        for count in (2_000, 200_000):  # one-byte sent ranges, the body ending long before they do
            body = tmp_path / f"body-{count}"
            body.write_bytes(delta.encode_head(tuple(Send(i, 1) for i in range(count))) + b"x" * 1000)
            tracemalloc.start()
            try:
                with pytest.raises(SyncError, match="fewer bytes") as refused:
                    await server.service.api.deltas.build(lambda: open(body, "rb"), metadata, fd, sha(base + b"!"))
                peaks.append(tracemalloc.get_traced_memory()[1])
            finally:
                tracemalloc.stop()
            assert refused.value.code == "INVALID_REQUEST"
    finally:
        os.close(fd)
    # never the whole plan (each step held would be over 50 bytes): a few thousand at a time
    assert peaks[1] - peaks[0] < 1024 * 1024, peaks
    assert os.listdir(os.path.join(server.root, ".quantum-sync", "tmp")) == []


@pytest_twisted.ensureDeferred
async def test_a_build_holds_only_the_offsets_of_the_bases_list(server, http, tmp_path):
    from quantum_sync.blocks import Reuse

    base = content(13)
    await upload(http, server, "f.bin", base)
    kept = os.path.join(server.root, ".quantum-sync", "blocks", sha(base))
    body = tmp_path / "body"
    body.write_bytes(delta.encode_head((Reuse(0, len(base)),)))
    metadata, _ = await server.service.index.get("f.bin")
    fd = os.open(os.path.join(server.root, "f.bin"), os.O_RDONLY)
    peaks = []
    try:
        # the base's list as 48 blocks, then as 49,152 (the count of a 12 GiB file's)
        for count in (48, 49_152):
            listed = b"".join((len(base) // count).to_bytes(4, "big") + random.Random(i).randbytes(32)
                              for i in range(count))
            with open(kept, "wb") as f:
                f.write(listed)
            tracemalloc.start()
            try:
                built = await server.service.api.deltas.build(lambda: open(body, "rb"), metadata, fd, sha(base))
                peaks.append(tracemalloc.get_traced_memory()[1])
            finally:
                tracemalloc.stop()
            os.unlink(built.path)
            with open(kept, "rb") as f:
                assert f.read() == listed  # the new list, rebuilt from the base's: the same
    finally:
        os.close(fd)
    # the offsets (8 bytes a block) and a few thousand entries read at a time; the list
    # itself (36 bytes a block) never whole
    assert peaks[1] - peaks[0] < 12 * 49_152, peaks
