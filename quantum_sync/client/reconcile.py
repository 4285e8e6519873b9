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

import collections

import attrs

from quantum_sync.enums import IdentityEnum

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


class Side(IdentityEnum):
    """How one side's version relates to the base."""

    ABSENT = "absent"
    UNCHANGED = "unchanged"
    CHANGED = "changed"
    DELETED = "deleted"


class Action(IdentityEnum):
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


def entry_of(meta):
    """The :class:`Entry` of a FileMetadata (None stays None)."""
    return None if meta is None else Entry(meta.hash, meta.size, meta.is_directory)


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


_DELETES = frozenset((Action.DELETE_LOCAL, Action.DELETE_REMOTE))
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
    restore_remote_deletes: bool = False,
) -> Plan:
    """Decisions for every path in the three maps (path → :class:`Entry`).

    ``synced_files`` is the folder's number of synced files for the mass-delete guard
    (default: the files in ``base``; a subtree plan passes the whole folder's count).
    ``trust_remote_deletes`` False: what the server lacks is not deleted here;
    ``restore_remote_deletes``: it is uploaded again (a server whose state was restored
    lost it, it was not deleted)."""
    decisions = {}
    for path in set(local) | set(remote) | set(base):
        lv, rv, bv = local.get(path), remote.get(path), base.get(path)
        decisions[path] = Decision(path, decide(lv, rv, bv, strategy, path in suspects), lv, rv, bv)

    distrusted = 0
    if restore_remote_deletes:
        _replace(decisions, Action.DELETE_LOCAL, Action.UPLOAD)
    elif not trust_remote_deletes:
        distrusted = _replace(decisions, Action.DELETE_LOCAL, Action.NOTHING)

    _detect_moves(decisions)
    _keep_directories_with_survivors(decisions)

    held = 0
    if not allow_mass_delete:
        held = _hold_mass_delete(decisions, synced_files if synced_files is not None else _files_in(base))
    return Plan(tuple(_ordered(decisions.values())), held, distrusted)


def _files_in(base: dict) -> int:
    return sum(1 for b in base.values() if not b.is_directory)


def _replace(decisions: dict, action: Action, replacement: Action) -> int:
    """Every ``action`` becomes ``replacement``; how many there were."""
    changed = [d for d in decisions.values() if d.action is action]
    for d in changed:
        decisions[d.path] = attrs.evolve(d, action=replacement)
    return len(changed)


def _hold_mass_delete(decisions: dict, synced: int) -> int:
    """Withhold every delete when the file deletes are a mass delete; how many were held."""
    deletes = sum(1 for d in decisions.values() if d.action in _DELETES and not d.is_directory)
    if not is_mass_delete(deletes, synced):
        return 0
    for d in [d for d in decisions.values() if d.action in _DELETES]:
        decisions[d.path] = attrs.evolve(d, action=Action.NOTHING)
    return deletes


def is_mass_delete(deletes: int, synced_files: int) -> bool:
    """True when ``deletes`` is more than half of ``synced_files`` and more than the minimum."""
    return deletes > MASS_DELETE_MIN and deletes * 2 > synced_files


_MOVE_FOLDS = (
    (Action.DELETE_REMOTE, Action.UPLOAD, Action.MOVE_REMOTE),
    (Action.DELETE_LOCAL, Action.DOWNLOAD, Action.MOVE_LOCAL),
)


def _detect_moves(decisions: dict) -> None:
    """Fold a one-sided delete plus a create of the same file content into a move."""
    ordered = sorted(decisions.values(), key=lambda d: d.path)
    for deleted_action, created_action, moved_action in _MOVE_FOLDS:
        sources = {}
        for d in ordered:
            if d.action is deleted_action and not d.is_directory and d.base is not None:
                sources.setdefault(d.base.hash, collections.deque()).append(d)
        if not sources:
            continue
        for d in ordered:
            source = _move_source(d, created_action, sources)
            if source is not None:
                decisions[source.path] = attrs.evolve(source, action=Action.NOTHING)
                decisions[d.path] = attrs.evolve(d, action=moved_action, base=source.base, source=source.path)


def _move_source(d: Decision, created_action: Action, sources: dict):
    """The deleted file that ``d``, a new file on one side only, was moved from (taken
    from ``sources``), or None."""
    if d.action is not created_action or d.is_directory or d.base is not None:
        return None
    upload = created_action is Action.UPLOAD
    created, other_side = (d.local, d.remote) if upload else (d.remote, d.local)
    if other_side is not None or not sources.get(created.hash):
        return None
    return sources[created.hash].popleft()


_KEEP_SIDES = (
    ("local", Action.DELETE_LOCAL, Action.UPLOAD, Action.MOVE_LOCAL),
    ("remote", Action.DELETE_REMOTE, Action.DOWNLOAD, Action.MOVE_REMOTE),
)


def _keep_directories_with_survivors(decisions: dict) -> None:
    """A directory is deleted only when nothing below it stays on that side (else it is
    recreated on the side that deleted it)."""
    for side, delete, keep, move in _KEEP_SIDES:
        doomed = [d for d in decisions.values() if d.action is delete and d.is_directory]
        if not doomed:
            continue
        kept = _ancestors(_staying(decisions, side, move))
        for d in doomed:
            if d.path in kept:
                decisions[d.path] = attrs.evolve(d, action=keep)


def _staying(decisions: dict, side: str, move: Action) -> list:
    """The paths still on ``side`` once the decisions have run (not moved away)."""
    moved_away = {d.source for d in decisions.values() if d.action is move}
    return [d.path for d in decisions.values() if _survives(d, side) and d.path not in moved_away]


def _ancestors(paths) -> set:
    """Every directory above any of ``paths``."""
    found = set()
    for path in paths:
        parts = path.split("/")
        for i in range(1, len(parts)):
            found.add("/".join(parts[:i]))
    return found


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
