"""The native REST API, mounted under /api (docs/api.md)."""

from __future__ import annotations

from typing import Any

from klein import Klein
from twisted.logger import Logger
from werkzeug.exceptions import MethodNotAllowed as WerkzeugMethodNotAllowed
from werkzeug.exceptions import NotFound as WerkzeugNotFound

from pushd.api import authenticate, error_response, json_response, read_json
from pushd.api.operations import stats
from pushd.apps import App
from pushd.auth import validate_user_id
from pushd.channels import personal_channel, validate_channel
from pushd.errors import (
    InvalidField,
    MethodNotAllowed,
    MissingField,
    NotFound,
    PushdError,
)
from pushd.hub import Hub
from pushd.idempotency import request_key


def _message_fields(body: object) -> tuple:
    if not isinstance(body, dict):
        raise InvalidField("body must be a JSON object with 'event' and 'data'")
    if "data" not in body:
        raise MissingField("missing 'data' (any JSON value, null included)")
    return body.get("event"), body["data"]


def _batch_items(body: object, limit: int) -> list:
    if not isinstance(body, dict) or not isinstance(body.get("batch"), list):
        raise MissingField('body must be {"batch": [messages]}')
    items = body["batch"]
    if not items:
        raise InvalidField("'batch' is empty")
    if len(items) > limit:
        raise InvalidField("at most %d messages per batch (max-batch)" % limit)
    return items


def _batch_item(item: object) -> tuple | PushdError:
    """A batch item as ``Hub.publish_batch`` takes it, or why its shape is
    refused (checked in this order, so the errors stay those of docs/api.md)."""
    try:
        if not isinstance(item, dict):
            raise InvalidField("each item is an object with 'channel', 'event', 'data'")
        channel = item.get("channel")
        if channel is None:
            raise MissingField("missing 'channel'")
        validate_channel(channel)
        event, data = _message_fields(item)
    except PushdError as e:
        return e
    return [channel], event, data, item.get("exclude"), item.get("users"), None


def _batch_result(item: Any, result: Any) -> dict:
    if isinstance(result, str):
        return {"status": 202, "id": result, "channel": item["channel"]}
    return {"status": result.status, **result.as_json()}


def _user(user_id: str) -> str:
    try:
        return validate_user_id(user_id)
    except PushdError as e:
        raise InvalidField(e.message) from None


def _int_arg(request, name: bytes) -> int | None:
    raw = request.args.get(name, [None])[0]
    if raw is None:
        return None
    if not raw.isdigit():
        raise InvalidField("%s must be a whole number >= 0" % name.decode())
    return int(raw)


