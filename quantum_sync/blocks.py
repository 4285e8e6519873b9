"""Block lists and delta plans, for transfers that send only what changed.

Pure: bytes in, values out, no files or sockets. A block list cuts a file's content at
content-defined points (FastCDC, by the compiled ``pyfastcdc``), so an insert or a
delete moves only the cuts near it and every untouched block keeps its bytes and its
SHA-256. A delta plan says, block by block, how to build a new content from a base
whose block list the other side holds: ranges copied from the base, and ranges of the
new content that must travel.
"""

import bisect
import hashlib
import heapq
import struct
from array import array
from collections.abc import Sequence

import attrs
from pyfastcdc import FastCDC

#: Block sizes of the chunker: at least, about, at most (pyfastcdc's ``avg_size`` is the
#: mean past ``min_size``: its chunks average about ``avg_size + min_size``).
MIN_BLOCK = 64 * 1024
AVG_BLOCK = 256 * 1024
MAX_BLOCK = 1024 * 1024


@attrs.frozen
class Block:
    """``length`` bytes at ``offset`` of a content, whose SHA-256 (hex) is ``sha256``."""

    offset: int
    length: int
    sha256: str


@attrs.frozen
class Chunker:
    """A FastCDC chunker with the given block sizes (the defaults above; tests use small
    ones). Only chunkers with equal sizes produce block lists that can be compared."""

    min_size: int = MIN_BLOCK
    avg_size: int = AVG_BLOCK
    max_size: int = MAX_BLOCK
    _cdc: FastCDC = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self):
        cdc = FastCDC(self.avg_size - self.min_size, min_size=self.min_size, max_size=self.max_size)
        object.__setattr__(self, "_cdc", cdc)

    def blocks(self, data) -> tuple:
        """The block list of ``data`` (bytes-like): consecutive :class:`Block` s covering
        it from offset 0, none for an empty content."""
        return tuple(_hashed(data, offset, length, 0) for offset, length in self.cuts(data))

    def cuts(self, data) -> list:
        """``(offset, length)`` of each block of ``data``, unhashed."""
        return [(chunk.offset, chunk.length) for chunk in self._cdc.cut_buf(data)]


def _hashed(data, offset: int, length: int, base: int) -> Block:
    """The block of ``length`` bytes at ``offset`` of ``data``, placed at ``base + offset``."""
    return Block(base + offset, length, hashlib.sha256(memoryview(data)[offset:offset + length]).hexdigest())


class BlockStream:
    """The block list of a content that arrives in pieces (an upload as it streams in):
    :meth:`feed` each piece, then :meth:`finish`; each returns the blocks completed. It
    holds at most one unfinished block and the piece being fed. The blocks are exactly
    ``chunker.blocks(whole content)``: a FastCDC cut depends only on the bytes from the
    start of its block up to it, so every block but the last of what is held is final."""

    def __init__(self, chunker: Chunker):
        self._chunker = chunker
        self._held = b""
        self._offset = 0  # of the held bytes in the whole content

    def feed(self, data) -> list:
        held = self._held + bytes(data) if self._held else bytes(data)
        if len(held) <= self._chunker.max_size:  # no cut can be final yet
            self._held = held
            return []
        cuts = self._chunker.cuts(held)
        last = cuts.pop()[0]  # (only the final ones are hashed)
        done = [_hashed(held, offset, length, self._offset) for offset, length in cuts]
        self._held, self._offset = held[last:], self._offset + last
        return done

    @property
    def held(self) -> int:
        """Bytes held: fed but not yet in a block returned."""
        return len(self._held)

    def finish(self) -> list:
        """The last blocks (the content has ended)."""
        held = self._held
        done = [_hashed(held, offset, length, self._offset) for offset, length in self._chunker.cuts(held)]
        self._held, self._offset = b"", self._offset + len(held)
        return done


