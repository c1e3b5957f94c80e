"""The publisher WebSocket: ``GET /api/publish``, upgraded (docs/api.md).

An app backend that publishes a lot keeps this one connection open instead
of paying an HTTP request per message (issue 16).  Its handshake is a REST
request as far as credentials go: ``pushd.api.authenticate`` checks the
same headers (``Authorization: Bearer``, or a signed request, single use on
every node) before anything is upgraded, so a refused handshake gets the
REST API's 401/403 answer and never a WebSocket.  The connection acts for
that one app until ``publisher-max-age`` has passed, then closes (4111):
reconnecting proves the credentials again.

Each frame is one message object or a list of them, with the REST API's
fields; every frame goes through ``Hub.publish_batch`` as a
``POST /api/batch`` body does (``Hub.publish``'s rules message by message:
validation, idempotency keys, history, webhooks, offline delivery), one
message after another in the order sent.  The
answer to a frame is one result per message, in the same shape (object or
list), so a publisher matches them by position or by its own ``id``.

Bounds: a frame is at most ``publisher-max-frame`` bytes and
``publisher-max-items`` messages.  While a frame waits on the backend, or
while the publisher does not read its answers, pushd reads nothing more
from the socket (``processData`` keeps what Autobahn already buffered), so
unanswered work is one frame, and a slow backend slows the publisher down
through TCP instead of growing pushd's memory.
"""

from __future__ import annotations

import json
from typing import Any

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from pushd.api import authenticate, error_response, json_response
from pushd.apps import App
from pushd.config import Config
from pushd.errors import (
    BodyTooLarge,
    CloseCode,
    InvalidField,
    InvalidFrame,
    MethodNotAllowed,
    MissingField,
    PushdError,
)
from pushd.inputs import check_value, loads
from pushd.message import encode_basestring, encode_json

_OPEN = WebSocketServerProtocol.STATE_OPEN
MAX_ID_LENGTH = 200


def _ref(item: dict) -> Any:
    """The publisher's own ``id`` for an item, echoed in its answer."""
    ref = item.get("id")
    if ref is None or (isinstance(ref, int) and not isinstance(ref, bool)):
        return ref
    if isinstance(ref, str) and len(ref) <= MAX_ID_LENGTH:
        return check_value(ref, 1)  # no lone surrogates: it is written back
    raise InvalidField("'id' must be an integer or a string of at most 200 characters")


def _check_size(item: dict, limit: int) -> None:
    """A REST publish carries its message in a body of at most
    ``max-message-size`` bytes; a frame may be larger, so each of its
    messages is held to that limit (measured only when the frame is over
    it), in UTF-8 bytes as it came."""
    text = json.dumps(item, ensure_ascii=False, separators=(",", ":"))
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > limit:
        raise BodyTooLarge(
            "message is %d bytes, over max-message-size (%d)" % (size, limit)
        )


def _fields(item: dict) -> tuple[list, object, Any]:
    """(channels, event, data) of one message, REST batch rules."""
    channel = item.get("channel")
    channels: Any = [channel]
    if channel is None:
        channels = item.get("channels")
        if not isinstance(channels, list):
            raise MissingField("missing 'channel' (or 'channels', a list)")
    if "data" not in item:
        raise MissingField("missing 'data' (any JSON value, null included)")
    return channels, item.get("event"), item["data"]


