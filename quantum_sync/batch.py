"""Batches of small files in one HTTP request (``/api/batch/upload``, ``/api/batch/download``).

A burst of small files would cost one HTTP request each, and per request the HTTP work on
both sides (parsing, request objects, the access log) costs more than storing 4 KiB. A
batch carries many files in one body, framed the same way in both directions::

    <manifest: one line of JSON>\\n<content of the first file><content of the next>...

The manifest lists the files in order with their sizes, so the contents follow one
another without separators. Each file in a batch is handled exactly as its own request
would be (verified, conditional, journalled and broadcast on its own), and succeeds or
fails on its own; the answer says how each one went.

Pure: no I/O, no reactor. Every batch body and manifest is parsed and validated here, by
the server (uploads, download requests) and by the client (the answers).
"""

import json

import attrs

from quantum_sync import paths
from quantum_sync.errors import STATUS, SyncError
from quantum_sync.protocol import FileMetadata, is_sha256, parse_metadata

CONTENT_TYPE = b"application/x-quantum-sync-batch"
#: Files in one batch at most (either direction).
MAX_FILES = 1000
#: Bytes of one batch body at most (upload bodies; download answers are cut there too).
MAX_BODY = 16 * 1024 * 1024
#: A file larger than this is not sent in a download batch (fetch it with /api/download).
MAX_DOWNLOAD_FILE = 256 * 1024

_UPLOAD_FIELDS = {"path", "size", "sha256", "if_match", "if_none_match"}


def _invalid(message: str) -> SyncError:
    return SyncError("INVALID_REQUEST", message)


@attrs.frozen
class ItemError:
    """The refusal of one file of a batch: the status, code and message its own request
    would have been answered with."""

    status: int
    code: str
    message: str

    @classmethod
    def of(cls, error: SyncError) -> "ItemError":
        return cls(error.status, error.code, error.message)

    def to_json(self) -> dict:
        return {"status": self.status, "error": {"code": self.code, "message": self.message}}


@attrs.frozen
class UploadItem:
    """One file of an upload batch: where it goes, its bytes' place in the body, the hash
    they must have and the upload's precondition (``if_match``: the hash the stored file
    must have; ``if_none_match == "*"``: the path must be new). ``error`` is set when the
    item is refused on its own (its path, so far); ``path`` is then as received."""

    path: str
    offset: int
    size: int
    sha256: str
    if_match: str | None = None
    if_none_match: str | None = None
    error: SyncError | None = None

    def content(self, body) -> bytes:
        """This file's bytes in the batch ``body``."""
        return bytes(body[self.offset:self.offset + self.size])


# -- framing ---------------------------------------------------------------------------


def encode(manifest, contents) -> bytes:
    """A batch body: ``manifest`` as one line of JSON, then each of ``contents``."""
    # json.dumps escapes every control character, so the manifest holds no newline
    return b"".join([json.dumps(manifest, separators=(",", ":")).encode("utf-8"), b"\n", *contents])


def split(body) -> tuple:
    """``(manifest, contents)`` of a batch body: the parsed manifest and a memoryview of
    the bytes after it. INVALID_REQUEST unless it starts with a line of JSON."""
    body = bytes(body)
    end = body.find(b"\n")
    if end < 0:
        raise _invalid("a batch starts with a manifest: one line of JSON")
    try:
        manifest = json.loads(body[:end].decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _invalid("the batch manifest is not JSON") from None
    return manifest, memoryview(body)[end + 1:]


def _files(manifest, what: str) -> list:
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), list):
        raise _invalid(f'{what} must be {{"files": [...]}}')
    files = manifest["files"]
    if not 1 <= len(files) <= MAX_FILES:
        raise _invalid(f"a batch holds 1 to {MAX_FILES} files")
    return files


