"""Thunderpush's HTTP API, unchanged, under /api/1.0.0/{apikey}/...

So that Thunderpush's server libraries (python-thunderclient,
php-thunderclient, the Ruby gem...) work against pushd as they are.  The
``apikey`` in the path is the app's public key; ``X-Thunder-Secret-Key`` is
its secret.  Replies follow Thunderpush: ``{"count": n}``, ``{"users": [...]}``,
``{"online": bool}``, errors as ``{"message": ..., "status": code}``.
A message is the request's JSON body, delivered with event ``message``.
"""

from __future__ import annotations

import hmac

from klein import Klein
from twisted.logger import Logger
from werkzeug.exceptions import HTTPException

from pushd.api import json_response, read_body
from pushd.apps import App
from pushd.channels import personal_channel
from pushd.errors import InvalidJSON, PushdError
from pushd.hub import Hub
from pushd.inputs import loads


def _reply(request, body: dict, status: int = 200) -> bytes:
    """Thunderpush's reply shape: errors repeat their status in the body."""
    return json_response(
        request, status, body if status == 200 else dict(body, status=status)
    )


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class ThunderpushAPI:
    app = Klein()
    _log = Logger()

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def _app(self, request, apikey: str) -> App:
        request.setHeader(b"access-control-allow-origin", b"*")
        app = self.hub.apps.by_key(apikey)
        given = request.getHeader(b"x-thunder-secret-key") or b""
        if app is None or not hmac.compare_digest(app.secret.encode(), given):
            raise _Refused(401, "Wrong API key/secret.")
        return app

    def _json_body(self, request):
        try:
            return loads(read_body(request), self.hub.config.max_json_depth)
        except InvalidJSON:
            raise _Refused(400, "Request body is not valid JSON.") from None

    @app.route("/<apikey>/channels/<channel>/", methods=["POST"])
    async def send_to_channel(self, request, apikey, channel):
        app = self._app(request, apikey)
        data = self._json_body(request)
        count = await self.hub.subscriber_count(app, channel)
        await self.hub.publish(app, [channel], "message", data)
        return _reply(request, {"count": count})

    @app.route("/<apikey>/channels/<channel>/", methods=["GET"])
    async def users_in_channel(self, request, apikey, channel):
        app = self._app(request, apikey)
        return _reply(
            request, {"users": sorted(await self.hub.channel_users(app, channel))}
        )

    @app.route("/<apikey>/users/", methods=["GET"])
    async def user_count(self, request, apikey):
        app = self._app(request, apikey)
        return _reply(request, {"count": await self.hub.users_online(app)})

    @app.route("/<apikey>/users/<user>/", methods=["GET"])
    async def is_online(self, request, apikey, user):
        app = self._app(request, apikey)
        count = await self.hub.user_connections(app, user)
        return _reply(request, {"online": count > 0})

    @app.route("/<apikey>/users/<user>/", methods=["POST"])
    async def send_to_user(self, request, apikey, user):
        app = self._app(request, apikey)
        data = self._json_body(request)
        count = await self.hub.user_connections(app, user)
        await self.hub.publish(app, [personal_channel(user)], "message", data)
        return _reply(request, {"count": count})

    @app.route("/<apikey>/users/<user>/", methods=["DELETE"])
    async def force_logout(self, request, apikey, user):
        app = self._app(request, apikey)
        await self.hub.logout(app, user)
        request.setResponseCode(204)
        return b""

    @app.handle_errors(_Refused)
    def _refused(self, request, failure):
        return _reply(request, {"message": failure.value.message}, failure.value.status)

    @app.handle_errors(PushdError)
    def _pushd_error(self, request, failure):
        return _reply(request, {"message": failure.value.message}, failure.value.status)

    @app.handle_errors(HTTPException)
    def _http_error(self, request, failure):
        return _reply(
            request,
            {"message": failure.value.description or "not found"},
            failure.value.code or 404,
        )

    @app.handle_errors(Exception)
    def _internal(self, request, failure):
        self._log.failure(
            "Thunderpush API request {path} failed", failure, path=request.path
        )
        return _reply(request, {"message": "Internal server error."}, 500)
