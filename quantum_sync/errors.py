"""The error codes of the contract (section 3) and the one exception that carries them.

Every refusal the server or client makes is a :class:`SyncError` with a contract code;
the HTTP layer turns it into ``{"error": {"code", "message"}}`` with :data:`STATUS` of the
code, the WebSocket layer into an ``Error`` message with the same code.
"""

#: HTTP status for each contract error code.
STATUS = {
    "INVALID_PATH": 400,
    "INVALID_REQUEST": 400,
    "INVALID_MESSAGE": 400,
    "AUTH_REQUIRED": 401,
    "AUTH_FAILED": 401,
    "AUTH_EXPIRED": 401,
    "PERMISSION_DENIED": 403,
    "UPLOAD_DISABLED": 403,
    "NOT_FOUND": 404,
    "METHOD_NOT_ALLOWED": 405,
    "CONFLICT": 409,
    "CLIENT_ID_IN_USE": 409,
    "CURSOR_EXPIRED": 410,
    "PRECONDITION_FAILED": 412,
    "TOO_LARGE": 413,
    "HASH_MISMATCH": 422,
    "RATE_LIMIT_EXCEEDED": 429,
    "INTERNAL_ERROR": 500,
    "CONNECTION_LIMIT": 503,
    "SERVICE_UNAVAILABLE": 503,
    "INSUFFICIENT_STORAGE": 507,
}


class SyncError(Exception):
    """A refusal with a contract error code, a human message and optional extras.

    ``extra`` holds additional top-level fields of the answer (``retryAfter`` for
    RATE_LIMIT_EXCEEDED, for instance).
    """

    def __init__(self, code: str, message: str, **extra):
        if code not in STATUS:
            raise ValueError(f"unknown error code {code!r}")
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.extra = extra

    @property
    def status(self) -> int:
        """The HTTP status that goes with :attr:`code`."""
        return STATUS[self.code]

    def to_json(self) -> dict:
        """The contract's HTTP error body."""
        return {"error": {"code": self.code, "message": self.message, **self.extra}}

    def __eq__(self, other):
        return (
            isinstance(other, SyncError)
            and (self.code, self.message) == (other.code, other.message)
        )

    def __hash__(self):
        return hash((self.code, self.message))


def is_unavailable(failure) -> bool:
    """True when ``failure`` (a Twisted Failure) is a SERVICE_UNAVAILABLE refusal: the
    index cannot be reached (a cluster's database away), so the work waits and is tried
    again rather than logged as a failure."""
    return bool(failure.check(SyncError)) and failure.value.code == "SERVICE_UNAVAILABLE"


def invalid_path(message: str) -> SyncError:
    """Shorthand for the most common refusal."""
    return SyncError("INVALID_PATH", message)
