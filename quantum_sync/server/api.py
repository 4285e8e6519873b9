"""The REST API (contract section 4) as Klein routes over :class:`FileOperations`.

Every file route first asks the authorizer; every failure is a JSON error body with a
contract code (SyncError), and only a real bug answers 500 INTERNAL_ERROR (logged).
Upload bodies arrive already spooled and hashed by
:class:`quantum_sync.server.site.SyncRequest` (small ones in memory, others in a temp file).
"""

import contextlib
import hashlib
import io
import os

import attrs
from klein import Klein
from twisted.internet.defer import CancelledError, Deferred, DeferredList, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import resource, server
from twisted.web.resource import IResource
from werkzeug.exceptions import MethodNotAllowed, NotFound

from quantum_sync import batch, paths
from quantum_sync.errors import SyncError
from quantum_sync.protocol import is_sha256, parse_operation
from quantum_sync.server.download import HashedFile, Opened, describes, open_file
from quantum_sync.server.httpio import (
    client_id, encode_json, expected_sha256, header, query, query_int, read_json_body, write_error, write_json)
from quantum_sync.server.operations import check_client_id, etag_value
from quantum_sync.server.relay import RelayResource, Relays
from quantum_sync.server.spools import SPOOLS, BatchSpool
from quantum_sync.server.store import storage_error
from quantum_sync.server.zstdfile import ZstdDownload, accepts_zstd, worth_compressing
from quantum_sync.server.versions import parse_restore
from quantum_sync.threads import ReactorThreads

MAX_CHANGES_LIMIT = 10000
DEFAULT_CHANGES_LIMIT = 1000
#: Tries to pair an opened file with its hash before a download gives up (CONFLICT).
DOWNLOAD_ATTEMPTS = 3


def _check_delta_base(path: str, metadata, opened, base: str) -> None:
    """PRECONDITION_FAILED unless the stored version is ``base``; CONFLICT when it is too
    small to have a block list."""
    if metadata.hash != base:
        raise SyncError("PRECONDITION_FAILED", f"{path} is at {metadata.hash}, not {base}")
    if isinstance(opened.file, io.BytesIO):
        raise SyncError("CONFLICT", f"{path} is too small for a delta", reason="BLOCK_NOT_HELD")


def _spool_opener(spool):
    """A callable opening the spooled body for reading (its file, or its bytes in memory)."""
    return (lambda: open(spool.path, "rb")) if spool.path is not None else (lambda: io.BytesIO(spool.body))


