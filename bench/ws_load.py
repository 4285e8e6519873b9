"""The load-generator process of bench_ws.py: N WebSocket clients on one epoll loop.

Run by bench_ws.py (``python bench/ws_load.py --port P --clients N --server-pid PID``); it
prints one JSON line of results. The clients are a minimal RFC 6455 implementation on raw
non-blocking sockets, so that 10,000 of them fit in one process and the time measured is
the server's, not a client library's: each opens a handshake offering
permessage-deflate, sends ``Subscribe`` and then only counts the messages that arrive
(answering pings). One extra connection, the sender, sends the FileOperations.

Phases, with the server's RSS (``/proc/PID/status``) read between them:

1. sender + one receiver connect, one warm-up broadcast: RSS baseline;
2. N receivers connect and subscribe: RSS idle;
3. ``--broadcasts`` single broadcasts, one at a time: time from sending the
   FileOperation until the last receiver has it (p50/p99);
4. sustained broadcasts for ``--seconds`` with a window of ``--window`` in flight:
   broadcasts a second delivered to every receiver; RSS after broadcasts.

Loopback only; stops by itself (every wait has a deadline).
"""

import argparse
import base64
import errno
import json
import os
import resource
import selectors
import socket
import statistics
import struct
import sys
import time
import zlib

DEFLATE_OFFER = "permessage-deflate; client_max_window_bits; client_no_context_takeover"


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid``."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def frame(payload: bytes, opcode: int = 1) -> bytes:
    """One masked client frame."""
    mask = os.urandom(4)
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
    elif length < 65536:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return header + mask + masked


class Connection:
    """One raw WebSocket client."""

    __slots__ = ("sock", "state", "buffer", "messages", "deflate", "outbox", "receiver", "sample",
                 "hello")

    def __init__(self, sock, receiver):
        self.sock = sock
        self.receiver = receiver
        self.state = "connecting"
        self.buffer = bytearray()
        self.messages = 0
        self.deflate = False
        self.outbox = bytearray()
        self.sample = None


