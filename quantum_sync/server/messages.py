"""WebSocket messages of ``/ws`` (contract section 5): parse, validate, serialise.

Pure: no I/O, no reactor. Every text frame a client sends goes through
:func:`parse_client_message`, which returns one of the frozen request classes below or
raises :class:`~quantum_sync.errors.SyncError` (INVALID_MESSAGE for shape, INVALID_PATH
for a hostile path inside a FileOperation). The error carries the message's ``id`` (when
one could be read) as an extra field, so :func:`error` echoes it.

Everything the server sends is built here too, as compact UTF-8 JSON bytes, so that a
broadcast is serialised once and the same bytes go to every subscriber.
"""

import base64
import json
from json.encoder import encode_basestring_ascii

import attrs

from quantum_sync.errors import SyncError
from quantum_sync.protocol import operation_text, parse_operation

#: Topics a connection may subscribe to (PeerVault form).
TOPICS = ("file_operations", "peer_network", "system", "alerts", "transfers")

#: The topic each PeerVault event travels on.
EVENT_TOPICS = {
    "peer_connected": "peer_network",
    "peer_disconnected": "peer_network",
    "system_metrics": "system",
    "storage_alert": "alerts",
    "performance_alert": "alerts",
    "security_alert": "alerts",
    # an extension: a large upload has started and may be read as it arrives
    # (quantum_sync.server.relay)
    "upload_started": "transfers",
}

MAX_CLIENT_ID_LENGTH = 256
MAX_MESSAGE_ID_LENGTH = 256


# -- what a client may send ---------------------------------------------------------------


@attrs.frozen
class Subscribe:
    """``{"type": "Subscribe", "client_id": ID}``: name the client, subscribe to file_operations."""

    client_id: str
    id: object = None


@attrs.frozen
class TopicRequest:
    """``{"type": "subscribe"|"unsubscribe", "topic": T}`` (PeerVault form)."""

    action: str
    topic: str
    id: object = None


@attrs.frozen
class FileOperationRequest:
    """``{"type": "FileOperation", "operation": SyncOperation, "source_client": ID}``."""

    operation: object
    source_client: str = ""
    id: object = None


@attrs.frozen
class PingRequest:
    """``{"type": "Ping"}`` or ``{"type": "ping"}``; answered in the same spelling."""

    spelling: str
    id: object = None


@attrs.frozen
class AuthRequest:
    """``{"type": "auth", "payload": {"token": T}}``."""

    token: str
    id: object = None


def _invalid(message: str, message_id=None) -> SyncError:
    if message_id is None:
        return SyncError("INVALID_MESSAGE", message)
    return SyncError("INVALID_MESSAGE", message, id=message_id)


def _string(obj: dict, name: str, message_id, *, required=True, limit=None) -> str:
    value = obj.get(name)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value):
        raise _invalid(f"field {name!r} must be a non-empty string", message_id)
    if limit is not None and len(value) > limit:
        raise _invalid(f"field {name!r} is longer than {limit} characters", message_id)
    if not value.isprintable():
        raise _invalid(f"field {name!r} holds control characters", message_id)
    return value


def _parse_subscribe(obj, message_id):
    client_id = _string(obj, "client_id", message_id, limit=MAX_CLIENT_ID_LENGTH)
    return Subscribe(client_id, message_id)


def _parse_topic(obj, message_id):
    topic = obj.get("topic")
    if topic not in TOPICS:
        raise _invalid(f"topic must be one of {', '.join(TOPICS)}", message_id)
    return TopicRequest(obj["type"], topic, message_id)


def _parse_file_operation(obj, message_id):
    source = _string(obj, "source_client", message_id, required=False, limit=MAX_CLIENT_ID_LENGTH)
    try:
        operation = parse_operation(obj.get("operation"))
    except SyncError as error:
        # Shape errors are INVALID_MESSAGE on the WebSocket; a hostile path keeps the
        # code the HTTP API would give (INVALID_PATH).
        code = "INVALID_MESSAGE" if error.code == "INVALID_REQUEST" else error.code
        raise SyncError(code, error.message, **_id_extra(message_id)) from None
    return FileOperationRequest(operation, source, message_id)


def _parse_ping(obj, message_id):
    return PingRequest(obj["type"], message_id)


def _parse_auth(obj, message_id):
    payload = obj.get("payload")
    if not isinstance(payload, dict):
        raise _invalid("auth needs a payload object with a token", message_id)
    token = payload.get("token")
    if not isinstance(token, str) or not token or len(token) > 8192:
        raise _invalid("payload.token must be a non-empty string", message_id)
    return AuthRequest(token, message_id)


