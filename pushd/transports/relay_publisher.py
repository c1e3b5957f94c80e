"""Publisher locations of the HTTP push relay: who may publish, and what.

A publisher proves an app's secret exactly as the REST API asks
(``Authorization: Bearer <secret>`` or a signed request, see pushd.api), and
acts on that app's channels only; a location naming an app refuses every
other app's credentials.  Where the request comes from proves nothing: behind
a reverse proxy every request comes from loopback (issue 12).  Only a
location configured with ``auth: none`` publishes without credentials.
"""

from __future__ import annotations

import base64
import re
from typing import TYPE_CHECKING, Any

from pushd.api import authenticate, json_response, read_body
from pushd.channels import validate_event
from pushd.errors import Forbidden, InvalidField, MethodNotAllowed, NotFound

if TYPE_CHECKING:
    from pushd.apps import App
    from pushd.transports.relay import Relay
    from pushd.transports.relay_locations import Location

# What an EventSource ``event:`` field may carry: no line breaks, no NUL.
_EVENT_NAME = re.compile(r"[^\x00-\x1f\x7f]+")


async def publisher_app(relay: Relay, location: Location, request: Any) -> App:
    """The app the request publishes for; Unauthorized / Forbidden otherwise.
    Signatures are single use on every node, as on the REST API."""
    if location.open:
        return relay.app_of(location)
    app = await authenticate(request, relay.hub)
    if location.app is not None and app.id != location.app:
        raise Forbidden("this location publishes for another app")
    return app


async def handle_publisher(
    relay: Relay, location: Location, channel: str, request: Any
) -> bytes:
    app = await publisher_app(relay, location, request)
    channels, retention = relay.hub.relay, location.retention
    method = request.method
    if method == b"GET":
        if not await channels.exists(app, channel, retention):
            raise NotFound("no channel %s" % channel)
        return info_response(request, 200, await channels.info(app, channel, retention))
    if method == b"PUT":
        await channels.create(app, channel, retention)
        return info_response(request, 200, await channels.info(app, channel, retention))
    if method == b"DELETE":
        if not await channels.delete(app, channel, retention):
            raise NotFound("no channel %s" % channel)
        return info_response(request, 200, await channels.info(app, channel, retention))
    if method == b"POST":
        return await _post(relay, location, app, channel, request)
    request.setHeader(b"allow", b"GET, PUT, POST, DELETE")
    raise MethodNotAllowed("publisher locations take GET, PUT, POST and DELETE")


async def _post(
    relay: Relay, location: Location, app: App, channel: str, request: Any
) -> bytes:
    hub, retention = relay.hub, location.retention
    if not location.create_on_post and not await hub.relay.exists(
        app, channel, retention
    ):
        raise Forbidden("channel %s must be created with PUT first" % channel)
    event = _event_name(request)
    raw = read_body(request)
    try:
        data: Any = raw.decode("utf-8")
    except UnicodeDecodeError:
        data = {"$bytes": base64.b64encode(raw).decode()}
    content_type = (request.getHeader(b"content-type") or b"").decode("latin-1") or None
    # Counted before publishing: the waiting subscribers it reaches answer
    # at once and leave, and the answer must still say they were there.
    listeners = await hub.subscriber_count(app, channel)
    await hub.relay.create(app, channel, retention)
    await hub.publish(
        app, [channel], event, data, content_type=content_type, retention=retention
    )
    info = await hub.relay.info(app, channel, retention, subscribers=listeners)
    return info_response(request, 201 if listeners else 202, info)


def _event_name(request: Any) -> str:
    """``X-EventSource-Event`` names the event EventSource subscribers see."""
    raw = request.getHeader(b"x-eventsource-event")
    if raw is None:
        return "message"
    name = raw.decode("utf-8", "replace").strip()
    if not _EVENT_NAME.fullmatch(name):
        raise InvalidField("X-EventSource-Event must be a name without control codes")
    return validate_event(name)


def info_response(request: Any, status: int, info: dict) -> bytes:
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
