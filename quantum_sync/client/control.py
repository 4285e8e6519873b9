"""The local control endpoint of a running folder: HTTP over a Unix socket.

The socket is ``.quantum-sync/control.sock`` in the folder (mode 0600: only the user
running the daemon may talk to it). ``GET /status`` answers the folder's status
(:mod:`quantum_sync.client.status`); ``POST /pause`` and ``POST /resume`` pause and
resume its transfers and answer the status after. Errors are ``{"error": {"code",
"message"}}`` like the server's.
"""

import json
import os

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.endpoints import UNIXServerEndpoint
from twisted.logger import Logger
from twisted.web import resource, server

from quantum_sync.client.state import state_dir
from quantum_sync.client.status import folder_status

SOCKET_NAME = "control.sock"
#: The longest path a Unix socket may have (sun_path, with its terminating NUL).
MAX_SOCKET_PATH = 107


def socket_path(folder: str) -> str:
    """Where the control socket of ``folder`` is."""
    return os.path.join(state_dir(folder), SOCKET_NAME)


def too_long(path: str) -> bool:
    """Whether ``path`` is too long for a Unix socket (the daemon then makes none)."""
    return len(os.fsencode(path)) > MAX_SOCKET_PATH


def _json(request, code, body):
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    return json.dumps(body).encode()


def _error(request, code, error, message):
    return _json(request, code, {"error": {"code": error, "message": message}})


class ControlResource(resource.Resource):
    """``/status``, ``/pause`` and ``/resume`` of one folder's service."""

    isLeaf = True
    log = Logger()

    def __init__(self, name, service, reactor):
        super().__init__()
        self._name, self._service, self._reactor = name, service, reactor

    def render(self, request):
        path = request.path.rstrip(b"/")
        method = request.method
        if path == b"/status" and method == b"GET":
            return self._answer(request, None)
        if path in (b"/pause", b"/resume") and method == b"POST":
            return self._answer(request, path[1:].decode())
        if path in (b"/status", b"/pause", b"/resume"):
            return _error(request, 405, "METHOD_NOT_ALLOWED", f"{method.decode(errors='replace')} is not allowed here")
        return _error(request, 404, "NOT_FOUND", "no such control request")

    def _answer(self, request, action):
        engine = self._service.engine
        if action is not None:
            if engine is None:
                return _error(request, 409, "NOT_READY", "the folder is still starting")
            if action == "pause" and not engine.pause.paused:
                engine.pause_transfers()
                self.log.info("paused: no new transfers until resumed (the folder is still watched)")
            elif action == "resume" and engine.pause.paused:
                engine.resume()
                self.log.info("resumed: catching up")
        gone = []
        request.notifyFinish().addErrback(gone.append)  # the caller hung up
        d = defer.ensureDeferred(folder_status(self._name, self._service, self._reactor))

        def done(status):
            if not gone:
                request.write(_json(request, 200, status))
                request.finish()

        def failed(failure):
            self.log.failure("status failed", failure)
            if not gone:
                request.write(_error(request, 500, "INTERNAL", "the status could not be made"))
                request.finish()

        d.addCallbacks(done, failed)
        return server.NOT_DONE_YET


class ControlService(Service):
    """Listens on the folder's control socket (mode 0600) while the folder's service runs."""

    log = Logger()

    def __init__(self, name, service, reactor):
        self.path = socket_path(service.config.folder)
        self._site = server.Site(ControlResource(name, service, reactor))
        self._site.displayTracebacks = False
        self._site.noisy = False
        self._reactor = reactor
        self._listening = None

    def startService(self):
        super().startService()
        if too_long(self.path):
            self.log.warn("no control socket: its path {path} is longer than a Unix socket's may be", path=self.path)
            return
        endpoint = UNIXServerEndpoint(self._reactor, self.path, mode=0o600, wantPID=True)
        self._listening = endpoint.listen(self._site)
        self._listening.addErrback(self._failed)

    def _failed(self, failure):
        self.log.warn("no control socket at {path}: {error}", path=self.path, error=failure.getErrorMessage())

    def stopService(self):
        super().stopService()
        listening, self._listening = self._listening, None
        if listening is None:
            return None
        return listening.addCallback(lambda port: port and port.stopListening())
