"""Authentication and roles (contract section 6).

STUB fixing the interface that the REST API and the WebSocket call; issue 5 supplies
the real accounts, tokens (PyJWT, HS256 pinned) and throttling behind it.
"""

import attrs

from quantum_sync.errors import SyncError

ROLES = ("read", "write", "admin")


def role_allows(have: str, need: str) -> bool:
    """``admin`` ⊃ ``write`` ⊃ ``read``."""
    return ROLES.index(have) >= ROLES.index(need)


@attrs.frozen
class Identity:
    """Who made a request, and what they may do."""

    user: str
    role: str


ANONYMOUS_ADMIN = Identity("anonymous", "admin")


class OpenAuthorizer:
    """No ``auth`` section in the config: everyone may do everything (the seed's default)."""

    enabled = False

    def authorize_request(self, request, role: str) -> Identity:
        """The caller's identity if it holds ``role``; raises SyncError otherwise
        (AUTH_REQUIRED, AUTH_FAILED, AUTH_EXPIRED, PERMISSION_DENIED)."""
        return ANONYMOUS_ADMIN

    def authorize_token(self, token, role: str) -> Identity:
        """Same for a bare token (the WebSocket ``auth`` message)."""
        return ANONYMOUS_ADMIN

    def login(self, username, password, address: str) -> dict:
        """``POST /api/v1/auth/login``: the contract's answer ``data`` or a SyncError."""
        raise SyncError("NOT_FOUND", "authentication is not configured on this server")
