"""Signatures: user tokens, channel authorizations, signed REST requests.

Every check compares with ``hmac.compare_digest``.  What an app's backend
signs, and how, is documented in docs/protocol.md and docs/api.md; the
``pushd.client`` helpers produce exactly these.

* User token (browser -> pushd, vouched for by the app backend): either
  ``pushd1.<base64url(json {"sub", "info", "exp"})>.<hex hmac-sha256>`` or a
  JWT (HS256) with the same claims.  ``exp`` is required: tokens expire.
* Channel authorization (private-, presence-): hex HMAC-SHA256 of
  ``connection_id:channel`` (``:channel_data`` appended for presence).  It
  names one connection, which only lives as long as its socket, so it cannot
  be replayed elsewhere.
* Signed REST request: hex HMAC-SHA256 of
  ``METHOD\\nPATH?QUERY\\nTIMESTAMP\\nBODY``, refused outside a clock window and
  refused when seen before inside it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
import time
from typing import Any

import jwt

from pushd.errors import PushdError, Unauthorized

USER_ID_RE = re.compile(r"[A-Za-z0-9_\-=@,.;]{1,100}")


class InvalidToken(PushdError):
    code = "invalid_token"
    status = 401


class TokenExpired(InvalidToken):
    code = "token_expired"


def sign(secret: str, text: str | bytes) -> str:
    data = text.encode("utf-8") if isinstance(text, str) else text
    return hmac.new(secret.encode("utf-8"), data, hashlib.sha256).hexdigest()


def signature_matches(secret: str, text: str | bytes, given: object) -> bool:
    if not isinstance(given, str):
        return False
    return hmac.compare_digest(
        sign(secret, text).encode(), given.encode("utf-8", "replace")
    )


def validate_user_id(user_id: object) -> str:
    if not isinstance(user_id, str) or not USER_ID_RE.fullmatch(user_id):
        raise InvalidToken(
            "user id must be 1-100 characters of A-Z a-z 0-9 _ - = @ , . ;"
        )
    return user_id


# -- user tokens ------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def make_user_token(
    secret: str,
    user_id: str,
    info: Any = None,
    ttl: float = 3600,
    now: float | None = None,
) -> str:
    """What an app backend hands its logged-in browser (see pushd.client)."""
    claims = {"sub": user_id, "exp": int((time.time() if now is None else now) + ttl)}
    if info is not None:
        claims["info"] = info
    payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
    return "pushd1.%s.%s" % (payload, sign(secret, payload))


def verify_user_token(
    secret: str, token: str, now: float | None = None
) -> tuple[str, Any]:
    """(user id, user info) from a valid token; InvalidToken / TokenExpired otherwise."""
    now = time.time() if now is None else now
    if token.startswith("pushd1."):
        parts = token.split(".")
        if len(parts) != 3 or not signature_matches(secret, parts[1], parts[2]):
            raise InvalidToken("user token signature is not valid")
        try:
            claims = json.loads(_unb64(parts[1]))
        except (ValueError, binascii.Error):
            raise InvalidToken("user token is malformed") from None
    else:
        try:
            claims = jwt.decode(
                token,
                secret,
                algorithms=["HS256"],
                options={"require": ["exp", "sub"], "verify_exp": False},
            )
        except jwt.InvalidTokenError as e:
            raise InvalidToken("user token is not a valid HS256 JWT: %s" % e) from None
    if not isinstance(claims, dict) or not isinstance(claims.get("exp"), (int, float)):
        raise InvalidToken("user token needs a numeric 'exp'")
    if claims["exp"] <= now:
        raise TokenExpired("user token expired")
    return validate_user_id(claims.get("sub")), claims.get("info")


# -- channel authorization --------------------------------------------------


def channel_auth_text(
    connection_id: str, channel: str, channel_data: str | None
) -> str:
    text = "%s:%s" % (connection_id, channel)
    return text + ":" + channel_data if channel_data else text


def channel_signature(
    secret: str, connection_id: str, channel: str, channel_data: str | None = None
) -> str:
    return sign(secret, channel_auth_text(connection_id, channel, channel_data))


# -- connection ids and SSE stream secrets -----------------------------------


def new_connection_id() -> str:
    """A server-issued connection id: 128 random bits, URL-safe, no ``:``
    (so ``id:channel`` signatures cannot be re-split)."""
    return secrets.token_urlsafe(16)


def stream_secret(app_secret: str, connection_id: str) -> str:
    """What authorizes ``POST /sse/frames`` for one SSE stream.

    An HMAC under a key derived from the app secret with a label no other
    signed text can equal (channel authorizations always contain ``:``,
    user tokens are base64url, signed requests hold three line breaks), so
    the app's own auth endpoint, which signs whatever id a browser sends
    it, can never be made to produce one.
    """
    return sign(sign(app_secret, "pushd/sse-stream-key"), connection_id)


# -- signed REST requests ---------------------------------------------------


def request_text(method: bytes, uri: bytes, timestamp: str, body: bytes) -> bytes:
    return b"\n".join([method.upper(), uri, timestamp.encode(), body])


_SECONDS_RE = re.compile(r"[0-9]{1,12}")
_FRACTION_RE = re.compile(r"[0-9]{1,12}(\.[0-9]{1,6})?")


def parse_timestamp(text: str, what: str, fraction: bool = False) -> float:
    """Unix seconds written as digits (with ``fraction``, optionally a dot
    and up to 6 more: pushd.client signs with microseconds).  Anything else
    (``nan``, ``inf``, ``1e9``, ``-5``, spaces) is refused, so no value can
    slip past the window check: ``float("nan")`` compares false with
    everything (issue 11)."""
    pattern = _FRACTION_RE if fraction else _SECONDS_RE
    if not pattern.fullmatch(text):
        raise Unauthorized(
            "%s must be Unix seconds as digits%s"
            % (what, " (up to 6 decimals)" if fraction else "")
        )
    return float(text)


def verify_signed_request(
    secret: str,
    method: bytes,
    uri: bytes,
    timestamp: str,
    signature: str,
    body: bytes,
    now: float,
    window: float,
) -> float:
    """Check a signed request's clock and signature; fire with how many
    seconds its signature must be remembered as used (until the request
    leaves the window).  The caller refuses a second use
    (``Hub.use_nonce``, shared by every node)."""
    sent_at = parse_timestamp(timestamp, "X-Pushd-Timestamp", fraction=True)
    if abs(now - sent_at) > window:
        raise Unauthorized(
            "request timestamp is outside the allowed window of %gs" % window
        )
    if not signature_matches(
        secret, request_text(method, uri, timestamp, body), signature
    ):
        raise Unauthorized("request signature does not match")
    return sent_at + window - now + 1
