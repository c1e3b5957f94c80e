"""``/api``: one Klein app that routes the native and compatibility APIs.

Each API is its own Klein app with its own error shapes (native JSON errors,
Thunderpush's ``{"message", "status"}``); this one mounts them with Klein
branch routes, which keep ``prepath``/``postpath`` right for the app below.
"""

from __future__ import annotations

from klein import Klein

from pushd.api.native import NativeAPI
from pushd.api.thunderpush import ThunderpushAPI
from pushd.hub import Hub


class RestAPI:
    """``/api/1.0.0/...``: Thunderpush's API; everything else: pushd's own."""

    app = Klein()

    def __init__(self, hub: Hub) -> None:
        self._native = NativeAPI(hub).app.resource()
        self._thunderpush = ThunderpushAPI(hub).app.resource()

    @app.route("/1.0.0/", branch=True)
    def thunderpush(self, request):
        return self._thunderpush

    @app.route("/", branch=True)
    def native(self, request):
        return self._native
