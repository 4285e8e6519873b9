"""The server as one MultiService: the table of contents of a running server.

:func:`make_server_service` wires the store, index/journal, versions, FileOperations,
hub, metrics, authorizer, root watcher and one listener per listen entry.
"""

import importlib
import os
import time

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger

from quantum_sync.blocklists import BlockLists
from quantum_sync.config import ConfigError
from quantum_sync.server.api import FileApi
from quantum_sync.server.auth import OpenAuthorizer
from quantum_sync.server.clientids import ClientIdBindings
from quantum_sync.server.delta import Deltas
from quantum_sync.server.hub import Hub
from quantum_sync.server.index import Index
from quantum_sync.server.metrics import Metrics
from quantum_sync.server.operations import FileOperations
from quantum_sync.server.rootwatch import RootWatcher
from quantum_sync.server.site import build_site
from quantum_sync.server.store import Store
from quantum_sync.server.versions import VersionArea, Versions
from quantum_sync.threads import ThreadPoolService, stop_children_but


#: Threads of a server's pool: upload bodies' fsyncs wait on the disk, not on a CPU, so
#: more of them than the reactor's own ten keep a few slow fsyncs from holding up the
#: listings, zstd downloads and password checks behind them.
SERVER_THREADS = 16


class ListenerService(Service):
    """Listens on one endpoint; ``on_failure(endpoint, reason)`` hears why it could not.

    With ``fail_fast``, a failure already known when privileged start-up returns (a busy
    TCP port) is raised instead, so that a daemonising twistd reports it to the
    launching process."""

    log = Logger()

    def __init__(self, description: str, endpoint, site, on_failure=None):
        self.description = description
        self.endpoint = endpoint
        self.site = site
        self.on_failure = on_failure or self._log_failure
        self.fail_fast = False
        self.failure_reason = None
        self.port = None
        self._listening = None
        self._waiters = []

    def _log_failure(self, description, reason):
        self.log.error("cannot listen on {endpoint}: {reason}", endpoint=description, reason=reason)

    def privilegedStartService(self):
        super().privilegedStartService()
        self._listen()
        if self.fail_fast and self.failure_reason is not None:
            # twistd shows "<module>.<class>: <message>" cut at 100 bytes: keep it short
            raise RuntimeError(self.failure_reason)

    def startService(self):
        super().startService()
        self._listen()

    def _listen(self):
        if self._listening is not None:
            return
        self._listening = self.endpoint.listen(self.site)
        self._listening.addCallbacks(self._listened, self._failed)

    def _listened(self, port):
        self.port = port
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(port)

    def _failed(self, failure):
        self.failure_reason = failure.getErrorMessage()
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.errback(failure)
        if not self.fail_fast:
            self.on_failure(self.description, self.failure_reason)

    def when_listening(self) -> Deferred:
        """Fires with the listening port (IListeningPort) once it listens."""
        if self.port is not None:
            return succeed(self.port)
        waiter = Deferred()
        self._waiters.append(waiter)
        return waiter

    def stopService(self):
        super().stopService()
        port, self.port, self._listening = self.port, None, None
        if port is not None:
            return port.stopListening()
        return None


def build_authorizer(config, reactor, hub, threads):
    """OpenAuthorizer without an ``auth`` section, else the security module's authorizer."""
    if config.handler.auth is None:
        return OpenAuthorizer()
    try:
        from quantum_sync.server.auth import build_authorizer as build
    except ImportError:
        raise ConfigError(f"{config.source}: auth: authentication is not available in this build") from None
    try:
        return build(config.handler.auth, state_dir=config.handler.state_dir, reactor=reactor, hub=hub,
                     root=config.handler.root, run_in_thread=threads.defer)
    except ValueError as e:  # auth.AuthConfigError names the key and the reason
        raise ConfigError(f"{config.source}: {e}") from None


