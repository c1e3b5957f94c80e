"""``/api``: one Klein app that routes the native and compatibility APIs.

Each API is its own Klein app with its own error shapes (native JSON errors,
Thunderpush's ``{"message", "status"}``); this one mounts them with Klein
branch routes, which keep ``prepath``/``postpath`` right for the app below.
"""

from __future__ import annotations

import json
import os

from klein import Klein
from werkzeug.exceptions import HTTPException

from pushd.api import error_response, json_response
from pushd.api.native import NativeAPI
from pushd.api.thunderpush import ThunderpushAPI
from pushd.errors import NotFound
from pushd.hub import Hub

OPENAPI = os.path.join(os.path.dirname(os.path.dirname(__file__)), "openapi.json")


def openapi_document() -> dict:
    """The OpenAPI 3.1 document of the REST API, as kept in the repository."""
    with open(OPENAPI, encoding="utf-8") as f:
        return json.load(f)


class RestAPI:
    """``/api/1.0.0/...``: Thunderpush's API; everything else: pushd's own."""

    app = Klein()

    def __init__(self, hub: Hub) -> None:
        self.native_api = NativeAPI(hub)
        self._native = self.native_api.app.resource()
        self._thunderpush = ThunderpushAPI(hub).app.resource()

    @app.route("/openapi.json", methods=["GET"])
    def openapi(self, request):
        """The OpenAPI 3.1 document of this API (pushd/openapi.json)."""
        return json_response(request, 200, openapi_document())

    @app.route("/1.0.0/", branch=True)
    def thunderpush(self, request):
        return self._thunderpush

    @app.route("/", branch=True)
    def native(self, request):
        return self._native

    @app.handle_errors(HTTPException)
    def _unrouted(self, request, failure):
        """A path neither branch can take (werkzeug's ``path`` converter does
        not match control characters): JSON in the shape of the API the path
        names, never werkzeug's HTML page."""
        path = request.path.decode("utf-8", "replace")
        if path.startswith("/api/1.0.0/"):
            return json_response(request, 404, {"message": "Not found.", "status": 404})
        return error_response(request, NotFound("no such API route: %r" % path[:200]))
