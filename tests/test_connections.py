"""Per-connection cost (issue 16): what a connection keeps, and that it still
behaves as Autobahn's own: keep-alive pings, messages, limits."""

from __future__ import annotations

import gc
import json
import sys
from collections import deque

import pytest
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from pytest_twisted import ensureDeferred
from test_websocket import publish
from twisted.internet import protocol, reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web.http import Request

from pushd.backends.memory import MemoryBackend
from pushd.config import Config
from pushd.hub import Hub
from pushd.testing import eventually
from pushd.transports.handshake import fast_handshake
from pushd.transports.lean import HANDSHAKE_ONLY, LeanServerProtocol, freeze_options
from pushd.transports.websocket import PushServerFactory

UPGRADE = (
    b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n"
)


def _comparable(value):
    if isinstance(value, (deque, tuple, list)):
        return list(value)
    if value is None or isinstance(value, (bool, int, float, str, bytes, dict)):
        return value
    return type(value)


def _state(proto, names) -> dict:
    return {
        n: _comparable(getattr(proto, n))
        for n in names
        if not callable(getattr(WebSocketServerProtocol, n, None))
        and n not in ("is_open", "is_closed", "transport")
    }


def test_a_lean_connection_starts_as_an_autobahn_one():
    """A connection set up without Autobahn's per-connection copies reads
    every attribute (options, flags, timers, counters) as one Autobahn sets
    up itself: an Autobahn upgrade that adds state fails here, not in use."""
    config = Config(api_secret="x" * 40, ping_interval=7.0, max_message_size=1234)
    factory = PushServerFactory(Hub(MemoryBackend(), Clock(), config), config)
    addr = IPv4Address("TCP", "127.0.0.1", 5555)
    lean = factory.buildProtocol(addr)
    lean.makeConnection(StringTransport(peerAddress=addr))
    reference = WebSocketServerProtocol()
    reference.factory = factory
    reference.makeConnection(StringTransport(peerAddress=addr))
    try:
        names = {n for n in dir(reference) if not n.startswith("__")}
        assert _state(lean, names) == _state(reference, names)
        assert lean.autoPingInterval == 7.0
        assert lean.maxMessagePayloadSize == 1234
        # ...without holding a copy of any option itself.
        assert not set(lean.__dict__) & set(reference.CONFIG_ATTRS)
    finally:
        for proto in (lean, reference):
            if proto.openHandshakeTimeoutCall is not None:
                proto.openHandshakeTimeoutCall.cancel()


@ensureDeferred
async def test_open_connections_keep_no_handshake_or_options(start_server):
    """What an idle subscribed connection keeps (the figure is
    bench/connections.py's KB per connection): no copy of Autobahn's
    options, nothing of the HTTP handshake, no HTTP request object, and a
    Session without a per-instance dictionary."""
    server = await start_server()
    gc.collect()
    requests_before = sum(isinstance(o, Request) for o in gc.get_objects())
    clients = await server.subscribed("news", 30)
    gc.collect()
    requests_after = sum(isinstance(o, Request) for o in gc.get_objects())
    assert requests_after - requests_before < 5
    sessions = list(server.hub.sessions.values())
    assert len(sessions) == 30
    for session in sessions:
        assert not hasattr(session, "__dict__")
        state = session.conn.__dict__
        assert not set(state) & set(session.conn.CONFIG_ATTRS)
        assert not set(state) & set(HANDSHAKE_ONLY)
        assert len(state) <= 45, sorted(state)
    await publish(server, "news", "tick", 1)
    for client in clients:
        assert (await client.next_of("message"))["data"] == 1


class _Mute(protocol.Protocol):
    """Completes the handshake, then never answers anything."""

    def __init__(self) -> None:
        self.received = b""
        self.lost = Deferred()

    def connectionMade(self):
        self.transport.write(UPGRADE)

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason):
        self.lost.callback(None)

    def pinged(self) -> bool:
        head, _, frames = self.received.partition(b"\r\n\r\n")
        return head.startswith(b"HTTP/1.1 101") and b"\x89" in frames


@ensureDeferred
async def test_idle_connections_are_pinged_and_dead_ones_closed(start_server):
    """With ping-interval set, an idle client that answers pings stays
    connected and gets messages; one that never answers is pinged, then
    disconnected after ping-timeout."""
    server = await start_server(ping_interval=0.5, ping_timeout=1.0)
    alive = await server.connected()
    await alive.subscribe("news")
    mute = _Mute()
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", server.port), mute)
    await eventually(mute.pinged)
    await eventually(lambda: mute.lost.called, timeout=6)
    assert not alive.closed.called
    await publish(server, "news", "tick", 2)
    assert (await alive.next_of("message"))["data"] == 2


