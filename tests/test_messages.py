"""The pure WebSocket message layer: parsing, validation and the wire form of answers."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quantum_sync.errors import SyncError
from quantum_sync.protocol import Change, Delete, Move
from quantum_sync.server import messages

HASH = "a" * 64


def parse(obj):
    return messages.parse_client_message(json.dumps(obj).encode())


def test_subscribe_seed_form():
    assert parse({"type": "Subscribe", "client_id": "laptop"}) == messages.Subscribe("laptop")


def test_topic_subscribe_and_unsubscribe_with_id():
    assert parse({"type": "subscribe", "topic": "alerts", "id": "7"}) == messages.TopicRequest(
        "subscribe", "alerts", "7"
    )
    assert parse({"type": "unsubscribe", "topic": "system"}).action == "unsubscribe"


def test_file_operation_parsed_with_contract_shapes():
    request = parse(
        {"type": "FileOperation", "operation": {"Move": {"from": "a.txt", "to": "b/c.txt"}},
         "source_client": "c1", "id": 3}
    )
    assert request == messages.FileOperationRequest(Move("a.txt", "b/c.txt"), "c1", 3)


def test_ping_spellings_answered_alike():
    assert parse({"type": "Ping"}).spelling == "Ping"
    assert json.loads(messages.pong("Ping")) == {"type": "Pong"}
    assert json.loads(messages.pong("ping", "x")) == {"type": "pong", "id": "x"}


def test_auth_needs_a_token():
    assert parse({"type": "auth", "payload": {"token": "t"}}) == messages.AuthRequest("t")
    with pytest.raises(SyncError) as caught:
        parse({"type": "auth", "payload": {}, "id": "a1"})
    assert caught.value.code == "INVALID_MESSAGE" and caught.value.extra == {"id": "a1"}


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b"[1, 2]",
        b'"Subscribe"',
        b'{"type": "Nonsense"}',
        b'{"type": 5}',
        b"{}",
        b'{"type": "Subscribe"}',
        b'{"type": "Subscribe", "client_id": 12}',
        b'{"type": "Subscribe", "client_id": ""}',
        b'{"type": "Subscribe", "client_id": "a\\u0000b"}',
        b'{"type": "subscribe", "topic": "everything"}',
        b'{"type": "FileOperation", "operation": {"Explode": {}}}',
        b'{"type": "FileOperation", "operation": {"Delete": {"path": 3}}}',
        b'{"type": "FileOperation", "operation": {"Create": {"metadata": {"path": "a"}}}}',
        b'{"type": "FileOperation", "operation": {"Delete": {"path": "a"}}, "source_client": 1}',
        b'{"type": "Ping", "id": [1]}',
        b"[" * 100000,
    ],
)
def test_malformed_messages_are_invalid_message(payload):
    with pytest.raises(SyncError) as caught:
        messages.parse_client_message(payload)
    assert caught.value.code == "INVALID_MESSAGE"


def test_binary_frames_refused():
    with pytest.raises(SyncError) as caught:
        messages.parse_client_message(b'{"type": "Ping"}', is_binary=True)
    assert caught.value.code == "INVALID_MESSAGE"


@pytest.mark.parametrize("path", ["../etc/passwd", "/etc/passwd", ".quantum-sync/tmp/x", "a\\b"])
def test_hostile_path_keeps_invalid_path_code_and_id(path):
    with pytest.raises(SyncError) as caught:
        parse({"type": "FileOperation", "operation": {"Delete": {"path": path}}, "id": "op1"})
    assert caught.value.code == "INVALID_PATH"
    assert json.loads(messages.error(caught.value))["id"] == "op1"


def test_unknown_type_echoes_id():
    with pytest.raises(SyncError) as caught:
        parse({"type": "Whatever", "id": 42})
    answer = json.loads(messages.error(caught.value))
    assert answer == {"type": "Error", "code": "INVALID_MESSAGE", "message": answer["message"], "id": 42}


def test_error_carries_retry_after_top_level():
    err = SyncError("RATE_LIMIT_EXCEEDED", "slow down", retryAfter=1)
    assert json.loads(messages.error(err, "m")) == {
        "type": "Error", "code": "RATE_LIMIT_EXCEEDED", "message": "slow down", "retryAfter": 1, "id": "m",
    }


def test_ack_and_auth_answers():
    assert json.loads(messages.ack("subscribe")) == {"type": "Ack", "operation_id": "subscribe"}
    assert json.loads(messages.ack("op", "op", seq=4)) == {"type": "Ack", "operation_id": "op", "seq": 4, "id": "op"}
    assert json.loads(messages.auth_success("alice", "read"))["type"] == "auth_success"
    bad = json.loads(messages.auth_error(SyncError("AUTH_FAILED", "bad token")))
    assert bad == {"type": "auth_error", "code": "AUTH_FAILED", "message": "bad token"}


def test_file_operation_broadcast_shape():
    change = Change(9, Delete("docs/a.txt"), "c1", "2024-01-21T12:00:00Z")
    assert json.loads(messages.file_operation(change, "0f" * 16)) == {
        "type": "FileOperation",
        "operation": {"Delete": {"path": "docs/a.txt"}},
        "source_client": "c1",
        "topic": "file_operations",
        "seq": 9,
        "journal_id": "0f" * 16,
        "timestamp": "2024-01-21T12:00:00Z",
    }


@settings(max_examples=200, deadline=None)
@given(path=st.text(min_size=1, max_size=30), source=st.text(max_size=20), seq=st.integers(1, 2**62))
def test_a_broadcast_from_the_journals_text_is_the_same_message(path, source, seq):
    operation = Delete(path)
    text = json.dumps(operation.to_json(), separators=(",", ":"))
    plain = Change(seq, operation, source, "2024-01-21T12:00:00.5Z")
    journalled = Change(seq, operation, source, "2024-01-21T12:00:00.5Z", text)
    assert json.loads(messages.file_operation(journalled, "j")) == json.loads(messages.file_operation(plain, "j"))
    assert journalled == plain  # the text is a cache, not part of the change


def test_events_go_on_their_topics():
    for kind, topic in messages.EVENT_TOPICS.items():
        body = json.loads(messages.event(kind, {"k": 1}, "2024-01-21T12:00:00Z"))
        assert body == {"type": kind, "topic": topic, "data": {"k": 1}, "timestamp": "2024-01-21T12:00:00Z"}


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
_typed = st.fixed_dictionaries(
    {"type": st.sampled_from(["Subscribe", "subscribe", "unsubscribe", "FileOperation", "Ping", "ping", "auth"])},
    optional={"client_id": _json, "topic": _json, "operation": _json, "payload": _json, "id": _json,
              "source_client": _json},
)


@settings(max_examples=400, deadline=None)
@given(st.one_of(_json, _typed))
def test_any_json_parses_or_is_refused_with_a_contract_code(obj):
    try:
        request = messages.parse_client_message(json.dumps(obj).encode())
    except SyncError as err:
        assert err.code in ("INVALID_MESSAGE", "INVALID_PATH")
        json.loads(messages.error(err))
    else:
        assert type(request) in (
            messages.Subscribe, messages.TopicRequest, messages.FileOperationRequest,
            messages.PingRequest, messages.AuthRequest,
        )


def test_create_announcement_keeps_metadata():
    metadata = {"path": "a.txt", "size": 3, "modified": "2024-01-21T12:00:00Z", "hash": HASH,
                "is_directory": False}
    request = parse({"type": "FileOperation", "operation": {"Create": {"metadata": metadata}}})
    assert request.operation.to_json() == {"Create": {"metadata": metadata}}
    assert request.source_client == ""


def test_an_echoed_id_with_a_lone_surrogate_is_still_valid_utf8():
    """JSON may carry "\\ud800" (found by test_hostile_frames_get_answers_not_crashes: the
    echo raised UnicodeEncodeError and the connection dropped with 1006)."""
    message_id = json.loads('"\\ud800"')
    wire = messages.pong("Ping", message_id)
    assert json.loads(wire.decode("utf-8")) == {"type": "Pong", "id": message_id}
    assert messages.pong("Ping", "caf\u00e9") == '{"type":"Pong","id":"caf\u00e9"}'.encode("utf-8")
