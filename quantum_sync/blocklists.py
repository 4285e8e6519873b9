"""Block lists kept on disk, one file per content, named by the content's SHA-256.

Blocking: use a thread. A list is written as its blocks are found (:class:`ListWriter`,
36 bytes a block, never held whole), into a temp name, and renamed to its content's hash
once that is known, so a list on disk is always whole; a content's list depends only on
its bytes, so whichever file holds those bytes, now or later, the list is right. Both the
server (in its state folder) and the client (in its own) keep them this way.
"""

import os
import tempfile
from array import array
from collections.abc import Sequence

from quantum_sync.blocks import ENTRY_SIZE, BlockStream, Chunker, decode_blocks, encode_blocks, looked_up
from quantum_sync.deltafile import HashThread
from quantum_sync.protocol import is_sha256

#: Bytes read at a time when a list is made from a file (the block being cut when a
#: piece ends is cut again with the next: larger pieces, less of that).
READ_SIZE = 4 * 1024 * 1024
#: Bytes handed to the whole-file hash's thread at a time: the few it holds waiting are
#: slices of at most three pieces read, not that many whole pieces.
HASH_SLICE = 1024 * 1024


class ListWriter:
    """A block list being written as a content streams by: :meth:`feed` its bytes in
    order, then :meth:`commit` under the content's hash (or :meth:`abort`)."""

    def __init__(self, directory: str, chunker: Chunker):
        self._directory = directory
        self._stream = BlockStream(chunker)
        fd, self._temp = tempfile.mkstemp(prefix="list-", dir=directory)
        self._file = os.fdopen(fd, "wb", buffering=64 * 1024)

    def feed(self, data) -> None:
        self._file.write(encode_blocks(self._stream.feed(data)))

    def commit(self, sha256: str) -> None:
        """The content has ended and hashes to ``sha256``: the list takes its name."""
        try:
            self._file.write(encode_blocks(self._stream.finish()))
            self._file.close()
            os.replace(self._temp, os.path.join(self._directory, sha256))
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        if not self._file.closed:
            self._file.close()
        try:
            os.unlink(self._temp)
        except FileNotFoundError:
            pass


