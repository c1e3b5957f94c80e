"""The native REST API, mounted under /api."""

from __future__ import annotations

from klein import Klein
from twisted.logger import Logger
from werkzeug.exceptions import MethodNotAllowed as WerkzeugMethodNotAllowed
from werkzeug.exceptions import NotFound as WerkzeugNotFound

from pushd.api import check_bearer, error_response, json_response, read_json
from pushd.channels import validate_channel
from pushd.errors import InvalidField, MethodNotAllowed, MissingField, NotFound, PushdError
from pushd.hub import Hub


def _message_fields(body: object) -> tuple:
    if not isinstance(body, dict):
        raise InvalidField("body must be a JSON object with 'event' and 'data'")
    if "data" not in body:
        raise MissingField("missing 'data' (any JSON value, null included)")
    return body.get("event"), body["data"]


class NativeAPI:
    app = Klein()
    _log = Logger()

    def __init__(self, hub: Hub, secret: bytes) -> None:
        self.hub = hub
        self._secret = secret

    # Every route is authenticated; Klein has no global hook, so each route
    # starts with the same one-line check.
    def _auth(self, request) -> None:
        check_bearer(request, self._secret)

    @app.route("/channels/<channel>/messages", methods=["POST"])
    async def publish(self, request, channel):
        self._auth(request)
        validate_channel(channel)
        event, data = _message_fields(read_json(request))
        message_id = await self.hub.publish([channel], event, data)
        return json_response(request, 202, {"id": message_id, "channels": [channel]})

    @app.route("/messages", methods=["POST"])
    async def publish_many(self, request):
        self._auth(request)
        body = read_json(request)
        event, data = _message_fields(body)
        channels = body.get("channels")
        if not isinstance(channels, list):
            raise MissingField("'channels' must be a list of channel names")
        message_id = await self.hub.publish(channels, event, data)
        return json_response(request, 202, {"id": message_id, "channels": channels})

    @app.route("/channels", methods=["GET"])
    async def list_channels(self, request):
        self._auth(request)
        counts = await self.hub.backend.occupancy(None)
        return json_response(request, 200, {"channels": {
            name: {"subscribers": count} for name, count in sorted(counts.items())}})

    @app.route("/channels/<channel>", methods=["GET"])
    async def channel_info(self, request, channel):
        self._auth(request)
        validate_channel(channel)
        count = (await self.hub.backend.occupancy(channel)).get(channel, 0)
        return json_response(request, 200, {
            "channel": channel, "occupied": count > 0, "subscribers": count})

    @app.handle_errors(PushdError)
    def _pushd_error(self, request, failure):
        return error_response(request, failure.value)

    @app.handle_errors(WerkzeugNotFound)
    def _not_found(self, request, failure):
        return error_response(request, NotFound("no such API route: %s %s" % (
            request.method.decode(), request.path.decode("utf-8", "replace"))))

    @app.handle_errors(WerkzeugMethodNotAllowed)
    def _bad_method(self, request, failure):
        return error_response(request, MethodNotAllowed(
            "method %s not allowed here" % request.method.decode()))

    @app.handle_errors(Exception)
    def _internal(self, request, failure):
        self._log.failure("API request {path} failed", failure, path=request.path)
        return json_response(request, 500, {"error": "internal_error",
                                            "message": "internal server error"})
