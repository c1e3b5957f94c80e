"""Minimal asyncio WebSocket subscribers and HTTP keep-alive publishers for benchmarks.

Deliberately raw: a load generator in Python must spend far less per frame
than the server under test, so it walks frame headers and parses JSON only on
a few "probe" connections that measure latency.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import select
import socket
import struct
import time


def masked_text_frame(payload: bytes) -> bytes:
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    assert len(payload) < 126
    return bytes([0x81, 0x80 | len(payload)]) + mask + body


class Subscriber(asyncio.Protocol):
    """Handshake, subscribe, then count (and on probes, time) message frames."""

    def __init__(self, channel: str, probe: bool, ready: asyncio.Future) -> None:
        self.channel = channel
        self.probe = probe
        self.ready = ready
        self.buffer = b""
        self.upgraded = False
        self.subscribed = False
        self.messages = 0
        self.latencies: list[float] = []
        self.closed = False
        self.frame_length = 0

    def connection_made(self, transport) -> None:
        self.transport = transport
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write(
            (
                "GET /ws HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\n"
                "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n" % key
            ).encode()
        )

    def connection_lost(self, exc) -> None:
        self.closed = True
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("closed during setup"))

    def data_received(self, data: bytes) -> None:
        buf = self.buffer + data
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buffer = buf
                return
            assert buf.startswith(b"HTTP/1.1 101"), buf[:100]
            self.upgraded = True
            buf = buf[end + 4 :]
        pos, n = 0, len(buf)
        now = time.time() if self.probe else 0.0
        while n - pos >= 2:
            length = buf[pos + 1] & 0x7F
            head = 2
            if length == 126:
                if n - pos < 4:
                    break
                length = struct.unpack_from("!H", buf, pos + 2)[0]
                head = 4
            elif length == 127:
                if n - pos < 10:
                    break
                length = struct.unpack_from("!Q", buf, pos + 2)[0]
                head = 10
            if n - pos < head + length:
                break
            if buf[pos] & 0x0F == 1:
                if self.subscribed:
                    self.messages += 1
                    self.frame_length = head + length
                    if self.probe:
                        start = buf.find(b'"t":"', pos + head, pos + head + length)
                        sent = float(buf[start + 5 : start + 22])
                        self.latencies.append(now - sent)
                else:
                    self._control(json.loads(buf[pos + head : pos + head + length]))
            pos += head + length
        self.buffer = buf[pos:]

    def _control(self, frame: dict) -> None:
        if frame["type"] == "connected":
            self.transport.write(
                masked_text_frame(
                    json.dumps({"type": "subscribe", "channel": self.channel}).encode()
                )
            )
        elif frame["type"] == "subscribed":
            self.subscribed = True
            self.ready.set_result(self)


class BatchReader:
    """Drains many subscriber sockets every ``interval`` seconds, counting bytes.

    Reading each socket once per batch instead of once per frame keeps the
    load generator's cost per delivery far below the server's.  Every message
    frame in a run has the same length, so bytes / frame length = messages.
    """

    def __init__(self, subscribers: list[Subscriber], interval: float = 0.02) -> None:
        self.bytes = 0
        self.interval = interval
        self._poll = select.epoll()
        self._socks: dict[int, socket.socket] = {}
        for sub in subscribers:
            sub.transport.pause_reading()
            sock = socket.socket(
                fileno=os.dup(sub.transport.get_extra_info("socket").fileno())
            )
            sock.setblocking(False)
            self._socks[sock.fileno()] = sock
            self._poll.register(sock.fileno(), select.EPOLLIN)
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        socks, poll = self._socks, self._poll
        while True:
            await asyncio.sleep(self.interval)
            for fd, _ in poll.poll(0):
                sock = socks[fd]
                while True:
                    try:
                        data = sock.recv(1 << 20)
                    except BlockingIOError:
                        break
                    if not data:
                        poll.unregister(fd)
                        break
                    self.bytes += len(data)

    def close(self) -> None:
        self._task.cancel()
        for sock in self._socks.values():
            sock.close()
        self._poll.close()


async def subscribe_many(
    port: int, count: int, channel: str, probes: int = 0, concurrency: int = 200
) -> list[Subscriber]:
    loop = asyncio.get_running_loop()
    subs: list[Subscriber] = []
    step = max(1, count // probes) if probes else 0
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with sem:
            ready = loop.create_future()
            probe = bool(step) and i % step == 0
            await loop.create_connection(
                lambda: Subscriber(channel, probe, ready), "127.0.0.1", port
            )
            subs.append(await asyncio.wait_for(ready, 30))

    await asyncio.gather(*(one(i) for i in range(count)))
    return subs


class Publisher(asyncio.Protocol):
    """One HTTP/1.1 keep-alive connection, one request in flight."""

    def __init__(self, port: int, secret: str, channel: str, pad: int) -> None:
        self.head = (
            "POST /api/channels/%s/messages HTTP/1.1\r\nHost: bench\r\n"
            "Authorization: Bearer %s\r\nContent-Type: application/json\r\n"
            "Content-Length: %%d\r\n\r\n" % (channel, secret)
        ).encode()
        self.pad = "x" * pad
        self.buffer = b""
        self.waiter: asyncio.Future | None = None
        self.published = 0

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buffer[:end]
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        if len(self.buffer) < end + 4 + length:
            return
        status = head[9:12]
        self.buffer = self.buffer[end + 4 + length :]
        if status != b"202":
            self.waiter.set_exception(RuntimeError("publish failed: %r" % head[:80]))
        else:
            self.published += 1
            self.waiter.set_result(None)

    async def publish(self) -> None:
        body = (
            '{"event":"tick","data":{"t":"%017.6f","p":"%s"}}' % (time.time(), self.pad)
        ).encode()
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(self.head % len(body) + body)
        await self.waiter


async def publishers(port: int, secret: str, channel: str, count: int, pad: int = 70):
    loop = asyncio.get_running_loop()
    pubs = []
    for _ in range(count):
        _, pub = await loop.create_connection(
            lambda: Publisher(port, secret, channel, pad), "127.0.0.1", port
        )
        pubs.append(pub)
    return pubs


SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)


class ProbeReader:
    """Reads the probe subscribers in a thread of its own and times each
    message frame twice: by the kernel's arrival timestamp of the bytes
    (SO_TIMESTAMPNS: what the server and the network took, whatever the load
    generator was doing) and by when this process read it.  The difference
    is the load generator's own contribution (its event loop busy draining
    the other subscribers, its GC)."""

    def __init__(self, subscribers: list[Subscriber]) -> None:
        import threading

        self.messages = 0
        self.frame_length = 0
        self.latencies: list[float] = []  # kernel arrival - sent
        self.read_latencies: list[float] = []  # read here - sent
        self._poll = select.epoll()
        self._socks: dict[int, socket.socket] = {}
        self._buffers: dict[int, bytes] = {}
        for sub in subscribers:
            sub.transport.pause_reading()
            sock = socket.socket(
                fileno=os.dup(sub.transport.get_extra_info("socket").fileno())
            )
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            self._socks[sock.fileno()] = sock
            self._buffers[sock.fileno()] = sub.buffer
            self._poll.register(sock.fileno(), select.EPOLLIN)
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def clear(self) -> None:
        self.latencies = []
        self.read_latencies = []

    def _run(self) -> None:
        space = socket.CMSG_SPACE(16)
        while not self._stop:
            for fd, _ in self._poll.poll(0.05):
                sock = self._socks[fd]
                while True:
                    try:
                        data, ancillary, _, _ = sock.recvmsg(1 << 16, space)
                    except BlockingIOError:
                        break
                    except OSError:
                        data = b""
                    if not data:
                        self._poll.unregister(fd)
                        break
                    now = time.time()
                    arrived = now
                    for level, kind, raw in ancillary:
                        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                            sec, nsec = struct.unpack("qq", raw[:16])
                            arrived = sec + nsec / 1e9
                    self._frames(fd, self._buffers[fd] + data, arrived, now)

    def _frames(self, fd: int, buf: bytes, arrived: float, now: float) -> None:
        pos, n = 0, len(buf)
        while n - pos >= 2:
            length = buf[pos + 1] & 0x7F
            head = 2
            if length == 126:
                if n - pos < 4:
                    break
                length = struct.unpack_from("!H", buf, pos + 2)[0]
                head = 4
            elif length == 127:
                if n - pos < 10:
                    break
                length = struct.unpack_from("!Q", buf, pos + 2)[0]
                head = 10
            if n - pos < head + length:
                break
            if buf[pos] & 0x0F == 1:
                start = buf.find(b'"t":"', pos + head, pos + head + length)
                if start >= 0:
                    self.messages += 1
                    self.frame_length = head + length
                    sent = float(buf[start + 5 : start + 22])
                    self.latencies.append(arrived - sent)
                    self.read_latencies.append(now - sent)
            pos += head + length
        self._buffers[fd] = buf[pos:]

    def close(self) -> None:
        self._stop = True
        self._thread.join()
        for sock in self._socks.values():
            sock.close()
        self._poll.close()
