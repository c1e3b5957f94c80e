"""A small synchronous publishing client for app backends (Django, Flask, scripts).

Standard library only, so it can be vendored into any backend::

    from pushd.client import PushClient
    push = PushClient("http://127.0.0.1:8000", api_secret="...")
    push.publish("news", "headline", {"title": "hello"})

Errors from pushd raise ``PushError`` with the HTTP status and pushd's error
code, so callers can tell a bad channel name (400) from an outage (503).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote


class PushError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__("%s %s: %s" % (status, code, message))
        self.status, self.code, self.message = status, code, message


class PushClient:
    def __init__(self, url: str, api_secret: str, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self._secret = api_secret
        self._timeout = timeout

    def publish(self, channel: str, event: str, data: Any) -> str:
        """Publish to one channel; returns the message id."""
        body = {"event": event, "data": data}
        return self._call("POST", "/api/channels/%s/messages" % quote(channel, safe=""),
                          body)["id"]

    def publish_many(self, channels: list[str], event: str, data: Any) -> str:
        """Publish one message to several channels; returns its id."""
        return self._call("POST", "/api/messages",
                          {"channels": channels, "event": event, "data": data})["id"]

    def channels(self) -> dict[str, int]:
        """Occupied channels and their subscriber counts."""
        reply = self._call("GET", "/api/channels")
        return {name: info["subscribers"] for name, info in reply["channels"].items()}

    def channel(self, channel: str) -> dict:
        return self._call("GET", "/api/channels/%s" % quote(channel, safe=""))

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method, headers={
            "Authorization": "Bearer " + self._secret,
            "Content-Type": "application/json",
        })
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
