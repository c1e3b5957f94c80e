"""A subscriber for Python programs: a backend worker listening to pushd
over WebSocket (Autobahn), with pushd.js's rules for never missing a message.

::

    from pushd.subscriber import PushSubscriber
    sub = PushSubscriber(reactor, "ws://127.0.0.1:8000/ws", key="...")
    sub.subscribe("orders", lambda message: handle(message["data"]))
    sub.on_recovered = lambda channel, recovered: recovered or resync(channel)
    sub.start()

Each channel remembers the position of the last message handled; after a
reconnect it subscribes with ``since`` that position, so pushd replays what
was missed (channels with history), and ``on_recovered(channel, bool)`` says
whether that was everything.  ``on_lost(channel, frame)`` gets pushd's loss
notices (``messages_lost``).  Reconnects use capped, jittered exponential
backoff; close codes 4000-4099 (wrong key, bad token, logged out) stop it
(state ``failed``).  ``wss://`` URLs verify the server's certificate
against the system's trust store and the URL's host name (``tls=``: your
own ``optionsForClientTLS``).  ``auth(connection_id, channel)`` returns (or fires
with) the ``{"auth", "channel_data"?}`` for private- and presence- channels,
e.g. ``PushClient.channel_auth`` when the worker holds the secret.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
    connectWS,
)
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.ssl import optionsForClientTLS
from twisted.logger import Logger

Handler = Callable[[dict], Any]


class _Protocol(WebSocketClientProtocol):
    def onMessage(self, payload, isBinary):
        try:
            frame = json.loads(payload)
        except ValueError:
            return
        if isinstance(frame, dict):
            self.factory.subscriber._receive(self, frame)

    def onClose(self, wasClean, code, reason):
        self.factory.subscriber._closed(self, code)


class _Factory(WebSocketClientFactory):
    protocol = _Protocol

    def __init__(self, subscriber: PushSubscriber, url: str) -> None:
        super().__init__(url)
        self.subscriber = subscriber

    def clientConnectionFailed(self, connector, reason):
        self.subscriber._closed(None, 1006)


class _Channel:
    def __init__(self, handler: Handler, since: dict | None) -> None:
        self.handler = handler
        self.position = since
        self.subscribed = False


class PushSubscriber:
    """States: ``connecting``, ``connected``, ``disconnected``, ``failed``
    (``on_state``)."""

    _log = Logger()

    def __init__(
        self,
        reactor: Any,
        url: str,
        key: str | None = None,
        token: str | None = None,
        auth: Callable[[str, str], Any] | None = None,
        max_delay: float = 30.0,
        tls: Any = None,
    ) -> None:
        params = {k: v for k, v in (("key", key), ("token", token)) if v}
        self.url = url + ("?" + urlencode(params) if params else "")
        self._reactor = reactor
        # wss://: Autobahn's default context checks no certificate at all,
        # and the URL carries the user token; verify the server as a browser
        # would (``tls``: e.g. optionsForClientTLS with your own trustRoot).
        self._tls = tls
        self._auth = auth
        self._max_delay = max_delay
        self._channels: dict[str, _Channel] = {}
        self._proto: _Protocol | None = None
        self._attempt = 0
        self._retry: Any = None
        self._stopped = True
        self.state = "initialized"
        self.connection_id: str | None = None
        self.on_state: Callable[[str], Any] = lambda state: None
        self.on_recovered: Callable[[str, bool], Any] = lambda channel, ok: None
        self.on_lost: Callable[[str, dict], Any] = lambda channel, frame: None
        self.on_error: Callable[[dict], Any] = lambda frame: None

    def subscribe(self, channel: str, handler: Handler, since: dict | None = None):
        """Call ``handler(message_frame)`` for every message of ``channel``;
        ``since={"offset": 0}`` also replays what is kept."""
        self._channels[channel] = _Channel(handler, since)
        if self.state == "connected":
            self._send_subscribe(channel)

    def unsubscribe(self, channel: str) -> None:
        if self._channels.pop(channel, None) is not None and self._proto is not None:
            self._send({"type": "unsubscribe", "channel": channel})

    def position(self, channel: str) -> dict | None:
        """The last position handled on ``channel`` (to persist, if you like)."""
        found = self._channels.get(channel)
        return found.position if found else None

    def start(self) -> None:
        self._stopped = False
        self._connect()

    def stop(self) -> None:
        """Close for good (state ``disconnected``)."""
        self._stopped = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        if self._proto is not None:
            self._proto.sendClose(1000)

    # -- connection ----------------------------------------------------------

    def _set_state(self, state: str) -> None:
        if state != self.state:
            self.state = state
            self.on_state(state)

    def _connect(self) -> None:
        self._retry = None
        if self._stopped:
            return
        self._set_state("connecting")
        factory = _Factory(self, self.url)
        tls = None
        if factory.isSecure:
            tls = self._tls or optionsForClientTLS(factory.host)
        connectWS(factory, tls)

    def _closed(self, proto: _Protocol | None, code: int | None) -> None:
        if self._proto is not None and proto is not self._proto:
            return  # not the current connection
        self._proto = None
        self.connection_id = None
        for channel in self._channels.values():
            channel.subscribed = False
        if self._stopped:
            self._set_state("disconnected")
            return
        if code is not None and 4000 <= code < 4100:
            self._log.warn("pushd refused us ({code}); not retrying", code=code)
            self._set_state("failed")
            return
        self._set_state("disconnected")
        delay = min(self._max_delay, 0.5 * 2**self._attempt)
        self._attempt += 1
        self._retry = self._reactor.callLater(
            delay / 2 + random.random() * delay / 2, self._connect
        )

    def _send(self, frame: dict) -> None:
        if self._proto is not None:
            self._proto.sendMessage(json.dumps(frame).encode())

    def _send_subscribe(self, name: str) -> None:
        connection_id = self.connection_id or ""
        d: Deferred = maybeDeferred(self._authorize, name, connection_id)

        def send(answer):
            channel = self._channels.get(name)
            if channel is None or (self.connection_id or "") != connection_id:
                return
            frame: dict = {"type": "subscribe", "channel": name, **(answer or {})}
            if channel.position is not None:
                frame["since"] = channel.position
            self._send(frame)

        d.addCallback(send)
        d.addErrback(
            lambda f: self._log.failure(
                "cannot subscribe to {channel}", f, channel=name
            )
        )

    def _authorize(self, name: str, connection_id: str) -> Any:
        if self._auth is None or not name.startswith(("private-", "presence-")):
            return None
        return self._auth(connection_id, name)

    # -- frames --------------------------------------------------------------

    def _receive(self, proto: _Protocol, frame: dict) -> None:
        kind = frame.get("type")
        channel = self._channels.get(frame.get("channel") or "")
        if kind == "connected":
            self._proto = proto
            self._attempt = 0
            self.connection_id = frame.get("connection_id")
            self._set_state("connected")
            for name in list(self._channels):
                self._send_subscribe(name)
        elif kind == "message" and channel is not None:
            self._deliver(channel, frame)
        elif kind == "subscribed" and channel is not None:
            channel.subscribed = True
            if "offset" in frame and (
                channel.position is None or frame.get("recovered") is False
            ):
                channel.position = {"offset": frame["offset"], "epoch": frame["epoch"]}
            if "recovered" in frame:
                self.on_recovered(frame["channel"], frame["recovered"])
        elif kind == "messages_lost":
            self.on_lost(str(frame.get("channel")), frame)
        elif kind == "error":
            self.on_error(frame)

    def _deliver(self, channel: _Channel, frame: dict) -> None:
        offset = frame.get("offset")
        if isinstance(offset, int):
            seen = channel.position
            if (
                seen is not None
                and seen.get("epoch") == frame.get("epoch")
                and offset <= seen["offset"]
            ):
                return  # a duplicate
            channel.position = {"offset": offset, "epoch": frame.get("epoch")}
        try:
            channel.handler(frame)
        except Exception:
            self._log.failure("handler failed on {channel}", channel=frame["channel"])
