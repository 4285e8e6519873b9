"""The client daemon: state, engine, watcher and WebSocket link composed into one service.

Start-up order: open the folder's state (cleaning crash leftovers), reconcile with the
server (retrying with backoff while it is unreachable or its certificate is refused),
then watch the folder and subscribe to the hub. A periodic tick runs a full reconcile
every ``interval`` while the WebSocket is down and, as a safety net for events the
kernel dropped unseen, every ``safety_interval`` while it is up; an inotify overflow the
watcher reports starts one at once.
"""

import os

import attrs
from twisted.application.service import MultiService
from twisted.internet import defer, task
from twisted.logger import Logger

from quantum_sync.client.control import ControlService
from quantum_sync.client.credentials import Login, credentials_for
from quantum_sync.client.deselect import leave_selection
from quantum_sync.client.engine import Engine
from quantum_sync.client.realtime import RealtimeLink
from quantum_sync.client.selection import EVERYTHING, Selection
from quantum_sync.client.state import FolderState
from quantum_sync.client.transfer import RequestRefused, ServerClient, ServerUnavailable
from quantum_sync.client.watcher import FolderWatcher
from quantum_sync.delta import wanted as delta_wanted
from quantum_sync.threads import ThreadPoolService, stop_children_but


@attrs.frozen
class ClientConfig:
    """Everything the client needs, already validated (see ``tap.Options``)."""

    server: str
    folder: str
    client_id: str = None
    realtime: bool = True
    initial_sync: bool = False
    interval: float = 30.0
    token: str = None
    #: ``--token-file``: read again when it changes (``token`` is what it held at start).
    token_file: str = None
    #: ``--user`` and the password from ``--password-file``: the client logs in itself.
    user: str = None
    password: str = attrs.field(default=None, repr=False)
    strategy: str = "rename"
    ca_cert: str = None
    settle: float = 0.2
    allow_mass_delete: bool = False
    #: what this client syncs of the folder (its own rules; ``.syncignore`` is everyone's)
    selection: Selection = EVERYTHING
    #: Fetch other clients' large uploads while they arrive (quantum_sync.server.relay).
    relay: bool = True
    #: Send and fetch only the changed blocks of large files (quantum_sync.client.delta):
    #: auto (not with a server on the loopback), always or never.
    delta: str = "auto"
    #: Send large files as zstd where a sample shows it pays: auto (not with a server on
    #: the loopback), always or never.
    compress: str = "auto"
    safety_interval: float = 600.0
    concurrency: int = 8
    #: further servers of the same cluster, tried in turn after ``server``
    fallbacks: tuple = ()


def thread_pool_size(concurrency: int) -> int:
    """Threads of one folder's pool: one per large transfer (hashing, zstd, staging),
    two batches of installs, one batch of small-file versions and one scan, and never
    fewer than the ten a reactor's own pool has."""
    return max(10, concurrency + 4)


