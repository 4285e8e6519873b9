"""Enums for tables looked up on every file: members hashed by identity."""

import enum


class IdentityEnum(enum.Enum):
    """An :class:`enum.Enum` whose members hash as plain objects do, in C. Members are
    singletons compared by identity, so the hash agrees with ``==`` as before; Enum's
    own ``__hash__`` (of the member's name) is a Python call, paid at every lookup of a
    table keyed by members (a path's next phase, a reconcile decision)."""

    __hash__ = object.__hash__
