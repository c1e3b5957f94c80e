"""REST API plumbing shared by the native and compatibility routes."""

from __future__ import annotations

import hmac
import json
from typing import Any

from twisted.web.iweb import IRequest

from pushd.errors import BodyTooLarge, Forbidden, InvalidJSON, PushdError, Unauthorized
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


def read_json(request: IRequest) -> Any:
    """The request body as JSON; BodyTooLarge / InvalidJSON say what is wrong."""
    if getattr(request, "body_too_large", False):
        raise BodyTooLarge("body exceeds %d bytes" % request.max_body)
    raw = request.content.read() if request.content is not None else b""
    if not raw.strip():
        raise InvalidJSON("request body is empty; expected JSON")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidJSON("request body is not valid JSON: %s" % e) from None


def check_bearer(request: IRequest, secret: bytes) -> None:
    """Constant-time check of ``Authorization: Bearer <secret>``."""
    header = request.getHeader(b"authorization")
    if not header:
        raise Unauthorized("missing 'Authorization: Bearer <api secret>' header")
    scheme, _, token = header.partition(b" ")
    if scheme.lower() != b"bearer" or not token:
        raise Unauthorized("Authorization header must be 'Bearer <api secret>'")
    if not hmac.compare_digest(token.strip(), secret):
        raise Forbidden("wrong API secret")
