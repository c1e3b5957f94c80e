"""Per-connection cost (issue 16): what a connection keeps, and that it still
behaves as Autobahn's own: keep-alive pings, messages, limits."""

from __future__ import annotations

import gc
from collections import deque

from autobahn.twisted.websocket import WebSocketServerProtocol
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
from pushd.transports.lean import HANDSHAKE_ONLY
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
    clients = [await server.connected() for _ in range(30)]
    for client in clients:
        await client.subscribe("news")
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
    await eventually(lambda: mute.lost.called, timeout=3)
    assert not alive.closed.called
    await publish(server, "news", "tick", 2)
    assert (await alive.next_of("message"))["data"] == 2
