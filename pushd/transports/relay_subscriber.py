"""Subscriber locations of the HTTP push relay: long and interval polling.

A subscriber identifies like every other transport (``pushd.identify``:
``?key=`` names the app, ``?token=`` is needed when the app refuses
anonymous clients, ``Origin`` must be allowed), refused with the HTTP
status and a JSON body.  While it waits it is a session on the channel; it
stores nothing that outlives its request.
"""

from __future__ import annotations

import base64
import secrets
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from twisted.web import http
from zope.interface import implementer

from pushd.api import error_response
from pushd.errors import Forbidden, MessagesLost
from pushd.identify import identify
from pushd.interfaces import IConnection
from pushd.message import CHANNEL_DELETED, Message, Outgoing, encode_json

if TYPE_CHECKING:
    from pushd.apps import App
    from pushd.transports.relay import Relay
    from pushd.transports.relay_locations import Location


def subscriber_app(relay: Relay, location: Location, request: Any) -> App:
    """The app whose channel the request reads; Refused / Forbidden otherwise."""
    if location.open:
        return relay.app_of(location)

    def arg(name: bytes) -> str:
        return (request.args.get(name) or [b""])[0].decode("utf-8", "replace")

    origin = (request.getHeader(b"origin") or b"").decode("utf-8", "replace")
    app, _user, _info = identify(relay.hub, arg(b"key"), arg(b"token"), origin or None)
    if location.app is not None and app.id != location.app:
        raise Forbidden("this location serves another app")
    return app


def body_of(message: Message) -> bytes:
    """The message as published over HTTP: raw bytes, text, or JSON."""
    data = message.data
    if isinstance(data, dict) and "$bytes" in data:
        return base64.b64decode(data["$bytes"])
    if isinstance(data, str):
        return data.encode("utf-8")
    return encode_json(data)


def _after(message: Message, since: tuple[int, int] | None) -> bool:
    """Is ``message`` later than the one (Last-Modified, Etag) identify?"""
    if since is None:
        return True
    when = int(message.time or 0)
    return when > since[0] or (when == since[0] and (message.offset or 0) > since[1])


def _since(request: Any) -> tuple[int, int] | None:
    ims = request.getHeader(b"if-modified-since")
    if not ims:
        return None
    try:
        when = http.stringToDatetime(ims)
    except (ValueError, IndexError):
        return None
    etag = (request.getHeader(b"if-none-match") or b"").strip(b'"W/ ')
    return when, int(etag) if etag.isdigit() else -1


@implementer(IConnection)
class Subscriber:
    """One polling request; while it waits, it is a session on the channel."""

    transport_name = "relay"

    def __init__(
        self, relay: Relay, location: Location, app: App, channel: str, request: Any
    ) -> None:
        self.relay, self.location, self.app = relay, location, app
        self.channel, self.request = channel, request
        self.connection_id = "relay-" + secrets.token_urlsafe(9)
        self.session: Any = None
        self.done = False
        # Live messages that arrive before the stored ones are read wait
        # here, so the oldest unseen message is answered, not the newest.
        self.early: list[Message] | None = []

    async def run(self) -> bytes | None:
        hub, channel, request = self.relay.hub, self.channel, self.request
        retention = self.location.retention
        request.notifyFinish().addBoth(lambda _: self._close())
        await hub.relay.requested(self.app, channel, retention)
        self.since = _since(request)
        interval = self.location.polling == "interval"
        if not interval:
            # Join the channel before reading what is stored: nothing
            # published in between can be missed.  (Interval polling never
            # waits, so it never joins.)
            self.session = hub.open_session(self, self.app)
            self.session.subscriptions.add(channel)
            await hub.subscribe(self.session, channel)
            hub.release(self.session, channel)
        # Relay subscribers are anonymous: never replay what was published
        # to some users only (live delivery applies the same rule).
        stored = [
            m
            for m in (
                await hub.kept_messages(self.app, channel, retention, retention.size)
            ).messages
            if m.reaches(self.connection_id, None)
        ]
        newest = max((m.offset or 0 for m in stored), default=0)
        early, self.early = self.early or [], None
        later = [m for m in early if m.offset is None or m.offset > newest]
        for message in stored + later:
            if _after(message, self.since):
                return self._answer(message)
        if self.done:
            return None
        if interval:
            self._close()
            request.setResponseCode(http.NOT_MODIFIED)
            return b""
        return None  # answered by send_message, or closed by the client

    def _answer(self, message: Message) -> bytes:
        request = self.request
        self._close()
        body = body_of(message)
        request.setResponseCode(200)
        request.setHeader(
            b"content-type",
            (message.content_type or "application/json").encode("latin-1"),
        )
        request.setHeader(
            b"last-modified", http.datetimeToString(int(message.time or 0))
        )
        request.setHeader(b"etag", b"%d" % (message.offset or 0))
        request.setHeader(b"vary", b"If-Modified-Since, If-None-Match")
        # Not part of the relay protocol: what pushd.js needs to hand the app
        # the same (event, message id) as over WebSocket (docs/client-js.md).
        request.setHeader(b"x-pushd-event", quote(message.event).encode("ascii"))
        request.setHeader(b"x-pushd-id", (message.id or "").encode("ascii"))
        request.setHeader(b"content-length", b"%d" % len(body))
        return body

    def _close(self) -> None:
        if self.done:
            return
        self.done = True
        if self.session is not None:
            self.session.close()

    def _end(self, status: int, headers: dict[bytes, bytes]) -> None:
        self._close()
        if self.request.finished or self.request._disconnected:
            return
        self.request.setResponseCode(status)
        for name, value in headers.items():
            self.request.setHeader(name, value)
        self.request.setHeader(b"content-length", b"0")
        self.request.finish()

    # -- IConnection: what the hub delivers while we wait --------------------

    def send_json(self, frame: dict) -> None:
        """Only ``messages_lost`` concerns a waiting relay subscriber: it is
        answered ``409 Conflict`` with the reason, and asking again from its
        position gets the next message still stored (docs/protocol.md)."""
        if frame.get("type") != "messages_lost" or self.done or self.request.finished:
            return
        self._close()
        self.request.setHeader(b"x-pushd-messages-lost", b"1")
        body = error_response(self.request, MessagesLost(frame["reason"]))
        self.request.write(body)
        self.request.finish()

    def send_message(self, outgoing: Outgoing) -> None:
        message = outgoing.message
        if self.done or self.request.finished:
            return
        if message.event == CHANNEL_DELETED:
            self._end(http.GONE, {})
            return
        if self.early is not None:
            self.early.append(message)
            return
        if message.offset is not None and not _after(message, self.since):
            return
        body = self._answer(message)
        self.request.write(body)
        self.request.finish()

    def close(self, code: int, reason: str) -> None:
        """The server goes away (or drops us): 503, come back later.  Not 410,
        which says the channel was deleted."""
        if self.done or self.request.finished:
            return
        retry = b"%d" % self.relay.hub.config.relay_retry_after
        self._end(http.SERVICE_UNAVAILABLE, {b"retry-after": retry})