class FileApi:
    """Klein routes of ``/api/*`` bound to the server's collaborators."""

    app = Klein()
    log = Logger()

    def __init__(self, operations, authorizer, reactor, versions=None, deltas=None, threads=None):
        self.operations = operations
        #: :class:`~quantum_sync.server.delta.Deltas`: /api/blocks and /api/upload-delta
        self.deltas = deltas
        self.authorizer = authorizer
        #: :class:`~quantum_sync.server.versions.Versions`: /api/versions and /api/restore
        self.versions = versions
        self._reactor = reactor
        self._threads = threads if threads is not None else ReactorThreads(reactor)
        self.relays = Relays(reactor, operations.hub)

    def resource(self):
        return _Dispatch(self, self.app.resource())

    def upload_gate(self, request) -> None:
        """Refuse an upload as soon as its headers are in (before the body is stored):
        UPLOAD_DISABLED, or the authorizer's refusal (its token is judged now, not when
        the body is all in: see :meth:`TokenAuthorizer.admit_head`)."""
        if not self.operations.enable_upload:
            raise SyncError("UPLOAD_DISABLED", "uploads are disabled on this server")
        self.authorizer.admit_head(request, "write")

    def relay_upload(self, request, spool, length) -> None:
        """Offer an upload whose headers are in (its body about to go into ``spool``) to
        the relays. One whose path, hash or client id is missing or unreadable is not
        relayed; its handler refuses it later."""
        try:
            path = paths.normalize(query(request, "path"))
            expected = expected_sha256(request)
            source = client_id(request)
        except SyncError:
            return
        if expected is not None:
            self.relays.offer(spool, path, expected, length, source)

    async def _authorize(self, request, role: str):
        """Authorize ``request`` for ``role``, then wait until the index is trusted after
        a start (every route that reads or changes files comes here; see
        :meth:`FileOperations.wait_ready`)."""
        identity = self.authorizer.authorize_request(request, role)
        bindings = getattr(self.operations.hub, "bindings", None)
        if bindings is not None:  # with auth on, a client id is its first user's
            await maybeDeferred(bindings.claim, header(request, "X-Client-Id") or "", identity.user)
        await self.operations.wait_ready()
        return identity

    def _path(self, request, source_client: str) -> str:
        """The validated ``path`` query parameter, resolved inside the root."""
        return self._located(request, source_client)[0]

    def _located(self, request, source_client: str) -> tuple:
        """``(path, on-disk name, its lstat or None)`` of the validated ``path`` query
        parameter."""
        raw = request.args.get(b"path", [None])[0]
        return self._locate(lambda: query(request, "path"), raw, source_client, request)

    def _locate(self, path_of, raw, source_client: str, request) -> tuple:
        """``(path, on-disk name, its lstat or None)`` of the path ``path_of()`` returns
        (``raw``: as received, for the alert a hostile one raises)."""
        try:
            path = paths.normalize(path_of())
            return (path, *self.operations.store.look(path))
        except SyncError as error:
            if error.code == "INVALID_PATH":
                self.operations.reject_path(raw, error, source_client, _address(request))
            raise

    # -- errors ----------------------------------------------------------------

    @app.handle_errors(NotFound)
    def not_found(self, request, failure):
        return write_error(request, SyncError("NOT_FOUND", "no such endpoint"))

    @app.handle_errors(MethodNotAllowed)
    def not_allowed(self, request, failure):
        return write_error(request, SyncError("METHOD_NOT_ALLOWED", "method not allowed here"))

    @app.handle_errors(SyncError)
    def refused(self, request, failure):
        return write_error(request, failure.value)

    @app.handle_errors(Exception)
    def bug(self, request, failure):
        return self.failed(request, failure)

    def failed(self, request, failure) -> bytes:
        """The answer to a failure of a route: its SyncError, else a logged 500."""
        if failure.check(SyncError):
            return write_error(request, failure.value)
        self.log.failure("unhandled error answering {method} {path}", failure,
                         method=request.method, path=request.path)
        return write_error(request, SyncError("INTERNAL_ERROR", "internal server error"))

    # -- reads -----------------------------------------------------------------

    @app.route("/api/list", methods=["GET"])
    async def list_files(self, request):
        await self._authorize(request, "read")
        rows = await self.operations.index.list_all()
        # One entry a file in the root: encoding an unbounded listing is a thread's work.
        return await self._write_json_in_thread(request, lambda: [metadata.to_json() for metadata, _ in rows])

    async def _write_json_in_thread(self, request, body_of):
        """:func:`write_json` of ``body_of()``, built and encoded in a thread."""
        encoded = await self._threads.defer(lambda: encode_json(body_of()))
        return write_json(request, None, encoded=encoded)

    @app.route("/api/metadata", methods=["GET"])
    async def metadata(self, request):
        await self._authorize(request, "read")
        path = self._path(request, client_id(request))
        metadata = await self.operations.metadata(path)
        return write_json(request, metadata.to_json())

    @app.route("/api/download", methods=["GET"])
    async def download(self, request):
        await self._authorize(request, "read")
        path, absolute, st = self._located(request, client_id(request))
        metadata, opened = await self._opened_version(path, absolute, st)
        served = HashedFile(absolute, metadata.hash, opened)
        if accepts_zstd(request) and not isinstance(opened.file, io.BytesIO):
            try:
                worth = await self._threads.defer(worth_compressing, opened.file.fileno())
            except BaseException:
                opened.file.close()
                raise
            if worth:  # (a file that does not shrink goes as it is)
                return ZstdDownload(opened.file, metadata.hash, served.download_headers, self._reactor, self._threads)
        return served

    async def _opened_version(self, path: str, absolute: str, st) -> tuple:
        """``(FileMetadata, Opened)`` of the file stored at ``path`` (on-disk name
        ``absolute``, lstat ``st``): the opened file and the metadata of exactly the
        version opened (a small one's bytes already read)."""
        recent = self.operations.recent.get(path, st)
        if recent is not None:  # a small file just uploaded, still as it was stored
            metadata, body = recent
            return metadata, Opened(io.BytesIO(body), st)
        for _ in range(DOWNLOAD_ATTEMPTS):
            # one thread call opens the file (a small one is read whole) and reads its row
            opened, current = await self.operations.index.get_after(
                lambda: open_file(absolute), path)
            try:
                # the index row describes the opened file (the common case): serve it;
                # else check the path against the disk (refreshing a stale row)
                if not describes(current, opened):
                    current = await self.operations.stored(path)
            except BaseException:
                if opened is not None:
                    opened.file.close()
                raise
            metadata = current[0]
            if metadata.is_directory:
                raise SyncError("INVALID_REQUEST", f"{path} is a directory")
            if opened is not None:
                if describes(current, opened):
                    return metadata, opened
                opened.file.close()  # replaced between opening and hashing: again
        raise SyncError("CONFLICT", f"{path} keeps changing while being read; try again")

    @app.route("/api/relay", methods=["GET"])
    async def relay(self, request):
        """An upload in progress, as it arrives (:mod:`quantum_sync.server.relay`)."""
        await self._authorize(request, "read")
        path = self._path(request, client_id(request))
        return RelayResource(self.relays.get(path, query(request, "hash").lower()))

    @app.route("/api/changes", methods=["GET"])
    async def changes(self, request):
        await self._authorize(request, "read")
        since = query_int(request, "since", 0, 0, 2**63 - 1)
        limit = query_int(request, "limit", DEFAULT_CHANGES_LIMIT, 1, MAX_CHANGES_LIMIT)
        known = query(request, "journal_id", required=False)
        index = self.operations.index
        if known is not None and known != index.journal_id:
            head = await index.head()
            raise SyncError("CURSOR_EXPIRED", "the journal was started anew; re-list and continue"
                            f" from {head}", journal_id=index.journal_id, cursor=head)
        changes, cursor, has_more = await index.changes(since, limit)
        return write_json(request, {
            "changes": [change.to_json() for change in changes],
            "cursor": cursor, "has_more": has_more, "journal_id": index.journal_id,
        })

    # -- writes ----------------------------------------------------------------

    @app.route("/api/upload", methods=["POST", "PUT"])
    async def upload(self, request):
        spool = request.content
        try:
            await self._authorize(request, "write")
            source = client_id(request)
            path = self._path(request, source)
            if not isinstance(spool, SPOOLS):
                raise SyncError("INTERNAL_ERROR", "upload body was not spooled")
            self._check_spooled(spool)
            expected = expected_sha256(request)
            if expected is None and spool.compressed:
                raise SyncError("INVALID_REQUEST", "a compressed upload needs X-Content-SHA256")
            await self._finish_spool(spool)
            if expected is not None and expected != spool.sha256:
                raise SyncError("HASH_MISMATCH", f"the body hashes to {spool.sha256}, not {expected}")
            async with self._offering(spool.sha256, spool.size):
                metadata, _ = await self.operations.upload(
                    path, spool, spool.sha256, spool.size, source,
                    if_match=header(request, "If-Match"),
                    if_none_match=header(request, "If-None-Match"))
            return write_json(request, metadata.to_json())
        finally:
            if isinstance(spool, SPOOLS):
                spool.close()

    # -- delta transfers (quantum_sync.server.delta) ---------------------------------

    @app.route("/api/blocks", methods=["GET"])
    async def blocks(self, request):
        """The block list of a stored file (ETag: the file's hash)."""
        await self._authorize(request, "read")
        path, absolute, st = self._located(request, client_id(request))
        metadata, opened = await self._opened_version(path, absolute, st)
        with opened.file:
            if self.deltas is None or isinstance(opened.file, io.BytesIO):
                raise SyncError("NOT_FOUND", f"{path} has no block list (too small)")
            data = await self.deltas.block_list(metadata, opened.file.fileno())
        request.setHeader(b"Content-Type", b"application/octet-stream")
        request.setHeader(b"ETag", f'"{metadata.hash}"'.encode("ascii"))
        return data

    def _offering(self, sha256, size):
        """The new version's short block list goes with its broadcast (while the upload installs)."""
        return self.deltas.offering(sha256, size) if self.deltas is not None else contextlib.nullcontext()

    @app.route("/api/upload-delta", methods=["POST", "PUT"])
    async def upload_delta(self, request):
        """A changed file as a delta of the stored version its If-Match names."""
        spool = request.content
        try:
            await self._authorize(request, "write")
            source = client_id(request)
            path, absolute, st = self._located(request, source)
            if not isinstance(spool, SPOOLS) or self.deltas is None:
                raise SyncError("INTERNAL_ERROR", "upload body was not spooled")
            self._check_spooled(spool)
            expected, base = expected_sha256(request), etag_value(header(request, "If-Match"))
            if expected is None or not base or not is_sha256(base):
                raise SyncError("INVALID_REQUEST", "a delta upload needs X-Content-SHA256 and If-Match naming its base")
            await self._finish_spool(spool)
            if st is None:
                raise SyncError("PRECONDITION_FAILED", f"{path} does not exist")
            metadata, opened = await self._opened_version(path, absolute, st)
            with opened.file:
                _check_delta_base(path, metadata, opened, base)
                built = await self.deltas.build(_spool_opener(spool), metadata, opened.file.fileno(), expected)
            async with self._offering(expected, built.stat.st_size):
                metadata, _ = await self.operations.upload(path, built, expected, built.stat.st_size, source,
                                                           if_match=base, release_temp=True)
            return write_json(request, metadata.to_json())
        finally:
            if isinstance(spool, SPOOLS):
                spool.close()

    def _check_spooled(self, spool) -> None:
        """The spooling's error, or UPLOAD_DISABLED when uploads are off."""
        if spool.error is not None:
            raise spool.error
        if not self.operations.enable_upload:
            raise SyncError("UPLOAD_DISABLED", "uploads are disabled on this server")

    async def _finish_spool(self, spool) -> None:
        """Write, hash and fsync what is left of a spool file (in a thread); its error if any."""
        if spool.path is not None:
            await self._threads.defer(spool.finish)
        if spool.error is not None:
            raise spool.error

    @app.route("/api/sync", methods=["POST"])
    async def sync(self, request):
        await self._authorize(request, "write")
        if not self.operations.enable_upload:
            raise SyncError("UPLOAD_DISABLED", "changes are disabled on this server")
        body = await read_json_body(request, self._threads)
        if not isinstance(body, dict) or not isinstance(body.get("operations"), list):
            raise SyncError("INVALID_REQUEST", 'the body must be {"operations": [...], "client_id": "..."}')
        unknown = set(body) - {"operations", "client_id"}
        if unknown:
            raise SyncError("INVALID_REQUEST", f"unknown field(s) {sorted(unknown)}")
        source = check_client_id(body["client_id"]) if "client_id" in body else client_id(request)
        results = [await self._sync_one(item, source, request) for item in body["operations"]]
        cursor = await self.operations.index.head()
        return write_json(request, {"results": results, "cursor": cursor})

    async def _sync_one(self, item, source: str, request) -> dict:
        try:
            try:
                operation = parse_operation(item)
            except SyncError as error:
                if error.code == "INVALID_PATH":
                    self.operations.reject_path(item, error, source, _address(request))
                raise
            change = await self.operations.apply(operation, source)
            return {"status": "applied", "seq": change.seq}
        except SyncError as error:
            status = "conflict" if error.code in ("CONFLICT", "PRECONDITION_FAILED") else "error"
            return {"status": status, "code": error.code, "message": error.message}

    # -- versions and trash (quantum_sync.server.versions) ------------------------

    @app.route("/api/versions", methods=["GET"])
    async def list_versions(self, request):
        """The kept versions of a file, and the deleted files below a folder (an empty
        ``path``: below the root)."""
        await self._authorize(request, "read")
        source = client_id(request)
        path = "" if request.args.get(b"path") == [b""] else self._path(request, source)
        found = await self.versions.listing(path)
        # a folder's trash may hold many: encoded in a thread, as a listing is
        return await self._write_json_in_thread(
            request, lambda: {"versions": [version.to_json() for version in found]})

    @app.route("/api/restore", methods=["POST"])
    async def restore(self, request):
        """A kept version back at its path (or at ``to``), as an upload of it would be."""
        await self._authorize(request, "write")
        source = client_id(request)
        if not self.operations.enable_upload:
            raise SyncError("UPLOAD_DISABLED", "uploads are disabled on this server")
        wanted = parse_restore(await read_json_body(request, self._threads))
        path = self._locate(lambda: wanted.path, wanted.path, source, request)[0]
        to = path if wanted.to is None else self._locate(lambda: wanted.to, wanted.to, source, request)[0]
        metadata, _ = await self.versions.restore(
            self.operations, path, wanted.id, to, source,
            if_match=header(request, "If-Match"), if_none_match=header(request, "If-None-Match"))
        return write_json(request, metadata.to_json())

    # -- batches of small files (quantum_sync.batch) ------------------------------

    @app.route("/api/batch/upload", methods=["POST", "PUT"])
    async def batch_upload(self, request):
        """Many small files in one body: each is verified, installed (the group commit
        takes them together), journalled and broadcast as its own upload would be, and
        answered on its own."""
        content = request.content
        try:
            await self._authorize(request, "write")
            source = client_id(request)
            if not self.operations.enable_upload:
                raise SyncError("UPLOAD_DISABLED", "uploads are disabled on this server")
            limit = request.channel.site.max_upload_size if request.channel else None
            taking = self._threads.defer(self._take_apart, content, limit)
        except BaseException:
            _close_spool(content)
            raise
        # the body is the thread's until it is done, whatever happens to the request
        taking.addBoth(lambda result: _close_spool(content) or result)
        try:
            items = await _shielded(taking)
        except CancelledError:  # the client went away: its staged files are released
            taking.addCallbacks(self._discard_staged, lambda failure: None)
            raise
        # each staged file belongs to the operations from here on (release_temp)
        outcomes = await _each([self._batch_upload_one(item, data, source, request)
                                for item, data in items])
        return write_json(request, {"results": [batch.result_json(o) for o in outcomes],
                                    "cursor": self.operations.head})

    def _discard_staged(self, items) -> Deferred:
        """Release the staged files of a batch nobody will upload (in a thread)."""
        staged = [data.path for _, data in items if isinstance(data, _StagedBody)]
        return self._threads.defer(lambda: [self.operations.store.discard(temp) for temp in staged])

    def _take_apart(self, content, limit) -> list:
        """Blocking: ``(UploadItem, its staged body or its SyncError)`` per file of a batch
        body: its path resolved, its size within ``limit``, its bytes hashed, then all the
        good ones written to temp files and made durable together, before the group
        commit takes them (so a batch is staged while the one before it commits)."""
        if isinstance(content, BatchSpool):
            body = content.body
        else:  # spooled by Twisted (the uploads' memory was taken)
            content.seek(0)
            body = content.read()
        items, contents = batch.parse_upload(body)
        taken = []
        for item in items:
            try:
                data = self._checked_bytes(item, contents, limit)
            except SyncError as error:
                data = error
            taken.append((item, data))
        good = [position for position, (_, data) in enumerate(taken) if not isinstance(data, SyncError)]
        staged = self.operations.store.stage_many([taken[position][1] for position in good])
        for position, outcome in zip(good, staged):
            item, data = taken[position]
            taken[position] = (item, storage_error(outcome) if isinstance(outcome, OSError)
                               else _StagedBody(*outcome, data))
        return taken

    def _checked_bytes(self, item, contents, limit) -> bytes:
        """The bytes of one file of a batch body once its path, size and hash are good
        (blocking: it resolves the path on disk); its SyncError otherwise."""
        if item.error is not None:
            raise item.error
        self.operations.store.resolve(item.path)
        if limit is not None and item.size > limit:
            raise SyncError("TOO_LARGE", f"{item.path} is larger than the limit of {limit} bytes")
        data = item.content(contents)
        digest = hashlib.sha256(data).hexdigest()
        if digest != item.sha256:
            raise SyncError("HASH_MISMATCH", f"{item.path} hashes to {digest}, not {item.sha256}")
        return data

    async def _batch_upload_one(self, item, staged, source: str, request):
        """One file of an upload batch: its FileMetadata as stored, or its SyncError. Its
        staged file is the operations' to install or release from the call on, whatever
        happens to this request."""
        if isinstance(staged, SyncError):
            if staged.code == "INVALID_PATH":
                self.operations.reject_path(item.path, staged, source, _address(request))
            return staged
        metadata, _ = await self.operations.upload(
            item.path, staged, item.sha256, item.size, source,
            if_match=item.if_match, if_none_match=item.if_none_match, release_temp=True)
        return metadata

    @app.route("/api/batch/download", methods=["POST"])
    async def batch_download(self, request):
        """Many small files in one answer, each with the metadata of exactly the bytes
        sent; a file that cannot be sent so is refused on its own."""
        await self._authorize(request, "read")
        source = client_id(request)
        wanted = batch.parse_download_request(await read_json_body(request, self._threads))
        # a file just uploaded is answered from memory at once; the others need the disk
        outcomes = [self._batch_read_recent(raw, source, request) for raw in wanted]
        later = [position for position, outcome in enumerate(outcomes) if outcome is None]
        if later:
            read = await _each([self._batch_read_one(wanted[position], source, request) for position in later])
            for position, outcome in zip(later, read):
                outcomes[position] = outcome
        total = 0
        for position, outcome in enumerate(outcomes):
            if not isinstance(outcome, SyncError):
                total += outcome[0].size
                if total > batch.MAX_BODY:
                    outcomes[position] = SyncError("TOO_LARGE", "the batch is full; fetch this file with /api/download")
        request.setHeader(b"Content-Type", batch.CONTENT_TYPE)
        request.setHeader(b"Cache-Control", b"no-store")
        return batch.download_answer(outcomes)

    def _batch_read_recent(self, raw, source: str, request):
        """One file of a download batch when that needs no disk: its SyncError (a bad
        path), ``(FileMetadata, content)`` of a small file just uploaded, else None."""
        try:
            path, _, st = self._locate(lambda: raw, raw, source, request)
        except SyncError as error:
            return error
        recent = self.operations.recent.get(path, st)
        if recent is None or recent[0].size > batch.MAX_DOWNLOAD_FILE:
            return None
        return recent

    async def _batch_read_one(self, raw, source: str, request):
        """One file of a download batch: ``(FileMetadata, content)``."""
        path, absolute, st = self._locate(lambda: raw, raw, source, request)
        metadata, opened = await self._opened_version(path, absolute, st)
        # (a body kept from a batch upload is in memory whatever its size)
        if not isinstance(opened.file, io.BytesIO) or metadata.size > batch.MAX_DOWNLOAD_FILE:
            opened.file.close()
            raise SyncError("TOO_LARGE", f"{path} is larger than {batch.MAX_DOWNLOAD_FILE} bytes; "
                                         "fetch it with /api/download")
        return metadata, opened.file.getvalue()

    # -- accounts ----------------------------------------------------------------

    @app.route("/api/v1/auth/login", methods=["POST"])
    async def login(self, request):
        body = await read_json_body(request, self._threads)
        if not isinstance(body, dict) or set(body) - {"username", "password"} \
                or not isinstance(body.get("username"), str) \
                or not isinstance(body.get("password"), str):
            raise SyncError("INVALID_REQUEST", 'the body must be {"username": "...", "password": "..."}')
        data = await maybeDeferred(self.authorizer.login, body["username"], body["password"],
                                   _address(request))
        return write_json(request, {"success": True, "data": data})