class BlockLists:
    """The block lists kept in ``directory`` (created when missing)."""

    def __init__(self, directory: str, chunker: Chunker = Chunker()):
        self.directory = directory
        self.chunker = chunker
        os.makedirs(directory, exist_ok=True)

    def writer(self) -> ListWriter:
        return ListWriter(self.directory, self.chunker)

    def _name(self, sha256: str) -> str:
        if not is_sha256(sha256):
            raise ValueError("not a SHA-256")
        return os.path.join(self.directory, sha256)

    def read(self, sha256: str, limit: int = -1) -> bytes | None:
        """The compact form of the list of content ``sha256``, or None when none is kept
        (or, given a ``limit``, when it is longer than that)."""
        try:
            with open(self._name(sha256), "rb") as f:
                data = f.read(limit + 1 if limit >= 0 else -1)
        except FileNotFoundError:
            return None
        return data if len(data) % ENTRY_SIZE == 0 and (limit < 0 or len(data) <= limit) else None

    def blocks(self, sha256: str):
        """The decoded list of content ``sha256``, or None."""
        data = self.read(sha256)
        return None if data is None else decode_blocks(data, self.chunker.max_size)

    def make(self, fd: int, sha256: str) -> bytes | None:
        """Read the open file ``fd`` from its start, keep its list under ``sha256`` and
        return it; None when the file does not hash to ``sha256`` (its list is then kept
        under the hash it has)."""
        return self.read(sha256) if self.keep_file(fd, sha256) else None

    def keep_file(self, fd: int, sha256: str) -> bool:
        """Keep the list of the open file ``fd``: whether it is ``sha256``'s (its list is
        else kept under the hash it has)."""
        return self.hash_and_keep(fd) == sha256

    def open(self, sha256: str):
        """The kept list of ``sha256`` read from its file (:class:`KeptList`: only its
        offsets held), or None (as :meth:`read`); ValueError when the file holds a
        block of no bytes or too many."""
        try:
            fd = os.open(self._name(sha256), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            if os.fstat(fd).st_size % ENTRY_SIZE:
                os.close(fd)
                return None
            return KeptList(fd, self.chunker.max_size)
        except BaseException:
            os.close(fd)
            raise

    def hash_and_keep(self, fd: int) -> str:
        """Read the open file ``fd`` once from its start: its SHA-256 (hex), its list
        kept under it. The whole-file hash runs on a thread of its own while this one
        cuts the blocks and hashes them (two cores, one read)."""
        writer, digest, offset = self.writer(), HashThread(), 0
        try:
            while piece := os.pread(fd, READ_SIZE, offset):
                view = memoryview(piece)
                for start in range(0, len(piece), HASH_SLICE):
                    digest.bytes(view[start:start + HASH_SLICE])
                writer.feed(piece)
                offset += len(piece)
            sha256 = digest.finish()
        except BaseException:
            digest.stop()
            writer.abort()
            raise
        writer.commit(sha256)
        return sha256

    def keep(self, sha256: str, data: bytes) -> None:
        """Keep ``data`` (a compact list already checked) as the list of ``sha256``."""
        self.keep_blocks(sha256, [data])

    def keep_blocks(self, sha256: str, parts) -> None:
        """Keep the list of ``sha256`` given as ``parts``: compact lists, or
        :class:`~quantum_sync.blocks.Block` s, written as they come."""
        name = self._name(sha256)
        fd, temp = tempfile.mkstemp(prefix="list-", dir=self.directory)
        try:
            with os.fdopen(fd, "wb", buffering=64 * 1024) as f:
                for part in parts:
                    f.write(part if isinstance(part, bytes) else encode_blocks((part,)))
            os.replace(temp, name)
        except BaseException:
            os.unlink(temp)
            raise

    def blocks_of_range(self, fd: int, offset: int, length: int):
        """The blocks of ``length`` bytes at ``offset`` of file ``fd`` taken alone
        (offsets from 0), read a piece at a time."""
        stream, end = BlockStream(self.chunker), offset + length
        while offset < end:
            piece = os.pread(fd, min(READ_SIZE, end - offset), offset)
            if not piece:
                raise ValueError("the file ended inside the range")
            yield from stream.feed(piece)
            offset += len(piece)
        yield from stream.finish()

    def forget_all_but(self, keep, now: float, temp_age: float = 3600) -> int:
        """Remove every list whose content is not in ``keep`` (a set of hashes), and temp
        names older than ``temp_age`` seconds at ``now`` (a crash's; younger ones are
        being written); returns how many were removed."""
        removed = 0
        for name in os.listdir(self.directory):
            path = os.path.join(self.directory, name)
            try:
                if name in keep or (name.startswith("list-") and now - os.lstat(path).st_mtime < temp_age):
                    continue
                os.unlink(path)
                removed += 1
            except FileNotFoundError:
                pass
        return removed


#: Entries read at a time when a kept list is opened.
_ENTRIES_READ = 4096


class KeptList(Sequence):
    """A kept list read from its open file ``fd`` (closed by :meth:`close`): the offsets
    of its blocks held (8 bytes a block), each :class:`~quantum_sync.blocks.Block` read
    when it is looked at. The file never changes (a list is renamed into place whole)."""

    def __init__(self, fd: int, max_size: int):
        self._fd = fd
        self.starts = array("Q", [0])
        position = 0
        while data := os.pread(fd, _ENTRIES_READ * ENTRY_SIZE, position):
            self.starts.extend(decode_blocks(data, max_size, self.starts[-1]).starts[1:])
            position += len(data)

    def __len__(self) -> int:
        return len(self.starts) - 1

    def __getitem__(self, index):
        return looked_up(self, index, self._block)

    def _block(self, index: int):
        return decode_blocks(os.pread(self._fd, ENTRY_SIZE, index * ENTRY_SIZE), offset=self.starts[index])[0]

    def close(self) -> None:
        os.close(self._fd)