class PublisherProtocol(WebSocketServerProtocol):
    """One authenticated publisher; frames answered strictly in order."""

    _log = Logger()  # not .log: Autobahn owns that name
    app: App | None = None
    _busy = False  # a frame is being published
    _write_paused = False  # the publisher is not reading our answers
    _expired = False
    _reading = True
    _expiry: Any = None
    pongs_held = 0  # ping timeouts that fell while a frame held reading

    def onConnect(self, request):
        if self.app is None:  # only PublisherResource builds us, after auth
            raise ConnectionDeny(403, "not authenticated")
        return None

    def onOpen(self):
        transport: Any = self.transport
        # Twisted Web's HTTPChannel registered itself before the upgrade.
        if getattr(transport, "producer", None) is not None:
            transport.unregisterProducer()
        transport.registerProducer(self, True)
        self.factory.connections.add(self)
        clock = self.factory.hub.clock
        self._expiry = clock.callLater(
            self.factory.config.publisher_max_age, self._expire
        )

    def onClose(self, wasClean, code, reason):
        self.factory.connections.discard(self)
        expiry, self._expiry = self._expiry, None
        if expiry is not None and expiry.active():
            expiry.cancel()

    # -- flow control -------------------------------------------------------

    def pauseProducing(self) -> None:
        """Twisted: our answers are piling up unread; stop taking frames."""
        self._write_paused = True
        self._update_reading()

    def resumeProducing(self) -> None:
        self._write_paused = False
        self._update_reading()

    def stopProducing(self) -> None:
        pass

    def _held(self) -> bool:
        # Once closing, Autobahn must read on: the publisher's close reply.
        if self.state != _OPEN:
            return False
        return self._busy or self._write_paused or self._expired

    def processData(self) -> bool:
        # Autobahn calls this in a loop over what it has buffered; while a
        # frame is in progress the rest stays buffered, unparsed.
        if self._held():
            return False
        return super().processData()

    def _update_reading(self) -> None:
        transport: Any = self.transport
        if transport is None or self.state != _OPEN:
            return
        if self._held():
            if self._reading:
                self._reading = False
                transport.pauseProducing()
            return
        if not self._reading:
            self._reading = True
            transport.resumeProducing()
            self.consumeData()  # frames that arrived before we held

    def onAutoPingTimeout(self) -> None:
        # While a frame waits on the backend pushd reads nothing, so the
        # publisher's pong may be sitting unread: our hold, not a dead peer.
        # Wait another ping-timeout; the pong is read once the frame is done.
        if self._busy and self.state == _OPEN:
            self.pongs_held += 1
            self.autoPingTimeoutCall = self.factory.hub.clock.callLater(
                self.factory.config.ping_timeout, self.onAutoPingTimeout
            )
            return
        super().onAutoPingTimeout()

    def _expire(self) -> None:
        self._expiry = None
        self._expired = True
        self._update_reading()
        if not self._busy:
            self._close_expired()

    def _close_expired(self) -> None:
        self._close(
            CloseCode.CONNECTION_EXPIRED, b"publisher-max-age reached; reconnect"
        )

    def _close(self, code: int, reason: bytes) -> None:
        if self.state == _OPEN:
            self.sendCloseFrame(code, reason, isReply=False)
        transport: Any = self.transport
        if not self._reading and transport is not None:
            self._reading = True  # for the publisher's close reply
            transport.resumeProducing()

    # -- frames -------------------------------------------------------------

    def onMessageBegin(self, isBinary):
        super().onMessageBegin(isBinary)
        self.message_data = [bytearray()]  # type: ignore[list-item]

    def onMessageFrame(self, payload):
        # Autobahn keeps every fragment as its own object (~40 bytes each):
        # a message in 1-byte fragments held ~40x its size.  One buffer.
        if not self.failedByMe:
            self.message_data[0] += b"".join(payload)

    def onMessage(self, payload, isBinary):
        if self._expired:
            return  # arrived with the close: not published, not answered
        self._busy = True
        try:
            d = Deferred.fromCoroutine(self._answer(payload))
        except Exception:  # raised before the coroutine's first await
            d = Deferred()
            d.errback(Failure())
        if not d.called:
            self._update_reading()  # hold the rest until it is answered
        d.addCallbacks(self._done, self._failed)

    def _done(self, _: object) -> None:
        self._busy = False
        if self._expired:
            self._close_expired()
            return
        self._update_reading()

    def _failed(self, failure: Failure) -> None:
        self._log.failure("publisher frame from {peer} failed", failure, peer=self.peer)
        self._busy = False
        self._close(CloseCode.INTERNAL_ERROR, b"internal error")

    async def _answer(self, payload: bytes) -> None:
        config = self.factory.config
        hub = self.factory.hub
        try:
            # Hub.publish checks each message's data, depth included.
            frame = loads(payload, config.max_json_depth, depth_checked_later=True)
            if isinstance(frame, list):
                if not frame:
                    raise InvalidFrame("a list frame needs at least one message")
                if len(frame) > config.publisher_max_items:
                    raise InvalidFrame(
                        "at most %d messages per frame (publisher-max-items)"
                        % config.publisher_max_items
                    )
                big = len(payload) > config.max_message_size
                limit = config.max_message_size if big else 0
                refs, items = zip(*[_item(i, limit) for i in frame], strict=True)
                results = await hub.publish_batch(self.app, items)
                if self.state == _OPEN:
                    self.sendMessage(_list_answer(refs, results))
                return
            else:
                big = len(payload) > config.max_message_size
                ref, item = _item(frame, config.max_message_size if big else 0)
                answer: Any = _result(
                    ref, (await hub.publish_batch(self.app, [item]))[0]
                )
        except PushdError as e:  # the frame as a whole
            answer = {"id": None, "status": e.status, **e.as_json()}
        if self.state == _OPEN:
            self.sendMessage(encode_json(answer))


