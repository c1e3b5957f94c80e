"""The Basic HTTP Push Relay Protocol (hbpush, nginx push module, nchan).

Publisher locations (default ``/publisher/<channel>``)::

    GET     200 channel information, 404 if the channel does not exist
    PUT     200, creates the channel
    DELETE  200, deletes it (waiting subscribers get 410 Gone), 404 if unknown
    POST    stores and delivers the body, with its Content-Type: 201 if the
            channel had subscribers, 202 otherwise; 403 on a channel not
            created first when ``create_on_post`` is false

Subscriber locations (default ``/subscriber/<channel>``), GET only (else 405):
no ``If-Modified-Since``: the oldest stored message; with it (and
``If-None-Match``): the message after the one those identify.  Each answer
carries ``Last-Modified`` and ``Etag`` that identify it.  When there is no
such message, long-polling waits for it (410 if the channel is deleted
meanwhile), interval-polling answers 304 at once.  Every waiting subscriber
gets every message; if its node may have missed some (a Redis outage), it
is answered 409 ``messages_lost`` instead of waiting in silence.

Channels are pushd's channels: a message POSTed here reaches WebSocket and
SSE subscribers, and a message published through the REST API or a client
event reaches HTTP subscribers.  Only public channels are served here (the
protocol has no way to carry pushd's signatures).  Publishing needs a
request from the loopback interface or ``Authorization: Bearer <secret>``.
"""

from __future__ import annotations

import base64
import re
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from twisted.logger import Logger
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from pushd.api import error_response, json_response, read_body
from pushd.channels import is_public, validate_channel
from pushd.errors import (
    Forbidden,
    MessagesLost,
    MethodNotAllowed,
    NotFound,
    PushdError,
)
from pushd.history import Retention
from pushd.interfaces import IConnection
from pushd.message import CHANNEL_DELETED, Outgoing

DEFAULT_RETENTION = Retention(100, 3600.0)


@dataclass(frozen=True)
class Location:
    kind: str  # "publisher" or "subscriber"
    pattern: re.Pattern
    polling: str = "long"
    create_on_post: bool = True
    retention: Retention = DEFAULT_RETENTION


DEFAULT_LOCATIONS = (
    {"type": "subscriber", "prefix": "/subscriber/"},
    {"type": "publisher", "prefix": "/publisher/"},
)


def location_from_mapping(raw: Any) -> Location:
    """One entry of ``relay-locations``; ValueError says what is wrong."""
    known = {"type", "prefix", "url", "polling", "create_on_post", "store"}
    if not isinstance(raw, dict) or set(raw) - known:
        raise ValueError("each location is a mapping of: %s" % ", ".join(sorted(known)))
    kind = raw.get("type")
    if kind not in ("publisher", "subscriber"):
        raise ValueError("location type must be publisher or subscriber")
    if "url" in raw:
        try:
            pattern = re.compile(raw["url"])
        except (re.error, TypeError) as e:
            raise ValueError(
                "location url %r is not a valid pattern: %s" % (raw.get("url"), e)
            ) from None
        if pattern.groups != 1:
            raise ValueError(
                "location url %r must have exactly one group, the channel id"
                % raw["url"]
            )
    elif isinstance(raw.get("prefix"), str) and raw["prefix"].startswith("/"):
        pattern = re.compile(re.escape(raw["prefix"]) + "(.+)")
    else:
        raise ValueError("a location needs url (a pattern) or prefix (starting with /)")
    polling = raw.get("polling", "long")
    if polling not in ("long", "interval"):
        raise ValueError("polling must be long or interval")
    create = raw.get("create_on_post", True)
    if not isinstance(create, bool):
        raise ValueError("create_on_post must be true or false")
    store = raw.get("store", {})
    if not isinstance(store, dict) or set(store) - {"size", "ttl"}:
        raise ValueError("store is {size: N, ttl: SECONDS}")
    size, ttl = store.get("size", 100), store.get("ttl", 3600)
    if (
        isinstance(size, bool)
        or not isinstance(size, int)
        or size < 1
        or isinstance(ttl, bool)
        or not isinstance(ttl, (int, float))
        or ttl <= 0
    ):
        raise ValueError(
            "store size must be a whole number >= 1 and ttl positive seconds"
        )
    return Location(kind, pattern, polling, create, Retention(size, float(ttl)))


def _body_of(message) -> bytes:
    data = message.data
    if isinstance(data, dict) and "$bytes" in data:
        return base64.b64decode(data["$bytes"])
    if isinstance(data, str):
        return data.encode("utf-8")
    from pushd.message import encode_json

    return encode_json(data)