class _Dispatch(resource.Resource):
    """The API's resource: Klein's, except that the two requests every synced file makes
    (its upload and its download, on their exact paths) go straight to their handlers,
    with the same answers and error bodies but without Klein's per-request URL-map
    binding and adaptation."""

    isLeaf = True

    def __init__(self, api: FileApi, routed):
        super().__init__()
        self._routed = routed
        self._direct = {(b"/api/upload", b"PUT"): api.upload, (b"/api/upload", b"POST"): api.upload,
                        (b"/api/download", b"GET"): api.download,
                        (b"/api/download", b"HEAD"): api.download}
        self._failed = api.failed

    def render(self, request):
        handler = self._direct.get((request.path, request.method))
        if handler is None:
            return self._routed.render(request)
        finished = []
        request.notifyFinish().addBoth(finished.append)
        answer = Deferred.fromCoroutine(handler(request))
        request.notifyFinish().addErrback(lambda _: answer.cancel())  # the client went away
        answer.addCallbacks(self._answer, self._failure, (request, finished), None,
                            (request, finished))
        answer.addErrback(self._unexpected)
        return server.NOT_DONE_YET

    def _answer(self, result, request, finished) -> None:
        if finished:
            return
        if IResource.providedBy(result):
            request.render(result)
            return
        request.write(result)
        request.finish()

    def _failure(self, failure, request, finished) -> None:
        if finished:
            if not failure.check(CancelledError):
                FileApi.log.failure("answering {path} after its connection was gone", failure,
                                    path=request.path)
            return
        self._answer(self._failed(request, failure), request, finished)

    def _unexpected(self, failure) -> None:
        FileApi.log.failure("writing an answer failed", failure)