#: One block in the compact form of a block list: its length (4 bytes, big-endian) and
#: its raw SHA-256; offsets follow from the lengths.
_ENTRY = struct.Struct(">I32s")
ENTRY_SIZE = _ENTRY.size


def encode_blocks(blocks) -> bytes:
    """The compact form of a block list (36 bytes a block: 1.4 MiB for 10 GiB of
    256 KiB blocks), for the index and the wire."""
    if isinstance(blocks, BlockList):
        return blocks.data
    return b"".join(_ENTRY.pack(block.length, bytes.fromhex(block.sha256)) for block in blocks)


def decode_blocks(data, max_size: int = MAX_BLOCK, offset: int = 0) -> "BlockList":
    """The block list of compact form ``data`` (a whole number of entries, each block
    1 to ``max_size`` bytes long); its first block at ``offset`` (for a list read in
    parts). ValueError for anything else."""
    if len(data) % ENTRY_SIZE:
        raise ValueError("a block list is a whole number of 36-byte entries")
    starts = array("Q", [offset])
    for length, _ in _ENTRY.iter_unpack(data):
        if not 0 < length <= max_size:
            raise ValueError(f"a block of {length} bytes (1 to {max_size})")
        offset += length
        starts.append(offset)
    return BlockList(bytes(data), starts)


class BlockList(Sequence):
    """A block list held as its compact form (36 bytes a block) and the offsets where its
    blocks start and it ends (8 bytes a block): 1.8 MiB for 10 GiB of 256 KiB blocks. A
    :class:`Block` is made only when one is looked at; it equals the tuple of its blocks."""

    __slots__ = ("data", "starts")

    def __init__(self, data: bytes, starts: array):
        self.data = data
        self.starts = starts

    def __len__(self) -> int:
        return len(self.starts) - 1

    def __getitem__(self, index):
        return looked_up(self, index, self._block)

    def _block(self, index: int) -> Block:
        length, digest = _ENTRY.unpack_from(self.data, index * ENTRY_SIZE)
        return Block(self.starts[index], length, digest.hex())

    def __iter__(self):
        for (length, digest), offset in zip(_ENTRY.iter_unpack(self.data), self.starts):
            yield Block(offset, length, digest.hex())

    def __eq__(self, other):
        if isinstance(other, BlockList):
            return self.data == other.data and self.starts[0] == other.starts[0]
        return isinstance(other, Sequence) and len(other) == len(self) and tuple(self) == tuple(other)

    __hash__ = None

    def __add__(self, other):
        return tuple(self) + tuple(other)

    def __radd__(self, other):
        return tuple(other) + tuple(self)

    def __repr__(self):
        return f"BlockList({len(self)} blocks)"


def looked_up(blocks, index, block):
    """``blocks[index]`` (a slice: a tuple) of a list whose ``block(i)`` makes block ``i``."""
    if isinstance(index, slice):
        return tuple(block(i) for i in range(*index.indices(len(blocks))))
    if index < 0:
        index += len(blocks)
    if not 0 <= index < len(blocks):
        raise IndexError("block list index out of range")
    return block(index)


def block_starts(blocks) -> array:
    """The offsets where the blocks of ``blocks`` (consecutive) start, and where the last
    one ends (none for an empty list)."""
    held = getattr(blocks, "starts", None)  # (a BlockList, or a list read from its file)
    if held is not None:
        return held
    starts = array("Q", (block.offset for block in blocks))
    if blocks:
        starts.append(blocks[-1].offset + blocks[-1].length)
    return starts


def find_start(starts: array, offset: int):
    """The position of ``offset`` in ``starts`` (:func:`block_starts`), or None."""
    at = bisect.bisect_left(starts, offset)
    return at if at < len(starts) and starts[at] == offset else None


