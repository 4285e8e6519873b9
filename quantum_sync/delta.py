"""The delta transfer's shared rules: the size threshold, and the head of a delta upload.

Pure: bytes in, values out. A delta upload's body (``POST /api/upload-delta``) is a head
(:func:`encode_head`: magic, step count, the steps of a :mod:`quantum_sync.blocks` plan)
followed by the bytes its :class:`~quantum_sync.blocks.Send` steps send, in order.
"""

import ipaddress
import struct
from urllib.parse import urlsplit

from quantum_sync.blocks import MIN_BLOCK, Block, Reuse, Send, block_starts, find_start

#: Files of fewer bytes travel whole (their block lists are neither kept nor asked for):
#: below it a whole transfer takes about as long as the extra round trip for a block list
#: (see bench/bench_delta.py), and the small-file paths (batches, memory) stay as they are.
DELTA_MIN = 4 * 1024 * 1024

#: Block lists of at most this many bytes (compact form: about 3600 blocks, a file of
#: about 1.8 GiB) travel inside the ``FileOperation`` broadcast of their change, base64
#: in its ``blocks`` field, so that a receiver skips the request for them; longer ones
#: are asked for (``GET /api/blocks``). Measured: a 128 KiB list's message (175 KB) is
#: parsed and decoded in about 2.5 ms, the request for it took 2.5-6.4 ms over the
#: loopback (more over any real link); every subscriber gets the broadcast, so it stays
#: below what one saved request is worth.
BROADCAST_LIST = 128 * 1024

#: When a client uses deltas (``--delta``): ``auto`` unless the server is on this machine.
MODES = ("auto", "always", "never")

MAGIC = b"QSD1"
_COUNT = struct.Struct(">4sI")
_STEP = struct.Struct(">BQQ")
HEAD_FIXED = _COUNT.size
STEP_SIZE = _STEP.size
_REUSE, _SEND = 1, 2
#: Most steps one plan may have: a 16 GiB file cut into blocks of the smallest size, each
#: alternating between reused and sent (8.5 MiB of head: the server reads it a few
#: thousand steps at a time, :func:`read_steps`).
MAX_STEPS = 2 * (16 << 30) // MIN_BLOCK


def wanted(mode: str, server_url: str) -> bool:
    """Whether a client in delta ``mode`` (one of :data:`MODES`) uses deltas with the
    server at ``server_url``. ``auto``: not with a server on the loopback, where a whole
    file moves faster than both sides can read it again for its blocks (see
    bench/bench_delta.py); wherever the link is slower than that, deltas win."""
    if mode != "auto":
        return mode == "always"
    host = urlsplit(server_url).hostname or ""
    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True  # a name: a remote server


def encode_head(plan) -> bytes:
    """The head of a delta upload carrying ``plan``."""
    parts = [_COUNT.pack(MAGIC, len(plan))]
    for step in plan:
        if isinstance(step, Reuse):
            parts.append(_STEP.pack(_REUSE, step.base_offset, step.length))
        else:
            parts.append(_STEP.pack(_SEND, step.offset, step.length))
    return b"".join(parts)


def head_steps(fixed: bytes) -> int:
    """The number of steps the head starting with ``fixed`` (:data:`HEAD_FIXED` bytes)
    announces; ValueError when it is not a delta head."""
    if len(fixed) != HEAD_FIXED:
        raise ValueError("the body is shorter than a delta head")
    magic, count = _COUNT.unpack(fixed)
    if magic != MAGIC:
        raise ValueError("the body does not start with a delta head")
    if count > MAX_STEPS:
        raise ValueError(f"a plan of {count} steps (at most {MAX_STEPS})")
    return count


def decode_steps(data: bytes) -> tuple:
    """The plan whose steps are ``data``: Send steps must follow each other through the new
    content (each at the offset where the steps before it end), every length positive.
    ValueError for anything else."""
    if len(data) % STEP_SIZE:
        raise ValueError("the plan is not a whole number of steps")
    return tuple(_steps(_STEP.iter_unpack(data)))


#: Steps read at a time by :func:`read_steps`.
_STEPS_READ = 4096


def read_steps(body, count: int):
    """The ``count`` steps read from ``body`` (``read(n)``, at the first step), a few
    thousand at a time, checked as :func:`decode_steps` does, yielded one by one: a plan
    of any length is never held. ValueError when the body ends inside them."""
    def records():
        left = count
        while left:
            data = body.read(min(left, _STEPS_READ) * STEP_SIZE)
            if not data or len(data) % STEP_SIZE:
                raise ValueError("the body ends inside the plan")
            yield from _STEP.iter_unpack(data)
            left -= len(data) // STEP_SIZE

    return _steps(records())


def _steps(records):
    """The steps of ``(kind, first, length)`` records, checked (see :func:`decode_steps`)."""
    position = 0
    for kind, first, length in records:
        if length == 0:
            raise ValueError("a step of no bytes")
        if kind == _REUSE:
            yield Reuse(first, length)
        elif kind == _SEND:
            if first != position:
                raise ValueError(f"a sent range at {first} where the content is at {position}")
            yield Send(first, length)
        else:
            raise ValueError(f"unknown step kind {kind}")
        position += length


