"""What ``quantum-sync-client status`` says of one running folder (a JSON-ready dict).

Gathered from the folder's service on the reactor: its engine's counters, the progress of
a reconcile being carried out, the state's queue and cursor, and the server's journal
head (asked with a short timeout, so a status never hangs on a server that does not
answer).
"""

from twisted.internet import defer

from quantum_sync.client.conflicts import is_conflict_copy
from quantum_sync.client.waiting import DOWN, UP

#: Seconds a status waits for the server's journal head.
HEAD_TIMEOUT = 2.0
#: At most this many paths are listed (transfers, conflicts); the counts are whole.
LISTED = 20

RELEASE_MASS_DELETE = ("restore the files, or confirm: restart the client with --allow-mass-delete "
                       "(\"allow_mass_delete\": true for this folder in the --config file)")


async def folder_status(name, service, reactor) -> dict:
    """The status of the folder that ``service`` (a SyncClientService) syncs."""
    config, engine, state = service.config, service.engine, service.state
    answer = {
        "name": name,
        "folder": config.folder,
        "running": True,
        "server": {"url": config.server, "reachable": None, "last_error": None},
    }
    if engine is None or state is None:
        answer.update(state="starting", in_sync=False, paused=False)
        return answer
    head = await _journal_head(engine, reactor)
    progress = engine.progress
    pending = dict(state.pending)
    working = sorted(set(engine.locks.held()))
    conflicts = sorted(p for p in state.bases if is_conflict_copy(p))
    cursor = state.cursor
    behind = await _behind(engine, state, head, reactor)
    guards = _guards(engine)
    answer["server"].update(reachable=engine.online, last_error=engine.last_error if engine.online is not True else None)
    answer.update(
        paused=engine.pause.paused,
        waiting=_waiting(progress, engine.waiting, len(pending), engine.pause.holding),
        progress=_progress(progress),
        transfers=_transfers(working, engine.server.transfers_running()),
        conflicts={"count": len(conflicts), "paths": conflicts[:LISTED]},
        journal={"journal_id": state.journal_id, "cursor": cursor, "head": head, "behind": behind},
        guards=guards,
        watch=_watch(service, engine, reactor),
        selection={"include": list(config.selection.include), "exclude": list(config.selection.exclude)},
    )
    busy = _busy(engine, pending, working, progress, behind)
    answer["in_sync"] = _in_sync(engine.pause.paused, engine.online, busy, service.ready.called, guards)
    answer["state"] = _state_word(engine.pause.paused, answer["in_sync"], engine.online, busy,
                                  service.ready.called, guards)
    return answer


def _waiting(progress, changes, queued: int, holding) -> dict:
    """What waits to go up and down (what the reconcile or catch-up being carried out has
    left to move, and the ``changes`` taken in one by one: a :class:`Waiting`), and what
    waits for the server or a resume."""
    answer = {}
    for direction in (UP, DOWN):
        files, size = changes.totals(direction)
        left = progress.left(direction) if progress is not None else (0, 0)
        answer[direction] = {"files": files + left[0], "bytes": size + left[1]}
    return {
        **answer,
        # paths to sync again once the server answers (either way: decided then)
        "queued": queued,
        "held_while_paused": holding,
    }


def _progress(progress) -> dict | None:
    """The progress of the reconcile being carried out (None: none is)."""
    if progress is None:
        return None
    return {
        "files_done": progress.files_done, "files_total": progress.files_total,
        "bytes_done": progress.bytes_done, "bytes_total": progress.bytes_total,
        "rate_bytes_per_s": round(progress.rate, 1),
        "seconds_left": None if progress.seconds_left is None else round(progress.seconds_left, 1),
    }


def _transfers(working: list, running) -> dict:
    """The paths being synced, and the transfers moving bytes (``running``:
    ``(direction, path, bytes)``), at most :data:`LISTED` of each."""
    return {"count": len(working), "paths": working[:LISTED],
            "running": [{"direction": direction, "path": path, "bytes": moved}
                        for direction, path, moved in sorted(running, key=lambda t: t[1])][:LISTED]}


def _busy(engine, pending, working, progress, behind) -> bool:
    """True while anything is queued, being synced or still to catch up."""
    return bool(pending or working or progress or len(engine.paths) or engine.pause.holding or behind)


def _in_sync(paused: bool, online, busy: bool, ready: bool, guards) -> bool:
    return ready and online is True and not paused and not busy and not guards


def _state_word(paused: bool, in_sync: bool, online, busy: bool, ready: bool, guards) -> str:
    """The one word of the folder's state."""
    if paused:
        return "paused"
    if in_sync:
        return "in sync"
    if online is False:
        return "offline"
    if busy:
        return "syncing"
    if not ready:
        return "starting"
    return "held" if guards else "syncing"


def _watch(service, engine, reactor) -> dict:
    """How the folder is watched: the times the kernel dropped its file events (inotify
    queue overflows, each followed by a full reconcile), the full reconciles finished
    since the start (at start, on lost events, periodic ones) and how long ago the last
    one ended (seconds; None: none yet)."""
    last = engine.last_full_reconcile
    watcher = service.watcher
    return {"events_lost": watcher.events_lost if watcher is not None else 0,
            "full_reconciles": engine.fullsync.completed,
            "last_full_reconcile_ago": None if last is None else round(reactor.seconds() - last, 1)}


def _guards(engine) -> list:
    """What a guard holds back, each with how to release it."""
    held = []
    gate = engine.actions.deletes
    for what, counts in (("reconcile", engine.fullsync.mass_delete_held), ("local deletes", gate.held)):
        if counts:
            count, synced = counts
            held.append({"guard": "mass delete", "what": what, "files": count, "synced": synced,
                         "release": RELEASE_MASS_DELETE})
    return held


async def _journal_head(engine, reactor):
    return await _asked(engine.server.journal_head(), reactor)


async def _behind(engine, state, head, reactor):
    """How many changes of other clients the journal holds after the cursor (None: not
    known). The client's own changes are in the journal too, but never come back to it,
    so the cursor stays behind them until a catch-up passes over them: they do not count."""
    cursor = state.cursor
    if head is None:
        return None
    if head <= cursor:
        return 0
    page = await _asked(engine.server.changes(cursor, state.journal_id), reactor)
    if page is None:
        return head - cursor
    others = sum(1 for change in page.changes if change.source_client != engine.client_id)
    return others + (max(head - page.cursor, 0) if page.has_more else 0)


async def _asked(coroutine, reactor):
    """The server's answer, None when it gives none within HEAD_TIMEOUT."""
    d = defer.ensureDeferred(coroutine)
    d.addTimeout(HEAD_TIMEOUT, reactor)
    try:
        return await d
    except Exception:  # unreachable, refused, malformed or too slow: not known
        return None
