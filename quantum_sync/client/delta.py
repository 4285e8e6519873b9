"""Delta transfers of large files: only the blocks that changed travel.

- Upload (:meth:`Deltas.upload`): the block list of the server's version (kept here, or
  asked for with ``GET /api/blocks``) against the local file's, read once with its hash;
  the new blocks go in one ``POST /api/upload-delta``.
- Download (:meth:`Deltas.download`): the new version's block list (``GET /api/blocks``)
  against the local copy's; the missing runs of bytes come by ``Range`` (one request a
  run), and the file is assembled from the local copy plus those in a staging file, its
  SHA-256 checked, for the caller to install as any download.

Both answer None when a delta does not apply or fails on the way (a small file, no base,
a server without the endpoints, a base list that is not the one expected, a wrong
result): the caller then transfers the whole file. A 412 of a delta upload is raised as
the whole upload's would be. Block lists are kept by content hash in the folder's state
(:class:`~quantum_sync.blocklists.BlockLists`), for files of at least
:data:`~quantum_sync.delta.DELTA_MIN` bytes.
"""

import base64
import json
import os
import tempfile
import threading
import time

from twisted.internet import defer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.web.client import FileBodyProducer

from quantum_sync import delta, protocol
from quantum_sync.blocklists import READ_SIZE
from quantum_sync.blocks import BlockStream, decode_blocks, encode_blocks, plan_delta, sent_bytes
from quantum_sync.client import localfs, staging
from quantum_sync.client.localfs import unlink_quietly
from quantum_sync.client.transfer import (UPLOAD_CHUNK, PreconditionFailed, RequestRefused, ServerUnavailable,
                                          _bounded_body)
from quantum_sync.deltafile import PIECE, assemble
from quantum_sync.diskio import open_regular
from quantum_sync.errors import SyncError

#: A delta is not worth it when it would send more than this share of the file.
WORTH = 0.75
#: Hashes of large files remembered at most, by path and stat (:meth:`Deltas.prehashed`).
HASHES_HELD = 64
#: Block lists from broadcasts held at most (each until its download asks for it).
OFFERS_HELD = 16
#: Longest block list answer taken (a 64 GiB file of the smallest blocks).
MAX_LIST = (64 << 30) // (64 << 10) * 36


