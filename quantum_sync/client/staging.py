"""A download streamed into its staging file: hashed and written off the reactor, in
bounded memory.

The body arrives on the reactor. Two threads take it from there, one hashing (SHA-256)
and one writing, so the two costs overlap instead of adding up, and writeback starts
every 8 MiB (:class:`~quantum_sync.diskio.Writeback`) so the final fsync is short. When
more than :data:`BACKLOG` bytes wait for the slower thread, the response is paused (its
connection stops reading) until that thread is down to half of it: the reactor never
waits for the disk, and memory stays bounded.
"""

import hashlib
import os
import queue
import threading

from twisted.internet import defer
from twisted.internet.protocol import Protocol
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss

from quantum_sync.adapters import twisted as twisted_adapter
from quantum_sync.diskio import Writeback

BACKLOG = 16 << 20
READ_SIZE = 256 << 10


class StagingSink:
    """Takes chunks on the reactor (:meth:`put`); :meth:`finish` (blocking, in a thread)
    waits for both threads, fsyncs, closes and returns the SHA-256 hex digest."""

    def __init__(self, reactor, fd: int, datasync=os.fdatasync):
        self._reactor = reactor
        self._fd = fd
        self._digest = hashlib.sha256()
        self._writeback = Writeback(fd, datasync)  # (datasync: a seam for injected faults)
        self._error = None
        self._lock = threading.Lock()
        self._waiting = {"hash": 0, "write": 0}  # bytes each thread has still to do
        self._paused = False
        self._pause = self._resume = None
        self._queues = {"hash": queue.SimpleQueue(), "write": queue.SimpleQueue()}
        self._threads = [
            threading.Thread(target=self._run, args=(name, work), name=f"download-{name}", daemon=True)
            for name, work in (("hash", self._digest.update), ("write", self._write))
        ]
        for thread in self._threads:
            thread.start()

    def flow(self, pause, resume) -> None:
        """How to pause and resume the body's source (its transport)."""
        self._pause, self._resume = pause, resume

    def put(self, chunk: bytes) -> None:
        """One chunk of the body (in the reactor)."""
        with self._lock:
            for name in self._waiting:
                self._waiting[name] += len(chunk)
            crowded = max(self._waiting.values()) > BACKLOG and not self._paused
            if crowded and self._pause is not None:
                self._paused = True
        for q in self._queues.values():
            q.put(chunk)
        if crowded and self._pause is not None:
            self._pause()

    def _write(self, chunk: bytes) -> None:
        if self._error is not None:
            return  # keep draining: memory is freed, the error is reported by finish
        try:
            view = memoryview(chunk)
            while view:
                view = view[os.write(self._fd, view):]
            self._writeback.wrote(len(chunk))
        except OSError as e:
            self._error = e

    def _run(self, name, work):
        q = self._queues[name]
        while (chunk := q.get()) is not None:
            work(chunk)
            with self._lock:
                self._waiting[name] -= len(chunk)
                caught_up = self._paused and max(self._waiting.values()) <= BACKLOG // 2
                if caught_up:
                    self._paused = False
            if caught_up:
                self._reactor.callFromThread(self._resume)

    def finish(self) -> str:
        """(Blocking) wait for every chunk, fsync and close; the SHA-256 hex digest."""
        for q in self._queues.values():
            q.put(None)
        for thread in self._threads:
            thread.join()
        lost = self._writeback.stop()  # Linux reports a writeback error once: here, not later
        try:
            if self._error is not None or lost is not None:
                raise self._error or lost
            os.fsync(self._fd)
        finally:
            os.close(self._fd)
        return self._digest.hexdigest()


class _BodyToSink(Protocol):
    def __init__(self, sink: StagingSink, done: defer.Deferred, watch=None):
        self._sink, self._done, self._watch = sink, done, watch

    def connectionMade(self):
        if self._watch is None:
            self._sink.flow(self.transport.pauseProducing, self.transport.resumeProducing)
        else:
            self._watch.abort = self.transport.stopProducing
            self._sink.flow(self._pause, self._resume)
        # fewer, larger socket reads while the body streams in; the pooled connection gets
        # its usual size back afterwards (a large read buffer per small answer costs)
        self._connection = twisted_adapter.body_connection(self.transport)
        if self._connection is not None:
            self._usual_read_size = self._connection.bufferSize
            self._connection.bufferSize = READ_SIZE

    def _pause(self):  # the disk is behind: no byte arrives, and that is not a stall
        self._watch.paused = True
        self.transport.pauseProducing()

    def _resume(self):
        self._watch.paused = False
        self._watch.touch()
        self.transport.resumeProducing()

    def dataReceived(self, data):
        if self._watch is not None:
            self._watch.touch(data)
        self._sink.put(data)

    def connectionLost(self, reason):
        if self._connection is not None:
            self._connection.bufferSize = self._usual_read_size
        if reason.check(ResponseDone, PotentialDataLoss):
            self._done.callback(None)
        else:
            self._done.errback(reason)


def receive(response, sink: StagingSink, watch=None) -> defer.Deferred:
    """Deliver ``response``'s body into ``sink``; fires when all of it has been handed over
    (the threads may still be working: call :meth:`StagingSink.finish`). ``watch``: the
    transfer's idle watch (:class:`quantum_sync.client.idlewatch.IdleWatch`)."""
    if response.length == 0:
        return defer.succeed(None)
    done = defer.Deferred()
    response.deliverBody(_BodyToSink(sink, done, watch))
    return done
