"""Reconnecting without a storm: the pure backoff policy, the link's decisions on a Clock,
and clients refused by real servers (a full one, one that says the id is in use)."""

import json
import random

import pytest_twisted
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet.endpoints import serverFromString
from twisted.internet.task import Clock

from logcapture import LogCapture
from quantum_sync.client.backoff import STABLE, Backoff, session_failed
from quantum_sync.client.realtime import NO_WEBSOCKET_RETRY, RealtimeLink
from clients import Clients
from support import sleep, wait_for


def highest(value=0.999):
    return lambda: value


def test_delays_double_to_the_cap_with_full_jitter():
    backoff = Backoff(initial=1.0, cap=60.0, random=highest())
    ceilings = [round(backoff.next_delay() / 0.999, 6) for _ in range(9)]
    assert ceilings == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    backoff.succeeded()
    assert backoff.next_delay() < 1
    lowest = Backoff(random=highest(0.0))
    assert [lowest.next_delay() for _ in range(5)] == [0.0] * 5  # full jitter: from 0


def test_a_wait_the_server_asked_for_is_honoured_and_spread():
    delays = [Backoff(random=random.Random(seed).random).next_delay(at_least=5) for seed in range(1000)]
    assert min(delays) >= 5 and max(delays) < 10
    # a thousand clients told "5 s" come back over 5 s, not in the same second
    per_second = [sum(1 for d in delays if s <= d < s + 1) for s in range(5, 10)]
    assert max(per_second) < 300


def test_a_thousand_refused_clients_spread_their_retries():
    clients = [Backoff(random=random.Random(seed).random) for seed in range(1000)]
    times = [0.0] * len(clients)
    attempts_in_last_minute = 0
    for _ in range(12):  # each refused again at every attempt
        times = [t + c.next_delay() for t, c in zip(times, clients)]
        attempts_in_last_minute += sum(1 for t in times if 120 <= t < 180)
    # in steady state at most about 1000 / 30 s on average per second, never all at once
    assert attempts_in_last_minute < 1000 * 60 / 15


def test_what_counts_as_a_failed_session():
    assert session_failed(None, 100.0, 1000)  # never subscribed
    assert session_failed(0.0, 5.0, 1006)  # dropped right after subscribing
    assert not session_failed(0.0, STABLE, 1006)  # up a while: a success
    assert session_failed(0.0, 10 * STABLE, 1008)  # policy: always backed off
    assert session_failed(0.0, 10 * STABLE, 1013)  # try again later: always backed off


class NoEngine:
    def journal_named(self, journal_id):
        pass

    def catch_up_soon(self):
        pass

    def retry_pending(self):
        pass


def make_link(clock, **options):
    return RealtimeLink(clock, "http://127.0.0.1:9", "c1", NoEngine(), random=highest(), **options)


def test_the_link_counts_sessions_not_tcp_connections():
    clock = Clock()
    link = make_link(clock)
    # connected and subscribed, then dropped at once, again and again: backed off
    delays = []
    for _ in range(8):
        link.subscribed(proto=None)
        clock.advance(1)
        link.closed(None, 1006, "")
        delays.append(link.next_delay())
        clock.advance(delays[-1])
    assert delays[-1] > 50 and delays == sorted(delays)
    # a session that stayed up starts over
    link.subscribed(proto=None)
    clock.advance(STABLE)
    link.closed(None, 1006, "")
    assert link.next_delay() < 1
    # a policy close after a long session is still a failure
    link.subscribed(proto=None)
    clock.advance(10 * STABLE)
    link.closed(None, 1008, "")
    assert link.next_delay() > 1


def test_the_link_honours_retry_after_and_a_missing_websocket():
    clock = Clock()
    link = make_link(clock, poll_interval=30)
    link.handshake_refused(503, "5")
    assert 5 <= link.next_delay() < 10
    with LogCapture() as log:
        for _ in range(3):
            link.handshake_refused(404, None)
            assert link.next_delay() >= NO_WEBSOCKET_RETRY
    lines = [line for line in log.text().splitlines() if "serves no /ws" in line]
    assert lines == ["realtime: the server serves no /ws on this route: polling every 30 s"]
    link.subscribed(proto=None)  # a /ws again: back to the plain backoff
    link.closed(None, 1006, "")
    assert link.next_delay() < NO_WEBSOCKET_RETRY


@pytest_twisted.ensureDeferred
async def test_a_client_refused_by_a_full_server_makes_few_handshakes(reactor, tmp_path, log_lines):
    from support import start_server

    running = await start_server(reactor, tmp_path, websocket={"max_connections": 1})
    group = Clients(reactor, tmp_path)
    try:
        await group.start(running, "a")  # takes the only connection
        b = await group.start(running, "b", wait=False)

        def refusals():
            return sum("failing WebSocket opening handshake" in line and "[503]" in line for line in log_lines)

        await wait_for(reactor, lambda: refusals() >= 1, what="the first refusal")
        await sleep(reactor, 7)  # the window counted: at 503 with Retry-After 5, a handshake at most every 5 s
        assert refusals() <= 3 and b.link.attempts <= 3, (refusals(), b.link.attempts)
        assert not b.link.connected
    finally:
        await group.stop_all()
        await running.stop()


