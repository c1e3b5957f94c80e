"""Who is connecting: app key, user token and origin, for every transport.

WebSocket refuses with a close code, HTTP transports with a status; both get
them from here so the rules cannot drift apart.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Any
from urllib.parse import urlparse

from pushd.auth import InvalidToken, TokenExpired, verify_user_token
from pushd.errors import CloseCode, PushdError


class Refused(PushdError):
    """The connection is refused; ``close_code`` for WebSocket, ``status`` for HTTP."""

    def __init__(
        self,
        close_code: int,
        code: str,
        message: str,
        status: int,
        reason: str | None = None,
    ) -> None:
        super().__init__(message)
        self.close_code, self.code, self.status = close_code, code, status
        # What metrics count it as (pushd_connections_refused_total).
        self.reason = reason or code


def identify(hub: Any, key: str, token: str, origin: str | None) -> tuple:
    """(app, user id or None, user info) or raise Refused (counted by its
    code in pushd_connections_refused_total)."""
    try:
        return _identify(hub, key, token, origin)
    except Refused as e:
        hub.metrics.refused(e.reason)
        raise


def _identify(hub: Any, key: str, token: str, origin: str | None) -> tuple:
    if origin and not origin_allowed(origin, hub.config.allowed_origins):
        raise Refused(
            CloseCode.ORIGIN_NOT_ALLOWED, "forbidden", "origin not allowed", 403
        )
    app = hub.apps.by_key(key)
    if app is None:
        raise Refused(
            CloseCode.INVALID_CLIENT_KEY,
            "invalid_client_key",
            "invalid client key",
            401,
        )
    if not token:
        if not app.anonymous:
            raise Refused(
                CloseCode.TOKEN_REQUIRED,
                "token_required",
                "a user token is required",
                401,
            )
        return app, None, None
    try:
        user_id, info = verify_user_token(app.secret, token, hub.clock.seconds())
    except TokenExpired as e:
        raise Refused(CloseCode.TOKEN_EXPIRED, e.code, e.message, 401) from None
    except InvalidToken as e:
        raise Refused(CloseCode.INVALID_TOKEN, e.code, e.message, 401) from None
    return app, user_id, info


def origin_allowed(origin: str, patterns: tuple[str, ...]) -> bool:
    """Match ``scheme://host[:port]`` against patterns where ``*`` is any run."""
    if "*" in patterns:
        return True
    host = urlparse(origin).netloc or origin
    return any(fnmatchcase(origin, p) or fnmatchcase(host, p) for p in patterns)