class Deltas:
    """Delta uploads and downloads through ``server`` (a
    :class:`~quantum_sync.client.transfer.ServerClient`), block lists kept in ``lists``, blocking work in ``threads`` (a
    :class:`~quantum_sync.threads.ThreadPoolService`)."""

    log = Logger()

    def __init__(self, server, lists, threads):
        self.server = server
        self.threads = threads
        self.lists = lists
        self.enabled = True  # until the server shows it has no delta endpoints
        #: the client's choice (``--delta``, see :func:`quantum_sync.delta.wanted`)
        self.wanted = True
        #: bytes the deltas sent and received (the bodies), and deltas tried that failed
        #: on the way (the file then went whole)
        self.sent = self.received = self.failed = 0
        #: range requests made for deltas (a multi-range request counts once)
        self.range_requests = 0
        #: large files read for their hash and block list (:meth:`prehashed`)
        self.files_hashed = 0
        self._hashed = {}  # (path, inode, size, mtime) -> sha256, oldest first
        self._hashed_lock = threading.Lock()  # (prehashed runs in the pool's threads)
        #: block lists that came with their broadcast (not asked for)
        self.lists_offered = 0
        self._offered = {}  # sha256 -> compact list, oldest first
        #: delta uploads that read their file again for its block list (it was not
        #: kept when the file was hashed: one hashed while it was written)
        self.lists_reread = 0

    def applies(self, size) -> bool:
        return self.enabled and self.wanted and size is not None and size >= delta.DELTA_MIN

    # -- block lists ---------------------------------------------------------------------

    def offer(self, operation, text) -> None:
        """A FileOperation broadcast brought the block list of the version ``operation``
        names (``text``: its ``blocks`` field, base64 of the compact form): held for the
        download that follows, at most :data:`OFFERS_HELD` of them (the oldest dropped)."""
        metadata = getattr(operation, "metadata", None)
        if not isinstance(text, str) or metadata is None or len(text) > 2 * delta.BROADCAST_LIST:
            return
        try:
            data = base64.b64decode(text, validate=True)
        except ValueError:
            return
        self._offered.pop(metadata.hash, None)
        self._offered[metadata.hash] = data
        while len(self._offered) > OFFERS_HELD:
            self._offered.pop(next(iter(self._offered)))

    async def _server_list(self, path: str, sha256: str):
        """The block list of the server's ``path`` when it is version ``sha256`` (kept
        here, or come with its broadcast, else asked for; then kept), or None."""
        kept = await self.threads.defer(self.lists.blocks, sha256)
        if kept is not None:
            return kept
        offered = self._offered.pop(sha256, None)
        if offered is not None:
            try:
                blocks = decode_blocks(offered, self.lists.chunker.max_size)
            except ValueError:
                blocks = None  # asked for instead
            if blocks:
                await self.threads.defer(self.lists.keep, sha256, offered)
                self.lists_offered += 1
                return blocks
        try:
            with self.server._watching() as watch:
                response = await self.server._transfer_request("GET", "/api/blocks", path, watch=watch)
                data = await _bounded_body(response, MAX_LIST, ServerUnavailable("block list too long"),
                                           f"block list of {path}", watch)
        except RequestRefused as e:
            if e.status == 405:
                self._unsupported()
            return None
        etag = (response.headers.getRawHeaders(b"etag") or [b""])[0].decode("ascii", "replace").strip('"')
        if etag != sha256:
            return None  # the server holds another version now
        try:
            blocks = decode_blocks(data, self.lists.chunker.max_size)
        except ValueError:
            return None
        await self.threads.defer(self.lists.keep, sha256, data)
        return blocks

    def _unsupported(self):
        if self.enabled:
            self.log.info("the server takes no delta transfers; large files travel whole")
        self.enabled = False

    async def prune(self, bases) -> int:
        """Remove the kept lists of contents none of ``bases`` (the folder's synced
        versions) has: deleted files' and versions replaced while the client was away."""
        keep = {base.entry.hash for base in bases if not base.entry.is_directory and base.entry.size >= delta.DELTA_MIN}
        return await self.threads.defer(self.lists.forget_all_but, keep, time.time())

    def forget(self, sha256):
        """Drop the kept list of ``sha256`` (a version replaced, or a list that proved
        wrong: it is made or fetched again when needed); a Deferred."""
        if not protocol.is_sha256(sha256 or ""):
            return defer.succeed(None)
        return self.threads.defer(unlink_quietly, os.path.join(self.lists.directory, sha256))

    def prehashed(self, abspath: str, take):
        """A ``prehashed(size)`` for :func:`~quantum_sync.client.localfs.version`: the
        hash ``take(size)`` has (a file hashed while it was written), else, for a file
        deltas apply to, its hash and block list from one read (the list kept: the
        delta upload that follows reads only the blocks it sends); else None. A file
        hashed so a moment ago, and unchanged since (the same inode, size and mtime: the
        rule that lets a scan skip a synced file), is not read again: a file saved by a
        rename over the old one is looked at twice, as a move and then as a change."""
        def prehashed(size):
            digest = take(size)
            if digest or not self.applies(size):
                return digest
            fd = localfs.open_regular(abspath)
            try:
                return self._hash_once(abspath, fd)
            finally:
                os.close(fd)

        return prehashed

    def _hash_once(self, abspath, fd) -> str:
        before = os.fstat(fd)
        key = (abspath, before.st_ino, before.st_size, before.st_mtime_ns)
        with self._hashed_lock:
            digest = self._hashed.get(key)
        if digest is not None and os.path.exists(os.path.join(self.lists.directory, digest)):
            return digest
        digest = self.lists.hash_and_keep(fd)
        after = os.fstat(fd)
        with self._hashed_lock:
            self.files_hashed += 1
            if (after.st_ino, after.st_size, after.st_mtime_ns) == key[1:]:  # (else it changed while read)
                self._hashed.pop(key, None)
                self._hashed[key] = digest
                while len(self._hashed) > HASHES_HELD:
                    self._hashed.pop(next(iter(self._hashed)))
        return digest

    # -- uploads -------------------------------------------------------------------------

    async def upload(self, path: str, abspath: str, sha256: str, if_match: str, size: int, staging_dir: str):
        """Upload ``abspath`` (``size`` bytes hashing to ``sha256``) onto the server's
        version ``if_match`` of ``path`` as a delta: the stored FileMetadata, or None
        (then upload it whole). PreconditionFailed when the server's version is another;
        a file that no longer hashes to ``sha256`` is refused by the server (422) and goes
        whole, where its hash is checked again."""
        if not (self.applies(size) and if_match):
            return None
        base = await self._server_list(path, if_match)
        if base is None:
            return None
        made = await self.threads.defer(_delta_body, self.lists, abspath, sha256, base, staging_dir)
        if made is None:
            return None  # not worth it
        body, length, blocks, reread = made
        self.lists_reread += reread
        headers = {b"X-Content-SHA256": [sha256.encode("ascii")], b"If-Match": [f'"{if_match}"'.encode("ascii")],
                   b"Content-Type": [b"application/octet-stream"]}
        opened = []

        def producer():
            opened.append(open(body, "rb"))
            return FileBodyProducer(opened[-1], readSize=UPLOAD_CHUNK)

        try:
            with self.server._watching("up", path) as watch:
                try:
                    response = await self.server._transfer_request("POST", "/api/upload-delta", path, headers,
                                                                   producer, watch=watch)
                finally:
                    for f in opened:
                        f.close()
                answer = await self.server._answer_body(response, f"delta upload of {path}", watch)
        except PreconditionFailed:
            raise
        except RequestRefused as e:
            await self._upload_refused(path, if_match, e)
            return None
        finally:
            await self.threads.defer(unlink_quietly, body)
        return await self._upload_accepted(path, answer, sha256, if_match, length, blocks)

    async def _upload_refused(self, path: str, if_match: str, e: RequestRefused) -> None:
        """A delta upload the server refused (``e``): deltas unsupported, or this one failed."""
        if e.status in (404, 405):
            self._unsupported()
        else:
            self.failed += 1
            self.log.info("delta upload of {path} refused ({code}: {message}); it goes whole",
                          path=path, code=e.code, message=e.message)
            await self.forget(if_match)  # (the list kept of the server's version may be wrong)

    async def _upload_accepted(self, path: str, answer: bytes, sha256: str, if_match: str, length: int, blocks):
        """The FileMetadata of the server's ``answer`` to a delta upload of ``length`` bytes;
        the block list of ``sha256`` kept when the server built exactly that."""
        try:
            meta = protocol.parse_metadata(json.loads(answer))
        except (ValueError, SyncError):
            raise ServerUnavailable(f"delta upload of {path}: malformed answer") from None
        self.sent += length
        if meta.hash == sha256:  # the server built exactly the content read: its list is right
            await self.threads.defer(self.lists.keep, sha256, blocks)
            await self.forget(if_match)
        return meta

    # -- downloads -----------------------------------------------------------------------

    async def download(self, path: str, abspath: str, local_hash: str, expected, remote, staging_dir: str):
        """The server's version ``remote`` of ``path`` assembled in a new file of
        ``staging_dir`` from the local copy ``abspath`` (version ``local_hash``, stat
        ``expected``: a LocalStat) plus the blocks it lacks, checked and fsynced: the
        staged file's name, or None (then download it whole)."""
        if not (self.applies(remote.size) and local_hash and expected is not None and local_hash != remote.hash):
            return None
        plan = await self._download_plan(path, abspath, local_hash, expected, remote)
        if plan is None:
            return None
        fd, sent_path = tempfile.mkstemp(dir=staging_dir, prefix="dl-sent-")
        try:
            try:
                if not await self._fetch_plan(path, remote.hash, plan, fd):
                    return None  # (the server holds another version now)
            finally:
                os.close(fd)
            staged = await self.threads.defer(_assemble, plan, abspath, expected, sent_path, staging_dir, remote.hash)
        finally:
            await self.threads.defer(unlink_quietly, sent_path)
        if staged is None:
            self.failed += 1
            self.log.info("delta download of {path} did not make its new version; it comes whole", path=path)
        else:
            self.received += sent_bytes(plan)
        await self.forget(local_hash)  # replaced, or (failed) perhaps wrong
        return staged

    async def _download_plan(self, path: str, abspath: str, local_hash: str, expected, remote):
        """The delta plan from the local copy to the server's version ``remote``, or None
        when either block list is missing or the plan would send too much."""
        new = await self._server_list(path, remote.hash)
        if new is None:
            return None
        local = await self.threads.defer(_local_list, self.lists, abspath, local_hash, expected)
        if local is None:
            return None
        plan = plan_delta(local, new)
        if sent_bytes(plan) > WORTH * remote.size:
            return None
        return plan

    async def _fetch_plan(self, path: str, sha256: str, plan, fd) -> bool:
        """Append to ``fd`` the bytes ``plan`` needs from the server's ``path``, one request
        per range group; False when the server no longer serves version ``sha256``."""
        for group in delta.range_groups(delta.runs(plan)):
            if len(group) == 1:
                fetched = await self._fetch_run(path, sha256, *group[0], os.dup(fd))
            else:
                fetched = await self._fetch_runs(path, sha256, group, fd)
            if not fetched:
                return False
        return True

    async def _fetch_runs(self, path, sha256, runs, fd) -> bool:
        """Append the bytes of ``runs`` (several short ones) of the server's ``path`` to
        ``fd``, from one multi-range request (its answer held in memory, at most
        :data:`~quantum_sync.delta.GROUP_BYTES` and the parts' heads); False when the
        server no longer serves version ``sha256`` or answers otherwise."""
        ranges = ",".join(f"{offset}-{offset + length - 1}" for offset, length in runs)
        limit = sum(length for _, length in runs) + 512 * (len(runs) + 1)
        self.range_requests += 1
        try:
            with self.server._watching("down", path) as watch:
                response = await self.server._transfer_request(
                    "GET", "/api/download", path, {b"Range": [f"bytes={ranges}".encode("ascii")]}, watch=watch)
                etag = (response.headers.getRawHeaders(b"etag") or [b""])[0].decode("ascii", "replace").strip('"')
                boundary = _boundary(response)
                if response.code != 206 or etag != sha256 or boundary is None:
                    response.deliverBody(_Discard())
                    return False
                body = await _bounded_body(response, limit, ServerUnavailable(f"ranges of {path}: too long"),
                                           f"ranges of {path}", watch)
        except RequestRefused:
            return False
        try:
            parts = delta.split_byteranges(body, boundary, runs)
        except ValueError:
            return False
        await self.threads.defer(_append, fd, parts)
        return True

    async def _fetch_run(self, path, sha256, offset, length, fd) -> bool:
        """Append bytes ``offset`` to ``offset + length`` of the server's ``path`` to
        ``fd`` (closed here); False when the server no longer serves version ``sha256``."""
        headers = {b"Range": [f"bytes={offset}-{offset + length - 1}".encode("ascii")]}
        self.range_requests += 1
        sink = staging.StagingSink(self.server._reactor, fd)
        try:
            with self.server._watching("down", path) as watch:
                response = await self.server._transfer_request("GET", "/api/download", path, headers, watch=watch)
                etag = (response.headers.getRawHeaders(b"etag") or [b""])[0].decode("ascii", "replace").strip('"')
                if response.code != 206 or etag != sha256 or response.length != length:
                    response.deliverBody(_Discard())
                    return False
                await staging.receive(response, sink, watch)
        except RequestRefused:
            return False
        finally:
            await self.threads.defer(sink.finish)
        return True