class ServerService(MultiService):
    """A running quantum-sync server; collaborators are public attributes."""

    log = Logger()

    def __init__(self, config, reactor, datasync=os.fdatasync, store=None, clock=None):
        super().__init__()
        handler = config.handler
        self.config = config
        self.reactor = reactor
        #: The background sync of large upload bodies (a seam for injected disk faults).
        self.datasync = datasync
        self.started = time.time()
        #: blocking work (store, hashing, zstd, password checks); the first child, stopped last
        self.threads = ThreadPoolService(reactor, SERVER_THREADS, "quantum-sync-server")
        self.threads.setServiceParent(self)
        #: The cluster node (None for an embedded server: SQLite, one process).
        self.node = _cluster_node(config, reactor, clock)
        self.store = self._prepared_store(store)
        if self.node is None:
            self.index = Index(handler.state_dir, handler.journal_retention, reactor)
            self.index.setServiceParent(self)  # started before the parts that use it
        else:
            self.index = self.node.index
        self.metrics = Metrics(clock=reactor.seconds)
        self.hub = Hub(handler.websocket, reactor, metrics=self.metrics,
                       storage_root=self.store.root, journal_head=lambda: self.operations.head,
                       journal_id=lambda: self.index.journal_id,
                       cluster=self.node.figures if self.node is not None else None)
        self.hub.setServiceParent(self)
        self.authorizer = build_authorizer(config, reactor, self.hub, self.threads)
        # the versions' kept-at times and pruning passes go by ``clock`` (a test's Clock)
        area = _version_area(self.store, clock or reactor, handler.versions.enabled, self.node)
        self.versions = Versions(area, self.index, handler.versions, reactor, clock, threads=self.threads,
                                 leading=self.node is None)  # a cluster's: its leader prunes
        self.versions.setServiceParent(self)
        if self.authorizer.enabled and self.node is not None:
            self.hub.bindings = self.node.bindings  # shared by the nodes
        elif self.authorizer.enabled:
            try:
                self.hub.bindings = ClientIdBindings(handler.state_dir, reactor, self.threads,
                                                     live=lambda client_id: self.hub.holder(client_id) is not None)
                self.hub.bindings.setServiceParent(self)
            except ValueError as e:
                raise ConfigError(f"{config.source}: {e}") from None
        self.operations = FileOperations(self.store, self.index, self.hub, reactor,
                                         handler.enable_upload, area, threads=self.threads)
        self.block_lists = BlockLists(os.path.join(self.store.state_dir, "blocks"))
        deltas = Deltas(self.store, self.block_lists, reactor, self.threads)
        self.hub.block_lists = deltas.offered
        self.api = FileApi(self.operations, self.authorizer, reactor, self.versions, deltas, threads=self.threads)
        self.watcher = RootWatcher(self.store.root, self.operations, reactor,
                                   rescan_interval=handler.rescan_interval, metrics=self.metrics,
                                   threads=self.threads)
        if self.node is None:
            self.watcher.setServiceParent(self)
        else:  # the cluster's leader watches the shared root, and only it
            self.operations.fence = self.node.fence
            self.operations.feed = self.node
        self.listeners = [self._listener(listener) for listener in config.listeners]
        self._ready = None

    def _prepared_store(self, store) -> Store:
        """``store`` (a :class:`Store` of the handler's root given by the caller: tests),
        else the root's own, prepared; ConfigError when the root cannot be used."""
        if store is None:
            store = Store(self.config.handler.root, node_id=self.node.node_id if self.node else None)
        try:
            store.prepare()
        except (OSError, ValueError) as e:
            raise ConfigError(f"{self.config.source}: root: {e}") from None
        return store

    def _listener(self, listener) -> ListenerService:
        """A child service listening as ``listener`` (a ListenerConfig) says."""
        try:
            endpoint = serverFromString(self.reactor, listener.endpoint)
        except Exception as e:  # endpoint parsers raise anything from ValueError on
            where = ("--listen" if listener.server == "--listen"
                     else f"{self.config.source}: apps.http.servers.{listener.server}.listen")
            raise ConfigError(f"{where}: {listener.endpoint!r}: {e}") from None
        service = ListenerService(listener.endpoint, endpoint, build_site(listener, self))
        service.setServiceParent(self)
        return service

    def startService(self):
        if self.node is not None:
            self.index.start()  # the node's, not a child of this service
        super().startService()
        self._ready = Deferred.fromCoroutine(self._reconcile())

    async def _reconcile(self):
        await self.index.open()
        await self.versions.open()
        if self.node is not None:  # its leader compares the shared root with the index
            await self.node.start(self)
            await self.operations.recover()
            return
        await self.operations.recover()
        await self.operations.refresh(None)
        await self.api.deltas.prune(self.index)

    def when_ready(self) -> Deferred:
        """Fires once the index is open and reconciled with the disk (requests are
        answered a little earlier: :meth:`FileOperations.recover`)."""
        return self._ready

    def stopService(self):
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self):
        await stop_children_but(self, self.threads, self.index)
        # connections accepted before the ports closed may still send requests: they are
        # closed (or answered, then closed) before the index goes away under them
        await DeferredList([Deferred.fromCoroutine(listener.site.close_connections())
                            for listener in self.listeners])
        if self._ready is not None:
            try:
                await self._ready
            except Exception:
                self.log.failure("start-up reconcile failed")
        self.operations.close()
        await self.operations.idle()
        if self.hub.bindings is not None:
            await self.hub.bindings.flush()
        if self.node is not None:
            await self.node.stop()
        await maybeDeferred(self.index.stopService)  # (a query in flight ends first)
        self.threads.stopService()


