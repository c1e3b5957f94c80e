"""Pusher's HTTP API under ``/apps/{app_id}/...``, signed as Pusher signs.

So that Pusher's server libraries (pusher-http-python, -node, -php, Laravel's
broadcaster...) publish to pushd unchanged.  ``app_id`` is the app's
``pusher-id`` (or, without one, its pushd id).  Every request carries
``auth_key``, ``auth_timestamp`` (within 600 s), ``auth_version=1.0``,
``body_md5`` (when there is a body) and ``auth_signature``: hex HMAC-SHA256
with the app secret of ``METHOD\\nPATH\\nQUERY``, QUERY being every other
parameter, keys lowercased, sorted, as ``key=value`` joined by ``&``.  Any
failure of that is 401.  Answers use real HTTP statuses: 400 for bad
bodies, 413 for event data over ``pusher-max-event-size``.  docs/pusher.md.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any
from urllib.parse import parse_qsl

from klein import Klein
from twisted.logger import Logger
from werkzeug.exceptions import HTTPException

from pushd.api import error_response, json_response, read_body, read_json
from pushd.apps import App
from pushd.auth import parse_timestamp, sign, validate_user_id
from pushd.channels import PERSONAL, PRESENCE, validate_channel
from pushd.errors import (
    BodyTooLarge,
    InvalidField,
    MissingField,
    PushdError,
    Unauthorized,
)
from pushd.hub import Hub
from pushd.pusher import (
    RESERVED_EVENT_PREFIXES,
    SOCKET_ID_RE,
    to_pushd_channel,
)

# Pusher's libraries and docs: a signed request is good for 10 minutes.
SIGNATURE_WINDOW = 600
_ATTRIBUTES = frozenset({"subscription_count", "user_count"})


def verify_request(
    hub: Hub, request: Any, app_id: str | None
) -> tuple[App, dict[str, str]]:
    """(the app a Pusher-signed request acts for, its signed query
    parameters); Unauthorized otherwise.

    Handlers read parameters from that dict only: Twisted's ``request.args``
    splits on ``;`` too and keeps keys' case, so ``FILTER_BY_PREFIX=x`` would
    be signed as ``filter_by_prefix=x`` but ignored, and a request signed
    with a filter would list every channel.
    """
    params: dict[str, str] = {}
    query = request.uri.partition(b"?")[2].decode("utf-8", "replace")
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key.lower() in params:
            raise Unauthorized("query parameter %r given twice" % key[:40])
        params[key.lower()] = value
    signature = params.pop("auth_signature", "")
    missing = [
        n for n in ("auth_key", "auth_timestamp", "auth_version") if n not in params
    ]
    if missing or not signature:
        raise Unauthorized("missing %s" % ", ".join(missing or ["auth_signature"]))
    if params["auth_version"] != "1.0":
        raise Unauthorized("auth_version must be 1.0")
    if app_id is None:  # pusher-http-python's /users/... paths name no app
        app = hub.apps.by_key(params["auth_key"])
    else:
        app = hub.apps.by_pusher_id(app_id)
    if app is None or (
        app.key is not None
        and not hmac.compare_digest(app.key.encode(), params["auth_key"].encode())
    ):
        raise Unauthorized("auth_key does not name app %s" % (app_id or "")[:40])
    sent_at = parse_timestamp(params["auth_timestamp"], "auth_timestamp")
    if abs(hub.clock.seconds() - sent_at) > SIGNATURE_WINDOW:
        raise Unauthorized(
            "auth_timestamp is more than %d s from the server's time" % SIGNATURE_WINDOW
        )
    body = read_body(request)
    if body or "body_md5" in params:
        md5 = hashlib.md5(body).hexdigest()
        if not hmac.compare_digest(md5, params.get("body_md5", "")):
            raise Unauthorized("body_md5 does not match the body")
    text = "\n".join(
        [
            request.method.decode("ascii", "replace"),
            request.path.decode("utf-8", "replace"),
            "&".join("%s=%s" % kv for kv in sorted(params.items())),
        ]
    )
    if not hmac.compare_digest(
        sign(app.secret, text).encode(), signature.encode("utf-8", "replace")
    ):
        raise Unauthorized("auth_signature does not match")
    return app, params


def _attributes(info: Any) -> frozenset:
    if info is None:
        return frozenset()
    if not isinstance(info, str):
        raise InvalidField("'info' is a comma-separated list of attributes")
    wanted = frozenset(a for a in info.split(",") if a)
    if not wanted <= _ATTRIBUTES:
        raise InvalidField("'info' may name: %s" % ", ".join(sorted(_ATTRIBUTES)))
    return wanted


class PusherAPI:
    """``app`` is mounted at ``/apps``; ``users`` at ``/users``, where
    pusher-http-python posts terminate_connections (without /apps/{id})."""

    app = Klein()
    users = Klein()
    _log = Logger()

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    # -- publishing -------------------------------------------------------

    def _event(self, raw: Any, many: bool) -> tuple[str, list, str, Any, frozenset]:
        """(name, channels, data, socket id, info) of one event; 400/413."""
        if not isinstance(raw, dict):
            raise InvalidField("an event is a JSON object")
        name, data = raw.get("name"), raw.get("data")
        if not isinstance(name, str) or not name:
            raise MissingField("'name' must be the event name")
        if name.startswith(RESERVED_EVENT_PREFIXES):
            raise InvalidField("event names starting with pusher: are reserved")
        if not isinstance(data, str):
            raise InvalidField("'data' must be a string (JSON-encode objects)")
        limit = self.hub.config.pusher_max_event_size
        if len(data.encode("utf-8")) > limit:
            raise BodyTooLarge("event data is over %d bytes" % limit)
        channels = raw.get("channels") if many else None
        if channels is None:
            channels = [raw.get("channel")] if "channel" in raw else None
        if not isinstance(channels, list) or not channels:
            raise MissingField("name the channel(s): 'channels' or 'channel'")
        if not all(isinstance(c, str) for c in channels):
            raise InvalidField("channel names are strings")
        socket_id = raw.get("socket_id")
        if socket_id is not None and (
            not isinstance(socket_id, str) or not SOCKET_ID_RE.fullmatch(socket_id)
        ):
            raise InvalidField("'socket_id' must look like 123.456")
        names = [validate_channel(to_pushd_channel(c)) for c in channels]
        return name, names, data, socket_id, _attributes(raw.get("info"))

    async def _publish(self, app: App, event: tuple) -> dict:
        name, channels, data, socket_id, info = event
        await self.hub.publish(app, channels, name, data, exclude=socket_id)
        if not info:
            return {}
        return {"channels": {c: await self._info(app, c, info) for c in channels}}

    async def _info(self, app: App, channel: str, info: frozenset) -> dict:
        out = {}
        if "subscription_count" in info:
            out["subscription_count"] = await self.hub.subscriber_count(app, channel)
        if "user_count" in info and channel.startswith(PRESENCE):
            out["user_count"] = len(await self.hub.channel_users(app, channel))
        return out

    @app.route("/<app_id>/events", methods=["POST"])
    async def events(self, request, app_id):
        app, _ = verify_request(self.hub, request, app_id)
        body = read_json(request, self.hub.config.max_json_depth)
        if not isinstance(body, dict):
            raise InvalidField("the body is a JSON object")
        event = self._event(body, many=True)
        if len(event[1]) > self.hub.config.max_channels_per_publish:
            raise InvalidField(
                "at most %d channels per event"
                % self.hub.config.max_channels_per_publish
            )
        return json_response(request, 200, await self._publish(app, event))

    @app.route("/<app_id>/batch_events", methods=["POST"])
    async def batch_events(self, request, app_id):
        app, _ = verify_request(self.hub, request, app_id)
        body = read_json(request, self.hub.config.max_json_depth)
        batch = body.get("batch") if isinstance(body, dict) else None
        limit = self.hub.config.pusher_max_batch
        if not isinstance(batch, list) or not 0 < len(batch) <= limit:
            raise InvalidField("'batch' must be a list of 1-%d events" % limit)
        events = [self._event(raw, many=False) for raw in batch]
        answers = [await self._publish(app, event) for event in events]
        if not any(event[4] for event in events):
            return json_response(request, 200, {})
        return json_response(
            request,
            200,
            {
                "batch": [
                    a.get("channels", {}).popitem()[1] if a else {} for a in answers
                ]
            },
        )

    # -- queries ------------------------------------------------------------

    @app.route("/<app_id>/channels", methods=["GET"])
    async def channels(self, request, app_id):
        app, params = verify_request(self.hub, request, app_id)
        prefix = params.get("filter_by_prefix", "")
        info = _attributes(params.get("info"))
        if "user_count" in info and not prefix.startswith(PRESENCE):
            raise InvalidField("info=user_count needs filter_by_prefix=presence-")
        occupied = await self.hub.occupied_channels(app)
        names = sorted(
            n for n in occupied if n.startswith(prefix) and not n.startswith(PERSONAL)
        )
        return json_response(
            request,
            200,
            {"channels": {n: await self._info(app, n, info) for n in names}},
        )

    @app.route("/<app_id>/channels/<channel>", methods=["GET"])
    async def channel(self, request, app_id, channel):
        app, params = verify_request(self.hub, request, app_id)
        channel = validate_channel(to_pushd_channel(channel))
        info = _attributes(params.get("info"))
        if "user_count" in info and not channel.startswith(PRESENCE):
            raise InvalidField("user_count is only for presence- channels")
        count = await self.hub.subscriber_count(app, channel)
        body: dict = {"occupied": count > 0}
        body.update(await self._info(app, channel, info))
        return json_response(request, 200, body)

    @app.route("/<app_id>/channels/<channel>/users", methods=["GET"])
    async def channel_users(self, request, app_id, channel):
        app, _ = verify_request(self.hub, request, app_id)
        channel = validate_channel(channel)
        if not channel.startswith(PRESENCE):
            raise InvalidField("users are only listed for presence- channels")
        members = await self.hub.channel_users(app, channel)
        return json_response(
            request, 200, {"users": [{"id": u} for u in sorted(members)]}
        )

    @app.route("/<app_id>/users/<user_id>/terminate_connections", methods=["POST"])
    async def terminate(self, request, app_id, user_id):
        return await self._terminate(request, app_id, user_id)

    async def _terminate(self, request, app_id, user_id):
        """Close every connection of the user, on every node (4009)."""
        app, _ = verify_request(self.hub, request, app_id)
        try:
            user_id = validate_user_id(user_id)
        except PushdError as e:
            raise InvalidField(e.message) from None
        await self.hub.logout(app, user_id)
        return json_response(request, 200, {})

    @users.route("/<user_id>/terminate_connections", methods=["POST"])
    async def terminate_unprefixed(self, request, user_id):
        """The app is the one ``auth_key`` names."""
        return await self._terminate(request, None, user_id)

    # -- errors ---------------------------------------------------------------

    @users.handle_errors(PushdError)
    @app.handle_errors(PushdError)
    def _pushd_error(self, request, failure):
        return error_response(request, failure.value)

    @users.handle_errors(HTTPException)
    @app.handle_errors(HTTPException)
    def _http_error(self, request, failure):
        code = failure.value.code or 404
        return json_response(
            request, code, {"error": "not_found", "message": failure.value.description}
        )

    @users.handle_errors(Exception)
    @app.handle_errors(Exception)
    def _internal(self, request, failure):
        self._log.failure(
            "Pusher API request {path} failed", failure, path=request.path
        )
        return json_response(
            request, 500, {"error": "internal_error", "message": "internal error"}
        )