def _after(message, since: tuple[int, int] | None) -> bool:
    """Is ``message`` later than the one (Last-Modified, Etag) identify?"""
    if since is None:
        return True
    when = int(message.time or 0)
    return when > since[0] or (when == since[0] and (message.offset or 0) > since[1])


class Relay:
    """Routing and channel bookkeeping shared by every location."""

    _log = Logger()

    def __init__(self, hub, locations: tuple[Location, ...]) -> None:
        self.hub = hub
        self.locations = locations
        self.app = next(iter(hub.apps))
        self.created: set[str] = set()
        self.last_requested: dict[str, float] = {}
        self.waiting: dict[str, int] = {}

    def match(self, path: str) -> tuple[Location, str] | None:
        for location in self.locations:
            m = location.pattern.fullmatch(path)
            if m:
                return location, m.group(1)
        return None

    async def info(self, channel: str, retention: Retention) -> dict:
        stored = await self.hub.kept_messages(
            self.app, channel, retention, retention.size
        )
        requested = self.last_requested.get(channel)
        return {
            "channel": channel,
            "messages": len(stored.messages),
            "subscribers": self.waiting.get(channel, 0),
            "last_requested": -1
            if requested is None
            else int(self.hub.clock.seconds() - requested),
        }

    async def exists(self, channel: str, retention: Retention) -> bool:
        if channel in self.created:
            return True
        return bool(
            (await self.hub.kept_messages(self.app, channel, retention, 1)).epoch
        )


def _info_response(request, status: int, info: dict) -> bytes:
    if b"json" in (request.getHeader(b"accept") or b""):
        return json_response(request, status, info)
    body = (
        "queued messages: %d\r\nlast requested: %d sec. ago (-1=never)\r\n"
        "active subscribers: %d\r\n"
        % (info["messages"], info["last_requested"], info["subscribers"])
    ).encode()
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"text/plain")
    request.setHeader(b"content-length", b"%d" % len(body))
    return body


class RelayEndpoint(Resource):
    isLeaf = True

    def __init__(self, relay: Relay, location: Location, channel: str) -> None:
        super().__init__()
        self.relay, self.location, self.channel = relay, location, channel

    def render(self, request):
        from twisted.internet.defer import Deferred

        d = Deferred.fromCoroutine(self._render(request))
        d.addCallbacks(
            lambda body: self._finish(request, body), lambda f: self._failed(request, f)
        )
        return NOT_DONE_YET

    def _finish(self, request, body) -> None:
        if body is not None and not request.finished and not request._disconnected:
            request.write(body)
            request.finish()

    def _failed(self, request, failure) -> None:
        if failure.check(PushdError):
            body = error_response(request, failure.value)
        else:
            self.relay._log.failure(
                "relay request {path} failed", failure, path=request.path
            )
            body = json_response(
                request,
                500,
                {"error": "internal_error", "message": "internal server error"},
            )
        self._finish(request, body)

    async def _render(self, request) -> bytes | None:
        try:
            validate_channel(self.channel)
        except PushdError as e:
            raise NotFound(e.message) from None
        if not is_public(self.channel):
            raise Forbidden("only public channels are served over the relay protocol")
        # Every message on a relay channel is queued and positioned, however
        # it was published (REST, WebSocket client events, other locations).
        self.relay.hub.history.keep(self.channel, self.location.retention)
        if self.location.kind == "publisher":
            return await self._publisher(request)
        return await Subscriber(self.relay, self.location, self.channel, request).run()

    async def _publisher(self, request) -> bytes:
        self._check_publisher(request)
        relay, channel, retention = self.relay, self.channel, self.location.retention
        method = request.method
        if method == b"GET":
            if not await relay.exists(channel, retention):
                raise NotFound("no channel %s" % channel)
            return _info_response(request, 200, await relay.info(channel, retention))
        if method == b"PUT":
            relay.created.add(channel)
            return _info_response(request, 200, await relay.info(channel, retention))
        if method == b"DELETE":
            if not await relay.exists(channel, retention):
                raise NotFound("no channel %s" % channel)
            relay.created.discard(channel)
            await relay.hub.delete_channel(relay.app, channel)
            relay.hub.history.keep(channel, None)
            return _info_response(request, 200, await relay.info(channel, retention))
        if method == b"POST":
            if not await relay.exists(channel, retention):
                if not self.location.create_on_post:
                    raise Forbidden(
                        "channel %s must be created with PUT first" % channel
                    )
                relay.created.add(channel)
            raw = read_body(request)
            try:
                data: Any = raw.decode("utf-8")
            except UnicodeDecodeError:
                data = {"$bytes": base64.b64encode(raw).decode()}
            content_type = (request.getHeader(b"content-type") or b"").decode(
                "latin-1"
            ) or None
            listeners = await relay.hub.subscriber_count(relay.app, channel)
            await relay.hub.publish(
                relay.app, [channel], "message", data, content_type=content_type
            )
            return _info_response(
                request, 201 if listeners else 202, await relay.info(channel, retention)
            )
        request.setHeader(b"allow", b"GET, PUT, POST, DELETE")
        raise MethodNotAllowed("publisher locations take GET, PUT, POST and DELETE")

    def _check_publisher(self, request) -> None:
        host = getattr(request.getClientAddress(), "host", "")
        if host in ("127.0.0.1", "::1"):
            return
        header = request.getHeader(b"authorization") or b""
        scheme, _, token = header.partition(b" ")
        if scheme.lower() == b"bearer" and self.relay.hub.apps.by_secret(token.strip()):
            return
        raise Forbidden(
            "publish from the loopback interface or with "
            "'Authorization: Bearer <api secret>'"
        )


