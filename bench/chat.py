"""Chat-like publishing: 1,000 channels x 1 WebSocket subscriber, every
message to one channel, through three publishing paths (issue 16).

    python bench/chat.py                          # every path, 3 runs each
    python bench/chat.py --only ws --runs 5 --seconds 4
    python bench/chat.py --json                   # last line: medians as JSON

pushd (``twistd pushd``, memory backend) is pinned to CPU 0, this script
(asyncio; every request and frame prebuilt, deliveries counted in bulk from
the sockets) to CPU 1.  Paths:

* ``single``: ``POST /api/channels/{ch}/messages``, 16 keep-alive
  connections with one request in flight each (as wrk does);
* ``batch``: ``POST /api/batch`` with ``--items`` (100) messages per request,
  4 connections with one request in flight each;
* ``ws``: the publisher WebSocket (``GET /api/publish``), list frames of
  ``--items`` messages, ``--window`` (8) frames in flight on one connection.

Message n goes to channel ``c{n % 1000}``; every message has the same size
(~100 bytes of data), so each subscriber's received bytes divided by the
frame size is the number of messages it got, which must equal what was
sent to its channel (none lost, none twice); on 20 probe subscribers every
frame is parsed and the sequence numbers must be exactly those sent, in
order.  A run publishes for ``--seconds``, then waits for the last
delivery.  Figures per run: messages accepted (202) per second, delivered
per second, and messages per server CPU-second (delivered / the server's
user+system CPU time over the run).

``--base DIR`` first measures an older checkout's single publishes
(through PYTHONPATH, as bench/compare.py does), e.g. /work/before, the code
before issue 16, which has no publisher WebSocket and whose batch route
answered 500.

``--json`` keys (medians over the runs): ``<path>_accepted_per_s``,
``<path>_delivered_per_s``, ``<path>_per_cpu_s``, ``<path>_cpu_share``
for path in single, batch, ws; absent paths are left out.  With
``--base``: the same keys prefixed ``base_``, and ``<path>_vs_base_single``
(messages per server CPU-second over the old single publish's).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import select
import socket
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))
from fanout import SECRET, Server  # noqa: E402
from wsload import Subscriber  # noqa: E402

CHANNELS = 1000
PROBES = 20
PAD = "x" * 60


def channel(n: int) -> str:
    return "c%04d" % (n % CHANNELS)


def message(n: int) -> dict:
    return {"s": "%010d" % n, "p": PAD}


def body(n: int) -> str:
    return '{"event":"m","data":{"s":"%010d","p":"%s"}}' % (n, PAD)


def item(n: int) -> str:
    return '{"id":%d,"channel":"%s","event":"m","data":{"s":"%010d","p":"%s"}}' % (
        n,
        channel(n),
        n,
        PAD,
    )


def ws_frame(payload: bytes) -> bytes:
    """A client text frame with an all-zero mask (valid, and no XOR)."""
    n = len(payload)
    if n < 126:
        head = bytes([0x81, 0x80 | n])
    elif n < 65536:
        head = bytes([0x81, 0xFE]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x81, 0xFF]) + n.to_bytes(8, "big")
    return head + b"\0\0\0\0" + payload


class Readers:
    """Every subscriber socket drained every 20 ms; bytes counted per socket,
    and kept whole for the probes."""

    def __init__(self, subs: list[Subscriber]) -> None:
        self.poll = select.epoll()
        self.socks: dict[int, socket.socket] = {}
        self.counts: dict[int, int] = {}
        self.index: dict[int, int] = {}
        self.kept: dict[int, list[bytes]] = {}
        for i, sub in enumerate(subs):
            sub.transport.pause_reading()
            sock = socket.socket(
                fileno=os.dup(sub.transport.get_extra_info("socket").fileno())
            )
            sock.setblocking(False)
            fd = sock.fileno()
            self.socks[fd], self.counts[fd], self.index[fd] = sock, 0, i
            if i % (CHANNELS // PROBES) == 0:
                self.kept[fd] = []
            self.poll.register(fd, select.EPOLLIN)
        self.total = 0

    def drain(self) -> None:
        for fd, _ in self.poll.poll(0):
            sock = self.socks[fd]
            while True:
                try:
                    data = sock.recv(1 << 20)
                except BlockingIOError:
                    break
                if not data:
                    self.poll.unregister(fd)
                    break
                self.counts[fd] += len(data)
                self.total += len(data)
                kept = self.kept.get(fd)
                if kept is not None:
                    kept.append(data)

    def reset(self) -> None:
        self.drain()
        for fd in self.counts:
            self.counts[fd] = 0
        for kept in self.kept.values():
            kept.clear()
        self.total = 0

    def close(self) -> None:
        for sock in self.socks.values():
            sock.close()
        self.poll.close()


def frames_of(data: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos < len(data):
        length, head = data[pos + 1] & 0x7F, 2
        if length == 126:
            length, head = int.from_bytes(data[pos + 2 : pos + 4], "big"), 4
        out.append(data[pos + head : pos + head + length])
        pos += head + length
    return out


def frame_size(n: int) -> int:
    """Bytes of one delivered message frame (every one is the same size)."""
    frame = {
        "type": "message",
        "channel": channel(n),
        "event": "m",
        "data": message(n),
        "id": "0" * 16,
    }
    payload = len(json.dumps(frame, separators=(",", ":")))
    return payload + (2 if payload < 126 else 4)


class HTTPConn(asyncio.Protocol):
    """One keep-alive connection, one request in flight; counts 202s."""

    def __init__(self) -> None:
        self.buffer = b""
        self.waiter: asyncio.Future | None = None
        self.accepted = 0

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
        answer = self.buffer[end + 4 : end + 4 + length]
        self.buffer = self.buffer[end + 4 + length :]
        if head[9:12] == b"202" and b'"batch"' not in answer:
            self.accepted += 1
        else:
            self.accepted += answer.count(b'"status":202')
        self.waiter.set_result(None)

    async def request(self, data: bytes) -> None:
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        await self.waiter


def http_request(path: str, payload: str) -> bytes:
    data = payload.encode()
    return (
        "POST %s HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer %s\r\n"
        "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
        % (path, SECRET, len(data))
    ).encode() + data


class WSPublisher(asyncio.Protocol):
    """The publisher WebSocket: answers walked frame by frame, 202s counted."""

    def __init__(self, ready: asyncio.Future) -> None:
        self.ready = ready
        self.buffer = b""
        self.upgraded = False
        self.answered = 0
        self.accepted = 0
        self.event = asyncio.Event()

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.write(
            (
                "GET /api/publish HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\n"
                "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                "Sec-WebSocket-Version: 13\r\nAuthorization: Bearer %s\r\n\r\n" % SECRET
            ).encode()
        )

    def data_received(self, data: bytes) -> None:
        buf = self.buffer + data
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buffer = buf
                return
            assert buf.startswith(b"HTTP/1.1 101"), buf[:200]
            self.upgraded = True
            self.ready.set_result(self)
            buf = buf[end + 4 :]
        pos, n = 0, len(buf)
        while n - pos >= 2:
            length, head = buf[pos + 1] & 0x7F, 2
            if length == 126:
                if n - pos < 4:
                    break
                length, head = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
            elif length == 127:
                if n - pos < 10:
                    break
                length, head = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
            if n - pos < head + length:
                break
            if buf[pos] & 0x0F == 1:
                self.answered += 1
                self.accepted += buf.count(b'"status":202', pos, pos + head + length)
            pos += head + length
        self.buffer = buf[pos:]
        self.event.set()


async def connect_subscribers(port: int) -> list[Subscriber]:
    loop = asyncio.get_running_loop()
    sem = asyncio.Semaphore(100)

    async def one(i: int) -> Subscriber:
        async with sem:
            ready = loop.create_future()
            await loop.create_connection(
                lambda: Subscriber(channel(i), False, ready), "127.0.0.1", port
            )
            return await asyncio.wait_for(ready, 30)

    return list(await asyncio.gather(*(one(i) for i in range(CHANNELS))))


async def publish_single(port: int, seconds: float, counter: list) -> int:
    loop = asyncio.get_running_loop()
    conns = [
        (await loop.create_connection(HTTPConn, "127.0.0.1", port))[1]
        for _ in range(16)
    ]
    deadline = time.perf_counter() + seconds

    async def run(conn: HTTPConn) -> None:
        while time.perf_counter() < deadline:
            n = counter[0]
            counter[0] += 1
            await conn.request(
                http_request("/api/channels/%s/messages" % channel(n), body(n))
            )

    await asyncio.gather(*(run(c) for c in conns))
    for c in conns:
        c.transport.close()
    return sum(c.accepted for c in conns)


async def publish_batch(port: int, seconds: float, counter: list, items: int) -> int:
    loop = asyncio.get_running_loop()
    conns = [
        (await loop.create_connection(HTTPConn, "127.0.0.1", port))[1] for _ in range(4)
    ]
    deadline = time.perf_counter() + seconds

    async def run(conn: HTTPConn) -> None:
        while time.perf_counter() < deadline:
            n = counter[0]
            counter[0] += items
            batch = ",".join(item(k) for k in range(n, n + items))
            await conn.request(http_request("/api/batch", '{"batch":[%s]}' % batch))

    await asyncio.gather(*(run(c) for c in conns))
    for c in conns:
        c.transport.close()
    return sum(c.accepted for c in conns)


async def publish_ws(
    port: int, seconds: float, counter: list, items: int, window: int
) -> int:
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    _, pub = await loop.create_connection(lambda: WSPublisher(ready), "127.0.0.1", port)
    await asyncio.wait_for(ready, 10)
    deadline = time.perf_counter() + seconds
    sent = 0
    while time.perf_counter() < deadline:
        while sent - pub.answered < window:
            n = counter[0]
            counter[0] += items
            frame = "[%s]" % ",".join(item(k) for k in range(n, n + items))
            pub.transport.write(ws_frame(frame.encode()))
            sent += 1
        pub.event.clear()
        await pub.event.wait()
    while pub.answered < sent:
        pub.event.clear()
        await asyncio.wait_for(pub.event.wait(), 30)
    pub.transport.close()
    return pub.accepted


async def one_run(server: Server, readers: Readers, path: str, args) -> dict:
    readers.reset()
    counter = [0]
    cpu0, t0 = server.cpu_seconds(), time.perf_counter()
    drain = asyncio.get_running_loop().create_task(drain_loop(readers))
    if path == "single":
        accepted = await publish_single(server.port, args.seconds, counter)
    elif path == "batch":
        accepted = await publish_batch(server.port, args.seconds, counter, args.items)
    else:
        accepted = await publish_ws(
            server.port, args.seconds, counter, args.items, args.window
        )
    t_acked = time.perf_counter()
    sent = counter[0]
    size = frame_size(0)
    deadline = time.perf_counter() + 30
    while readers.total < sent * size and time.perf_counter() < deadline:
        await asyncio.sleep(0.005)
    t_done = time.perf_counter()
    cpu = server.cpu_seconds() - cpu0
    drain.cancel()
    readers.drain()
    delivered = readers.total // size
    check(readers, sent, size)
    elapsed = t_done - t0
    return {
        "sent": sent,
        "accepted_per_s": accepted / (t_acked - t0),
        "delivered_per_s": delivered / elapsed,
        "per_cpu_s": delivered / cpu if cpu else float("nan"),
        "cpu_share": cpu / elapsed,
        "accepted": accepted,
        "delivered": delivered,
    }


async def drain_loop(readers: Readers) -> None:
    while True:
        await asyncio.sleep(0.02)
        readers.drain()


def check(readers: Readers, sent: int, size: int) -> None:
    """Every subscriber got exactly what was sent to its channel, once."""
    wrong = []
    for fd, count in readers.counts.items():
        i = readers.index[fd]
        expected = sent // CHANNELS + (1 if i < sent % CHANNELS else 0)
        if count != expected * size:
            wrong.append((channel(i), count / size, expected))
    for fd, kept in readers.kept.items():
        i = readers.index[fd]
        got = [int(json.loads(f)["data"]["s"]) for f in frames_of(b"".join(kept)) if f]
        if got != list(range(i, sent, CHANNELS)):
            wrong.append((channel(i), "sequence", len(got)))
    if wrong:
        raise SystemExit("delivery check failed: %r" % wrong[:10])


def fmt(path: str, r: dict) -> str:
    return (
        "%-6s sent %7d  accepted %8.0f/s  delivered %8.0f/s  "
        "%8.0f msgs per server CPU-s  (server CPU %3.0f%%)  exactly once: ok"
        % (
            path,
            r["sent"],
            r["accepted_per_s"],
            r["delivered_per_s"],
            r["per_cpu_s"],
            100 * r["cpu_share"],
        )
    )


async def measure(paths: list[str], args, label: str = "") -> dict:
    """Median figures of ``args.runs`` runs of each path on a fresh pushd."""
    server = Server(0, [])
    summary: dict = {}
    try:
        subs = await connect_subscribers(server.port)
        readers = Readers(subs)
        for path in paths:
            results = []
            for _ in range(args.runs):
                result = await one_run(server, readers, path, args)
                print(label + fmt(path, result), flush=True)
                results.append(result)
            for key in ("accepted_per_s", "delivered_per_s", "per_cpu_s", "cpu_share"):
                summary["%s_%s" % (path, key)] = round(
                    statistics.median(r[key] for r in results), 3
                )
            print(
                "%s%-6s median: accepted %.0f/s, delivered %.0f/s, "
                "%.0f per server CPU-s"
                % (
                    label,
                    path,
                    summary[path + "_accepted_per_s"],
                    summary[path + "_delivered_per_s"],
                    summary[path + "_per_cpu_s"],
                ),
                flush=True,
            )
        readers.close()
        return summary
    finally:
        server.stop()


async def bench(args) -> dict:
    paths = args.only or ["single", "batch", "ws"]
    summary: dict = {}
    if args.base:
        # The old checkout's pushd, through PYTHONPATH (bench/compare.py).
        os.environ["PYTHONPATH"] = os.path.abspath(args.base)
        # Single publishes only: the code before issue 16 has no publisher
        # WebSocket, and its POST /api/batch answered 500 (fixed in 3a8c642).
        old = [p for p in paths if p == "single"]
        base = await measure(old, args, "base ")
        summary.update({"base_" + k: v for k, v in base.items()})
        os.environ["PYTHONPATH"] = os.path.dirname(HERE)
    summary.update(await measure(paths, args))
    if args.base:
        for path in paths:
            old_rate = summary.get("base_single_per_cpu_s")
            if old_rate:
                summary["%s_vs_base_single" % path] = round(
                    summary[path + "_per_cpu_s"] / old_rate, 2
                )
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", action="append", choices=["single", "batch", "ws"])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--items", type=int, default=100)
    parser.add_argument("--window", type=int, default=8)
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--base", help="first measure this older checkout's single publishes"
    )
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 20000)), hard))
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) > 1:
        os.sched_setaffinity(0, {cpus[1]})
    summary = asyncio.run(bench(args))
    if args.json:
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
