"""When to try again: exponential backoff with full jitter, and what counts as a failure.

Pure: no reactor, no I/O; the random source is passed in.

A thousand clients refused at once (a full server, a restart) must not come back at
once: each waits a random time between 0 and ``min(cap, initial × 2^failures)`` ("full
jitter"), on top of any wait the server asked for (``Retry-After``, ``retryAfter``).
A WebSocket session counts as a success only if it was subscribed and stayed up
:data:`STABLE` seconds, and was not closed as a policy violation (1008) or with "try
again later" (1013): a server that accepts the TCP connection and then refuses, or
drops the client at once, is backed off like one that does not answer.
"""

import random as _random

import attrs

#: Seconds a subscribed session must last to count as a success.
STABLE = 30.0
#: Close codes that always count as a failure: policy (1008), try again later (1013).
BACK_OFF_CODES = frozenset({1008, 1013})


@attrs.define
class Backoff:
    """Delays before the next attempt; :meth:`succeeded` starts over."""

    initial: float = 1.0
    cap: float = 60.0
    random: object = attrs.field(factory=lambda: _random.random)
    failures: int = 0

    def succeeded(self) -> None:
        self.failures = 0

    def next_delay(self, at_least: float = 0.0) -> float:
        """The delay before the next attempt, counting the one that just ended as a
        failure: ``at_least`` (what the server asked for) plus a jittered backoff, spread
        over at least ``at_least`` too, so clients told the same wait do not come back
        together."""
        at_least = max(at_least, 0.0)
        ceiling = min(self.cap, self.initial * 2 ** min(self.failures, 32))
        self.failures += 1
        return at_least + self.random() * max(ceiling, at_least)


def session_failed(subscribed_at, closed_at: float, close_code) -> bool:
    """Whether a WebSocket session that was subscribed at ``subscribed_at`` (None: never)
    and closed at ``closed_at`` with ``close_code`` counts as a failed attempt."""
    if close_code in BACK_OFF_CODES or subscribed_at is None:
        return True
    return closed_at - subscribed_at < STABLE