@implementer(IConnection)
class Subscriber:
    """One subscriber request; while it waits, it is a session on the channel."""

    transport_name = "relay"

    def __init__(self, relay: Relay, location: Location, channel: str, request) -> None:
        self.relay, self.location, self.channel, self.request = (
            relay,
            location,
            channel,
            request,
        )
        self.connection_id = "relay-" + secrets.token_urlsafe(9)
        self.session = None
        self.done = False

    async def run(self) -> bytes | None:
        request, relay, channel = self.request, self.relay, self.channel
        if request.method != b"GET":
            request.setHeader(b"allow", b"GET")
            raise MethodNotAllowed("subscriber locations take GET only")
        relay.last_requested[channel] = relay.hub.clock.seconds()
        self.since = self._since(request)
        # Join the channel before reading what is stored: nothing published
        # in between can be missed.
        self.session = session = relay.hub.open_session(self, relay.app)
        session.subscriptions.add(channel)
        await relay.hub.subscribe(session, channel)
        relay.hub.release(session, channel)
        retention = self.location.retention
        stored = await relay.hub.kept_messages(
            relay.app, channel, retention, retention.size
        )
        for message in stored.messages:
            # Relay subscribers are anonymous: never replay what was
            # published to some users only.
            if _after(message, self.since) and message.reaches(
                self.connection_id, None
            ):
                return self._answer(message)
        if self.location.polling == "interval":
            self._close()
            request.setResponseCode(http.NOT_MODIFIED)
            return b""
        relay.waiting[channel] = relay.waiting.get(channel, 0) + 1
        request.notifyFinish().addBoth(lambda _: self._close())
        return None  # answered by send_message, or closed by the client

    @staticmethod
    def _since(request) -> tuple[int, int] | None:
        ims = request.getHeader(b"if-modified-since")
        if not ims:
            return None
        try:
            when = http.stringToDatetime(ims)
        except (ValueError, IndexError):
            return None
        etag = (request.getHeader(b"if-none-match") or b"").strip(b'"W/ ')
        return when, int(etag) if etag.isdigit() else -1

    def _answer(self, message) -> bytes:
        request = self.request
        self._close()
        body = _body_of(message)
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
        if self.request.method == b"GET" and self.channel in self.relay.waiting:
            self.relay.waiting[self.channel] -= 1
            if self.relay.waiting[self.channel] <= 0:
                del self.relay.waiting[self.channel]
        if self.session is not None:
            self.session.close()

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
            self._close()
            self.request.setResponseCode(http.GONE)
            self.request.setHeader(b"content-length", b"0")
            self.request.finish()
            return
        if message.offset is not None and not _after(message, self.since):
            return
        body = self._answer(message)
        self.request.write(body)
        self.request.finish()

    def close(self, code: int, reason: str) -> None:
        if not self.done and not self.request.finished:
            self._close()
            self.request.setResponseCode(http.GONE)
            self.request.finish()


class RelayResource(Resource):
    """Hands requests on relay locations to a RelayEndpoint."""

    def __init__(self, relay: Relay) -> None:
        super().__init__()
        self.relay = relay

    def endpoint_for(self, path: str) -> RelayEndpoint | None:
        found = self.relay.match(path)
        return RelayEndpoint(self.relay, *found) if found else None