class _Recording(LeanServerProtocol):
    def onConnect(self, request):
        self.request = request

    def onOpen(self):
        pass


def _handshake_by(reader, head: bytes):
    factory = WebSocketServerFactory()
    factory.setProtocolOptions(openHandshakeTimeout=0, allowNullOrigin=True)
    factory.protocol = _Recording
    freeze_options(factory)
    addr = IPv4Address("TCP", "127.0.0.1", 5555)
    proto = factory.buildProtocol(addr)
    transport = StringTransport(peerAddress=addr)
    proto.makeConnection(transport)
    transport.registerProducer(proto, True)  # as on a real connection
    proto.data = head
    took = reader(proto)
    request = getattr(proto, "request", None)
    fields = [
        "peer",
        "headers",
        "host",
        "path",
        "params",
        "version",
        "origin",
        "protocols",
        "extensions",
    ]
    return took, (
        transport.value(),
        proto.state,
        proto.data,
        getattr(proto, "websocket_extensions_in_use", None),
        request and {f: getattr(request, f) for f in fields},
    )


def _request(lines: list[str], target: str = "/ws", first: str = "") -> bytes:
    head = first or "GET %s HTTP/1.1" % target
    return ("\r\n".join([head, *lines]) + "\r\n\r\n").encode("latin-1")


BASE = [
    "Host: 127.0.0.1",
    "Upgrade: websocket",
    "Connection: Upgrade",
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
    "Sec-WebSocket-Version: 13",
]
COMMON = [
    _request(BASE),
    _request(BASE, "/ws?key=abc&token=t.1&key=again"),
    _request(BASE, "/app/k3y?protocol=7&client=js"),
    _request([*BASE, "Origin: https://example.com"]),
    _request([*BASE, "Origin: null"]),
    _request(["Host: example.com:8080", *BASE[1:]]),
    _request(["Host: [::1]", *BASE[1:]]),
    _request(
        [*BASE, "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits"]
    ),
    _request([h.upper() for h in BASE[:4]] + ["sec-websocket-version:13"]),
    _request(
        [BASE[0], "Upgrade: WebSocket", "Connection: keep-alive, Upgrade", *BASE[3:]]
    ),
    _request(BASE) + b"\x81\x80\x00\x00\x00\x00",  # a frame right behind
]
UNUSUAL = [
    _request(BASE, first="POST /ws HTTP/1.1"),
    _request(BASE, first="GET /ws HTTP/1.0"),
    _request(BASE, first="GET  /ws HTTP/1.1"),
    _request([*BASE[:4], "Sec-WebSocket-Version: 8"]),
    _request(BASE[:3] + BASE[4:]),
    _request([*BASE, "Host: again"]),
    _request([*BASE, "X-Thing: a", "X-Thing: b"]),
    _request(["Host: 127.0.0.1:x", *BASE[1:]]),
    _request(["Host: 127.0.0.1:\xb2", *BASE[1:]]),
    _request([*BASE, "Origin: garbage"]),
    _request([*BASE, "Origin: "]),
    _request([*BASE, "Sec-WebSocket-Protocol: chat, chat"]),
    _request([*BASE, "Sec-WebSocket-Protocol: chat"]),
    _request([*BASE[:3], "Sec-WebSocket-Key: short==", BASE[4]]),
    _request([*BASE[:3], "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25j*Q==", BASE[4]]),
    _request(BASE, "//evil/ws"),
    _request(BASE, "/ws;p?x=1"),
    _request(BASE, "/ws#frag"),
    _request(BASE, "http://example.com/ws"),
    _request(["Host: 127.0.0.1", "Upgrade: h2c", *BASE[2:]]),
    _request([BASE[0], BASE[1], "Connection: close", *BASE[3:]]),
    _request([*BASE, "no colon here"]),
    _request(BASE).replace(b"\r\nUpgrade", b"\nUpgrade"),
]