class _Discard(Protocol):
    """Reads an unwanted answer to its end (its connection can then be used again)."""

    def dataReceived(self, data):
        pass


def _boundary(response):
    """The boundary of a ``multipart/byteranges`` answer, or None."""
    kind = (response.headers.getRawHeaders(b"content-type") or [b""])[0]
    media, _, parameters = kind.partition(b";")
    if media.strip().lower() != b"multipart/byteranges":
        return None
    for parameter in parameters.split(b";"):
        name, _, value = parameter.partition(b"=")
        if name.strip().lower() == b"boundary" and value.strip().strip(b'"'):
            return value.strip().strip(b'"')
    return None


def _append(fd: int, parts) -> None:
    """Write ``parts`` at the end of ``fd``, in order."""
    for part in parts:
        view = memoryview(part)
        while view:
            view = view[os.write(fd, view):]


def _local_list(lists, abspath, sha256, expected):
    """The block list of the local file ``abspath`` while it is version ``sha256`` with
    stat ``expected`` (kept, else read and kept), or None."""
    kept = lists.blocks(sha256)
    if kept is not None:
        return kept
    try:
        fd, st = open_regular(abspath, follow_symlinks=False)
    except OSError:
        return None
    try:
        if (st.st_size, st.st_mtime_ns) != (expected.size, expected.mtime_ns):
            return None
        data = lists.make(fd, sha256)
    finally:
        os.close(fd)
    return None if data is None else decode_blocks(data, lists.chunker.max_size)