_PARSERS = {
    "Subscribe": _parse_subscribe,
    "subscribe": _parse_topic,
    "unsubscribe": _parse_topic,
    "FileOperation": _parse_file_operation,
    "Ping": _parse_ping,
    "ping": _parse_ping,
    "auth": _parse_auth,
}


def _id_extra(message_id) -> dict:
    return {} if message_id is None else {"id": message_id}


def _message_id(obj: dict):
    """The message's ``id`` if it is a string or integer of sane size, else None."""
    value = obj.get("id")
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and abs(value) < 2**63:
        return value
    if isinstance(value, str) and len(value) <= MAX_MESSAGE_ID_LENGTH:
        return value
    return None


def parse_client_message(payload, is_binary: bool = False):
    """One validated request from a client frame, or a SyncError to answer with."""
    if is_binary:
        raise _invalid("binary frames are not accepted; send JSON text")
    try:
        obj = json.loads(payload)
    except (ValueError, RecursionError):
        raise _invalid("the message is not valid JSON") from None
    if not isinstance(obj, dict):
        raise _invalid("a message is a JSON object with a 'type'")
    message_id = _message_id(obj)
    if "id" in obj and message_id is None:
        raise _invalid("'id' must be a string or an integer")
    kind = obj.get("type")
    parser = _PARSERS.get(kind) if isinstance(kind, str) else None
    if parser is None:
        raise _invalid(f"unknown message type {kind!r}"[:200], message_id)
    return parser(obj, message_id)


# -- what the server sends ----------------------------------------------------------------


def encode(obj: dict) -> bytes:
    """Compact UTF-8 JSON, the one wire form of every server message.

    A string holding a lone surrogate (a client may send ``"\\ud800"``, valid JSON, and
    its ``id`` is echoed) cannot be UTF-8: such a message is sent with ``\\u`` escapes."""
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(obj, separators=(",", ":")).encode("ascii")


def ack(operation_id, message_id=None, **extra) -> bytes:
    """``{"type": "Ack", "operation_id": ...}``, echoing ``id`` where given."""
    return encode({"type": "Ack", "operation_id": operation_id, **extra, **_id_extra(message_id)})


def pong(spelling: str, message_id=None) -> bytes:
    """``Pong`` for ``Ping``, ``pong`` for ``ping``."""
    return encode({"type": "Pong" if spelling == "Ping" else "pong", **_id_extra(message_id)})


def error(err: SyncError, message_id=None) -> bytes:
    """``{"type": "Error", "code", "message", ...extras}``; ``id`` echoed where known."""
    extra = dict(err.extra)
    if message_id is not None:
        extra["id"] = message_id
    return encode({"type": "Error", "code": err.code, "message": err.message, **extra})


def auth_success(user: str, role: str, message_id=None) -> bytes:
    """The answer to a good ``auth`` message."""
    return encode({"type": "auth_success", "data": {"user": user, "role": role}, **_id_extra(message_id)})


def auth_error(err: SyncError, message_id=None) -> bytes:
    """The answer to a bad ``auth`` message (the connection is then closed with 1008)."""
    return encode({"type": "auth_error", "code": err.code, "message": err.message, **_id_extra(message_id)})


_FILE_OPERATION = b'{"type":"FileOperation","operation":%s,"source_client":%s,"topic":"file_operations","seq":%d,"journal_id":%s,"timestamp":%s}'


def _json_string(value: str) -> bytes:
    """A JSON string, ASCII only (lone surrogates escaped too)."""
    return encode_basestring_ascii(value).encode("ascii")


def file_operation(change, journal_id: str, blocks: bytes = None) -> bytes:
    """The broadcast of one journal entry (:class:`quantum_sync.protocol.Change`) of the
    journal ``journal_id``, ASCII JSON; the operation's text is the journal's where the
    change carries it (not encoded a second time). ``blocks``: the new version's compact
    block list, carried base64 in the optional ``blocks`` field (docs/protocol.md)."""
    text = change.operation_text or operation_text(change.operation)
    message = _FILE_OPERATION % (
        text.encode("ascii"),
        _json_string(change.source_client),
        change.seq,
        _json_string(journal_id),
        _json_string(change.timestamp),
    )
    if blocks:
        message = message[:-1] + b',"blocks":"' + base64.b64encode(blocks) + b'"}'
    return message


def event(kind: str, data: dict, timestamp: str) -> bytes:
    """A PeerVault event ``{"type", "topic", "data", "timestamp"}`` on its topic."""
    return encode({"type": kind, "topic": EVENT_TOPICS[kind], "data": data, "timestamp": timestamp})
