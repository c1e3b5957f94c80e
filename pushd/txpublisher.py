"""Publishing over one WebSocket (``GET /api/publish``, docs/api.md), for
Twisted programs that publish a lot::

    from pushd.txclient import TxPushClient
    push = TxPushClient("http://127.0.0.1:8000", api_secret="...")
    publisher = await push.publisher()
    message_id = await publisher.publish("news", "headline", {"title": "hi"})
    results = await publisher.batch([{"channel": "a", "event": "e", "data": 1}])
    await publisher.close()

``publish`` calls made in the same reactor turn travel together, as one
list frame of at most ``batch_size`` messages: a loop of publishes costs
one frame per batch, not one per message.  Each Deferred fires with the
message id, or fails with ``pushd.client.PushError`` (pushd's status and
error code for that message; status 0 and ``connection_error`` when the
connection was lost before its answer, so the message may or may not have
been published: retry with an ``idempotency_key``).
"""

from __future__ import annotations

import json
import re
from collections import deque
from typing import Any

from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
    connectWS,
)
from twisted.internet.defer import Deferred

from pushd.client import CONNECTION_ERROR, PushError

PATH = "/api/publish"
_REFUSED = re.compile(r"upgrade failed [\[(](\d{3})")


def _error(result: dict) -> PushError:
    return PushError(
        result.get("status", 0), result.get("error", "error"), result.get("message", "")
    )


class _PublisherProtocol(WebSocketClientProtocol):
    publisher: Publisher | None = None

    def onOpen(self):
        self.factory.opened.callback(self)

    def onMessage(self, payload, isBinary):
        if self.publisher is not None:
            self.publisher._answered(json.loads(payload))

    def onClose(self, wasClean, code, reason):
        if not self.factory.opened.called:
            # Autobahn says only the status of a refused upgrade; pushd's
            # error code for it is the REST API's (docs/api.md).
            found = _REFUSED.search(str(reason))
            status = int(found.group(1)) if found else 0
            code = {401: "unauthorized", 403: "forbidden"}.get(status)
            self.factory.opened.errback(
                PushError(status, code or CONNECTION_ERROR, "handshake: %s" % reason)
            )
        if self.publisher is not None:
            self.publisher._lost(code, reason)


class Publisher:
    """One open publisher connection (make it with ``TxPushClient.publisher``)."""

    def __init__(self, proto: _PublisherProtocol, reactor: Any, batch_size: int):
        self._proto = proto
        self._reactor = reactor
        self._batch_size = batch_size
        self._next_id = 0
        self._queued: list[tuple[dict, Deferred, bool]] = []
        self._flush_call: Any = None
        # Frames sent and not yet answered: their items' Deferreds, in order.
        self._waiting: deque[list[tuple[dict, Deferred, bool]]] = deque()
        self._closed: Deferred = Deferred()
        self.close_code: int | None = None
        proto.publisher = self

    def publish(
        self,
        channel: str | list,
        event: str,
        data: Any,
        exclude: str | None = None,
        users: list | None = None,
        idempotency_key: str | None = None,
    ) -> Deferred:
        """Fires with the message id (a list of channels: one message to each)."""
        item: dict[str, Any] = {"event": event, "data": data}
        item["channels" if isinstance(channel, list) else "channel"] = channel
        for name, value in (
            ("exclude", exclude),
            ("users", users),
            ("idempotency_key", idempotency_key),
        ):
            if value is not None:
                item[name] = value
        return self._enqueue(item, raise_errors=True)

    def batch(self, messages: list[dict]) -> Deferred:
        """Fires with one result per message, as ``POST /api/batch`` answers
        them: ``{"status": 202, "message_id"}`` or ``{"status", "error",
        "message"}``."""
        from twisted.internet.defer import gatherResults

        return gatherResults(
            [self._enqueue(dict(m), raise_errors=False) for m in messages]
        )

    def _enqueue(self, item: dict, raise_errors: bool) -> Deferred:
        d: Deferred = Deferred()
        if self.close_code is not None:
            d.errback(PushError(0, CONNECTION_ERROR, "publisher connection closed"))
            return d
        self._next_id += 1
        item["id"] = self._next_id
        self._queued.append((item, d, raise_errors))
        if len(self._queued) >= self._batch_size:
            self._flush()
        elif self._flush_call is None:
            self._flush_call = self._reactor.callLater(0, self._flush)
        return d

    def _flush(self) -> None:
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        queued, self._queued = self._queued, []
        if not queued:
            return
        self._waiting.append(queued)
        frame = json.dumps([item for item, _, _ in queued], separators=(",", ":"))
        self._proto.sendMessage(frame.encode("utf-8"))

    def _answered(self, answer: Any) -> None:
        entries = self._waiting.popleft()
        if isinstance(answer, dict):  # the frame was refused as a whole
            for _item, d, _raise in entries:
                d.errback(_error(answer))
            return
        for (_item, d, raise_errors), result in zip(entries, answer, strict=True):
            if raise_errors and result.get("status") != 202:
                d.errback(_error(result))
            elif raise_errors:
                d.callback(result["message_id"])
            else:
                result = dict(result)
                result.pop("id", None)
                d.callback(result)

    def _lost(self, code: int | None, reason: Any) -> None:
        self.close_code = code if code is not None else 1006
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        pending = [e for frame in self._waiting for e in frame] + self._queued
        self._waiting.clear()
        self._queued = []
        for _, d, _ in pending:
            d.errback(
                PushError(
                    0,
                    CONNECTION_ERROR,
                    "connection closed (%s %s) before pushd answered"
                    % (self.close_code, reason),
                )
            )
        self._closed.callback(self.close_code)

    def when_closed(self) -> Deferred:
        """Fires with the close code once the connection is gone."""
        d: Deferred = Deferred()

        def relay(code: Any) -> Any:
            d.callback(code)
            return code

        self._closed.addBoth(relay)
        return d

    def close(self) -> Deferred:
        """Send what is queued, close, and fire once closed."""
        self._flush()
        if self.close_code is None:
            self._proto.sendClose(1000)
        return self.when_closed()


async def open_publisher(
    reactor: Any, url: str, headers: dict, batch_size: int = 100, tls: Any = None
) -> Publisher:
    """Connect to ``url`` (ws:// or wss://) with the handshake ``headers``.

    Over wss:// the server's certificate is verified against the system's
    trust store and the URL's host (Autobahn's default verifies nothing,
    and the handshake carries the credentials); ``tls``: your own
    ``IOpenSSLClientConnectionCreator`` (a private CA)."""
    factory: Any = WebSocketClientFactory(url, headers=headers)
    factory.protocol = _PublisherProtocol
    factory.opened = Deferred()
    factory.setProtocolOptions(maxMessagePayloadSize=0, maxFramePayloadSize=0)
    if factory.isSecure and tls is None:
        from twisted.internet.ssl import optionsForClientTLS

        tls = optionsForClientTLS(factory.host)
    connectWS(factory, contextFactory=tls)
    proto = await factory.opened
    return Publisher(proto, reactor, batch_size)