def cluster_parts(source: str) -> tuple:
    """``(ClusterNode, default_node_id)``; ConfigError when the cluster's libraries are
    not installed."""
    try:
        importlib.import_module("psycopg")  # imported where it is used: checked here
        from quantum_sync.server.cluster.node import ClusterNode, default_node_id
    except ImportError as e:
        raise ConfigError(f"{source}: cluster: needs psycopg and txredisapi"
                          f" (pip install 'quantum-sync[cluster]'): {e}") from None
    return ClusterNode, default_node_id


def _version_area(store, clock, enabled: bool, node) -> VersionArea:
    """The versions area of ``store``; on a cluster (``node``), a restore's version is
    held from every node's prunings."""
    area = VersionArea(store, clock, enabled)
    if node is not None:
        area.reads = node.version_reads
    return area


def _cluster_node(config, reactor, clock=None):
    """The :class:`ClusterNode` of a handler with a ``cluster`` block, else None."""
    cluster = config.handler.cluster
    if cluster is None:
        return None
    ClusterNode, default_node_id = cluster_parts(config.source)
    node_id = cluster.node_id or default_node_id(config.listeners)
    try:
        return ClusterNode(cluster, node_id, config.handler.journal_retention, reactor, clock)
    except ValueError as e:
        raise ConfigError(f"{config.source}: cluster.redis: {e}") from None


class ServerGroup(MultiService):
    """Several :class:`ServerService` in one process, one per different ``file_sync``
    handler of the config (each with its own root, index, journal and hub)."""

    def __init__(self, configs, reactor, **options):
        super().__init__()
        self.servers = [ServerService(config, reactor, **options) for config in configs]
        for server in self.servers:
            server.setServiceParent(self)
        self.config = configs[0]
        self.listeners = [listener for server in self.servers for listener in server.listeners]

    def when_ready(self) -> Deferred:
        return DeferredList([server.when_ready() for server in self.servers],
                            fireOnOneErrback=True, consumeErrors=True)


def make_server_service(config, reactor, **options):
    """The server's top service for ``config`` (raises ConfigError for an unusable root
    or listen entry): a :class:`ServerService`, or a :class:`ServerGroup` when the config
    has several different handlers; ``options`` go to each ServerService."""
    if config.others:
        return ServerGroup([config, *config.others], reactor, **options)
    return ServerService(config, reactor, **options)
