"""Messages, their one storage codec, and their once-per-publish encoding.

A ``Message`` is an immutable value that crosses every boundary (REST in,
backend, other nodes, transports out).  ``Outgoing`` wraps one message for
fan-out: the JSON frame is encoded once, and each transport caches its own
wire form (e.g. an Autobahn prepared WebSocket frame) on it, so delivering to
N subscribers costs one encoding, not N.

``encode_message``/``decode_message`` are the one way a message becomes bytes
between nodes and on disk (Redis pub/sub, streams and inboxes, SQLite, any
third-party backend); a backend that keeps objects in memory does not use
them.  The form is a JSON object of named fields with a version ``v``, so a
new field is added here once and older readers can tell what they cannot
read.  See docs/plugins.md ("Message codec") for the format and upgrades.
"""

from __future__ import annotations

import json
import json.encoder
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from pushd.errors import CodecError

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def _unencodable(obj: Any) -> Any:
    raise TypeError("Object of type %s is not JSON serializable" % type(obj).__name__)


# CPython's C encoder; typeshed does not declare it, and other Pythons may
# lack it (then json.dumps does the work).
c_make_encoder = getattr(json.encoder, "c_make_encoder", None)
encode_basestring = json.encoder.encode_basestring
# What JSONEncoder.encode builds on every call (its C encoder), built once:
# half the cost of encoding a message frame, paid once per publish
# (bench/chat.py).  Same output; no circular-reference check (nothing
# pushd encodes comes from anywhere but JSON and its own dicts).
_c_encode = (
    c_make_encoder(
        None, _unencodable, encode_basestring, None, ":", ",", False, False, True
    )
    if c_make_encoder is not None
    else None
)


def encode_json(obj: Any) -> bytes:
    """Compact UTF-8 JSON, the one encoding pushd writes everywhere."""
    if _c_encode is None or isinstance(obj, str):  # pragma: no branch
        return _dumps(obj).encode("utf-8")
    return "".join(_c_encode(obj, 0)).encode("utf-8")


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


# Not frozen: a frozen dataclass sets each of its 12 fields through
# object.__setattr__, 2.5 us per message against 0.5 us (a message is built
# once per publish per node, and per message in a batch: bench/chat.py).
# It is still a value: nothing assigns to a message's fields (changes make
# a new one with dataclasses.replace), and it hashes as a frozen one did.
@dataclass(slots=True, unsafe_hash=True)
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
    # ``key``, made at its first use: a publish looks it up four times (the
    # backend's subscribers, the hub's channel, history, offline store), and
    # a string made once also hashes once (bench/chat.py).  Not a field of
    # the value: not compared, not copied by ``replace``.
    _key: str | None = field(
        default=None, init=False, repr=False, compare=False, hash=False
    )

    @property
    def key(self) -> str:
        """The channel as backends see it: unique across apps."""
        key = self._key
        if key is None:
            key = self._key = self.app + "/" + self.channel
        return key

    def reaches(self, connection_id: str, user_id: str | None) -> bool:
        """Whether this connection may get the message: ``exclude`` and
        ``users`` apply to replayed history exactly as to live delivery
        (``Hub._on_message`` inlines the same test on the fan-out path)."""
        if self.exclude is not None and connection_id == self.exclude:
            return False
        return self.users is None or user_id in self.users

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


def frame_json(message: Message) -> bytes:
    """``encode_json(message.frame())``, the same bytes.  A plain message
    (most of them) is written from its parts without the frame's dict:
    half the cost, paid once per publish (bench/chat.py)."""
    if (
        _c_encode is None
        or message.user_id is not None
        or message.offset is not None
        or message.content_type is not None
        or message.event.startswith(SYSTEM_PREFIX)
    ):
        return encode_json(message.frame())
    return (
        '{"type":"message","channel":%s,"event":%s,"data":%s,"id":%s}'
        % (
            encode_basestring(message.channel),
            encode_basestring(message.event),
            "".join(_c_encode(message.data, 0)),
            encode_basestring(message.id),
        )
    ).encode("utf-8")


def channel_key(app: str, channel: str) -> str:
    """``app/channel``: how backends and the hub name a channel, unique
    across apps (app ids cannot contain ``/``)."""
    return app + "/" + channel


def split_key(key: str) -> tuple[str, str]:
    """The (app, channel) a ``channel_key`` was made from."""
    app, _, channel = key.partition("/")
    return app, channel


# -- the storage codec -----------------------------------------------------------

CODEC_VERSION = 1
# Optional fields, written only when set (None is the default when reading).
_OPTIONAL = ("exclude", "user_id", "offset", "epoch", "time", "content_type")


def encode_message(message: Message) -> str:
    """``message`` as a versioned JSON object of named fields (every field).

    Always starts with ``{"v":``: Redis scripts add the position of a kept
    message by writing ``{"offset":N,"epoch":"E",`` in front of the rest.
    """
    obj: dict[str, Any] = {
        "v": CODEC_VERSION,
        "app": message.app,
        "channel": message.channel,
        "event": message.event,
        "id": message.id,
    }
    if message.data is not None:
        obj["data"] = message.data
    if message.users is not None:
        obj["users"] = list(message.users)
    for name in _OPTIONAL:
        value = getattr(message, name)
        if value is not None:
            obj[name] = value
    if _c_encode is None:  # pragma: no cover
        return _dumps(obj)
    return "".join(_c_encode(obj, 0))  # as encode_json: once per publish