def unheld_reuse(plan, base_blocks):
    """The first Reuse step of ``plan`` that is not a run of whole blocks of
    ``base_blocks`` (the base's block list: a block the holder of that list does not
    hold), or None when every reused range is."""
    starts = block_starts(base_blocks)
    for step in plan:
        if isinstance(step, Reuse) and (find_start(starts, step.base_offset) is None
                                        or find_start(starts, step.base_offset + step.length) is None):
            return step
    return None


def runs(plan) -> list:
    """``(offset, length)`` of each range of the new content ``plan`` sends (adjacent ones
    already merged by :func:`~quantum_sync.blocks.plan_delta`)."""
    return [(step.offset, step.length) for step in plan if isinstance(step, Send)]


def rebuilt_blocks(plan, base_blocks, blocks_of_sent):
    """The block list of the content ``plan`` builds, without reading what it reuses:
    the base's blocks (``base_blocks``) for each Reuse step (a run of whole blocks, see
    :func:`unheld_reuse`), moved to where they land, and ``blocks_of_sent(step)`` (the
    blocks of the step's bytes alone, offsets from 0) for each Send step. A Send step
    starts and ends at block boundaries of the new content (where the sender's list cut
    it), and a cut depends only on the bytes since the block's start, so this is the
    list of the whole new content; each block's hash is that of its bytes in any case.
    Yields the blocks in order; ``plan`` is iterated once, the base only looked up."""
    starts = block_starts(base_blocks)
    position = 0
    for step in plan:
        if isinstance(step, Reuse):
            at, left = find_start(starts, step.base_offset), step.length
            while left > 0:
                block = base_blocks[at]
                yield Block(position + step.length - left, block.length, block.sha256)
                left -= block.length
                at += 1
        else:
            for block in blocks_of_sent(step):
                yield Block(position + block.offset, block.length, block.sha256)
        position += step.length


#: Runs a multi-range request asks for at most (the server sends the whole file past 16).
GROUP_RUNS = 16
#: Bytes a multi-range request asks for at most (its answer is held in memory).
GROUP_BYTES = 8 * 1024 * 1024
#: A run longer than this is fetched alone, streamed to disk.
ALONE_ABOVE = 1024 * 1024


def range_groups(runs) -> list:
    """``runs`` (``(offset, length)``, in order) in groups for the requests that fetch
    them: consecutive runs of at most :data:`ALONE_ABOVE` bytes together, at most
    :data:`GROUP_RUNS` of them and :data:`GROUP_BYTES` in all (one multi-range request
    each); a longer run alone (one plain range request, streamed)."""
    groups, current, total = [], [], 0
    for run in runs:
        if run[1] > ALONE_ABOVE:
            if current:
                groups.append(current)
                current, total = [], 0
            groups.append([run])
            continue
        if current and (len(current) == GROUP_RUNS or total + run[1] > GROUP_BYTES):
            groups.append(current)
            current, total = [], 0
        current.append(run)
        total += run[1]
    if current:
        groups.append(current)
    return groups


def _byterange_part(body: bytes, marker: bytes, position: int, offset: int, length: int):
    """The data of the part for ``(offset, length)`` starting at ``position`` in ``body``
    and the position just after it. ValueError if the part is not exactly that range."""
    start = body.find(marker, position)
    if start < 0 or body[position:start].strip(b"\r\n"):
        raise ValueError("a part is missing")
    head_end = body.find(b"\r\n\r\n", start + len(marker) - 2)
    if head_end < 0:
        raise ValueError("a part's head does not end")
    headers = body[start + len(marker):head_end].split(b"\r\n")
    ranges = [h.split(b":", 1)[1].strip() for h in headers if h.lower().startswith(b"content-range:")]
    if len(ranges) != 1 or not ranges[0].startswith(b"bytes %d-%d/" % (offset, offset + length - 1)):
        raise ValueError(f"a part is not the range {offset}+{length}")
    data = body[head_end + 4:head_end + 4 + length]
    if len(data) != length:
        raise ValueError("a part ends early")
    return data, head_end + 4 + length


def split_byteranges(body: bytes, boundary: bytes, runs) -> list:
    """The bytes of each of ``runs`` (``(offset, length)``) from a ``multipart/byteranges``
    answer ``body`` with ``boundary``: one part per run, in order, each with the
    ``Content-Range`` of its run. ValueError for anything else."""
    parts, position, marker = [], 0, b"--" + boundary + b"\r\n"
    for offset, length in runs:
        data, position = _byterange_part(body, marker, position, offset, length)
        parts.append(data)
    if not body[position:].strip(b"\r\n").startswith(b"--" + boundary + b"--"):
        raise ValueError("the answer does not end with its closing boundary")
    return parts
