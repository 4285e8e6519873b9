"""Failed-login throttling (contract §6: brute force is limited per address and per user).

Pure logic over an injected clock (``IReactorTime``: ``seconds()``), so it is tested with
``twisted.internet.task.Clock`` and no reactor. A key (an address, or a user name) that
collected ``limit`` failures within the last ``window`` seconds is refused until the
oldest of them is older than ``window``: at most ``limit`` guesses per ``window`` per key.
"""

import collections
import math

import attrs

from quantum_sync.errors import SyncError


class FailureWindow:
    """Failure times per key inside a sliding window, with a bound on the number of keys
    (so a flood of new addresses cannot grow memory without end)."""

    def __init__(self, clock, limit: int, window: float, max_keys: int = 10000):
        self.clock = clock
        self.limit = limit
        self.window = window
        self.max_keys = max_keys
        self._failures = {}

    def _recent(self, key):
        times = self._failures.get(key)
        if times is None:
            return None
        horizon = self.clock.seconds() - self.window
        while times and times[0] <= horizon:
            times.popleft()
        if not times:
            del self._failures[key]
            return None
        return times

    def retry_after(self, key):
        """Seconds until ``key`` may try again, or None when it may try now."""
        times = self._recent(key)
        if times is None or len(times) < self.limit:
            return None
        return times[-self.limit] + self.window - self.clock.seconds()

    def record(self, key) -> bool:
        """Count one failure; True when this failure is the one that locks ``key``."""
        times = self._recent(key)
        if times is None:
            self._make_room()
            times = self._failures[key] = collections.deque(maxlen=self.limit)
        times.append(self.clock.seconds())
        return len(times) == self.limit

    def reset(self, key) -> None:
        self._failures.pop(key, None)

    def _make_room(self):
        if len(self._failures) < self.max_keys:
            return
        for key in list(self._failures):
            self._recent(key)
        while len(self._failures) >= self.max_keys:
            del self._failures[next(iter(self._failures))]

    def __len__(self):
        return len(self._failures)


@attrs.frozen
class Lockout:
    """One key that just reached its limit: what a ``security_alert`` reports."""

    kind: str  # "address" or "user"
    key: str
    failures: int
    window: float


class LoginThrottle:
    """Failed logins per client address and per (existing) user name."""

    def __init__(self, clock, per_address: int = 5, per_user: int = 10, window: float = 60.0):
        self.by_address = FailureWindow(clock, per_address, window)
        self.by_user = FailureWindow(clock, per_user, window)

    def check(self, address: str, user) -> None:
        """Raise RATE_LIMIT_EXCEEDED (with ``retryAfter``, whole seconds) when either
        the address or the user is locked; do nothing otherwise."""
        waits = [self.by_address.retry_after(address)]
        if user is not None:
            waits.append(self.by_user.retry_after(user))
        waits = [w for w in waits if w is not None]
        if waits:
            retry = max(1, math.ceil(max(waits)))
            raise SyncError(
                "RATE_LIMIT_EXCEEDED",
                f"too many failed logins; try again in {retry} s",
                retryAfter=retry,
            )

    def failed(self, address: str, user) -> list:
        """Count a failed login; the :class:`Lockout` s it caused (for alerts).
        ``user`` is None for a name that is not configured: unknown names are only
        counted against the address, so they cannot fill memory."""
        lockouts = []
        if self.by_address.record(address):
            lockouts.append(Lockout("address", address, self.by_address.limit, self.by_address.window))
        if user is not None and self.by_user.record(user):
            lockouts.append(Lockout("user", user, self.by_user.limit, self.by_user.window))
        return lockouts

    def succeeded(self, address: str, user: str) -> None:
        """A correct password clears the address's and the user's failures."""
        self.by_address.reset(address)
        self.by_user.reset(user)