def decode_message(payload: str | bytes, key: str | None = None) -> Message:
    """The message ``encode_message`` wrote, or one in a format pushd wrote
    before the codec had a version (they name no channel: ``key`` says
    which).  Raises CodecError, saying why, for anything else, including
    messages from a newer pushd."""
    if isinstance(payload, bytes):
        payload = payload.decode("utf-8", "replace")
    try:
        if payload[:1] == "{":
            return _decode_v1(json.loads(payload))
        return _decode_legacy(payload, key)
    except CodecError:
        raise
    except (ValueError, TypeError, KeyError, IndexError) as e:
        raise CodecError(
            "malformed stored message (%s): %.80r" % (e, payload)
        ) from None


def _decode_v1(obj: dict) -> Message:
    # Runs once per message per node (not per subscriber): kept flat.
    get = obj.get
    version = get("v")
    if version != CODEC_VERSION:
        raise CodecError(
            "message written with codec version %r; this pushd reads version %d "
            "(upgrade every node sharing the store)" % (version, CODEC_VERSION)
        )
    channel, event, message_id, app = (
        get("channel"),
        get("event"),
        get("id"),
        get("app"),
    )
    if not (
        type(channel) is str
        and type(event) is str
        and type(message_id) is str
        and type(app) is str
    ):
        missing = [
            n for n in ("app", "channel", "event", "id") if type(get(n)) is not str
        ]
        raise CodecError("stored message has no %r" % missing[0])
    users = get("users")
    return Message(
        channel,
        event,
        get("data"),
        message_id,
        app,
        get("exclude"),
        tuple(users) if users is not None else None,
        get("user_id"),
        get("offset"),
        get("epoch"),
        get("time"),
        get("content_type"),
    )


def _decode_legacy(payload: str, key: str | None) -> Message:
    """The formats of pushd before codec version 1, all still read:

    * Redis pub/sub and streams: ``[event, data, id, exclude, users,
      user_id, time, content_type]``, on kept channels published as
      ``offset|epoch|<that list>``;
    * Redis offline inboxes: ``[channel, offset, epoch, "<that list>"]``;
    * SQLite history: ``[event, data, id, user_id, time, content_type]``.
    """
    if payload[:1].isdigit():
        offset, epoch, rest = payload.split("|", 2)
        message = decode_message(rest, key)
        return replace(message, offset=int(offset), epoch=epoch)
    items = json.loads(payload)
    if not isinstance(items, list):
        raise CodecError("not a stored message")
    if len(items) == 4 and isinstance(items[3], str):
        channel, offset, epoch, inner = items
        if key is None:
            raise CodecError("an old inbox entry needs its app")
        app = split_key(key)[0]
        message = decode_message(inner, channel_key(app, channel))
        return replace(message, offset=offset, epoch=epoch)
    if key is None:
        raise CodecError("a message in the unversioned format needs its channel")
    app, channel = split_key(key)
    if len(items) == 8:
        event, data, message_id, exclude, users, user_id, when, ctype = items
        return Message(
            channel,
            event,
            data,
            message_id,
            app,
            exclude,
            tuple(users) if users is not None else None,
            user_id,
            time=when,
            content_type=ctype,
        )
    if len(items) == 6:
        event, data, message_id, user_id, when, ctype = items
        return Message(
            channel,
            event,
            data,
            message_id,
            app,
            user_id=user_id,
            time=when,
            content_type=ctype,
        )
    raise CodecError("unknown stored message format (%d items)" % len(items))


class Outgoing:
    """One message on its way to many local subscribers."""

    __slots__ = ("_form", "_json", "_kind", "_wire", "message")

    def __init__(self, message: Message) -> None:
        self.message = message
        self._json: bytes | None = None
        # The first wire form built, and a dict only for the others: most
        # messages go out in one form, and with one subscriber per channel
        # (chat) an Outgoing per message is made for a single delivery.
        self._kind: str | None = None
        self._form: Any = None
        self._wire: dict[str, Any] | None = None

    @property
    def json(self) -> bytes:
        if self._json is None:
            self._json = frame_json(self.message)
        return self._json

    def wire(self, kind: str, make: Callable[[bytes], Any]) -> Any:
        """The transport-specific form, built by ``make(json)`` at most once."""
        if self._kind == kind:
            return self._form
        return self._build(kind, make, self.json)

    def wire_of(self, kind: str, make: Callable[[Message], Any]) -> Any:
        """Like ``wire``, but built from the message itself by
        ``make(message)``: for a protocol with frames of its own (Pusher),
        which need not pay for pushd's JSON frame."""
        if self._kind == kind:
            return self._form
        return self._build(kind, make, self.message)

    def _build(self, kind: str, make: Callable[[Any], Any], source: Any) -> Any:
        if self._kind is None:
            value = self._form = make(source)
            self._kind = kind
            return value
        wire = self._wire
        if wire is None:
            wire = self._wire = {}
        value = wire.get(kind)
        if value is None:
            value = wire[kind] = make(source)
        return value
