"""Messages and their once-per-publish encoding.

A ``Message`` is an immutable value that crosses every boundary (REST in,
backend, other nodes, transports out).  ``Outgoing`` wraps one message for
fan-out: the JSON frame is encoded once, and each transport caches its own
wire form (e.g. an Autobahn prepared WebSocket frame) on it, so delivering to
N subscribers costs one encoding, not N.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def encode_json(obj: Any) -> bytes:
    """Compact UTF-8 JSON, the one encoding pushd writes everywhere."""
    return _dumps(obj).encode("utf-8")


def new_message_id() -> str:
    """A unique, unguessable id; 16 hex digits is plenty for idempotency keys."""
    return secrets.token_hex(8)


# Events pushd itself sends on a channel; clients and publishers cannot use
# the prefix.  Sessions turn them into their own frame types.
SYSTEM_PREFIX = "pushd:"
MEMBER_ADDED = "pushd:member_added"
MEMBER_REMOVED = "pushd:member_removed"
LOGOUT = "pushd:logout"
CHANNEL_DELETED = "pushd:channel_deleted"


@dataclass(frozen=True, slots=True)
class Message:
    channel: str
    event: str
    data: Any
    id: str
    app: str = "default"
    exclude: str | None = None  # a connection id that must not receive it
    users: tuple[str, ...] | None = None  # only these users' connections receive it
    user_id: str | None = None  # the sender, for client events
    offset: int | None = None  # position in the channel's history, if it keeps one
    epoch: str | None = None  # changes whenever that history is lost
    time: float | None = None  # when it was published (HTTP Last-Modified)
    content_type: str | None = None  # as published over HTTP, if not JSON

    @property
    def key(self) -> str:
        """The channel as backends see it: unique across apps."""
        return "%s/%s" % (self.app, self.channel)

    def frame(self) -> dict:
        if self.event == MEMBER_ADDED:
            return {
                "type": "member_added",
                "channel": self.channel,
                "user_id": self.data["user_id"],
                "user_info": self.data.get("user_info"),
            }
        if self.event == CHANNEL_DELETED:
            return {"type": "channel_deleted", "channel": self.channel}
        if self.event == MEMBER_REMOVED:
            return {
                "type": "member_removed",
                "channel": self.channel,
                "user_id": self.data["user_id"],
            }
        frame = {
            "type": "message",
            "channel": self.channel,
            "event": self.event,
            "data": self.data,
            "id": self.id,
        }
        if self.user_id is not None:
            frame["user_id"] = self.user_id
        if self.offset is not None:
            frame["offset"] = self.offset
            frame["epoch"] = self.epoch
        if self.content_type is not None:
            frame["content_type"] = self.content_type
        return frame


class Outgoing:
    """One message on its way to many local subscribers."""

    __slots__ = ("_json", "_wire", "message")

    def __init__(self, message: Message) -> None:
        self.message = message
        self._json: bytes | None = None
        self._wire: dict[str, Any] = {}

    @property
    def json(self) -> bytes:
        if self._json is None:
            self._json = encode_json(self.message.frame())
        return self._json

    def wire(self, kind: str, make: Callable[[bytes], Any]) -> Any:
        """The transport-specific form, built by ``make(json)`` at most once."""
        try:
            return self._wire[kind]
        except KeyError:
            value = self._wire[kind] = make(self.json)
            return value
