"""Request bodies and the connection under them: a body written whole (a batch, a small
file) that the connection's buffer paused must not leave the connection thinking a
producer is paused, or the next request's body on that kept-alive connection is
resumed without having been paused (Twisted's NotPaused, raised from the reactor's
write: the connection drops and a traceback is logged)."""

import hashlib
import os
import time

import pytest_twisted
from twisted.internet import task

from quantum_sync.client.transfer import ServerClient
from support import InlineThreads, start_server


@pytest_twisted.ensureDeferred
async def test_a_body_after_one_written_whole_on_a_kept_connection(reactor, tmp_path, logged_failures):
    running = await start_server(reactor, tmp_path)
    client = ServerClient(reactor, running.url, "c")
    busy = [True]

    def other_bodies():  # other uploads' files read by the shared cooperator, a slice each
        while busy[0]:
            time.sleep(0.02)
            yield None

    for _ in range(4):
        task.cooperate(other_bodies())
    try:
        for round_ in range(5):
            whole = os.urandom(200 * 1024)  # more than the connection's 64 KiB buffer, in one write
            await client._upload(f"whole-{round_}.bin", None, hashlib.sha256(whole).hexdigest(), None, whole)
            streamed = os.urandom(300 * 1024)
            path = tmp_path / f"streamed-{round_}.bin"
            path.write_bytes(streamed)  # sent by a FileBodyProducer, on the same kept connection
            meta = await client._upload(path.name, str(path), hashlib.sha256(streamed).hexdigest(), None, None)
            assert meta.hash == hashlib.sha256(streamed).hexdigest()
            whole = os.urandom(200 * 1024)
            await client._upload(f"again-{round_}.bin", None, hashlib.sha256(whole).hexdigest(), None, whole)
            assert await client.sync([]) == []  # a JSON body (treq's own FileBodyProducer)
        assert [e.get("log_format") for e in logged_failures] == []
    finally:
        busy[0] = False
        await client.close()
        await running.stop()


class _FullBuffer:
    """A consumer whose buffer is full after every write: it pauses its producer, as a
    connection does, and holds it paused until the test resumes it."""

    def __init__(self):
        self.producer, self.written, self.paused = None, [], False

    def write(self, data):
        self.written.append(data)
        self.paused = True
        self.producer.pauseProducing()

    def resume(self):
        self.paused = False
        self.producer.resumeProducing()


def _bodies(tmp_path):
    from quantum_sync.client.compress import ZstdFileBody
    from quantum_sync.client.bodies import BytesBody

    (tmp_path / "f").write_bytes(b"compressible " * 100_000)
    yield "whole", BytesBody(b"x" * 300_000)
    with open(tmp_path / "f", "rb") as f:
        yield "zstd", ZstdFileBody(f, InlineThreads())


def _started(body) -> tuple:
    """``(consumer, fired)``: ``body`` producing into a :class:`_FullBuffer`, and what its
    Deferred fired with so far."""
    consumer = _FullBuffer()
    consumer.producer = body
    fired = []
    body.startProducing(consumer).addBoth(fired.append)
    return consumer, fired


def test_a_body_paused_by_its_last_write_is_done_once_resumed(tmp_path):
    for name, body in _bodies(tmp_path):
        consumer, fired = _started(body)
        for _ in range(1000):
            if fired:
                break
            consumer.resume()
        assert fired == [None] and consumer.written, name
        assert not consumer.paused, f"{name}: done while its consumer held it paused"


def test_a_body_stopped_while_paused_never_fires(tmp_path):
    for name, body in _bodies(tmp_path):
        consumer, fired = _started(body)
        body.stopProducing()
        consumer.resume()
        assert fired == [], name


def test_a_watched_body_is_resumed_only_after_a_pause():
    """A connection that resumes a body it never paused (or pauses it several times
    before one resume) reaches a FileBodyProducer as one pause and one resume."""
    import io

    from twisted.internet.task import Clock, Cooperator
    from twisted.web.client import FileBodyProducer

    from quantum_sync.client.bodies import WatchedBody
    from quantum_sync.client.idlewatch import IdleWatch

    clock = Clock()
    watch = IdleWatch(clock, 60)
    steps = []
    inner = FileBodyProducer(io.BytesIO(b"x" * 10), cooperator=Cooperator(scheduler=steps.append, started=True))
    body = WatchedBody(inner, watch)
    body.startProducing(type("Sink", (), {"write": staticmethod(lambda data: None)}))
    body.resumeProducing()  # never paused: nothing to resume (NotPaused without the guard)
    body.pauseProducing()
    body.pauseProducing()
    body.resumeProducing()  # one resume undoes the pauses
    body.stopProducing()
    watch.stop()


def test_a_whole_body_stopped_while_paused_can_be_sent_again():
    """A batch body is sent once more after a refusal (a new token): the pause of the
    first connection does not hold the second sending."""
    from quantum_sync.client.bodies import BytesBody

    body = BytesBody(b"x" * 1000)
    _, fired = _started(body)
    body.stopProducing()  # the first connection went, the body paused
    sink = []
    body.startProducing(type("Sink", (), {"write": staticmethod(sink.append)})).addBoth(fired.append)
    assert fired == [None] and sink == [b"x" * 1000]
