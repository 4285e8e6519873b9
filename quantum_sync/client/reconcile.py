"""Three-way reconcile: what to do with a path, given its local, server and base versions.

Pure logic, no I/O. ``base`` is the last version both sides agreed on (from the state
database); ``None`` means the path was never synced. Each side is classified against
the base as ABSENT (never there), UNCHANGED, CHANGED (or created) or DELETED, and the
pair of classes decides the action (contract section 7):

- changed on one side → copy it over; changed on both to the same content → record;
- changed on both differently → conflict, resolved per strategy (``rename`` keeps both);
- deleted on one side, unchanged on the other → delete; deleted on one side and
  changed on the other → the edit wins (it is copied back).

:func:`plan` applies :func:`decide` to a whole tree and then folds the per-path
decisions: file moves are recognised (a delete and a create of the same content),
directories are only deleted when nothing below them survives, and a plan that would
delete more than half of the synced files (and more than :data:`MASS_DELETE_MIN`)
deletes nothing until the user allows it.
"""

import enum

import attrs

from quantum_sync.paths import is_inside

#: A plan deleting more files than this, and more than half of the synced ones, is held.
MASS_DELETE_MIN = 10

STRATEGIES = ("rename", "keep-client", "keep-server")


@attrs.frozen
class Entry:
    """One version of a path on one side: SHA-256 hex (``""`` for directories), size, kind."""

    hash: str
    size: int = 0
    is_directory: bool = False

    def same_content(self, other) -> bool:
        """Same kind and, for files, the same bytes."""
        return (
            other is not None
            and self.is_directory == other.is_directory
            and (self.is_directory or self.hash == other.hash)
        )


class Side(enum.Enum):
    """How one side's version relates to the base."""

    ABSENT = "absent"
    UNCHANGED = "unchanged"
    CHANGED = "changed"
    DELETED = "deleted"


class Action(enum.Enum):
    """What the engine does for a path."""

    NOTHING = "nothing"
    RECORD = "record"  # both sides hold the same content: it becomes the base
    FORGET = "forget"  # gone on both sides: drop the base
    UPLOAD = "upload"  # local → server (a directory: create it there)
    DOWNLOAD = "download"  # server → local (a directory: create it here)
    DELETE_LOCAL = "delete-local"
    DELETE_REMOTE = "delete-remote"
    CONFLICT = "conflict"  # strategy rename: local copy renamed aside, both kept
    MOVE_LOCAL = "move-local"  # the server moved ``source`` to ``path``: rename here
    MOVE_REMOTE = "move-remote"  # moved here from ``source``: send a Move
    HOLD = "hold"  # suspect local file (zero bytes, old mtime): never sent


@attrs.frozen
class Decision:
    """The action for ``path`` and the versions it was decided on (engine preconditions)."""

    path: str
    action: Action
    local: Entry = None
    remote: Entry = None
    base: Entry = None
    source: str = None  # for moves: the path moved from

    @property
    def is_directory(self) -> bool:
        entry = self.local or self.remote or self.base
        return bool(entry and entry.is_directory)


def classify(entry, base) -> Side:
    """The :class:`Side` of ``entry`` relative to ``base``."""
    if entry is None:
        return Side.ABSENT if base is None else Side.DELETED
    if base is None or not entry.same_content(base):
        return Side.CHANGED
    return Side.UNCHANGED


def decide(local, remote, base, strategy: str = "rename", suspect: bool = False) -> Action:
    """The action for one path. ``suspect`` marks a local file that must not be sent."""
    ls, rs = classify(local, base), classify(remote, base)
    action = _TABLE[(ls, rs)]
    if action is Action.CONFLICT:
        if local.same_content(remote):
            action = Action.RECORD
        elif strategy == "keep-client":
            action = Action.UPLOAD
        elif strategy == "keep-server":
            action = Action.DOWNLOAD
    if suspect and action in (Action.UPLOAD, Action.CONFLICT):
        return Action.HOLD
    return action


_S = Side
_A = Action
_TABLE = {
    (_S.ABSENT, _S.ABSENT): _A.NOTHING,
    (_S.ABSENT, _S.CHANGED): _A.DOWNLOAD,
    (_S.CHANGED, _S.ABSENT): _A.UPLOAD,
    (_S.CHANGED, _S.CHANGED): _A.CONFLICT,  # both created or both changed
    (_S.UNCHANGED, _S.UNCHANGED): _A.NOTHING,
    (_S.UNCHANGED, _S.CHANGED): _A.DOWNLOAD,
    (_S.CHANGED, _S.UNCHANGED): _A.UPLOAD,
    (_S.UNCHANGED, _S.DELETED): _A.DELETE_LOCAL,
    (_S.DELETED, _S.UNCHANGED): _A.DELETE_REMOTE,
    (_S.CHANGED, _S.DELETED): _A.UPLOAD,  # edit beats delete
    (_S.DELETED, _S.CHANGED): _A.DOWNLOAD,  # edit beats delete
    (_S.DELETED, _S.DELETED): _A.FORGET,
    # ABSENT pairs only with ABSENT/CHANGED (no base), DELETED only with the rest (a base)
}


@attrs.frozen
class Plan:
    """The decisions for a tree, in execution order, and what was held back."""

    decisions: tuple
    mass_delete_held: int = 0  # deletes withheld by the mass-delete guard
    remote_deletes_distrusted: int = 0  # deletes withheld because the listing looked empty

    def of(self, action: Action) -> list:
        return [d for d in self.decisions if d.action is action]

    @property
    def actionable(self) -> list:
        return [d for d in self.decisions if d.action is not Action.NOTHING]


