"""REST API plumbing shared by the native and compatibility routes."""

from __future__ import annotations

from typing import Any

from twisted.web.iweb import IRequest

from pushd.apps import App, AppRegistry
from pushd.auth import verify_signed_request
from pushd.errors import BodyTooLarge, Forbidden, InvalidJSON, PushdError, Unauthorized
from pushd.inputs import loads
from pushd.message import encode_json


def json_response(request: IRequest, status: int, body: Any) -> bytes:
    payload = encode_json(body)
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    # Without it, answers from async routes go out chunked.
    request.setHeader(b"content-length", b"%d" % len(payload))
    return payload


def error_response(request: IRequest, error: PushdError) -> bytes:
    return json_response(request, error.status, error.as_json())


def read_body(request: IRequest) -> bytes:
    """The raw request body (read once, kept for signature checks).

    ``request`` is a ``pushd.web.PushRequest`` (``max_body``, ``raw_body``)."""
    req: Any = request
    if getattr(request, "body_too_large", False):
        raise BodyTooLarge("body exceeds %d bytes" % req.max_body)
    raw = getattr(request, "raw_body", None)
    if raw is None:
        raw = request.content.read() if request.content is not None else b""
        req.raw_body = raw
    return raw


def read_json(
    request: IRequest, max_depth: int, depth_checked_later: bool = False
) -> Any:
    """The request body as JSON (strictly: see pushd.inputs); BodyTooLarge /
    InvalidJSON say what is wrong."""
    raw = read_body(request)
    if not raw.strip():
        raise InvalidJSON("request body is empty; expected JSON")
    try:
        return loads(raw, max_depth, depth_checked_later)
    except InvalidJSON as e:
        raise InvalidJSON("request body is not valid JSON: %s" % e.message) from None


async def authenticate(request: IRequest, hub: Any) -> App:
    """The app a REST request acts for.

    Either ``Authorization: Bearer <app secret>``, or a signed request:
    ``X-Pushd-Key``, ``X-Pushd-Timestamp`` and ``X-Pushd-Signature`` (see
    pushd.auth), which never sends the secret and cannot be replayed: its
    signature is single use on every node (``Hub.use_nonce``).
    """
    apps: AppRegistry = hub.apps
    signature = request.getHeader(b"x-pushd-signature")
    if signature is not None:
        key = (request.getHeader(b"x-pushd-key") or b"").decode("utf-8", "replace")
        timestamp = (request.getHeader(b"x-pushd-timestamp") or b"").decode(
            "ascii", "replace"
        )
        # Without a key (a single-app server has none), the keyless app:
        # the signature still proves its secret.
        app = apps.by_key(key)
        if app is None:
            raise Unauthorized("X-Pushd-Key does not name an app")
        given = signature.decode("ascii", "replace")
        remember = verify_signed_request(
            app.secret,
            request.method,
            request.uri,
            timestamp,
            given,
            read_body(request),
            hub.clock.seconds(),
            hub.config.signature_window,
        )
        if not await hub.use_nonce("sig/%s/%s" % (app.id, given), remember):
            raise Unauthorized("this signed request was already used (replay refused)")
        return app
    header = request.getHeader(b"authorization")
    if not header:
        raise Unauthorized(
            "missing 'Authorization: Bearer <api secret>' header or X-Pushd-Signature"
        )
    scheme, _, token = header.partition(b" ")
    if scheme.lower() != b"bearer" or not token.strip():
        raise Unauthorized("Authorization header must be 'Bearer <api secret>'")
    app = apps.by_secret(token.strip())
    if app is None:
        raise Forbidden("wrong API secret")
    return app
