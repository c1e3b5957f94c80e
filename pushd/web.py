"""make_site(hub, config): one HTTP site for the API, the transports and the client.

Layout of the URL space:

=================  ===========================================
``/ws``            WebSocket transport
``/app/{key}``     Pusher protocol v7 (docs/pusher.md)
``/apps/{id}/...`` Pusher HTTP API (docs/pusher.md)
``/sse``           Server-Sent Events transport
``/publisher/...``  HTTP push relay locations (configurable; ``relay-locations``)
``/subscriber/...``
``/api/...``       native REST API (docs/api.md)
``/api/publish``   the publisher WebSocket (docs/api.md)
``/pushd.js``      the browser client, served by pushd itself (and its
                   types, ``/pushd.d.ts``)
``/health``        liveness: 200 while the process serves HTTP
``/ready``         readiness: 200, or 503 with the reason while the backend
                   is unreachable or catching up (take the node out of the
                   load balancer, don't restart it)
``/metrics``       Prometheus metrics, with the admin-secret
``/demo/``         the chat demo, only with ``--demo`` (pushd.demo)
``/api/openapi.json``  the OpenAPI 3.1 document of the REST API
=================  ===========================================
"""

from __future__ import annotations

import os
import re
from typing import Any

from autobahn.twisted.resource import WebSocketResource
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.web.http import _GenericHTTPChannelProtocol, combinedLogFormatter
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import File

import pushd
from pushd.api import error_response, json_response
from pushd.api.front import APIFront
from pushd.api.native import NativeAPI
from pushd.api.operations import MetricsResource
from pushd.api.pusher import PusherAPI
from pushd.api.root import RestAPI
from pushd.config import Config
from pushd.errors import NotFound
from pushd.frontdoor import FrontDoor
from pushd.httpchannel import PushHTTPChannel, PushRequest
from pushd.hub import Hub
from pushd.limits import client_ip
from pushd.transports.publisher import PublisherResource
from pushd.transports.pusher import PusherFactory
from pushd.transports.relay import Relay, RelayResource, default_locations
from pushd.transports.sse import SSEResource
from pushd.transports.websocket import PushServerFactory

STATIC = os.path.join(os.path.dirname(__file__), "static")


# Query parameters that carry a credential: a client token (WebSocket and
# SSE clients cannot send headers), a Pusher request signature (replayable
# for its 600 s window).  Access logs are read by more people than the
# secret's holders, so these values never reach them.
_CREDENTIAL_PARAMS = re.compile(
    rb"(?i)([?&](?:auth_signature|token|auth|signature)=)[^&#]*"
)


def _redacted(uri: bytes) -> bytes:
    return _CREDENTIAL_PARAMS.sub(rb"\1[redacted]", uri) if b"?" in uri else uri


class _AsLogged:
    """A request as the access log should see it: from the client behind
    the trusted proxies, not from the proxy, and without credentials in
    its URI."""

    def __init__(self, request: Any, ip: str | None) -> None:
        self._request, self._ip = request, ip
        self.uri = _redacted(request.uri)

    def getClientAddress(self) -> Any:
        if self._ip is None:
            return self._request.getClientAddress()
        kind = IPv6Address if ":" in self._ip else IPv4Address
        return kind("TCP", self._ip, 0)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._request, name)


def _joined(request: Any, name: bytes) -> str | None:
    """A header sent on several lines is one comma-separated list."""
    values = request.requestHeaders.getRawHeaders(name)
    return b",".join(values).decode("latin-1") if values else None


def _access_log(trusted: tuple) -> Any:
    """Twisted's combined access-log line, with the client's IP
    (pushd.limits) and credentials in the URI redacted."""

    def formatter(timestamp: str, request: Any) -> str:
        ip = None
        if trusted:
            ip = client_ip(
                getattr(request.getClientAddress(), "host", ""),
                _joined(request, b"x-forwarded-for"),
                _joined(request, b"forwarded"),
                trusted,
            )
        return combinedLogFormatter(timestamp, _AsLogged(request, ip))

    return formatter