def _delta_body(lists, abspath, sha256, base, staging_dir):
    """``(name of a temp file holding the delta body, its length, the file's block list,
    whether the file was read for that list)``
    that makes the local file ``abspath`` (version ``sha256``) from ``base`` (the
    server's list); None when the delta is not worth it. The file's list is the one kept
    when it was hashed, else made from one read (not hashed whole again: the server
    checks the result against ``sha256``); then only the blocks sent are read."""
    try:
        fd, _ = open_regular(abspath, follow_symlinks=False)
    except OSError:
        return None
    try:
        blocks = lists.blocks(sha256)
        reread = blocks is None
        if reread:
            blocks = _blocks_of(lists.chunker, fd)
        plan = plan_delta(base, blocks)
        size = sum(block.length for block in blocks)
        if sent_bytes(plan) > WORTH * size:
            return None
        out, name = tempfile.mkstemp(dir=staging_dir, prefix="up-delta-")
        with os.fdopen(out, "wb") as body:
            body.write(delta.encode_head(plan))
            for start, length in delta.runs(plan):
                end = start + length
                while start < end:
                    piece = os.pread(fd, min(PIECE, end - start), start)
                    if not piece:
                        break  # shorter now: the server's check refuses the result
                    body.write(piece)
                    start += len(piece)
            length = body.tell()
    finally:
        os.close(fd)
    return name, length, encode_blocks(blocks), reread


