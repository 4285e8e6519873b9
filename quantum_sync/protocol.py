"""Data shapes shared by server and client (contract section 3): parse, validate, serialise.

Pure: no I/O, no reactor. Every JSON object that carries a FileMetadata, a SyncOperation
or a journal entry goes through :func:`parse_metadata`, :func:`parse_operation` or
:func:`parse_change`; they raise :class:`~quantum_sync.errors.SyncError` with
INVALID_REQUEST (shape) or INVALID_PATH (paths, checked by :mod:`quantum_sync.paths`).
"""

import functools
import json
import math
import re
from datetime import datetime, timezone
from json.encoder import encode_basestring_ascii

import attrs

from quantum_sync import paths
from quantum_sync.errors import SyncError

_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


def _invalid(message: str) -> SyncError:
    return SyncError("INVALID_REQUEST", message)


# -- time ---------------------------------------------------------------------------


def format_time(epoch: float) -> str:
    """RFC 3339 UTC, ``Z``-suffixed; microseconds only when there are any (rounded as
    ``datetime.fromtimestamp`` rounds them)."""
    seconds = math.floor(epoch)
    micro = round((epoch - seconds) * 1e6)
    if micro >= 1_000_000:
        seconds, micro = seconds + 1, micro - 1_000_000
    if micro:
        return f"{_whole_seconds(seconds)}.{micro:06d}Z"
    return _whole_seconds(seconds) + "Z"


@functools.lru_cache(maxsize=4096)
def _whole_seconds(seconds: int) -> str:
    # every FileMetadata sent is formatted (journal, broadcast, answers), and files
    # written together share their second: formatting it once each is a fifth the cost
    return datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")


def parse_time(text) -> float:
    """Seconds since the epoch from an RFC 3339 string (``Z`` or an offset)."""
    if not isinstance(text, str) or len(text) > 64:
        raise _invalid("a timestamp must be an RFC 3339 string")
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise _invalid(f"not an RFC 3339 timestamp: {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def now() -> str:
    """The current time in the contract's format."""
    return format_time(datetime.now(tz=timezone.utc).timestamp())


def is_sha256(value) -> bool:
    """True for a lowercase 64-digit hex string."""
    return isinstance(value, str) and bool(_SHA256_HEX.match(value))


# -- FileMetadata ---------------------------------------------------------------------


@attrs.frozen
class FileMetadata:
    """What the server (or a client) knows of one file or directory.

    ``modified`` is seconds since the epoch (float); it is serialised as RFC 3339.
    Directories have size 0 and hash ``""``.
    """

    path: str
    size: int
    modified: float
    hash: str
    is_directory: bool = False

    def to_json(self) -> dict:
        return {
            "path": self.path,
            "size": self.size,
            "modified": format_time(self.modified),
            "hash": self.hash,
            "is_directory": self.is_directory,
        }

    @classmethod
    def directory(cls, path: str, modified: float) -> "FileMetadata":
        return cls(path=path, size=0, modified=modified, hash="", is_directory=True)


def _field(obj: dict, name: str, kinds, what: str):
    if name not in obj:
        raise _invalid(f"missing field {name!r} in {what}")
    value = obj[name]
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in _tuple(kinds)):
        raise _invalid(f"field {name!r} of {what} has the wrong type")
    return value


def _tuple(kinds):
    return kinds if isinstance(kinds, tuple) else (kinds,)


def parse_metadata(obj) -> FileMetadata:
    """A validated :class:`FileMetadata` from its JSON object."""
    if not isinstance(obj, dict):
        raise _invalid("metadata must be an object")
    path = paths.normalize(_field(obj, "path", str, "metadata"))
    size = _field(obj, "size", int, "metadata")
    if size < 0 or size > 2**63:
        raise _invalid("size out of range")
    modified = parse_time(_field(obj, "modified", str, "metadata"))
    digest = _field(obj, "hash", str, "metadata")
    is_directory = _field(obj, "is_directory", bool, "metadata")
    if is_directory:
        if digest != "" or size != 0:
            raise _invalid("a directory has size 0 and hash \"\"")
    elif not is_sha256(digest):
        raise _invalid("hash must be the lowercase SHA-256 hex of the content")
    return FileMetadata(path, size, modified, digest, is_directory)


# -- SyncOperation ---------------------------------------------------------------------


@attrs.frozen
class Create:
    """A file or directory came into being (``{"Create": {"metadata": ...}}``)."""

    metadata: FileMetadata
    kind = "Create"

    @property
    def paths(self) -> tuple:
        return (self.metadata.path,)

    def to_json(self) -> dict:
        return {self.kind: {"metadata": self.metadata.to_json()}}


@attrs.frozen
class Update(Create):
    """A file's content changed (``{"Update": {"metadata": ...}}``)."""

    kind = "Update"


@attrs.frozen
class Delete:
    """A path (file or whole directory) was removed (``{"Delete": {"path": ...}}``).

    ``if_match``, when given, is what the sender saw there: a file's SHA-256 (the server
    deletes it only while it holds that content), or ``""`` for a directory (deleted only
    when no file is left below it). Without it the delete is unconditional."""

    path: str
    if_match: str | None = None
    kind = "Delete"

    @property
    def paths(self) -> tuple:
        return (self.path,)

    @property
    def bare(self) -> "Delete":
        """The delete without its precondition (the form journalled and broadcast)."""
        return self if self.if_match is None else Delete(self.path)

    def to_json(self) -> dict:
        body = {"path": self.path}
        if self.if_match is not None:
            body["if_match"] = self.if_match
        return {"Delete": body}