def test_the_common_handshake_is_read_as_autobahn_reads_it():
    """The requests clients send are answered by the one-pass reading with
    the very bytes, state and request Autobahn's own reading gives; any
    other request is left to Autobahn (same answers and errors)."""

    def autobahn(proto):
        WebSocketServerProtocol.processHandshake(proto)
        return False

    for head in COMMON + UNUSUAL:
        took, fast = _handshake_by(
            lambda p: fast_handshake(p) or autobahn(p) or False, head
        )
        assert took == (head in COMMON), head
        assert fast == _handshake_by(autobahn, head)[1], head


class _Raw(protocol.Protocol):
    """Sends ``request``; collects the answer until the server closes or
    the answer's head is in."""

    def __init__(self, request: bytes) -> None:
        self.request, self.received, self.done = request, b"", Deferred()

    def connectionMade(self):
        self.transport.write(self.request)

    def dataReceived(self, data):
        self.received += data
        if b"\r\n\r\n" in self.received and not self.done.called:
            self.done.callback(self.received)
            self.transport.loseConnection()

    def connectionLost(self, reason):
        if not self.done.called:
            self.done.callback(self.received)


async def _answer(port: int, request: bytes) -> bytes:
    raw = _Raw(request)
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), raw)
    raw.done.addTimeout(5, reactor)
    head = (await raw.done).partition(b"\r\n\r\n")[0]
    lines = head.split(b"\r\n")
    # What a client acts on: the status, and whether it may upgrade.
    return b"\r\n".join(
        [lines[0], *(h for h in lines[1:] if h.lower().startswith(b"sec-websocket-"))]
    )


ANSWERED_ALIKE = [
    _request(BASE),
    _request(BASE, "/ws?key=nope"),
    _request(BASE, "/app/nokey?protocol=7"),
    _request(BASE, "/app/nokey"),
    _request([*BASE[:4], "Sec-WebSocket-Version: 8"]),
    _request(BASE[:4]),
    _request(BASE, first="POST /ws HTTP/1.1"),
    _request([*BASE, "Content-Length: 2"]) + b"{}",
    _request(BASE[:1] + BASE[3:]),
    _request(BASE, "/w%73"),
    _request(BASE, "/nothing"),
]


@pytest.mark.parametrize("front_door", [True, False])
@ensureDeferred
async def test_upgrades_skip_twisted_web_and_are_answered_as_before(
    start_server, front_door
):
    """A plain upgrade of /ws or /app/{key} builds no Twisted Web request,
    from the front door or from Twisted Web's channel (http-fast-path off),
    and every request gets the answer it got through Twisted Web (101 with
    the same accept key, or the same refusal)."""
    server = await start_server(http_fast_path=front_door)
    made = []
    factory = server.site.requestFactory

    def counting(*args, **kwargs):
        made.append(1)
        return factory(*args, **kwargs)

    server.site.requestFactory = counting
    direct = [await _answer(server.port, r) for r in ANSWERED_ALIKE]
    assert direct[0].startswith(b"HTTP/1.1 101")
    assert len(made) == len(ANSWERED_ALIKE[6:])  # POST, a body, no Upgrade...
    server.site.upgrades = {}
    through_twisted = [await _answer(server.port, r) for r in ANSWERED_ALIKE]
    assert direct == through_twisted


@ensureDeferred
async def test_tiny_fragments_cost_a_client_no_more_than_its_message(start_server):
    """A client (no credentials needed) that sends a message as thousands
    of 1-byte fragments makes pushd hold about the message's size while it
    arrives, not an object per fragment (~4 MB per connection for a 64 KB
    message, measured before); the message still counts whole."""
    server = await start_server()
    client = await server.connected()
    await client.subscribe("news")
    (session,) = server.hub.sessions.values()
    conn = session.conn
    raw_bytes = json.dumps(
        {"type": "subscribe", "channel": "sports", "pad": "p" * 20000}
    ).encode()
    client.proto.beginMessage()
    for n in range(len(raw_bytes)):
        client.proto.sendMessageFrame(raw_bytes[n : n + 1])
    await eventually(
        lambda: getattr(conn, "message_data_total_length", 0) == len(raw_bytes), 10
    )
    parts = {id(part): part for part in conn.message_data}.values()
    held = sys.getsizeof(conn.message_data) + sum(map(sys.getsizeof, parts))
    assert held < 2 * len(raw_bytes) + 1000, held
    client.proto.endMessage()
    answer = await client.next()  # the frame is read whole and answered
    assert answer["type"] in ("subscribed", "error"), answer
    await publish(server, "news", "tick", 1)
    assert (await client.next_of("message"))["data"] == 1
