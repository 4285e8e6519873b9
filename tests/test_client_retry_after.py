"""The client honours a 429's Retry-After: no request reaches the server before it."""

import email.utils

import pytest_twisted
from twisted.internet.task import deferLater
from twisted.web import resource

from quantum_sync.client.transfer import (
    DEFAULT_RETRY_AFTER,
    MAX_RETRY_AFTER,
    ServerUnavailable,
    retry_after_seconds,
)
from tests.support import client_of


def test_retry_after_forms():
    assert retry_after_seconds([b"7"]) == 7
    assert retry_after_seconds(None) == DEFAULT_RETRY_AFTER
    assert retry_after_seconds([b"soon"]) == DEFAULT_RETRY_AFTER
    assert retry_after_seconds([b"-5"]) == 0
    assert retry_after_seconds([b"999999"]) == MAX_RETRY_AFTER
    date = email.utils.formatdate(1_000_030, usegmt=True).encode()
    assert retry_after_seconds([date], now=1_000_000) == 30
    assert retry_after_seconds([b"Mon, 99 Foo 2020 25:00:00"]) == DEFAULT_RETRY_AFTER


class Throttling(resource.Resource):
    """Answers the first request 429 (Retry-After: 1), every later one 404; counts them."""

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.requests = 0

    def render_GET(self, request):
        self.requests += 1
        request.setHeader(b"content-type", b"application/json")
        if self.requests == 1:
            request.setResponseCode(429)
            request.setHeader(b"retry-after", b"1")
            return b'{"error": {"code": "RATE_LIMIT_EXCEEDED", "message": "slow down"}}'
        request.setResponseCode(404)
        return b'{"error": {"code": "NOT_FOUND", "message": "no such file"}}'


@pytest_twisted.ensureDeferred
async def test_no_request_is_sent_before_retry_after(reactor):
    site = Throttling()
    async with client_of(reactor, site, "c1") as client:
        for _ in range(2):  # the 429 itself, then a refusal without asking the server
            try:
                await client.metadata("a.txt")
            except ServerUnavailable as e:
                reason = str(e)
            else:
                raise AssertionError("a rate-limited request went through")
        assert site.requests == 1 and "rate limited" in reason
        await deferLater(reactor, 1.1, lambda: None)
        assert await client.metadata("a.txt") is None  # after the pause: asked again, 404
        assert site.requests == 2