class Load:
    def __init__(self, port: int, server_pid: int, compress: bool):
        self.port = port
        self.server_pid = server_pid
        self.compress = compress
        self.selector = selectors.DefaultSelector()
        self.connections = []
        self.subscribed = 0
        self.failed = 0
        self.closed_codes = {}
        self.reached = [0]  # reached[k]: receivers that have >= k messages
        self.receivers = 0
        self.sender = None
        self.probe = None  # the receiver whose messages are decoded and checked
        self.probe_inflater = zlib.decompressobj(-15)
        self.scratch = bytearray(262144)
        self.sent = 0

    # -- connecting ---------------------------------------------------------------------

    def open(self, client_id: str, receiver: bool = True) -> Connection:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.connect(("127.0.0.1", self.port))
        except BlockingIOError:
            pass
        connection = Connection(sock, receiver)
        if receiver and self.probe is None:
            self.probe = connection
        key = base64.b64encode(os.urandom(16)).decode()
        extensions = f"Sec-WebSocket-Extensions: {DEFLATE_OFFER}\r\n" if self.compress else ""
        connection.outbox += (
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"{extensions}\r\n"
        ).encode()
        # Sent once the 101 arrives: bytes after the upgrade request would be read as HTTP.
        connection.hello = frame(json.dumps({"type": "Subscribe", "client_id": client_id}).encode())
        self.selector.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, connection)
        self.connections.append(connection)
        return connection

    def connect_all(self, count: int, prefix: str, concurrency: int = 200, timeout: float = 180):
        """Open ``count`` receivers, at most ``concurrency`` handshakes at a time."""
        before = self.subscribed + self.failed
        opened = 0
        deadline = time.monotonic() + timeout
        while (done := self.subscribed + self.failed - before) < count:
            while opened < count and opened - done < concurrency:
                self.open(f"{prefix}-{opened}")
                opened += 1
            self.poll(0.05)
            if time.monotonic() > deadline:
                raise SystemExit(f"only {done} of {count} handshakes done in {timeout}s")

    # -- the loop -----------------------------------------------------------------------

    def poll(self, timeout: float):
        for key, events in self.selector.select(timeout):
            connection = key.data
            if events & selectors.EVENT_WRITE and connection.outbox:
                self._flush(connection)
            if events & selectors.EVENT_READ and connection.state != "closed":
                self._read(connection)

    def _flush(self, connection):
        try:
            sent = connection.sock.send(connection.outbox)
        except BlockingIOError:
            return
        except OSError:
            self._fail(connection)
            return
        del connection.outbox[:sent]
        if not connection.outbox:
            self.selector.modify(connection.sock, selectors.EVENT_READ, connection)

    def send(self, connection, data: bytes):
        connection.outbox += data
        self._flush(connection)
        if connection.outbox and connection.state != "closed":
            self.selector.modify(connection.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, connection)

    def _fail(self, connection):
        if connection.state != "closed":
            if connection.state != "open":
                self.failed += 1
            connection.state = "closed"
            try:
                self.selector.unregister(connection.sock)
            except (KeyError, ValueError):
                pass
            connection.sock.close()

    def _read(self, connection):
        scratch = self.scratch
        try:
            size = connection.sock.recv_into(scratch)
        except BlockingIOError:
            return
        except OSError as error:
            if error.errno != errno.EAGAIN:
                self._fail(connection)
            return
        if not size:
            self._fail(connection)
            return
        if connection.state == "open" and connection.receiver and connection is not self.probe \
                and not connection.buffer:
            consumed = self._count_text_frames(connection, size)
            if consumed == size:
                return
            connection.buffer += memoryview(scratch)[consumed:size]
        else:
            connection.buffer += memoryview(scratch)[:size]
        if connection.state == "connecting":
            end = connection.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(connection.buffer[:end]).decode("latin-1")
            del connection.buffer[: end + 4]
            if not head.startswith("HTTP/1.1 101"):
                self._fail(connection)
                return
            connection.deflate = "permessage-deflate" in head.lower()
            connection.state = "handshaken"
            self.send(connection, connection.hello)
            connection.hello = None
        self._frames(connection)

    def _count_text_frames(self, connection, size: int) -> int:
        """Fast path: count the whole short text frames at the start of the scratch
        buffer without copying them; returns how many bytes were consumed."""
        scratch = self.scratch
        position = 0
        while position + 2 <= size:
            first, length = scratch[position], scratch[position + 1] & 0x7F
            start = position + 2
            if first & 0x0F != 1 or length == 127:
                break
            if length == 126:
                if start + 2 > size:
                    break
                length = (scratch[start] << 8) | scratch[start + 1]
                start += 2
            if start + length > size:
                break
            self._counted(connection)
            position = start + length
        return position

    def _counted(self, connection):
        connection.messages += 1
        count = connection.messages
        if count >= len(self.reached):
            self.reached.append(0)
        self.reached[count] += 1

    def _frames(self, connection):
        buffer = connection.buffer
        while len(buffer) >= 2:
            first, second = buffer[0], buffer[1]
            length = second & 0x7F
            start = 2
            if length == 126:
                if len(buffer) < 4:
                    return
                length = struct.unpack_from("!H", buffer, 2)[0]
                start = 4
            elif length == 127:
                if len(buffer) < 10:
                    return
                length = struct.unpack_from("!Q", buffer, 2)[0]
                start = 10
            if len(buffer) < start + length:
                return
            opcode = first & 0x0F
            keep = opcode != 1 or connection is self.probe
            payload = bytes(buffer[start : start + length]) if keep else b""
            compressed = bool(first & 0x40)
            del buffer[: start + length]
            if opcode == 1:
                self._message(connection, payload, compressed)
            elif opcode == 9:
                self.send(connection, frame(payload, opcode=10))
            elif opcode == 8:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                self.closed_codes[code] = self.closed_codes.get(code, 0) + 1
                self._fail(connection)
                return

    def _message(self, connection, payload: bytes, compressed: bool):
        if connection is self.probe and compressed:
            # one inflater for the whole stream: a server with context takeover refers
            # back to earlier messages
            payload = self.probe_inflater.decompress(payload + b"\x00\x00\xff\xff")
        if connection.state == "handshaken":  # the Ack of Subscribe
            connection.state = "open"
            self.subscribed += 1
            if connection.receiver:
                self.receivers += 1
                self.reached[0] = self.receivers
            return
        if not connection.receiver:
            return
        if connection is self.probe:  # check the content of one receiver's messages
            connection.sample = json.loads(payload)
        self._counted(connection)

    # -- measurements -------------------------------------------------------------------

    def delivered_to_all(self) -> int:
        """The number of broadcasts every receiver has."""
        k = len(self.reached) - 1
        while k > 0 and self.reached[k] < self.receivers:
            k -= 1
        return k

    def operation(self, run: str) -> bytes:
        self.sent += 1
        body = {"type": "FileOperation", "source_client": "bench-sender",
                "operation": {"Create": {"metadata": {
                    "path": f"bench-{run}-d{self.sent}", "size": 0, "hash": "",
                    "modified": "2024-01-21T12:00:00Z", "is_directory": True}}}}
        return frame(json.dumps(body).encode())

    def wait_delivered(self, count: int, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while self.delivered_to_all() < count:
            if time.monotonic() > deadline:
                raise SystemExit(f"broadcast {count} not delivered to all in {timeout}s "
                                 f"({self.reached[count] if count < len(self.reached) else 0} of {self.receivers})")
            self.poll(0.01)
        return time.perf_counter()

    def settle(self, seconds: float):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.poll(0.05)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--server-pid", type=int, required=True)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--broadcasts", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--window", type=int, default=16)
    parser.add_argument("--no-compress", action="store_true")
    parser.add_argument("--run", default="r")
    args = parser.parse_args(argv)
    raise_fd_limit()
    load = Load(args.port, args.server_pid, compress=not args.no_compress)

    # 1. sender + one receiver, one warm-up broadcast
    load.sender = load.open("bench-sender", receiver=False)
    deadline = time.monotonic() + 30
    while load.sender.state != "open" and time.monotonic() < deadline:
        load.poll(0.05)
    if load.sender.state != "open":
        raise SystemExit("the sender could not connect")
    load.connect_all(1, f"{args.run}-warm")
    load.send(load.sender, load.operation(args.run))
    load.wait_delivered(1, 30)
    load.settle(1.0)
    rss_base = rss_bytes(args.server_pid)

    # 2. N receivers idle (N includes the warm one)
    started = time.monotonic()
    load.connect_all(args.clients - 1, args.run)
    connect_seconds = time.monotonic() - started
    load.settle(2.0)
    rss_idle = rss_bytes(args.server_pid)
    delivered = load.delivered_to_all()

    # 3. one broadcast at a time
    latencies = []
    server_cpu, load_cpu = cpu_seconds(args.server_pid), own_cpu_seconds()
    for _ in range(args.broadcasts):
        t0 = time.perf_counter()
        load.send(load.sender, load.operation(args.run))
        delivered += 1
        latencies.append(load.wait_delivered(delivered, 60) - t0)
        load.settle(0.05)
    server_cpu = (cpu_seconds(args.server_pid) - server_cpu) / args.broadcasts
    load_cpu = (own_cpu_seconds() - load_cpu) / args.broadcasts

    # 4. sustained
    start = time.perf_counter()
    first = delivered
    while time.perf_counter() - start < args.seconds:
        while load.sent - 1 - load.delivered_to_all() < args.window:
            load.send(load.sender, load.operation(args.run))
        load.poll(0.005)
    last = load.sent - 1
    end = load.wait_delivered(last, 120)
    sustained = (last - first) / (end - start)
    load.settle(2.0)
    rss_after = rss_bytes(args.server_pid)

    receivers = load.receivers
    latencies.sort()
    result = {
        "clients": receivers,
        "failed": load.failed,
        "closed": load.closed_codes,
        "compressed": all(c.deflate for c in load.connections if c.state == "open"),
        "connect_seconds": round(connect_seconds, 2),
        "p50_ms": round(statistics.median(latencies) * 1000, 2),
        "p99_ms": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000, 2),
        "broadcasts_per_second": round(sustained, 1),
        "server_cpu_ms_per_broadcast": round(server_cpu * 1000, 1),
        "load_cpu_ms_per_broadcast": round(load_cpu * 1000, 1),
        "rss_base": rss_base,
        "rss_idle": rss_idle,
        "rss_after": rss_after,
        "idle_kib_per_connection": round((rss_idle - rss_base) / receivers / 1024, 2),
        "after_kib_per_connection": round((rss_after - rss_base) / receivers / 1024, 2),
        "sample": load.probe.sample,
    }
    print(json.dumps(result), flush=True)
    for connection in load.connections:
        connection.sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
