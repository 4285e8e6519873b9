"""Local changes coming in: the watcher's events and moves, ``.syncignore`` reloads, and
what is already inside a directory that appeared on one side."""

import os

from twisted.internet import defer
from twisted.logger import Logger

from quantum_sync.client import localfs
from quantum_sync.client.ignore import IGNORE_FILE, IgnoreRules
from quantum_sync.client.inflight import InFlight
from quantum_sync.client.pathstate import UNKNOWN, UNSEEN
from quantum_sync.client.transfer import ServerUnavailable
from quantum_sync.client.waiting import local_change


class LocalIntake:
    """Turns local events into per-path requests (and local moves into server Moves)."""

    log = Logger()

    def __init__(self, engine):
        self.engine = engine
        self._rules_reads = 0  # reloads started; only the newest one's rules are kept
        self._reported = set()  # local paths outside the selection already reported
        #: the local moves being carried out (not per-path jobs: :meth:`Engine.idle` waits for them too)
        self.moving = InFlight()

    def changed(self, path: str, stat=UNSEEN):
        """``path`` changed (created, written, deleted); ``stat``: its lstat seen just after."""
        engine = self.engine
        if stat and stat is not UNSEEN:
            engine.actions.deletes.back(path)  # (restored: no more part of a held mass delete)
            self._report_outside(path, stat.is_directory)
        if path == IGNORE_FILE:
            reloaded = defer.ensureDeferred(self.reload_rules())
            return reloaded.addCallback(lambda _: engine.request(path, UNKNOWN))
        waits = local_change(stat)
        if waits is not None and engine.is_ignored(path):
            waits = None  # never sent: it waits for nothing (a paused folder would count it till the resume)
        return engine.request(path, UNKNOWN, stat, waits)

    def _report_outside(self, path, is_directory):
        """A local file outside this client's selection is left alone: said once a path."""
        engine = self.engine
        if path in self._reported or engine.selection.selects(path, is_directory) or engine.rules.is_ignored(path, is_directory):
            return
        self._reported.add(path)
        self.log.info("left alone: {path} is outside this client's selection (not uploaded)", path=path)

    def moved(self, source: str, destination: str):
        """``source`` renamed to ``destination`` inside the folder."""
        moving = self.engine.guard(self._local_move(source, destination), source)
        return self.moving.add(defer.ensureDeferred(moving))

    async def reload_rules(self):
        engine = self.engine
        self._rules_reads += 1
        mine = self._rules_reads
        rules = await engine.threads.defer(IgnoreRules.from_file, os.path.join(engine.folder, IGNORE_FILE))
        if mine == self._rules_reads and rules.text != engine.rules.text:
            engine.rules = rules
            self.log.info(".syncignore changed; rules reloaded")
            defer.ensureDeferred(engine.guard(engine.reconcile(), IGNORE_FILE))

    async def _local_move(self, source, destination):
        engine = self.engine
        await engine.locks.wait_below(source)
        async with engine.locks.hold(source, destination):
            base = engine.state.base(source)
            local = await self._moved_version(destination, base)
            gone = await engine.threads.defer(localfs.lstat, engine.abspath(source))
            if self._movable(base, local, gone, destination):
                await self._send_move(source, destination, local)
                return
        engine.request(source, UNKNOWN)
        engine.request(destination, UNKNOWN)

    async def _moved_version(self, destination, base):
        engine = self.engine
        if base is None:
            return await engine.local_version(destination)
        # (a file changed on the way is hashed with its block list, as any change)
        abspath = engine.abspath(destination)
        return await engine.threads.defer(localfs.version, abspath, base,
                                          prehashed=engine.prehashed(destination, abspath, base))

    def _movable(self, base, local, gone, destination) -> bool:
        """A synced path moved as it was: the server can move it too."""
        engine = self.engine
        return (
            base is not None
            and engine.state.base(destination) is None
            and gone is None
            and local is not None
            and local.entry.same_content(base.entry)
            and not engine.is_ignored(destination, local.entry.is_directory)
        )

    async def _send_move(self, source, destination, local):
        engine = self.engine
        try:
            await engine.actions.move_remote(source, destination)
        except ServerUnavailable:
            engine.state.queue(destination, source)
            raise
        if local.entry.is_directory:
            await self.check_children(destination)
        else:
            engine.refresh_stat(destination, engine.state.base(destination), local)

    async def check_children(self, path):
        """After a directory appears on one side, look at what is already inside it locally
        (inotify may have missed files created before the watch was set)."""
        # only which paths to look at: each one's own job reads and hashes it (a burst of
        # new files in a new directory would otherwise be hashed twice)
        engine = self.engine
        found = await engine.threads.defer(localfs.stats_below, engine.folder, engine.is_ignored, path)
        for child, stat in found.items():
            if child == path:
                continue
            engine.actions.deletes.back(child)
            base = engine.state.base(child)
            synced_directory = base is not None and stat.is_directory and base.entry.is_directory
            if not (synced_directory or localfs.unchanged(stat, base)):
                engine.request(child, UNKNOWN)