class PushSite(Site):
    """Twisted's Site with pushd's request limits (pushd.httpchannel), behind
    the front door that serves publishes itself (pushd.frontdoor)."""

    def protocol(self) -> Any:  # type: ignore[override]
        # Twisted's own factory, with our HTTP/1.1 channel inside (the
        # wrapper still switches to HTTP/2 when TLS negotiates it).
        return _GenericHTTPChannelProtocol(PushHTTPChannel())

    def buildProtocol(self, addr):
        if not self.fast_routes:
            return self.twisted_protocol(addr)
        return FrontDoor(self, addr)

    def twisted_protocol(self, addr) -> Any:
        """Twisted Web's channel for a connection (the front door hands
        over to one)."""
        return super().buildProtocol(addr)

    requestFactory = PushRequest

    def __init__(
        self, root, config: Config, native: NativeAPI | None = None, **kwargs
    ) -> None:
        kwargs.setdefault("logFormatter", _access_log(config.trusted_proxies))
        # No pushd route reads form-encoded bodies; parsing their
        # Content-Type (with the email package) cost 15% of a publish.
        kwargs.setdefault("parsePOSTFormSubmission", False)
        super().__init__(root, **kwargs)
        self.max_body = config.max_message_size
        self.header_timeout = config.http_header_timeout
        self.body_timeout = config.http_body_timeout
        self.access_log = config.access_log
        self.fast_routes: dict = {}
        if native is not None and config.http_fast_path:
            self.fast_routes = {
                "publish": native.publish_to,
                "messages": native.publish_many,
                "batch": native.publish_batch,
            }
        self.upgrades: dict = {}

    def log(self, request):
        if self.access_log:
            super().log(request)


class _JSONResource(Resource):
    isLeaf = True

    def __init__(self, status: int, body) -> None:
        super().__init__()
        self._status, self._body = status, body

    def render(self, request):
        return json_response(request, self._status, self._body)


class _Ready(Resource):
    """503 with the reason while the hub's backend cannot serve every
    request (Redis unreachable, or catching up after an outage)."""

    isLeaf = True

    def __init__(self, hub: Hub) -> None:
        super().__init__()
        self._hub = hub

    def render(self, request):
        reason = self._hub.unready_reason()
        if reason is None:
            return json_response(request, 200, {"status": "ready"})
        return json_response(request, 503, {"status": "unavailable", "reason": reason})


class _NotFound(Resource):
    isLeaf = True

    def render(self, request):
        return error_response(
            request, NotFound("nothing at %s" % request.path.decode("utf-8", "replace"))
        )


class _AnyChild(Resource):
    """``/app/{key}``: every key reaches the same resource, which reads it."""

    def __init__(self, child: Any) -> None:
        super().__init__()
        self._child = child

    def getChild(self, path, request):
        return self._child


class Root(Resource):
    def __init__(self, relay: RelayResource) -> None:
        super().__init__()
        self._relay = relay

    def getChild(self, path, request):
        endpoint = self._relay.endpoint_for(request.path.decode("utf-8", "replace"))
        if endpoint is not None:
            return endpoint
        if path == b"":
            return _JSONResource(200, {"server": "pushd", "version": pushd.__version__})
        return _NotFound()


def make_site(hub: Hub, config: Config) -> PushSite:
    locations = config.relay_locations
    if locations is None:
        locations = default_locations()
    root = Root(RelayResource(Relay(hub, locations)))
    websocket = PushServerFactory(hub, config)
    root.putChild(b"ws", WebSocketResource(websocket))
    rest = RestAPI(hub)
    publisher = PublisherResource(hub, config)
    root.putChild(b"api", APIFront(rest.native_api, rest.app.resource(), publisher))
    root.putChild(
        b"pushd.js",
        File(os.path.join(STATIC, "pushd.js"), defaultType="text/javascript"),
    )
    root.putChild(
        b"pushd.d.ts",
        File(os.path.join(STATIC, "pushd.d.ts"), defaultType="text/plain"),
    )
    pusher = PusherFactory(hub, config)
    root.putChild(b"app", _AnyChild(WebSocketResource(pusher)))
    pusher_api = PusherAPI(hub)
    root.putChild(b"apps", pusher_api.app.resource())
    root.putChild(b"users", pusher_api.users.resource())
    root.putChild(b"health", _JSONResource(200, {"status": "ok"}))
    root.putChild(b"ready", _Ready(hub))
    root.putChild(b"metrics", MetricsResource(hub))
    root.putChild(b"sse", SSEResource(hub, config.sse_heartbeat))
    if config.demo:
        from pushd.demo import demo_resource

        root.putChild(b"demo", demo_resource(hub))
    site = PushSite(root, config, rest.native_api)
    # Plain upgrades of these skip Twisted Web's request (transports.upgrade).
    site.upgrades = {b"ws": websocket, b"app": pusher}
    return site
