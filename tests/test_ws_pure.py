"""The pure parts of quantum_sync.server.ws: shared frames, the rate limiter, origins."""

import struct
import zlib

import pytest
from autobahn.websocket.compress import PerMessageDeflateOffer

from quantum_sync.server.ws import (
    COMPRESS_MIN_BYTES,
    OutgoingFrames,
    RateLimiter,
    accept_deflate,
    origin_allowed,
)


def unframe(frame: bytes):
    """(rsv1, payload) of one unmasked final text frame."""
    first, second = frame[0], frame[1]
    assert first & 0x0F == 1 and first & 0x80 and not second & 0x80
    length, start = second & 0x7F, 2
    if length == 126:
        length, start = struct.unpack_from("!H", frame, 2)[0], 4
    elif length == 127:
        length, start = struct.unpack_from("!Q", frame, 2)[0], 10
    assert len(frame) == start + length
    return bool(first & 0x40), frame[start:]


@pytest.mark.parametrize("size", [10, 125, 126, 200, 65535, 65536, 300000])
def test_frames_round_trip_plain_and_deflated(size):
    payload = (b'{"type":"FileOperation","path":"' + b"abc/" * size)[:size]
    frames = OutgoingFrames(payload)
    assert unframe(frames.plain()) == (False, payload)
    compressed, body = unframe(frames.deflated())
    if size < COMPRESS_MIN_BYTES:
        assert not compressed and body == payload
    else:
        assert compressed
        # what any permessage-deflate client does, with no shared context
        assert zlib.decompressobj(-15).decompress(body + b"\x00\x00\xff\xff") == payload
        assert frames.deflated() is frames.deflated()  # built once, shared


def test_rate_limiter_bucket_refill_and_abuse_window():
    limiter = RateLimiter.start(10, now=0.0)
    assert all(limiter.take(0.0) is None for _ in range(10))
    refusal = limiter.take(0.0)
    assert refusal.retry_after == 1 and not refusal.abusive
    assert limiter.take(0.1) is None  # one token back after 0.1 s
    for step in range(1, 60):
        now = step * 0.1
        while limiter.take(now) is None:
            pass
        if now >= 5.0:
            assert limiter.take(now).abusive
            break
        assert not limiter.take(now).abusive
    else:
        pytest.fail("never judged abusive")


def test_rate_limiter_forgives_a_client_that_slowed_down():
    limiter = RateLimiter.start(2, now=0.0)
    assert limiter.take(0.0) is None and limiter.take(0.0) is None
    assert limiter.take(0.0) is not None  # first refusal at 0 s
    assert limiter.take(6.0) is None and limiter.take(6.0) is None
    # over the limit again 6 s after the first refusal, but quiet in between: not abuse
    assert limiter.take(6.0).abusive is False


def test_rate_limit_zero_means_unlimited():
    limiter = RateLimiter.start(0, now=0.0)
    assert all(limiter.take(0.0) is None for _ in range(1000))


@pytest.mark.parametrize(
    "origin, allowed, expected",
    [
        ("https://app.example.com", ["https://app.example.com"], True),
        ("https://APP.example.com/", ["https://app.example.com"], True),
        ("https://app.example.com.evil.com", ["https://app.example.com"], False),
        ("https://app.example.com:8443", ["https://app.example.com"], False),
        ("null", ["*"], False),
        ("null", ["null"], True),
        ("https://anything", ["*"], True),
        ("https://anything", [], False),
    ],
)
def test_origins(origin, allowed, expected):
    assert origin_allowed(origin, allowed) is expected


def test_deflate_accept_is_small_and_context_free():
    accept = accept_deflate([PerMessageDeflateOffer(accept_max_window_bits=True)])
    assert accept.no_context_takeover and accept.window_bits == 9 and accept.mem_level == 1
    assert accept.request_max_window_bits == 9
    assert accept_deflate([PerMessageDeflateOffer(request_max_window_bits=12)]).window_bits == 9
    assert accept_deflate([]) is None
