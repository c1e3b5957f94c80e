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
meanwhile, 503 with ``Retry-After`` if the server shuts down),
interval-polling answers 304 at once.  Every waiting subscriber gets every
message; if its node may have missed some (a Redis outage), it is answered
409 ``messages_lost`` instead of waiting in silence.  With ``Accept: text/event-stream`` the answer is an EventSource
stream instead (``relay_eventsource``).

Who: publishers authenticate like the REST API (Bearer secret or signed
request) and act for that app only; subscribers identify like every other
transport (key, token, origin).  The source address proves nothing.  A
location may name its one app (``app``), and may be opened explicitly
(``auth: none``, warned about at start).  Apps never cross.

Where: channels are pushd's (public ones only: the protocol cannot carry
pushd's signatures), so a message POSTed here reaches WebSocket and SSE
subscribers and the other way round.  Channel state (created, last
requested) lives in the backend and subscriber counts are the channel's on
every node, so every node answers the same and honours one ``PUT``.
Nothing a subscriber does outlives its request.

This module routes; ``relay_locations`` parses the configuration,
``relay_publisher`` and ``relay_subscriber`` / ``relay_eventsource`` serve
the two kinds of location.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from pushd.api import error_response, json_response
from pushd.apps import App
from pushd.channels import is_public, validate_channel
from pushd.errors import Forbidden, MethodNotAllowed, NotFound, PushdError
from pushd.transports.relay_eventsource import EventSourceStream, wants_event_stream
from pushd.transports.relay_locations import (  # noqa: F401  (public here)
    DEFAULT_LOCATIONS,
    Location,
    check_locations,
    default_locations,
    location_from_mapping,
)
from pushd.transports.relay_publisher import handle_publisher
from pushd.transports.relay_subscriber import Subscriber, subscriber_app


class Relay:
    """Routing, and the hub every location asks."""

    _log = Logger()

    def __init__(self, hub: Any, locations: tuple[Location, ...]) -> None:
        self.hub = hub
        self.locations = locations
        check_locations(locations, [app.id for app in hub.apps])
        for location in locations:
            if location.open:
                self._log.warn(
                    "relay {kind} location {url} is open (auth: none): anyone "
                    "who reaches it {what} app {app}'s channels",
                    kind=location.kind,
                    url=location.pattern.pattern,
                    what="publishes to and deletes"
                    if location.kind == "publisher"
                    else "reads",
                    app=self.app_of(location).id,
                )

    def app_of(self, location: Location) -> App:
        """The app of an open location (checked at start to be one)."""
        if location.app is not None:
            app = self.hub.apps.by_id(location.app)
        else:
            app = next(iter(self.hub.apps))
        assert app is not None
        return app

    def match(self, path: str) -> tuple[Location, str] | None:
        for location in self.locations:
            m = location.pattern.fullmatch(path)
            if m:
                return location, m.group(1)
        return None


class RelayEndpoint(Resource):
    isLeaf = True

    def __init__(self, relay: Relay, location: Location, channel: str) -> None:
        super().__init__()
        self.relay, self.location, self.channel = relay, location, channel

    def render(self, request):
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
        relay, location, channel = self.relay, self.location, self.channel
        if location.kind == "publisher":
            return await handle_publisher(relay, location, channel, request)
        if request.method != b"GET":
            request.setHeader(b"allow", b"GET")
            raise MethodNotAllowed("subscriber locations take GET only")
        app = subscriber_app(relay, location, request)
        if wants_event_stream(request):
            return await EventSourceStream(relay, location, app, channel, request).run()
        return await Subscriber(relay, location, app, channel, request).run()


class RelayResource(Resource):
    """Hands requests on relay locations to a RelayEndpoint."""

    def __init__(self, relay: Relay) -> None:
        super().__init__()
        self.relay = relay

    def endpoint_for(self, path: str) -> RelayEndpoint | None:
        found = self.relay.match(path)
        return RelayEndpoint(self.relay, *found) if found else None
