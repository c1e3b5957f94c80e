"""Publishing clients for app backends: the whole REST API (docs/api.md).

``PushClient`` is synchronous, standard library only (Django, Flask,
scripts)::

    from pushd.client import PushClient
    push = PushClient("http://127.0.0.1:8000", api_secret="...")
    push.publish("news", "headline", {"title": "hello"})

``pushd.txclient.TxPushClient`` has the same methods returning Deferreds, for
Twisted programs (``pip install pushd[treq]``); ``pushd.subscriber`` listens
to channels.  Both share this module's request building, so the two can
never disagree on a path or a field.

Every failure raises ``PushError``: an HTTP error from pushd with its status
and pushd's error code, so a caller can tell a bad channel name (400) from
an outage (503), and a failure to reach pushd at all (refused, timed out,
unreachable) with status 0 and code ``connection_error``.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlencode

from pushd.auth import channel_signature, make_user_token, request_text, sign

CONNECTION_ERROR = "connection_error"


class PushError(Exception):
    """pushd refused or could not be reached: ``status`` (0 when no answer
    came), pushd's error ``code`` and its ``message``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__("%s %s: %s" % (status, code, message))
        self.status, self.code, self.message = status, code, message


def _q(part: str) -> str:
    return quote(part, safe="")


def error_from_body(status: int, body: bytes, reason: str = "") -> PushError:
    """The PushError for an HTTP error answer (JSON body, or not)."""
    try:
        error = json.loads(body)
        return PushError(status, error.get("error", "error"), error.get("message", ""))
    except (ValueError, AttributeError):
        return PushError(
            status, "error", reason or body[:200].decode("utf-8", "replace")
        )