def _blocks_of(chunker, fd) -> list:
    """The block list of the open file ``fd``, read once."""
    stream, blocks, offset = BlockStream(chunker), [], 0
    while piece := os.pread(fd, READ_SIZE, offset):
        blocks.extend(stream.feed(piece))
        offset += len(piece)
    blocks.extend(stream.finish())
    return blocks


def _assemble(plan, abspath, expected, sent_path, staging_dir, sha256):
    """A staged file built from the local copy and the bytes fetched, fsynced; None (and
    nothing left) when the local copy is no longer ``expected`` or the result does not
    hash to ``sha256``."""
    try:
        base_fd, st = open_regular(abspath, follow_symlinks=False)
    except OSError:
        return None
    out_fd, staged = tempfile.mkstemp(dir=staging_dir, prefix="dl-")
    try:
        with open(sent_path, "rb") as sent:
            if (st.st_size, st.st_mtime_ns) != (expected.size, expected.mtime_ns):
                digest = None
            else:
                try:
                    digest, _ = assemble(plan, base_fd, sent, out_fd)
                except ValueError:
                    digest = None
        if digest == sha256:
            os.fsync(out_fd)
    except BaseException:
        os.close(out_fd)
        os.close(base_fd)
        unlink_quietly(staged)
        raise
    os.close(out_fd)
    os.close(base_fd)
    if digest != sha256:
        unlink_quietly(staged)
        return None
    return staged