class NativeAPI:
    app = Klein()
    _log = Logger()

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    async def _auth(self, request) -> App:
        return await authenticate(request, self.hub)

    def _json(self, request) -> object:
        return read_json(request, self.hub.config.max_json_depth)

    async def _publish(self, request, app: App, channels: list, body: dict) -> bytes:
        event, data = _message_fields(body)
        message_id = await self.hub.publish(
            app,
            channels,
            event,
            data,
            exclude=body.get("exclude"),
            users=body.get("users"),
            idempotency_key=request_key(request.getHeader(b"idempotency-key"), body),
        )
        return json_response(request, 202, {"id": message_id, "channels": channels})

    @app.route("/channels/<channel>/messages", methods=["POST"])
    async def publish(self, request, channel):
        return await self.publish_to(request, channel)

    async def publish_to(self, request, channel: str) -> bytes:
        """``POST /api/channels/{channel}/messages`` (also served without
        Klein by pushd.api.front)."""
        app = await self._auth(request)
        validate_channel(channel)
        body: Any = self._json(request)  # _message_fields checks it is a dict
        return await self._publish(request, app, [channel], body)

    @app.route("/messages", methods=["POST"])
    async def publish_many(self, request):
        app = await self._auth(request)
        body = self._json(request)
        _message_fields(body)
        channels = body.get("channels")
        if not isinstance(channels, list):
            raise MissingField("'channels' must be a list of channel names")
        return await self._publish(request, app, channels, body)

    @app.route("/batch", methods=["POST"])
    async def publish_batch(self, request):
        """Several messages, each with its own channel and event, published
        in order; each item is validated and answered on its own, so one bad
        item does not cost the others (202 all accepted, 207 some refused)."""
        app = await self._auth(request)
        # Hub.publish_batch checks each item's data, depth included.
        body = read_json(request, self.hub.config.max_json_depth, True)
        items = _batch_items(body, self.hub.config.max_batch)
        results = await self.hub.publish_batch(app, [_batch_item(i) for i in items])
        answers = [_batch_result(i, r) for i, r in zip(items, results, strict=True)]
        status = 202 if all("id" in r for r in answers) else 207
        return json_response(request, status, {"batch": answers})

    @app.route("/stats", methods=["GET"])
    async def stats(self, request):
        """This node and the cluster: everything for the operator
        (admin-secret), an app's own figures for its credentials."""
        return json_response(request, 200, await stats(self.hub, request))

    @app.route("/channels", methods=["GET"])
    async def list_channels(self, request):
        app = await self._auth(request)
        counts = await self.hub.occupied_channels(app)
        return json_response(
            request,
            200,
            {
                "channels": {
                    name: {"subscribers": count}
                    for name, count in sorted(counts.items())
                }
            },
        )

    @app.route("/channels/<channel>", methods=["GET"])
    async def channel_info(self, request, channel):
        app = await self._auth(request)
        count = await self.hub.subscriber_count(app, validate_channel(channel))
        return json_response(
            request,
            200,
            {"channel": channel, "occupied": count > 0, "subscribers": count},
        )

    @app.route("/channels/<channel>/history", methods=["GET"])
    async def channel_history(self, request, channel):
        app = await self._auth(request)
        since, limit = _int_arg(request, b"since"), _int_arg(request, b"limit")
        epoch = request.args.get(b"epoch", [b""])[0].decode("utf-8", "replace") or None
        result = await self.hub.channel_history(app, channel, since, epoch, limit)
        if result is None:
            raise NotFound(
                "%s keeps no history (see 'history' in the config)" % channel
            )
        return json_response(
            request,
            200,
            {
                "channel": channel,
                "epoch": result.epoch,
                "offset": result.offset,
                "recovered": result.recovered,
                "messages": [m.frame() for m in result.messages],
            },
        )

    @app.route("/channels/<channel>/users", methods=["GET"])
    async def channel_users(self, request, channel):
        app = await self._auth(request)
        members = await self.hub.channel_users(app, channel)
        return json_response(
            request,
            200,
            {
                "channel": channel,
                "users": [
                    {"user_id": u, "user_info": i} for u, i in sorted(members.items())
                ],
            },
        )

    @app.route("/users", methods=["GET"])
    async def users_online(self, request):
        app = await self._auth(request)
        return json_response(request, 200, {"online": await self.hub.users_online(app)})

    @app.route("/users/<user>", methods=["GET"])
    async def user_info(self, request, user):
        app = await self._auth(request)
        count = await self.hub.user_connections(app, _user(user))
        return json_response(
            request, 200, {"user_id": user, "online": count > 0, "connections": count}
        )

    @app.route("/users/<user>/messages", methods=["POST"])
    async def message_user(self, request, user):
        app = await self._auth(request)
        return await self._publish(
            request, app, [personal_channel(_user(user))], self._json(request)
        )

    @app.route("/users/<user>/channels", methods=["GET"])
    async def kept_channels(self, request, user):
        app = await self._auth(request)
        channels = await self.hub.kept_channels(app, _user(user))
        return json_response(request, 200, {"user_id": user, "channels": channels})

    @app.route("/users/<user>/channels/<channel>", methods=["PUT", "DELETE"])
    async def keep_channel(self, request, user, channel):
        """Subscribe a user to a channel for good, online or not (Pushi)."""
        app = await self._auth(request)
        await self.hub.keep_channel(app, _user(user), channel, request.method == b"PUT")
        request.setResponseCode(204)
        return b""

    @app.route("/users/<user>", methods=["DELETE"])
    async def logout_user(self, request, user):
        app = await self._auth(request)
        await self.hub.logout(app, _user(user))
        request.setResponseCode(204)
        return b""

    @app.handle_errors(PushdError)
    def _pushd_error(self, request, failure):
        return error_response(request, failure.value)

    @app.handle_errors(WerkzeugNotFound)
    def _not_found(self, request, failure):
        return error_response(
            request,
            NotFound(
                "no such API route: %s %s"
                % (request.method.decode(), request.path.decode("utf-8", "replace"))
            ),
        )

    @app.handle_errors(WerkzeugMethodNotAllowed)
    def _bad_method(self, request, failure):
        return error_response(
            request,
            MethodNotAllowed("method %s not allowed here" % request.method.decode()),
        )

    @app.handle_errors(Exception)
    def _internal(self, request, failure):
        self._log.failure("API request {path} failed", failure, path=request.path)
        return json_response(
            request,
            500,
            {"error": "internal_error", "message": "internal server error"},
        )
