"""``/api``'s front door: the hot publish route without Klein's layers.

``POST /api/channels/{channel}/messages`` is what backends call once per
message, so its cost per request caps chat-like traffic (one publish per
delivery).  Profiled (bench/README.md), routing it through two Klein apps
(werkzeug URL matching, ``maybeDeferred`` chains, a request adapter) cost
more than the publish itself.  This resource recognises that one route
from the already-split path and calls the same NativeAPI code Klein would,
answering in the same reactor turn when the backend publishes at once.
Every other request, and any path this fast check is unsure about
(percent-encoded or non-ASCII channel names), goes to the Klein apps
unchanged, so errors and behaviour stay those of docs/api.md.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from pushd.api import error_response, json_response
from pushd.api.native import NativeAPI
from pushd.errors import PushdError


class APIFront(Resource):
    """Serves the publish route itself, hands everything else to ``rest``."""

    isLeaf = True
    _log = Logger()

    def __init__(self, native: NativeAPI, rest: Any, publisher: Any = None) -> None:
        super().__init__()
        self._native = native
        self._rest = rest
        # GET /api/publish: the publisher WebSocket (pushd.transports.publisher)
        self._publisher = publisher
        # The routes served are exactly the Klein apps' (the publish route
        # is one of them): whoever lists routes (tests/test_openapi.py)
        # reads them there.
        self._app = rest._app

    def render(self, request):
        channel = _publish_channel(request)
        if channel is None:
            if request.postpath == [b"publish"] and self._publisher is not None:
                return self._publisher.render(request)
            return self._rest.render(request)
        try:
            d = Deferred.fromCoroutine(self._native.publish_to(request, channel))
        except Exception:  # raised before the coroutine's first await
            d = Deferred()
            d.errback(Failure())
        done: list = []
        d.addCallbacks(done.append, lambda f: done.append(self._failed(request, f)))
        if done:  # published at once (memory backend, or a refusal)
            return done[0]
        d.addCallback(lambda _: self._write(request, done[0]))
        return NOT_DONE_YET

    def _failed(self, request, failure: Failure) -> bytes:
        return failure_response(request, failure, self._log)

    @staticmethod
    def _write(request, body: bytes) -> None:
        if request.finished or request.channel is None:
            return  # the client left while it was published
        request.write(body)
        request.finish()


def failure_response(request, failure: Failure, log: Logger) -> bytes:
    """The answer to a route that failed, as the Klein apps' error handlers
    give it: a PushdError's status and JSON, anything else logged and 500."""
    if isinstance(failure.value, PushdError):
        return error_response(request, failure.value)
    path = getattr(request, "path", None) or request.uri.partition(b"?")[0]
    log.failure("API request {path} failed", failure, path=path)
    return json_response(
        request,
        500,
        {"error": "internal_error", "message": "internal server error"},
    )


def _publish_channel(request) -> str | None:
    """The channel of a plain ``POST /api/channels/{channel}/messages``."""
    post = request.postpath
    if request.method != b"POST" or len(post) != 3:
        return None
    if post[0] != b"channels" or post[2] != b"messages" or not post[1]:
        return None
    raw = post[1]
    if b"%" in raw or not raw.isascii():
        return None  # let werkzeug decode it exactly as before
    return raw.decode("ascii")
