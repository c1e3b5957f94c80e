"""Pusher's names and wire forms, shared by its WebSocket adapter, HTTP API
and webhooks (docs/pusher.md).

Pusher and pushd share one channel space; only a few names differ:

* a user's channel is ``personal-<user>`` in pushd and
  ``#server-to-user-<user>`` in Pusher;
* Pusher's event ``data`` is a string: a message whose data is a string is
  sent to Pusher clients as that string, any other JSON value as its compact
  JSON encoding (which pusher-js parses back).  Strings published through
  Pusher reach pushd's own clients as those same strings.
"""

from __future__ import annotations

import re
import secrets
from typing import Any

from pushd.channels import PERSONAL, PRESENCE
from pushd.errors import CloseCode
from pushd.message import (
    CHANNEL_DELETED,
    MEMBER_ADDED,
    MEMBER_REMOVED,
    Message,
    encode_json,
)

SERVER_TO_USER = "#server-to-user-"
ENCRYPTED = "private-encrypted-"
SOCKET_ID_RE = re.compile(r"[0-9]{1,20}\.[0-9]{1,20}")
RESERVED_EVENT_PREFIXES = ("pusher:", "pusher_internal:")
# Close codes of the Pusher protocol: 4000-4099 do not reconnect, 4100-4199
# reconnect after a backoff, 4200-4299 reconnect now, 4300-4399 other errors.
APP_NOT_FOUND = 4001
UNSUPPORTED_PROTOCOL = 4007
NO_PROTOCOL = 4008
UNAUTHORIZED = 4009
OVER_CAPACITY = 4100
RECONNECT = 4200
CLIENT_EVENT_RATE_LIMITED = 4301
RATE_LIMITED = 4302

# pushd's close codes as Pusher clients understand them.
CLOSE_CODES = {
    CloseCode.INVALID_CLIENT_KEY: APP_NOT_FOUND,
    CloseCode.INVALID_TOKEN: UNAUTHORIZED,
    CloseCode.ORIGIN_NOT_ALLOWED: UNAUTHORIZED,
    CloseCode.TOKEN_EXPIRED: UNAUTHORIZED,
    CloseCode.TOKEN_REQUIRED: UNAUTHORIZED,
    CloseCode.LOGGED_OUT: UNAUTHORIZED,
    CloseCode.RATE_LIMITED: RATE_LIMITED,
    CloseCode.SLOW_CONSUMER: OVER_CAPACITY,
    CloseCode.GOING_AWAY: RECONNECT,
    CloseCode.INTERNAL_ERROR: RECONNECT,
}


def new_socket_id() -> str:
    """Pusher's ``\\d+.\\d+`` form; 60 random bits, unique across nodes."""
    return "%d.%d" % (secrets.randbits(30) + 1, secrets.randbits(30) + 1)


def to_pushd_channel(name: str) -> str:
    if name.startswith(SERVER_TO_USER):
        return PERSONAL + name[len(SERVER_TO_USER) :]
    return name


def to_pusher_channel(name: str) -> str:
    if name.startswith(PERSONAL):
        return SERVER_TO_USER + name[len(PERSONAL) :]
    return name


def data_string(data: Any) -> str:
    """Pusher's data: strings as they are, anything else as JSON."""
    return data if isinstance(data, str) else encode_json(data).decode("utf-8")


def message_frame(message: Message) -> dict:
    """One published message as a Pusher event frame.

    Messages of channels with history carry their position (``offset``,
    ``epoch``): pushd's recovery extension, which pusher-js ignores.
    """
    channel = to_pusher_channel(message.channel)
    event = message.event
    if event == MEMBER_ADDED:
        return {
            "event": "pusher_internal:member_added",
            "channel": channel,
            "data": data_string(
                {
                    "user_id": message.data["user_id"],
                    "user_info": message.data.get("user_info"),
                }
            ),
        }
    if event == MEMBER_REMOVED:
        return {
            "event": "pusher_internal:member_removed",
            "channel": channel,
            "data": data_string({"user_id": message.data["user_id"]}),
        }
    if event == CHANNEL_DELETED:
        return {"event": "pushd:channel_deleted", "channel": channel, "data": "{}"}
    frame: dict[str, Any] = {
        "event": event,
        "channel": channel,
        "data": data_string(message.data),
    }
    if message.user_id is not None and message.channel.startswith(PRESENCE):
        frame["user_id"] = message.user_id
    if message.offset is not None:
        frame["offset"] = message.offset
        frame["epoch"] = message.epoch
    return frame


def presence_data(members: list) -> dict:
    """The ``presence`` object of ``subscription_succeeded`` from pushd's
    member list ``[{"user_id", "user_info"}]``."""
    ids = [m["user_id"] for m in members]
    return {
        "presence": {
            "ids": ids,
            "hash": {m["user_id"]: m["user_info"] for m in members},
            "count": len(ids),
        }
    }


def user_auth_text(socket_id: str, user_data: str) -> str:
    """What an app signs to authenticate a user (``pusher:signin``)."""
    return "%s::user::%s" % (socket_id, user_data)


def pusher_webhook_event(name: str, fields: dict) -> dict:
    """One webhook event as Pusher sends it (``events`` of the body)."""
    event: dict[str, Any] = {
        "name": name,
        "channel": to_pusher_channel(fields["channel"]),
    }
    if name == "client_event":
        event["event"] = fields["event"]
        event["data"] = data_string(fields.get("data"))
        if fields.get("connection_id") is not None:
            event["socket_id"] = fields["connection_id"]
        if fields.get("user_id") is not None and fields["channel"].startswith(PRESENCE):
            event["user_id"] = fields["user_id"]
    elif "user_id" in fields:
        event["user_id"] = fields["user_id"]
    return event


def pusher_webhook_body(events: list, time_ms: int) -> bytes:
    """Pusher's webhook body; X-Pusher-Signature is its HMAC with the secret."""
    return encode_json({"time_ms": time_ms, "events": events})