class _Held:
    """Where the first block with a given SHA-256 and length is in a block list: its
    positions sorted by the leading bits of their SHA-256, one 8-byte word a block (the
    position in the low bits), looked up by bisection, a match checked on the whole hash."""

    def __init__(self, blocks):
        self._blocks = blocks
        self._shift = max(1, len(blocks).bit_length())
        keep = ~((1 << self._shift) - 1) & 0xFFFFFFFFFFFFFFFF
        self._keys = _sorted_words((int(block.sha256[:16], 16) & keep) | position
                                   for position, block in enumerate(blocks))

    def offset(self, block):
        """The offset of the first block like ``block`` (its hash and length), or None."""
        keys, shift = self._keys, self._shift
        prefix = int(block.sha256[:16], 16) >> shift
        at = bisect.bisect_left(keys, prefix << shift)
        while at < len(keys) and keys[at] >> shift == prefix:
            held = self._blocks[keys[at] & ((1 << shift) - 1)]
            if held.sha256 == block.sha256 and held.length == block.length:
                return held.offset
            at += 1
        return None


@attrs.frozen
class Reuse:
    """Copy ``length`` bytes from ``base_offset`` of the base."""

    base_offset: int
    length: int


@attrs.frozen
class Send:
    """``length`` bytes of the new content, from its ``offset``, travel."""

    offset: int
    length: int


#: Words sorted at a time by :func:`_sorted_words` (each held as a Python int meanwhile).
_SORT_RUN = 8192


def _sorted_words(words) -> array:
    """The 64-bit ``words`` sorted, in an array: runs of :data:`_SORT_RUN` sorted as
    lists, kept as arrays, then merged (at most twice 8 bytes a word held, not a list)."""
    runs, run = [], []
    for word in words:
        run.append(word)
        if len(run) == _SORT_RUN:
            runs.append(array("Q", sorted(run)))
            run = []
    runs.append(array("Q", sorted(run)))
    return runs[0] if len(runs) == 1 else array("Q", heapq.merge(*runs))


def plan_delta(base, new) -> tuple:
    """How to build the content whose block list is ``new`` from one whose block list
    is ``base``: :class:`Reuse` and :class:`Send` steps, in the new content's order,
    adjacent steps of one kind that continue each other merged. Every new block whose
    hash the base holds (anywhere, even twice) is reused. Either list may be a
    :class:`BlockList`; the base is indexed in 8 bytes a block, the new one only read."""
    held = _Held(base)
    steps = []
    for block in new:
        base_offset = held.offset(block)
        if base_offset is None:
            step = Send(block.offset, block.length)
            if steps and isinstance(steps[-1], Send):  # blocks are consecutive: it continues
                last = steps.pop()
                step = Send(last.offset, last.length + block.length)
        else:
            step = Reuse(base_offset, block.length)
            if steps and isinstance(steps[-1], Reuse) \
                    and steps[-1].base_offset + steps[-1].length == base_offset:
                last = steps.pop()
                step = Reuse(last.base_offset, last.length + block.length)
        steps.append(step)
    return tuple(steps)


def sent_bytes(plan) -> int:
    """How many bytes of the new content ``plan`` sends."""
    return sum(step.length for step in plan if isinstance(step, Send))


def literals(plan, new: bytes) -> bytes:
    """The bytes ``plan`` sends, taken from the new content, in order."""
    return b"".join(new[step.offset:step.offset + step.length] for step in plan if isinstance(step, Send))


def rebuild(plan, base: bytes, sent: bytes) -> bytes:
    """The new content, from ``base`` and the bytes ``sent`` (:func:`literals`); raises
    ValueError when they do not fit the plan."""
    parts, position = [], 0
    for step in plan:
        if isinstance(step, Reuse):
            if step.base_offset + step.length > len(base):
                raise ValueError("the plan reads past the end of the base")
            parts.append(base[step.base_offset:step.base_offset + step.length])
        else:
            if position + step.length > len(sent):
                raise ValueError("fewer bytes were sent than the plan needs")
            parts.append(sent[position:position + step.length])
            position += step.length
    if position != len(sent):
        raise ValueError("more bytes were sent than the plan needs")
    return b"".join(parts)