@attrs.frozen
class Move:
    """A path was renamed (``{"Move": {"from": ..., "to": ...}}``)."""

    source: str
    destination: str
    kind = "Move"

    @property
    def paths(self) -> tuple:
        return (self.source, self.destination)

    def to_json(self) -> dict:
        return {"Move": {"from": self.source, "to": self.destination}}


def _parse_write(kind: str, body: dict):
    metadata = parse_metadata(_field(body, "metadata", dict, kind))
    return (Create if kind == "Create" else Update)(metadata)


def _parse_delete(kind: str, body: dict):
    if_match = _field(body, "if_match", str, kind) if "if_match" in body else None
    if if_match not in (None, "") and not is_sha256(if_match):
        raise _invalid("if_match of a Delete is a lowercase SHA-256 hex, or \"\" for a directory")
    return Delete(paths.normalize(_field(body, "path", str, kind)), if_match)


def _parse_move(kind: str, body: dict):
    source = paths.normalize(_field(body, "from", str, kind))
    destination = paths.normalize(_field(body, "to", str, kind))
    return Move(source, destination)


#: The parser of each operation's body, by its key.
_OPERATION_PARSERS = {"Create": _parse_write, "Update": _parse_write,
                      "Delete": _parse_delete, "Move": _parse_move}


def parse_operation(obj):
    """A validated SyncOperation (Create, Update, Delete or Move) from its JSON form."""
    if not isinstance(obj, dict) or len(obj) != 1:
        raise _invalid("an operation is an object with exactly one key")
    ((kind, body),) = obj.items()
    if not isinstance(body, dict):
        raise _invalid(f"the body of {kind!r} must be an object")
    parser = _OPERATION_PARSERS.get(kind)
    if parser is None:
        raise _invalid(f"unknown operation {kind!r}")
    return parser(kind, body)


# -- journal entries -------------------------------------------------------------------


def operation_text(operation) -> str:
    """A SyncOperation as compact JSON text, ASCII only: the form the server's journal
    stores and its broadcasts carry (``json.dumps`` of its JSON form, to the byte)."""
    if isinstance(operation, Create):  # and Update: one per file written, so written directly
        metadata = operation.metadata
        return _METADATA_OPERATION % (
            operation.kind, encode_basestring_ascii(metadata.path), metadata.size,
            format_time(metadata.modified), encode_basestring_ascii(metadata.hash),
            "true" if metadata.is_directory else "false")
    return json.dumps(operation.to_json(), separators=(",", ":"))


_METADATA_OPERATION = '{"%s":{"metadata":{"path":%s,"size":%d,"modified":"%s","hash":%s,"is_directory":%s}}}'


@attrs.frozen
class Change:
    """One journal entry: the change with sequence number ``seq``. ``operation_text``:
    the operation as the journal holds it (compact JSON text), where that is at hand, so
    that its broadcast need not encode it again."""

    seq: int
    operation: object
    source_client: str
    timestamp: str
    operation_text: str | None = attrs.field(default=None, eq=False, repr=False)

    def to_json(self) -> dict:
        return {
            "seq": self.seq,
            "operation": self.operation.to_json(),
            "source_client": self.source_client,
            "timestamp": self.timestamp,
        }


def parse_change(obj) -> Change:
    """A validated :class:`Change` from an entry of ``/api/changes``."""
    if not isinstance(obj, dict):
        raise _invalid("a change must be an object")
    seq = _field(obj, "seq", int, "change")
    if seq < 1:
        raise _invalid("seq starts at 1")
    operation = parse_operation(_field(obj, "operation", dict, "change"))
    source = obj.get("source_client", "")
    if not isinstance(source, str):
        raise _invalid("source_client must be a string")
    timestamp = obj.get("timestamp", "")
    if not isinstance(timestamp, str):
        raise _invalid("timestamp must be a string")
    return Change(seq, operation, source, timestamp)


# -- relays (an extension: quantum_sync.server.relay) -----------------------------------


@attrs.frozen
class UploadStarted:
    """The ``data`` of an ``upload_started`` event: a large upload of ``path`` (``size``
    bytes hashing to ``hash``) is arriving and may be read from its relay meanwhile."""

    path: str
    hash: str
    size: int
    source_client: str = ""


def parse_upload_started(obj) -> UploadStarted:
    """A validated :class:`UploadStarted` from an ``upload_started`` event's ``data``."""
    if not isinstance(obj, dict):
        raise _invalid("upload_started data must be an object")
    path = paths.normalize(_field(obj, "path", str, "upload_started"))
    digest = _field(obj, "hash", str, "upload_started")
    if not is_sha256(digest):
        raise _invalid("hash must be the lowercase SHA-256 hex of the content")
    size = _field(obj, "size", int, "upload_started")
    if size < 0 or size > 2**63:
        raise _invalid("size out of range")
    source = obj.get("source_client", "")
    if not isinstance(source, str):
        raise _invalid("source_client must be a string")
    return UploadStarted(path, digest, size, source)