class _Requests:
    """What each API call sends and how its answer is read; ``_call`` (sync
    or Deferred) is the transport's."""

    def __init__(
        self,
        url: str,
        api_secret: str,
        timeout: float = 10.0,
        key: str | None = None,
        signed: bool = False,
    ) -> None:
        self.url = url.rstrip("/")
        self._secret = api_secret
        self._timeout = timeout
        self._key = key
        # Signed requests never send the secret; a single-app server with no
        # client key takes them without X-Pushd-Key (docs/api.md).
        self._signed = signed or key is not None
        self._last_time = 0.0

    def _call(
        self, method: str, path: str, body: Any = None, read: Callable = lambda r: r
    ) -> Any:
        raise NotImplementedError

    def _headers(self, method: str, path: str, data: bytes | None) -> dict:
        headers = {"Content-Type": "application/json"}
        if not self._signed:
            headers["Authorization"] = "Bearer " + self._secret
            return headers
        # Microseconds, strictly increasing: two identical requests in one
        # second must not look like a replay (pushd refuses a reused signature).
        self._last_time = max(time.time(), self._last_time + 1e-6)
        timestamp = "%.6f" % self._last_time
        if self._key is not None:
            headers["X-Pushd-Key"] = self._key
        headers["X-Pushd-Timestamp"] = timestamp
        headers["X-Pushd-Signature"] = sign(
            self._secret,
            request_text(method.encode(), path.encode(), timestamp, data or b""),
        )
        return headers

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

    # -- publishing ------------------------------------------------------

    def publish(
        self,
        channel: str,
        event: str,
        data: Any,
        exclude: str | None = None,
        users: list[str] | None = None,
    ) -> Any:
        """Publish to one channel; the message id.  ``exclude``: a connection
        id that must not get it; ``users``: only these users' connections."""
        return self._call(
            "POST",
            "/api/channels/%s/messages" % _q(channel),
            _message(event, data, exclude, users),
            _id,
        )

    def publish_many(
        self,
        channels: list[str],
        event: str,
        data: Any,
        exclude: str | None = None,
        users: list[str] | None = None,
    ) -> Any:
        """Publish one message to several channels; its id."""
        body = dict(_message(event, data, exclude, users), channels=channels)
        return self._call("POST", "/api/messages", body, _id)

    def batch(self, messages: list[dict]) -> Any:
        """Several messages (``{"channel", "event", "data"}`` each, optional
        ``exclude``/``users``), published in order in one request; one
        result per message, each ``{"status": 202, "id", "channel"}`` or
        ``{"status": 4xx, "error", "message"}``: one refused message does
        not cost the others, so check each (a malformed request as a whole
        raises PushError)."""
        return self._call(
            "POST", "/api/batch", {"batch": list(messages)}, lambda r: r["batch"]
        )

    def publish_to_user(self, user_id: str, event: str, data: Any) -> Any:
        """Deliver to every connection of ``user_id``; the message id."""
        return self._call(
            "POST",
            "/api/users/%s/messages" % _q(user_id),
            {"event": event, "data": data},
            _id,
        )

    # -- channels ----------------------------------------------------------

    def channels(self) -> Any:
        """Occupied channels and their subscriber counts."""
        return self._call(
            "GET",
            "/api/channels",
            read=lambda r: {n: i["subscribers"] for n, i in r["channels"].items()},
        )

    def channel(self, channel: str) -> Any:
        """``{"channel", "occupied", "subscribers"}``."""
        return self._call("GET", "/api/channels/%s" % _q(channel))

    def history(
        self,
        channel: str,
        since: int | None = None,
        epoch: str | None = None,
        limit: int | None = None,
    ) -> Any:
        """``{"channel", "epoch", "offset", "recovered", "messages"}``: the
        kept messages (after ``since``/``epoch`` when given), oldest first."""
        query = {
            k: v
            for k, v in (("since", since), ("epoch", epoch), ("limit", limit))
            if v is not None
        }
        path = "/api/channels/%s/history" % _q(channel)
        return self._call("GET", path + ("?" + urlencode(query) if query else ""))

    def channel_users(self, channel: str) -> Any:
        """Presence members: ``{user_id: user_info}``."""
        return self._call(
            "GET",
            "/api/channels/%s/users" % _q(channel),
            read=lambda r: {u["user_id"]: u["user_info"] for u in r["users"]},
        )

    # -- users ---------------------------------------------------------------

    def user(self, user_id: str) -> Any:
        """``{"user_id", "online", "connections"}``."""
        return self._call("GET", "/api/users/%s" % _q(user_id))

    def users_online(self) -> Any:
        """How many distinct users are connected."""
        return self._call("GET", "/api/users", read=lambda r: r["online"])

    def logout(self, user_id: str) -> Any:
        """Close every connection of ``user_id`` (close code 4010)."""
        return self._call("DELETE", "/api/users/%s" % _q(user_id), read=_none)

    def keep_channel(self, user_id: str, channel: str) -> Any:
        """Keep ``channel`` for the user, online or not (offline delivery)."""
        path = "/api/users/%s/channels/%s" % (_q(user_id), _q(channel))
        return self._call("PUT", path, read=_none)

    def unkeep_channel(self, user_id: str, channel: str) -> Any:
        """Stop keeping ``channel`` for the user."""
        path = "/api/users/%s/channels/%s" % (_q(user_id), _q(channel))
        return self._call("DELETE", path, read=_none)

    def kept_channels(self, user_id: str) -> Any:
        """The channels kept for the user."""
        return self._call(
            "GET",
            "/api/users/%s/channels" % _q(user_id),
            read=lambda r: r["channels"],
        )


def _message(event: str, data: Any, exclude: str | None, users: Any) -> dict:
    body: dict = {"event": event, "data": data}
    if exclude is not None:
        body["exclude"] = exclude
    if users is not None:
        body["users"] = list(users)
    return body


def _id(reply: dict) -> str:
    return reply["id"]


def _none(reply: Any) -> None:
    return None


class PushClient(_Requests):
    """Synchronous client (urllib).  ``key`` given, or ``signed=True``:
    requests are signed (X-Pushd-Signature) instead of sending the secret,
    so a captured request cannot be replayed."""

    def _call(
        self, method: str, path: str, body: Any = None, read: Callable = lambda r: r
    ) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers=self._headers(method, path, data),
        )
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:
                return read(json.loads(response.read() or b"null"))
        except urllib.error.HTTPError as e:
            raise error_from_body(e.code, e.read(), str(e.reason)) from None
        except (urllib.error.URLError, OSError, ValueError) as e:
            # Refused, unreachable, timed out, cut off, or not pushd at all.
            reason = getattr(e, "reason", e)
            raise PushError(
                0, CONNECTION_ERROR, "cannot reach %s: %s" % (self.url, reason)
            ) from None
