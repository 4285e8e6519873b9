"""``twistd quantum-sync``: command-line options and ``makeService``.

Every start-up error (options, config, root, listen endpoint, busy port) ends the
process with exit status 1 and one line on stderr, never a traceback or the usage text.
"""

import atexit
import os
import sys

from twisted.python import usage

from quantum_sync.config import ConfigError, load
from quantum_sync.gctune import tune_garbage_collector


class Options(usage.Options):
    """Options of the ``quantum-sync`` twistd plugin."""

    synopsis = "[--config PATH] [--listen ENDPOINT] [--root DIR]"
    optParameters = [
        ["config", "c", "etc/sync.json", "the JSON configuration file"],
        ["listen", "l", None, "listen here instead (':8080', 'HOST:PORT' or an endpoint string)"],
        ["root", "r", None, "serve this directory instead of the configured root"],
    ]

    def parseOptions(self, options=None):
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            fail(f"quantum-sync: {e}")

    def postOptions(self):
        try:
            self.config = load(self["config"], listen=self["listen"], root=self["root"])
        except ConfigError as e:
            fail(str(e))


def print_error(line: str) -> None:
    """One line on the process's real stderr (twistd redirects ``sys.stderr`` into its log)."""
    os.write(2, (line.rstrip("\n") + "\n").encode("utf-8", "replace"))


def fail(line: str, status: int = 1):
    """Print one line on stderr and exit (before the reactor runs)."""
    print_error(line)
    raise SystemExit(status)


def _exit_with_status_one():
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)


def _fatal_listen_failure(reactor):
    """A listener that cannot listen stops the server with exit status 1."""

    def on_failure(endpoint, reason):
        print_error(f"quantum-sync: cannot listen on {endpoint}: {reason}")
        # twistd exits 0 after a normal reactor stop; force 1 once its cleanup is done.
        atexit.register(_exit_with_status_one)
        if reactor.running:
            reactor.stop()
        else:
            reactor.callWhenRunning(reactor.stop)

    return on_failure


def makeService(options, reactor=None):
    """The server's MultiService for parsed ``options``."""
    if reactor is None:
        from twisted.internet import reactor
    from quantum_sync.server.service import make_server_service

    try:
        for part in (options.config, *options.config.others):
            if part.handler.cluster is not None:
                from quantum_sync.server.service import cluster_parts

                cluster_parts(part.source)  # the libraries are there
                from quantum_sync.server.cluster.node import preflight

                preflight(part.handler.cluster, part.source)
        service = make_server_service(options.config, reactor)
    except ConfigError as e:
        fail(str(e))
    daemonising = not getattr(options, "parent", {"nodaemon": True})["nodaemon"]
    for listener in service.listeners:
        if daemonising:
            listener.fail_fast = True  # twistd's launcher prints it and exits 1
        else:
            listener.on_failure = _fatal_listen_failure(reactor)
    tune_garbage_collector()
    return service