def _count(value, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _invalid(f"{what} must be a non-negative integer")
    return value


# -- uploads (client → server) ---------------------------------------------------------


def upload_manifest(files) -> dict:
    """The manifest of an upload batch; ``files`` are ``(path, size, sha256, if_match)``
    (``if_match`` None: the path must be new)."""
    entries = []
    for path, size, sha256, if_match in files:
        entry = {"path": path, "size": size, "sha256": sha256}
        if if_match:
            entry["if_match"] = if_match
        else:
            entry["if_none_match"] = "*"
        entries.append(entry)
    return {"files": entries}


def parse_upload(body) -> tuple:
    """``(items, contents)`` of an upload batch body: an :class:`UploadItem` per file,
    in order, and the bytes they are sliced from. The whole batch is INVALID_REQUEST
    when its shape is wrong (the contents could not be told apart); a bad path refuses
    only its own item."""
    manifest, contents = split(body)
    items, offset = [], 0
    for entry in _files(manifest, "an upload batch's manifest"):
        if not isinstance(entry, dict) or not {"path", "size", "sha256"} <= set(entry) <= _UPLOAD_FIELDS:
            raise _invalid('each file is {"path", "size", "sha256"} with an optional "if_match" or "if_none_match"')
        size = _count(entry["size"], "a file's size")
        digest = entry["sha256"]
        if not is_sha256(digest):
            raise _invalid("sha256 must be the lowercase SHA-256 hex of the file")
        if_match, if_none_match = entry.get("if_match"), entry.get("if_none_match")
        if not isinstance(if_match, (str, type(None))) or if_none_match not in (None, "*"):
            raise _invalid('if_match is a hash and if_none_match is "*"')
        try:
            path, error = paths.normalize(entry["path"]), None
        except SyncError as refused:
            path, error = entry["path"], refused
        items.append(UploadItem(path, offset, size, digest, if_match, if_none_match, error))
        offset += size
    if offset != len(contents):
        raise _invalid(f"the manifest lists {offset} bytes of contents, the body holds {len(contents)}")
    return items, contents


def parse_upload_answer(answer, expected_paths) -> list:
    """Per file of an upload batch, the stored :class:`FileMetadata` or an
    :class:`ItemError`; INVALID_REQUEST unless ``answer`` (the server's parsed JSON)
    has one valid result per path of ``expected_paths``, naming that path."""
    results = answer.get("results") if isinstance(answer, dict) else None
    if not isinstance(results, list) or len(results) != len(expected_paths):
        raise _invalid("an upload batch is answered with one result per file")
    parsed = []
    for result, path in zip(results, expected_paths):
        item = _parse_result(result)
        if isinstance(item, FileMetadata) and item.path != path:
            raise _invalid(f"the result for {path} names {item.path}")
        parsed.append(item)
    return parsed


def _parse_result(result):
    if not isinstance(result, dict):
        raise _invalid("a batch result must be an object")
    status = result.get("status")
    if status == 200:
        return parse_metadata(result.get("metadata"))
    error = result.get("error")
    if not isinstance(status, int) or isinstance(status, bool) or not 400 <= status <= 599 \
            or not isinstance(error, dict):
        raise _invalid("a refused batch item has a status and an error")
    code, message = error.get("code"), error.get("message")
    return ItemError(status, code if code in STATUS else "UNKNOWN", message if isinstance(message, str) else "")


def result_json(outcome) -> dict:
    """One entry of a batch's results: ``outcome`` is a FileMetadata or a SyncError."""
    if isinstance(outcome, SyncError):
        return ItemError.of(outcome).to_json()
    return {"status": 200, "metadata": outcome.to_json()}


# -- downloads (server → client) -------------------------------------------------------


def parse_download_request(body) -> list:
    """The paths a download batch asks for (``{"paths": [...]}``), as received: each is
    checked on its own, a bad one refusing only its item."""
    if not isinstance(body, dict) or set(body) != {"paths"} or not isinstance(body["paths"], list):
        raise _invalid('a download batch is {"paths": [...]}')
    if not 1 <= len(body["paths"]) <= MAX_FILES:
        raise _invalid(f"a batch holds 1 to {MAX_FILES} files")
    return body["paths"]


def download_answer(outcomes) -> bytes:
    """The body answering a download batch; ``outcomes`` are, per path asked for,
    ``(FileMetadata, content)`` or a SyncError."""
    entries, contents = [], []
    for outcome in outcomes:
        if isinstance(outcome, SyncError):
            entries.append(result_json(outcome))
        else:
            metadata, content = outcome
            entries.append(result_json(metadata))
            contents.append(content)
    return encode({"files": entries}, contents)


def parse_download_answer(body, expected_paths) -> list:
    """Per path of ``expected_paths``, ``(FileMetadata, content)`` or an
    :class:`ItemError`, from the server's download batch answer; INVALID_REQUEST unless
    it is well framed and names the paths asked for, in order (the content is not
    checked against its hash here: the caller knows which hash it expects)."""
    manifest, contents = split(body)
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, list) or len(files) != len(expected_paths):
        raise _invalid("a download batch is answered with one entry per path")
    parsed, offset = [], 0
    for result, path in zip(files, expected_paths):
        item = _parse_result(result)
        if isinstance(item, FileMetadata):
            if item.path != path or item.is_directory:
                raise _invalid(f"the entry for {path} is not that file")
            if offset + item.size > len(contents):
                raise _invalid("the answer is shorter than its manifest says")
            item = (item, bytes(contents[offset:offset + item.size]))
            offset += item[0].size
        parsed.append(item)
    if offset != len(contents):
        raise _invalid("the answer is longer than its manifest says")
    return parsed
