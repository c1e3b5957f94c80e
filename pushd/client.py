"""A small synchronous publishing client for app backends (Django, Flask, scripts).

Standard library plus pushd.auth (PyJWT is only needed to *verify* JWTs)::

    from pushd.client import PushClient
    push = PushClient("http://127.0.0.1:8000", api_secret="...")
    push.publish("news", "headline", {"title": "hello"})

Errors from pushd raise ``PushError`` with the HTTP status and pushd's error
code, so callers can tell a bad channel name (400) from an outage (503).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote

from pushd.auth import channel_signature, make_user_token, request_text, sign


class PushError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__("%s %s: %s" % (status, code, message))
        self.status, self.code, self.message = status, code, message


class PushClient:
    """``key`` given: requests are signed (X-Pushd-Signature) instead of
    sending the secret, so a captured request cannot be replayed."""

    def __init__(
        self, url: str, api_secret: str, timeout: float = 10.0, key: str | None = None
    ) -> None:
        self.url = url.rstrip("/")
        self._secret = api_secret
        self._timeout = timeout
        self._key = key

    # -- what an app backend hands its browsers ----------------------------

    def user_token(self, user_id: str, info: Any = None, ttl: float = 3600) -> str:
        """A token for ws://HOST/ws?token=...: pushd then knows the user."""
        return make_user_token(self._secret, user_id, info, ttl)

    def channel_auth(
        self, connection_id: str, channel: str, channel_data: str | None = None
    ) -> dict:
        """The answer an app's auth endpoint gives for private-/presence- channels."""
        answer = {
            "auth": channel_signature(
                self._secret, connection_id, channel, channel_data
            )
        }
        if channel_data is not None:
            answer["channel_data"] = channel_data
        return answer

    # -- users ---------------------------------------------------------------

    def publish_to_user(self, user_id: str, event: str, data: Any) -> str:
        """Deliver to every connection of ``user_id``; returns the message id."""
        return self._call(
            "POST",
            "/api/users/%s/messages" % quote(user_id, safe=""),
            {"event": event, "data": data},
        )["id"]

    def user(self, user_id: str) -> dict:
        return self._call("GET", "/api/users/%s" % quote(user_id, safe=""))

    def users_online(self) -> int:
        return self._call("GET", "/api/users")["online"]

    def channel_users(self, channel: str) -> dict:
        reply = self._call("GET", "/api/channels/%s/users" % quote(channel, safe=""))
        return {u["user_id"]: u["user_info"] for u in reply["users"]}

    def logout(self, user_id: str) -> None:
        """Close every connection of ``user_id`` (close code 4010)."""
        self._call("DELETE", "/api/users/%s" % quote(user_id, safe=""))

    def publish(self, channel: str, event: str, data: Any) -> str:
        """Publish to one channel; returns the message id."""
        body = {"event": event, "data": data}
        return self._call(
            "POST", "/api/channels/%s/messages" % quote(channel, safe=""), body
        )["id"]

    def publish_many(self, channels: list[str], event: str, data: Any) -> str:
        """Publish one message to several channels; returns its id."""
        return self._call(
            "POST",
            "/api/messages",
            {"channels": channels, "event": event, "data": data},
        )["id"]

    def channels(self) -> dict[str, int]:
        """Occupied channels and their subscriber counts."""
        reply = self._call("GET", "/api/channels")
        return {name: info["subscribers"] for name, info in reply["channels"].items()}

    def channel(self, channel: str) -> dict:
        return self._call("GET", "/api/channels/%s" % quote(channel, safe=""))

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"}
        if self._key is None:
            headers["Authorization"] = "Bearer " + self._secret
        else:
            timestamp = "%d" % time.time()
            headers.update(
                {
                    "X-Pushd-Key": self._key,
                    "X-Pushd-Timestamp": timestamp,
                    "X-Pushd-Signature": sign(
                        self._secret,
                        request_text(
                            method.encode(), path.encode(), timestamp, data or b""
                        ),
                    ),
                }
            )
        request = urllib.request.Request(
            self.url + path, data=data, method=method, headers=headers
        )
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as e:
            try:
                error = json.loads(e.read())
                code, message = error.get("error", "error"), error.get("message", "")
            except ValueError:
                code, message = "error", e.reason
            raise PushError(e.code, code, message) from None