class SyncClientService(MultiService):
    """One folder kept converged with one server."""

    log = Logger()

    def __init__(self, config: ClientConfig, reactor):
        super().__init__()
        self.config = config
        self.reactor = reactor
        #: blocking work of this folder (hashing, scans, installs); the first child, stopped last
        self.threads = ThreadPoolService(reactor, thread_pool_size(config.concurrency), "quantum-sync-folder")
        self.threads.setServiceParent(self)
        self.state = self.server = self.engine = self.watcher = self.link = self.credentials = None
        self.ready = defer.Deferred()  # fires after the first successful reconcile
        self._starting = None
        self._ticker = None
        self._stopping = False
        self._backoff = None

    def startService(self):
        super().startService()
        self._stopping = False
        self._starting = defer.ensureDeferred(self._start())
        self._starting.addErrback(self._start_failed)

    def _start_failed(self, failure):
        if not self._stopping:
            self.log.failure("the sync client could not start", failure)

    async def _start(self):
        config = self.config
        self.state = await FolderState(self.reactor, config.folder).open()
        if self._stopping:
            return
        ControlService(self.folder_name, self, self.reactor).setServiceParent(self)
        client_id = self.state.client_id(config.client_id)
        self._announce(client_id)
        self.credentials = credentials_for(self.reactor, config.token, config.token_file, config.user, config.password,
                                           run_in_thread=self.threads.defer)
        self.server = ServerClient(self.reactor, config.server, client_id, self.credentials, config.ca_cert,
                                   config.concurrency,
                                   fallbacks=config.fallbacks, threads=self.threads)
        if isinstance(self.credentials, Login):
            self.credentials.log_in = self.server.log_in
        self.credentials.start()
        self.engine = Engine(
            self.reactor,
            config.folder,
            self.state,
            self.server,
            client_id,
            config.strategy,
            config.allow_mass_delete,
            retry_delay=max(config.settle, 0.05),
            selection=config.selection,
            threads=self.threads,
        )
        if self.state.paused:  # paused before this start: stays paused until resumed
            self.engine.pause_transfers()
            self.log.warn("{folder} is paused (quantum-sync-client resume {name} resumes it): "
                          "its changes are noted, not synced", folder=config.folder, name=self.folder_name)
        self.engine.actions.deltas.wanted = delta_wanted(config.delta, config.server)
        self.server.keep_block_lists = self.engine.actions.deltas.wanted
        self.server.compress_uploads = self.server.compress_downloads = delta_wanted(config.compress, config.server)
        self.watcher = FolderWatcher(
            self.reactor, config.folder, self.engine.local_changed, self.engine.local_moved, config.settle,
            on_grow=self.engine.growing.grew, is_synced=self.engine.is_synced,
            own_write=self.engine.installed.claim, on_lost=self._events_lost,
            threads=self.threads,
        )
        if not config.selection.everything:
            await self._leave_selection()
        if not config.initial_sync:
            self._watch()
        await self._first_reconcile()
        if self._stopping:
            return
        await self.engine.actions.deltas.prune(list(self.state.bases.values()))
        if config.initial_sync:
            self._watch()
            await self.engine.reconcile()  # what changed locally during the initial pull
        self._keep_in_sync(client_id)
        self.ready.callback(None)

    def _announce(self, client_id: str) -> None:
        """Log which folder syncs with which server as which client, and what its state
        says of it (a copy of another folder's, or none yet)."""
        config = self.config
        if self.state.made_for is not None:
            self.log.warn(
                "the state in {folder} was made for {other} (a copy of that folder?): {what} {client_id}",
                folder=config.folder, other=self.state.made_for, client_id=client_id,
                what="keeping the client id given," if config.client_id else "taking a new client id,")
        self.log.info(
            "syncing {folder} with {server} as client {client_id}",
            folder=config.folder,
            server=config.server,
            client_id=client_id,
        )
        if self.state.is_new:
            self.log.info("{folder} has no sync state yet: treated as new, nothing is deleted on the server", folder=config.folder)

    def _keep_in_sync(self, client_id: str) -> None:
        """Once the first reconcile is done: the WebSocket link (unless periodic sync
        only) and the periodic reconcile."""
        config = self.config
        if config.realtime:
            self.link = RealtimeLink(self.reactor, config.server, client_id, self.engine, self.credentials, config.ca_cert,
                                     relay=config.relay, poll_interval=config.interval, fallbacks=config.fallbacks,
                                     id_taken=self._id_taken)
            self.link.service.setServiceParent(self)  # started now: this service runs
        self._ticker = task.LoopingCall(self._tick)
        self._ticker.clock = self.reactor
        self._ticker.start(config.interval, now=False)

    def _id_taken(self, client_id: str):
        """Another client really uses ``client_id`` (the server refused it twice in a
        row): a generated id gives way to a new one, remembered in the folder's state;
        one given (``--client-id``) is kept (None)."""
        if self.config.client_id:
            return None
        taken = self.state.new_client_id()
        self.server.rename(taken)
        self.engine.client_id = taken
        self.log.warn("realtime: another client is connected with client id {old}: taking a new client id, {new}",
                      old=client_id, new=taken)
        return taken

    async def _leave_selection(self):
        """Local copies of synced paths now outside the selection go (when unchanged)."""
        engine, state = self.engine, self.state
        selection, rules = self.config.selection, engine.rules
        done = await self.threads.defer(leave_selection, self.config.folder, dict(state.bases),
                                         lambda p, d: not selection.selects(p, d), rules.is_ignored)
        for path in done.removed:
            state.forget(path)
        if done.removed:
            self.log.info("removed {count} local copies outside this client's selection (unchanged since synced)",
                          count=len(done.removed))
        for path in done.kept:
            self.log.warn("kept {path}: outside this client's selection, but changed since it was last synced", path=path)
        if done.outside:
            self.log.info("left alone outside this client's selection (not synced): {paths}",
                          paths=", ".join(done.outside[:10]) + (" ..." if len(done.outside) > 10 else ""))

    @property
    def folder_name(self) -> str:
        """The folder's name (``status``, ``pause``): its configured name, or the last part of its path."""
        return self.name or os.path.basename(self.config.folder)

    def _watch(self):
        self.watcher.setServiceParent(self)
        self.engine.watched = True

    async def _first_reconcile(self):
        delay = 0.5
        while not self._stopping:
            try:
                if self.config.initial_sync:
                    self.log.info("initial sync: pulling everything the server has first")
                await self.engine.reconcile(pull_first=self.config.initial_sync)
                return
            except (ServerUnavailable, RequestRefused) as e:
                # unreachable, a refused certificate or token: say why, keep trying
                self.engine._went_offline(str(e))
            if self._stopping:
                return
            self._backoff = task.deferLater(self.reactor, delay, lambda: None)
            try:
                await self._backoff
            except defer.CancelledError:
                return
            finally:
                self._backoff = None
            delay = min(delay * 2, self.config.interval)

    def _tick(self):
        if self._stopping:
            return None
        realtime_up = self.link is not None and self.link.connected
        last = self.engine.last_full_reconcile or 0
        healthy = realtime_up and self.engine.online is not False
        if healthy and self.reactor.seconds() - last < self.config.safety_interval:
            return None
        d = self.engine.reconcile()
        d.addErrback(self._tick_failed)
        return None

    def _events_lost(self):
        """The kernel dropped file events: what they were is unknown, so look at everything."""
        if not self._stopping:
            self.engine.reconcile().addErrback(self._tick_failed)

    def _tick_failed(self, failure):
        if failure.check(ServerUnavailable, RequestRefused):
            self.engine._went_offline(str(failure.value))
        else:
            self.log.failure("periodic reconcile failed", failure)

    async def _stop(self):
        self._stopping = True
        self._stop_timers()
        stopped = []
        if self.link is not None:
            await self.link.stop()
            stopped.append(self.link.service)  # stopped: a second stop can re-enter the first
        await stop_children_but(self, self.threads, *stopped)
        if self.engine is not None:
            await self._stop_engine()
        if self._starting is not None and not self._starting.called:
            await defer.DeferredList([self._starting])
        if self.server is not None:
            await self.server.close()
        if self.state is not None:
            await self.state.close()
        self.threads.stopService()

    def _stop_timers(self) -> None:
        """Cancel the reconnect backoff, the periodic reconcile and the token renewal."""
        if self._backoff is not None:
            self._backoff.cancel()
        if self._ticker is not None and self._ticker.running:
            self._ticker.stop()
        if self.credentials is not None:
            self.credentials.stop()

    async def _stop_engine(self) -> None:
        """Stop the engine and wait for what it is doing, a reconcile too; its requests
        in flight are aborted, not waited for (a silent server would hold the stop up
        to their timeout)."""
        self.engine.stop()
        self.server.abort()
        await self.engine.idle()
        running = self.engine._reconcile_running
        if running is not None:
            await defer.DeferredList([running])

    def stopService(self):
        return defer.ensureDeferred(self._stop())


def folder_problem(folder: str, label: str = "--local-path"):
    """Why ``folder`` cannot be used (None when it can), said of ``label``; a missing
    folder is created only when its parent exists (an absent mount point is an error)."""
    if os.path.isdir(folder):
        return None
    if os.path.exists(folder):
        return f"{label} {folder}: not a directory"
    parent_dir = os.path.dirname(os.path.abspath(folder))
    if not os.path.isdir(parent_dir):
        return f"{label} {folder}: its parent directory {parent_dir} does not exist"
    try:
        os.mkdir(folder)
    except OSError as e:
        return f"{label} {folder}: cannot create it ({e.strerror})"
    return None
