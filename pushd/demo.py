"""The chat demo (``--demo``): a page at /demo/ built only on pushd.js.

It brings its own app, ``demo`` (client key ``demo``, a secret made up at
each start and never shown), so the token endpoint, which hands a user
token to whoever asks, can only ever vouch for users of the demo app: the
server's real apps, their users and channels are out of its reach.  That
endpoint is still not something a production server should offer, hence
off by default.

Channels the page uses (docs/demo.md):

* ``presence-demo-room``: who is online, typing indicators (client events);
* ``private-demo-chat``: chat lines as client events, kept (history on join);
* ``peer-demo-room:<a>&<b>``: private messages between two users, kept.
"""

from __future__ import annotations

import json
import os
import re
import secrets

from twisted.web.resource import Resource
from twisted.web.static import File

from pushd.api import error_response, json_response, read_body
from pushd.apps import App
from pushd.auth import channel_signature, make_user_token
from pushd.errors import Forbidden, InvalidField, InvalidJSON, PushdError
from pushd.history import HistoryRule, Retention

DEMO_APP_ID = "demo"
DEMO_KEY = "demo"
TOKEN_TTL = 12 * 3600
MAX_NAME = 32
# Channels the demo signs for: nothing outside its own room.
_SIGNED = re.compile(r"(presence-demo-room|private-demo-chat)")
DEMO_HISTORY = (
    HistoryRule("private-demo-*", Retention(100, 3600.0)),
    HistoryRule("peer-demo-*", Retention(100, 3600.0)),
)
STATIC = os.path.join(os.path.dirname(__file__), "static", "demo")


def demo_app() -> App:
    """The demo's app: client events on, a fresh secret each start."""
    return App(DEMO_APP_ID, DEMO_KEY, secrets.token_urlsafe(32), client_events=True)


def user_id_for(name: str) -> str:
    """A user id from a display name, with a random tail so two people (or
    two windows) with the same name are two users."""
    slug = re.sub(r"[^A-Za-z0-9_\-]+", "-", name).strip("-").lower()[:MAX_NAME]
    return "%s-%s" % (slug or "guest", secrets.token_hex(2))


def _json_body(request) -> dict:
    try:
        body = json.loads(read_body(request) or b"null")
    except ValueError:
        raise InvalidJSON("the body is not JSON") from None
    if not isinstance(body, dict):
        raise InvalidField("the body must be a JSON object")
    return body


class _TokenEndpoint(Resource):
    """``POST /demo/token {"name"}`` -> ``{"key", "token", "user_id"}``."""

    isLeaf = True

    def __init__(self, app: App) -> None:
        super().__init__()
        self._app = app

    def render_POST(self, request):
        try:
            name = _json_body(request).get("name")
            if not isinstance(name, str) or not 1 <= len(name.strip()) <= MAX_NAME:
                raise InvalidField("name must be 1-%d characters" % MAX_NAME)
        except PushdError as e:
            return error_response(request, e)
        name = name.strip()
        user_id = user_id_for(name)
        token = make_user_token(self._app.secret, user_id, {"name": name}, TOKEN_TTL)
        return json_response(
            request, 200, {"key": DEMO_KEY, "token": token, "user_id": user_id}
        )


class _AuthEndpoint(Resource):
    """``POST /demo/auth {"connection_id", "channel"}`` -> ``{"auth"}``, the
    answer pushd.js expects from an app's auth endpoint; demo channels only."""

    isLeaf = True

    def __init__(self, app: App) -> None:
        super().__init__()
        self._app = app

    def render_POST(self, request):
        try:
            body = _json_body(request)
            connection_id, channel = body.get("connection_id"), body.get("channel")
            if not isinstance(connection_id, str) or not isinstance(channel, str):
                raise InvalidField("connection_id and channel are strings")
            if not _SIGNED.fullmatch(channel):
                raise Forbidden("the demo signs for its own channels only")
        except PushdError as e:
            return error_response(request, e)
        auth = channel_signature(self._app.secret, connection_id, channel, None)
        return json_response(request, 200, {"auth": auth})


def demo_resource(hub) -> Resource:
    """/demo/: the page and its files, plus the token and auth endpoints."""
    app = hub.apps.by_id(DEMO_APP_ID)
    root = File(STATIC, defaultType="text/plain")
    root.indexNames = ["index.html"]
    root.putChild(b"token", _TokenEndpoint(app))
    root.putChild(b"auth", _AuthEndpoint(app))
    return root