def _item(item: object, limit: int = 0) -> tuple[Any, Any]:
    """(the publisher's id, the item as Hub.publish_batch takes it, or the
    PushdError its shape is refused with); ``limit``: its frame is over
    max-message-size, so the item is measured against it."""
    ref = None
    try:
        if type(item) is not dict:
            raise InvalidFrame("each message is a JSON object")
        get = item.get
        given = get("id")
        ref = given if given is None or type(given) is int else _ref(item)
        if limit:
            _check_size(item, limit)
        channel = get("channel")
        if channel is not None and "data" in item:  # most items: no calls
            channels, event, data = [channel], get("event"), item["data"]
        else:
            channels, event, data = _fields(item)
    except PushdError as e:
        return ref, e
    return ref, (
        channels,
        event,
        data,
        get("exclude"),
        get("users"),
        get("idempotency_key"),
    )


def _list_answer(refs: tuple, results: list) -> bytes:
    """``encode_json(list(map(_result, refs, results)))``, the same bytes:
    an accepted message's answer is written from its parts, without a dict
    to encode (a third of answering a chat-like frame, bench/chat.py)."""
    parts = []
    for ref, result in zip(refs, results, strict=True):
        if type(result) is str:  # a message id: hex digits
            parts.append(
                '{"id":%s,"status":202,"message_id":"%s"}'
                % (
                    "null"
                    if ref is None
                    else "%d" % ref
                    if type(ref) is int
                    else encode_basestring(ref),
                    result,
                )
            )
        else:
            parts.append(encode_json(_result(ref, result)).decode("utf-8"))
    return ("[%s]" % ",".join(parts)).encode("utf-8")


def _result(ref: Any, result: Any) -> dict:
    if isinstance(result, str):
        return {"id": ref, "status": 202, "message_id": result}
    return {"id": ref, "status": result.status, **result.as_json()}


class PublisherFactory(WebSocketServerFactory):
    protocol = PublisherProtocol

    def __init__(self, hub: Any, config: Config) -> None:
        super().__init__()
        self.hub = hub
        self.config = config
        # The app the handshake being upgraded proved (PublisherResource
        # sets it around the synchronous upgrade that builds the protocol).
        self.authenticated: App | None = None
        self.connections: set[PublisherProtocol] = set()
        options: dict[str, Any] = dict(
            maxMessagePayloadSize=config.publisher_max_frame,
            maxFramePayloadSize=config.publisher_max_frame,
            autoPingTimeout=config.ping_timeout,
            openHandshakeTimeout=10,
            closeHandshakeTimeout=2,
            failByDrop=False,
        )
        if config.ping_interval:
            options["autoPingInterval"] = config.ping_interval
        self.setProtocolOptions(**options)

    def buildProtocol(self, addr):
        proto = super().buildProtocol(addr)
        proto.app = self.authenticated
        return proto


class PublisherResource(Resource):
    """``GET /api/publish``: authenticate like the REST API, then upgrade."""

    isLeaf = True
    _log = Logger()

    def __init__(self, hub: Any, config: Config) -> None:
        super().__init__()
        self._hub = hub
        self._factory = PublisherFactory(hub, config)
        self._upgrader = WebSocketResource(self._factory)

    def render(self, request):
        if request.method != b"GET":
            return error_response(
                request, MethodNotAllowed("GET /api/publish with a WebSocket upgrade")
            )
        try:
            d = Deferred.fromCoroutine(authenticate(request, self._hub))
        except Exception:
            d = Deferred()
            d.errback(Failure())
        done: list = []
        d.addCallbacks(
            lambda app: done.append(self._upgrade(request, app)),
            lambda f: done.append(self._refuse(request, f)),
        )
        if done:
            return done[0]
        d.addCallback(lambda _: self._write(request, done[0]))
        return NOT_DONE_YET

    def _upgrade(self, request, app: App) -> Any:
        if request._disconnected or request.channel is None:
            return NOT_DONE_YET  # the publisher left during authentication
        self._factory.authenticated = app
        try:
            return self._upgrader.render(request)
        finally:
            self._factory.authenticated = None

    def _refuse(self, request, failure: Failure) -> bytes:
        if isinstance(failure.value, PushdError):
            return error_response(request, failure.value)
        self._log.failure("publisher handshake failed", failure)
        return json_response(
            request,
            500,
            {"error": "internal_error", "message": "internal server error"},
        )

    @staticmethod
    def _write(request, body: Any) -> None:
        if body is NOT_DONE_YET or request.finished or request._disconnected:
            return
        request.write(body)
        request.finish()