async def _each(coroutines) -> list:
    """Run ``coroutines`` side by side (started in order); per coroutine its result, or
    the SyncError it raised (any other exception is logged and answered as
    INTERNAL_ERROR)."""
    answers = await DeferredList([Deferred.fromCoroutine(c) for c in coroutines], consumeErrors=True)
    outcomes = []
    for succeeded, value in answers:
        if not succeeded and value.check(CancelledError):  # the client went away
            raise CancelledError()
        if not succeeded and not value.check(SyncError):
            FileApi.log.failure("unhandled error in a batch item", value)
            value = Failure(SyncError("INTERNAL_ERROR", "internal server error"))
        outcomes.append(value if succeeded else value.value)
    return outcomes


def _close_spool(content) -> None:
    if isinstance(content, SPOOLS):
        content.close()


def _shielded(work: Deferred) -> Deferred:
    """A Deferred firing with ``work``'s result; cancelling it leaves ``work`` running,
    and callbacks added to ``work`` afterwards get the result."""
    shield = Deferred()

    def relay(result):
        if shield.called:  # cancelled: the result stays on work's chain
            return result
        shield.callback(result)
        return None

    work.addBoth(relay)
    return shield


@attrs.frozen
class _StagedBody:
    """A file of a batch upload, staged: its finished temp file (mode 0644; a
    :class:`~quantum_sync.server.store.NamelessTemp`, or a named file's name), that file's
    stat, and the bytes in it (kept for the downloads that follow)."""

    path: object
    stat: os.stat_result
    body: bytes = attrs.field(repr=False)


def _address(request) -> str:
    address = request.getClientAddress()
    return getattr(address, "host", "") or str(address)