class IdInUse(WebSocketServerProtocol):
    """Answers Subscribe as a server does while another connection holds the id: the
    first ``factory.refusals`` are refused with retryAfter (then acknowledged); the
    connection is left open (the client closes it)."""

    def onConnect(self, request):
        self.factory.connections += 1
        self.header_id = request.headers.get("x-client-id")

    def onMessage(self, payload, isBinary):
        message = json.loads(payload)
        if message.get("type") != "Subscribe":
            return
        self.factory.subscribes.append(self.factory.reactor.seconds())
        self.factory.ids.append((message.get("client_id"), self.header_id))
        if len(self.factory.subscribes) <= self.factory.refusals:
            self.sendMessage(json.dumps({"type": "Error", "code": "CLIENT_ID_IN_USE", "retryAfter": RETRY_AFTER,
                                         "message": "another connection is subscribed as 'c1'"}).encode())
        else:
            self.sendMessage(json.dumps({"type": "Ack", "operation_id": "subscribe"}).encode())


RETRY_AFTER = 2


@pytest_twisted.async_yield_fixture
async def id_in_use(reactor):
    """``await id_in_use(refusals, id_taken=None)``: a WebSocket server that refuses the
    first ``refusals`` Subscribes with CLIENT_ID_IN_USE, and a RealtimeLink ("c1", not
    started) to it, as ``(factory, link)``; both stop afterwards."""
    started = []

    async def start(refusals, id_taken=None):
        factory = WebSocketServerFactory()
        factory.protocol = IdInUse
        factory.reactor, factory.refusals, factory.connections, factory.subscribes = reactor, refusals, 0, []
        factory.ids = []  # (Subscribe's client_id, the handshake's X-Client-Id) of each Subscribe
        port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(factory)
        link = RealtimeLink(reactor, f"http://127.0.0.1:{port.getHost().port}", "c1", NoEngine(), relay=False,
                            id_taken=id_taken)
        started.append((port, link))
        return factory, link

    yield start
    for port, link in started:
        await link.stop()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_an_id_in_use_is_asked_for_again_after_retry_after(reactor, id_in_use):
    # a half-open connection of our own held the id: the server drops it meanwhile
    factory, link = await id_in_use(refusals=1)
    with LogCapture() as log:
        link.service.startService()
        await wait_for(reactor, lambda: link.connected, what="the subscription")
    first, second = factory.subscribes
    assert second - first >= RETRY_AFTER and factory.connections == 2  # on the next connection
    assert "another client is connected" not in log.text() and link.client_id == "c1"


@pytest_twisted.ensureDeferred
async def test_an_id_really_in_use_is_said_once_and_backed_off(reactor, id_in_use):
    factory, link = await id_in_use(refusals=100)
    with LogCapture() as log:
        link.service.startService()
        await wait_for(reactor, lambda: len(factory.subscribes) >= 2, timeout=4 * RETRY_AFTER + 5,
                       what="the second Subscribe")
        refused_again = reactor.seconds()
        await wait_for(reactor, lambda: factory.connections >= 3, timeout=4 * RETRY_AFTER + 5,
                       what="the next connection")
        assert reactor.seconds() - refused_again >= RETRY_AFTER  # not before retryAfter
        assert not link.connected
        assert sum("another client is connected with client id c1" in line
                   for line in log.text().splitlines()) == 1


@pytest_twisted.ensureDeferred
async def test_an_id_refused_twice_gives_way_to_the_one_its_owner_takes(reactor, id_in_use):
    taken = []
    factory, link = await id_in_use(refusals=2, id_taken=lambda old: taken.append(old) or "c2")
    link.service.startService()
    await wait_for(reactor, lambda: link.connected, timeout=4 * RETRY_AFTER + 5, what="the subscription")
    assert taken == ["c1"] and link.client_id == "c2"
    assert factory.ids == [("c1", "c1"), ("c1", "c1"), ("c2", "c2")]


@pytest_twisted.ensureDeferred
async def test_a_route_without_websocket_is_said_once_and_polled(reactor, tmp_path, log_lines):
    from support import server_document, start_service

    document = server_document(tmp_path / "root")
    route = document["apps"]["http"]["servers"]["file_sync_server"]["routes"][0]
    route["match"][0]["paths"] = ["/api/*"]  # no /ws on this server
    (tmp_path / "root").mkdir()
    service, (port,) = await start_service(reactor, document, str(tmp_path))

    class Running:  # what Clients needs of a server
        url = f"http://127.0.0.1:{port}"

    group = Clients(reactor, tmp_path)
    try:
        a = await group.start(Running, "a", wait=False)
        b = await group.start(Running, "b", wait=False, realtime=False)
        await wait_for(reactor, lambda: a.ready.called and b.ready.called, what="both ready")
        await wait_for(reactor, lambda: any("serves no /ws" in line for line in log_lines), what="the warning")
        (tmp_path / "b" / "from-b.txt").write_bytes(b"polled")
        # a finds it by polling (its --interval is 1 s in these tests) ...
        await wait_for(reactor, lambda: (tmp_path / "a" / "from-b.txt").exists(), what="polled download")
        # ... and neither says the warning again nor knocks on /ws again meanwhile
        assert sum("serves no /ws" in line for line in log_lines) == 1
        assert a.link.attempts == 1 and not a.link.connected
    finally:
        await group.stop_all()
        await service.stopService()


def test_building_a_link_leaves_the_process_log_level_alone():
    import txaio

    before = txaio.get_global_log_level()
    txaio.set_global_log_level("warn")
    try:
        make_link(Clock())
        assert txaio.get_global_log_level() == "warn"  # the daemon's makeService sets it
    finally:
        txaio.set_global_log_level(before)
