"""Real clients for tests: an Autobahn WebSocket client and a running pushd."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredQueue
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS

from pushd.testing import eventually

TIMEOUT = 5.0


class _ClientProtocol(WebSocketClientProtocol):
    def onOpen(self):
        self.factory.client._opened(self)

    def onMessage(self, payload, isBinary):
        self.factory.client.frames.put(json.loads(payload))

    def onClose(self, wasClean, code, reason):
        self.factory.client._closed(code, reason)


class WSClient:
    """A WebSocket client that queues decoded frames for ``await next()``."""

    def __init__(self) -> None:
        self.frames: DeferredQueue = DeferredQueue()
        self.proto: _ClientProtocol | None = None
        self.opened: Deferred = Deferred()
        self.closed: Deferred = Deferred()
        self.close_code: int | None = None

    def _opened(self, proto) -> None:
        self.proto = proto
        self.opened.callback(self)

    def _closed(self, code, reason) -> None:
        self.close_code = code
        if not self.opened.called:
            self.opened.errback(
                ConnectionError("closed before open: %s %s" % (code, reason))
            )
        if not self.closed.called:
            self.closed.callback((code, reason))

    async def next(self, timeout: float = TIMEOUT) -> dict:
        d = self.frames.get()
        d.addTimeout(timeout, reactor)
        return await d

    async def next_of(self, kind: str, timeout: float = TIMEOUT) -> dict:
        """The next frame of type ``kind``, skipping nothing silently: any
        other frame fails the test."""
        frame = await self.next(timeout)
        assert frame["type"] == kind, frame
        return frame

    def send(self, frame: Any, binary: bool = False) -> None:
        payload = frame if isinstance(frame, bytes) else json.dumps(frame).encode()
        self.proto.sendMessage(payload, isBinary=binary)

    async def subscribe(self, channel: str) -> None:
        self.send({"type": "subscribe", "channel": channel})
        frame = await self.next_of("subscribed")
        assert frame["channel"] == channel

    async def wait_closed(self, timeout: float = TIMEOUT) -> tuple:
        d = Deferred()
        self.closed.addBoth(lambda r: (d.callback(r) if not d.called else None, r)[1])
        d.addTimeout(timeout, reactor)
        return await d

    async def close(self) -> None:
        if self.proto is not None and not self.closed.called:
            self.proto.sendClose(1000)
            await self.wait_closed()

    def assert_nothing_queued(self) -> None:
        assert not self.frames.pending, self.frames.pending


async def connect_ws(
    port: int,
    query: str = "",
    expect_open: bool = True,
    path: str = "/ws",
    tls: Any = None,
    origin: str | None = None,
    headers: dict | None = None,
) -> WSClient:
    """Open a WebSocket to pushd on 127.0.0.1:port; wait for the handshake.

    ``tls``: a client TLS context (``optionsForClientTLS``) for ``wss://``;
    ``origin``: the Origin header a browser would send."""
    client = WSClient()
    factory = WebSocketClientFactory(
        "%s://127.0.0.1:%d%s%s" % ("wss" if tls else "ws", port, path, query),
        origin=origin,
        headers=headers,
    )
    factory.protocol = _ClientProtocol
    factory.client = client
    endpoint: Any = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    if tls is not None:
        endpoint = wrapClientTLS(tls, endpoint)
    await endpoint.connect(factory)
    if expect_open:
        d = Deferred()
        client.opened.addBoth(lambda r: (d.callback(r), r)[1])
        d.addTimeout(TIMEOUT, reactor)
        await d
    return client


@dataclass
class RunningServer:
    hub: Any
    port: int
    site: Any
    listening: Any
    secret: str
    clients: list

    @property
    def app(self):
        """The default app, for calling the hub directly."""
        return self.hub.apps.by_id("default")

    @property
    def url(self) -> str:
        return "http://127.0.0.1:%d" % self.port

    def auth(self) -> dict:
        return {"Authorization": "Bearer " + self.secret}

    async def connect(self, query: str = "", expect_open: bool = True) -> WSClient:
        client = await connect_ws(self.port, query, expect_open)
        self.clients.append(client)
        return client

    async def connected(self, query: str = "") -> WSClient:
        """Connect and consume the ``connected`` frame."""
        client = await self.connect(query)
        frame = await client.next_of("connected")
        client.connection_id = frame["connection_id"]
        return client

    async def subscribed(self, channel: str, count: int) -> list[WSClient]:
        """``count`` connected WebSocket clients, each subscribed to ``channel``."""
        clients = [await self.connected() for _ in range(count)]
        for client in clients:
            await client.subscribe(channel)
        return clients

    async def wait_sessions(self, count: int, timeout: float = TIMEOUT) -> None:
        """Wait until the server holds exactly ``count`` sessions."""
        await eventually(lambda: len(self.hub.sessions) == count, timeout)


async def ws_total(server, name: str) -> float:
    """A WebSocket counter of ``server``'s /metrics registry (0 before its
    first sample): frames and writes, to tell coalesced sends from one per
    message."""
    return server.hub.metrics.registry.get_sample_value(name, {"transport": "ws"}) or 0
