"""WebSocket transport: Autobahn glue around a Session.

Owns nothing but the socket: frames go to the Session, the Session's frames
come back through the ``IConnection`` methods.  Two things live here because
they are about this socket only:

* fan-out writes a prepared frame (encoded once per publish, cached on the
  ``Outgoing``) straight to the TCP transport;
* slow consumers: the protocol is a streaming producer on its transport, so
  Twisted tells us when the kernel stops taking bytes; past
  ``send-queue-bytes`` of backlog the client is disconnected (4109), so one
  stalled phone cannot grow the server's memory without bound.
"""

from __future__ import annotations

import hmac
import secrets
from urllib.parse import urlparse

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.protocol import PreparedMessage
from twisted.logger import Logger
from zope.interface import implementer

from pushd.config import Config
from pushd.errors import CloseCode
from pushd.interfaces import IConnection
from pushd.message import Outgoing, encode_json

_OPEN = WebSocketServerProtocol.STATE_OPEN


def _prepare(payload: bytes) -> PreparedMessage:
    return PreparedMessage(payload, False, False, False)


@implementer(IConnection)
class PushServerProtocol(WebSocketServerProtocol):
    _log = Logger()  # not .log: Autobahn owns that name
    session = None
    connection_id = ""
    _refusal: tuple[int, str] | None = None
    _paused = False
    _backlog = 0

    def onConnect(self, request):
        self.connection_id = secrets.token_urlsafe(12)
        self._refusal = self.factory.check_client(request)
        return None

    def onOpen(self):
        if self._refusal is not None:
            self.sendClose(*self._refusal)
            return
        try:
            self._become_producer()
            self.session = self.factory.hub.open_session(self)
            self.send_json({"type": "connected", "connection_id": self.connection_id})
        except Exception:
            self._log.failure("opening connection from {peer} failed", peer=self.peer)
            self.sendClose(CloseCode.INTERNAL_ERROR, "internal error")

    def _become_producer(self) -> None:
        # Twisted Web's HTTPChannel registered itself on this transport
        # before Autobahn took the socket over; take its place.
        transport = self.transport
        if getattr(transport, "producer", None) is not None:
            transport.unregisterProducer()
        transport.registerProducer(self, True)

    def onMessage(self, payload, isBinary):
        if self.session is not None:
            self.session.receive(payload)

    def onClose(self, wasClean, code, reason):
        session, self.session = self.session, None
        if session is not None:
            session.close()

    # -- IPushProducer: the transport's buffer tells us about slow clients.

    def pauseProducing(self):
        # Twisted calls this on every write while the buffer is over its
        # size; only the first call starts counting the backlog.
        if not self._paused:
            self._paused = True
            self._backlog = 0

    def resumeProducing(self):
        self._paused = False
        self._backlog = 0

    def stopProducing(self):
        pass

    # -- IConnection ------------------------------------------------------

    def send_json(self, frame: dict) -> None:
        if self.state == _OPEN:
            self.sendMessage(encode_json(frame))

    def send_message(self, outgoing: Outgoing) -> None:
        if self.state != _OPEN:
            return
        data = outgoing.wire("ws", _prepare).payloadHybi
        if self._paused:
            self._backlog += len(data)
            if self._backlog > self.factory.config.send_queue_bytes:
                self._log.info("dropping slow client {id}", id=self.connection_id)
                self.close(CloseCode.SLOW_CONSUMER, "slow consumer: too far behind")
                return
        if self._perMessageCompress is None and not self.send_queue:
            # Autobahn's sendData would format a debug log line per call;
            # on the fan-out path that costs more than the write itself.
            self.transport.write(data)
        else:
            self.sendPreparedMessage(outgoing.wire("ws", _prepare))

    def close(self, code: int, reason: str) -> None:
        # Only an open connection needs closing: one already closing finishes
        # its handshake (or times out) on its own, and aborting it would
        # discard the frames still buffered for the client.
        if self.state == _OPEN:
            # Autobahn's public sendClose refuses the protocol-level codes
            # (1001 going away, 1009...); the frame-level call takes any.
            self.sendCloseFrame(code, reason.encode("utf-8")[:120], isReply=False)


class PushServerFactory(WebSocketServerFactory):
    protocol = PushServerProtocol

    def __init__(self, hub, config: Config) -> None:
        super().__init__()
        self.hub = hub
        self.config = config
        self._client_key = config.client_key.encode() if config.client_key else None
        options = dict(
            maxMessagePayloadSize=config.max_message_size,
            maxFramePayloadSize=config.max_message_size,
            autoPingTimeout=config.ping_timeout,
            openHandshakeTimeout=10,
            closeHandshakeTimeout=2,
            # Send the close frame (1009, 1007...) before dropping, so the
            # client learns why it was disconnected.
            failByDrop=False,
        )
        if config.ping_interval:
            options["autoPingInterval"] = config.ping_interval
        self.setProtocolOptions(**options)

    def check_client(self, request) -> tuple[int, str] | None:
        """Return (close code, reason) to refuse this client, or None."""
        if self._client_key is not None:
            given = request.params.get("key", [""])[0].encode()
            if not hmac.compare_digest(given, self._client_key):
                return CloseCode.INVALID_CLIENT_KEY, "invalid client key"
        origin = request.headers.get("origin")
        if origin and not _origin_allowed(origin, self.config.allowed_origins):
            return CloseCode.ORIGIN_NOT_ALLOWED, "origin not allowed"
        return None


def _origin_allowed(origin: str, patterns: tuple[str, ...]) -> bool:
    """Match ``scheme://host[:port]`` against patterns where ``*`` is any run."""
    from fnmatch import fnmatchcase

    if "*" in patterns:
        return True
    host = urlparse(origin).netloc or origin
    return any(fnmatchcase(origin, p) or fnmatchcase(host, p) for p in patterns)