def plan(
    local: dict,
    remote: dict,
    base: dict,
    strategy: str = "rename",
    suspects=frozenset(),
    allow_mass_delete: bool = False,
    trust_remote_deletes: bool = True,
    synced_files: int = None,
) -> Plan:
    """Decisions for every path in the three maps (path → :class:`Entry`).

    ``synced_files`` is the folder's number of synced files for the mass-delete guard
    (default: the files in ``base``; a subtree plan passes the whole folder's count)."""
    decisions = {}
    for path in set(local) | set(remote) | set(base):
        lv, rv, bv = local.get(path), remote.get(path), base.get(path)
        action = decide(lv, rv, bv, strategy, path in suspects)
        decisions[path] = Decision(path, action, lv, rv, bv)

    distrusted = 0
    if not trust_remote_deletes:
        for path, d in list(decisions.items()):
            if d.action is Action.DELETE_LOCAL:
                decisions[path] = attrs.evolve(d, action=Action.NOTHING)
                distrusted += 1

    _detect_moves(decisions)
    _keep_directories_with_survivors(decisions)

    held = 0
    deletes = [
        d
        for d in decisions.values()
        if d.action in (Action.DELETE_LOCAL, Action.DELETE_REMOTE) and not d.is_directory
    ]
    synced = synced_files if synced_files is not None else sum(1 for b in base.values() if not b.is_directory)
    if not allow_mass_delete and is_mass_delete(len(deletes), synced):
        held = len(deletes)
        for path, d in list(decisions.items()):
            if d.action in (Action.DELETE_LOCAL, Action.DELETE_REMOTE):
                decisions[path] = attrs.evolve(d, action=Action.NOTHING)
    return Plan(tuple(_ordered(decisions.values())), held, distrusted)


def is_mass_delete(deletes: int, synced_files: int) -> bool:
    """True when ``deletes`` is more than half of ``synced_files`` and more than the minimum."""
    return deletes > MASS_DELETE_MIN and deletes * 2 > synced_files


def _detect_moves(decisions: dict) -> None:
    """Fold a one-sided delete plus a create of the same file content into a move."""
    for deleted_action, created_action, moved_action in (
        (Action.DELETE_REMOTE, Action.UPLOAD, Action.MOVE_REMOTE),
        (Action.DELETE_LOCAL, Action.DOWNLOAD, Action.MOVE_LOCAL),
    ):
        sources = {}
        for d in sorted(decisions.values(), key=lambda d: d.path):
            if d.action is deleted_action and not d.is_directory and d.base is not None:
                sources.setdefault(d.base.hash, []).append(d)
        for d in sorted(decisions.values(), key=lambda d: d.path):
            if d.action is not created_action or d.is_directory or d.base is not None:
                continue
            created = d.local if created_action is Action.UPLOAD else d.remote
            other_side = d.remote if created_action is Action.UPLOAD else d.local
            if other_side is not None or not sources.get(created.hash):
                continue
            source = sources[created.hash].pop(0)
            decisions[source.path] = attrs.evolve(source, action=Action.NOTHING)
            decisions[d.path] = attrs.evolve(d, action=moved_action, base=source.base, source=source.path)


def _keep_directories_with_survivors(decisions: dict) -> None:
    """A directory is deleted only when nothing below it stays on that side."""
    moved_away = {
        "local": {d.source for d in decisions.values() if d.action is Action.MOVE_LOCAL},
        "remote": {d.source for d in decisions.values() if d.action is Action.MOVE_REMOTE},
    }
    for path, d in list(decisions.items()):
        if d.action not in (Action.DELETE_LOCAL, Action.DELETE_REMOTE) or not d.is_directory:
            continue
        side = "local" if d.action is Action.DELETE_LOCAL else "remote"
        if any(
            _survives(other, side) and other.path not in moved_away[side]
            for other in decisions.values()
            if other.path != path and is_inside(other.path, path)
        ):
            # recreate it on the side that deleted it instead
            keep = Action.UPLOAD if d.action is Action.DELETE_LOCAL else Action.DOWNLOAD
            decisions[path] = attrs.evolve(d, action=keep)


def _survives(d: Decision, side: str) -> bool:
    """True when ``d.path`` still exists on ``side`` after its decision runs."""
    if side == "local":
        gone = (Action.DELETE_LOCAL, Action.FORGET)
        present = d.local is not None or d.action in (Action.DOWNLOAD, Action.MOVE_LOCAL, Action.CONFLICT)
    else:
        gone = (Action.DELETE_REMOTE, Action.FORGET)
        present = d.remote is not None or d.action in (Action.UPLOAD, Action.MOVE_REMOTE, Action.CONFLICT)
    return present and d.action not in gone


_PHASE = {
    Action.DOWNLOAD: 1,
    Action.UPLOAD: 1,
    Action.MOVE_LOCAL: 2,
    Action.MOVE_REMOTE: 2,
    Action.CONFLICT: 3,
    Action.RECORD: 3,
    Action.FORGET: 3,
    Action.HOLD: 3,
    Action.NOTHING: 3,
    Action.DELETE_LOCAL: 4,
    Action.DELETE_REMOTE: 4,
}


def _ordered(decisions):
    """Directories first (shallow to deep), then moves, transfers, and deletes deepest first."""

    def key(d):
        phase = _PHASE[d.action]
        depth = d.path.count("/")
        if phase == 1 and not d.is_directory:
            phase = 2.5
        if phase == 4:
            return (phase, -depth, d.path)
        return (phase, depth, d.path)

    return sorted(decisions, key=key)
