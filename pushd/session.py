"""One client's conversation with the hub, whatever the transport.

Sans-I/O: frames come in as bytes through ``receive``; frames go out through
the ``IConnection`` the transport gave us.  Frames are handled strictly in
order, even when one of them waits on the backend (a Redis subscribe), so a
client's ``subscribe`` then ``unsubscribe`` can never be reordered.
"""

from __future__ import annotations

import json
from collections import deque
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from pushd.channels import (
    PRESENCE,
    accepts_client_events,
    authorize_subscribe,
    personal_channel,
    validate_channel,
)
from pushd.config import Config
from pushd.errors import (
    CloseCode,
    Forbidden,
    InvalidField,
    InvalidFrame,
    InvalidJSON,
    MissingField,
    PushdError,
    RateLimited,
    TooManySubscriptions,
    UnknownType,
)
from pushd.inputs import loads
from pushd.interfaces import IConnection, IFeedConnection
from pushd.message import Outgoing, encode_json


class Session:
    _log = Logger()
    # One per connection, so no per-instance dictionary (bench/connections.py).
    __slots__ = (
        "__weakref__",
        "_busy",
        "_clock",
        "_config",
        "_pending",
        "_pending_bytes",
        "_refilled_at",
        "_refused",
        "_tokens",
        "app",
        "closed",
        "conn",
        "connection_id",
        "feed",
        "hub",
        "identities",
        "send_message",
        "subscriptions",
        "transport_name",
        "user_id",
        "user_info",
    )

    def __init__(
        self,
        hub,
        conn: IConnection,
        app,
        user_id: str | None,
        user_info: Any,
        config: Config,
        clock: Any,
    ) -> None:
        self.hub = hub
        self.conn = conn
        # For metrics and stats: ws, sse, pusher, relay.
        self.transport_name: str = getattr(conn, "transport_name", "other")
        # The hub reaches the client through its session; bound once, so
        # fan-out pays no extra call per delivery.
        self.send_message = conn.send_message
        # The connection again if it takes channel messages from feeds
        # shared by their subscribers (the hub's fan-out: one append).
        self.feed = conn if IFeedConnection.providedBy(conn) else None
        self.app = app
        self.user_id = user_id
        self.user_info = user_info
        self.connection_id: str = conn.connection_id
        self.subscriptions: set[str] = set()
        # channel -> (user id, user info) this session is a member as
        self.identities: dict[str, tuple[str, Any]] = {}
        self.closed = False
        self._config = config
        self._clock = clock
        # Frames waiting their turn while an earlier one waits on the
        # backend: raw bytes from our own protocol (parsed when their turn
        # comes: a 64 KB frame of nested lists parses to megabytes), frames
        # other adapters decoded; together at most max-pending-bytes.
        # Made when a frame first has to wait (most never do).
        self._pending: deque[tuple[bytes | dict, int]] | None = None
        self._pending_bytes = 0
        self._busy = False
        self._tokens = float(config.client_burst)
        self._refilled_at = clock.seconds()
        self._refused = 0

    # -- in -------------------------------------------------------------

    def receive(self, payload: bytes) -> None:
        """Take one frame from the client."""
        if self.closed:
            return
        if not self._take_token():
            return
        self._enqueue(payload, len(payload))

    def receive_frame(self, frame: dict) -> None:
        """Take one frame another protocol's adapter decoded (Pusher), with
        the same rate limit and ordering as ``receive``."""
        if self.admit():
            self._enqueue(frame, len(encode_json(frame)))

    def receive_admitted(self, frame: dict) -> None:
        """Take a frame ``admit`` already charged for (one an adapter held
        back, e.g. until Pusher's signin), in order with the rest."""
        if not self.closed:
            self._enqueue(frame, len(encode_json(frame)))

    def admit(self) -> bool:
        """Charge one frame against the client's rate limit; False: refused
        (the client was told, or disconnected).  For frames an adapter
        answers itself, so none escapes the limit."""
        return not self.closed and self._take_token()

    def _enqueue(self, item: bytes | dict, size: int) -> None:
        if self._busy and self._pending_bytes + size > self._config.max_pending_bytes:
            # The client sends faster than the backend answers: what waits
            # is bounded, so memory is too.
            self.send_error(
                RateLimited(
                    "more than %d bytes of frames waiting; frame dropped"
                    % self._config.max_pending_bytes
                ),
                {},
            )
            return
        if not self._busy:
            self._drain(item)
            return
        if self._pending is None:
            self._pending = deque()
        self._pending.append((item, size))
        self._pending_bytes += size

    def disconnect(self, code: int, reason: str) -> None:
        """Close the client's connection (``pushd.errors.CloseCode``); the
        transport then calls ``close``."""
        self.conn.close(code, reason)

    def close(self) -> None:
        """The transport is gone: leave every channel."""
        if not self.closed:
            self.closed = True
            self._pending = None
            self._pending_bytes = 0
            self.hub.drop_session(self)

    def _take_token(self) -> bool:
        """Token bucket: client-rate frames/s on average, client-burst at once.

        A refused frame gets an error frame; a client that keeps sending
        through a whole burst's worth of refusals is disconnected, since it is
        not reading them.
        """
        now = self._clock.seconds()
        config = self._config
        self._tokens = min(
            float(config.client_burst),
            self._tokens + (now - self._refilled_at) * config.client_rate,
        )
        self._refilled_at = now
        if self._tokens >= 1:
            self._tokens -= 1
            self._refused = 0
            return True
        self._refused += 1
        if self._refused > config.client_burst:
            self.conn.close(CloseCode.RATE_LIMITED, "rate limit exceeded")
        else:
            self.send_error(
                RateLimited(
                    "more than %g frames/s; frame dropped" % config.client_rate
                ),
                {},
            )
        return False

    def _parse(self, payload: bytes) -> dict:
        try:
            frame = loads(payload, self._config.max_json_depth)
        except InvalidJSON as e:
            raise InvalidJSON("frame is not valid JSON: %s" % e.message) from None
        if not isinstance(frame, dict) or not isinstance(frame.get("type"), str):
            raise InvalidFrame("frame must be a JSON object with a string 'type'")
        if "ref" in frame and not self._ref_fits(frame):
            del frame["ref"]  # not echoed: it would count against our output
            raise InvalidField(
                "'ref' must encode to at most %d bytes" % self._config.max_ref_bytes
            )
        return frame

    def _frame_of(self, payload: bytes) -> dict | None:
        """The parsed frame, or None once the client was told why not."""
        try:
            return self._parse(payload)
        except InvalidField as e:
            self.send_error(e, _echoable(payload))
        except PushdError as e:
            self.send_error(e, {})
        return None

    def _ref_fits(self, frame: dict) -> bool:
        return len(encode_json(frame["ref"])) <= self._config.max_ref_bytes

    def _drain(self, item: bytes | dict | None = None) -> None:
        """Handle ``item`` (if any), then what waits, in order, until a frame
        waits on the backend."""
        self._busy = True
        while True:
            if item is None:
                if not self._pending:
                    break
                item, size = self._pending.popleft()
                self._pending_bytes -= size
            frame = item if isinstance(item, dict) else self._frame_of(item)
            item = None
            if frame is None:
                continue
            d = Deferred.fromCoroutine(self._dispatch(frame))
            if not d.called:
                d.addBoth(lambda _: self._drain())
                return
        self._busy = False

    async def _dispatch(self, frame: dict) -> None:
        handler = self._handlers.get(frame["type"])
        try:
            if handler is None:
                raise UnknownType(
                    "unknown frame type %r; expected one of %s"
                    % (frame["type"][:40], ", ".join(sorted(self._handlers)))
                )
            await handler(self, frame)
        except PushdError as e:
            self.send_error(e, frame)
        except Exception:
            self._log.failure("frame from {id} failed", id=self.connection_id)
            self.send_error(PushdError("internal error"), frame, code="internal_error")

    # -- handlers: one per frame type -----------------------------------

    async def handle_subscribe(self, frame: dict) -> None:
        channel = validate_channel(_require(frame, "channel"))
        since = parse_since(frame.get("since"))
        members = history = None
        if channel not in self.subscriptions:
            identity = authorize_subscribe(self, channel, frame)
            limit = self._config.max_subscriptions + (self.user_id is not None)
            if len(self.subscriptions) >= limit:
                raise TooManySubscriptions(
                    "at most %d subscriptions per connection"
                    % self._config.max_subscriptions
                )
            self.subscriptions.add(channel)
            try:
                members, history = await self.hub.subscribe(
                    self, channel, identity, since
                )
            except BaseException:
                self.subscriptions.discard(channel)
                raise
        elif channel in self.identities and channel.startswith(PRESENCE):
            members = await self.hub.channel_users(self.app, channel)
        if self.closed:
            return
        reply: dict = {"type": "subscribed", "channel": channel}
        if members is not None:
            reply["members"] = [
                {"user_id": u, "user_info": i} for u, i in sorted(members.items())
            ]
        if history is not None:
            reply["offset"], reply["epoch"] = history.offset, history.epoch
        if since is not None:
            reply["recovered"] = history is not None and history.recovered
        self.conn.send_json(reply)
        if history is not None and since is not None:
            for message in history.messages:
                # Targeted messages replay only to whom they were for.
                if message.reaches(self.connection_id, self.user_id):
                    self.send_message(Outgoing(message))
        self.hub.release(self, channel, history.offset if history is not None else None)

    async def handle_unsubscribe(self, frame: dict) -> None:
        channel = validate_channel(_require(frame, "channel"))
        if self.user_id is not None and channel == personal_channel(self.user_id):
            raise Forbidden("a user's personal channel cannot be left")
        self.hub.unsubscribe(self, channel)
        self.conn.send_json({"type": "unsubscribed", "channel": channel})

    async def handle_ping(self, frame: dict) -> None:
        reply: dict = {"type": "pong"}
        if "ref" in frame:
            reply["ref"] = frame["ref"]
        self.conn.send_json(reply)

    async def handle_client_event(self, frame: dict) -> None:
        """Pusher-style client events: to the channel's other subscribers."""
        channel = validate_channel(_require(frame, "channel"))
        event = _require(frame, "event")
        if not self.app.client_events:
            raise Forbidden("client events are disabled for this app")
        if not accepts_client_events(channel):
            raise Forbidden(
                "client events are only allowed on private-, presence- "
                "and peer- channels"
            )
        if channel not in self.subscriptions:
            raise Forbidden("subscribe to %s before sending events on it" % channel)
        if not isinstance(event, str) or not event.startswith("client-"):
            raise InvalidField("client event names start with 'client-'")
        # On a channel this connection is a member of, the sender is that
        # member (presence channel_data), as Pusher reports it.
        sender = self.identities.get(channel, (self.user_id,))[0]
        await self.hub.publish(
            self.app,
            [channel],
            event,
            frame.get("data"),
            exclude=self.connection_id,
            user_id=sender,
        )

    _handlers = {
        "client_event": handle_client_event,
        "subscribe": handle_subscribe,
        "unsubscribe": handle_unsubscribe,
        "ping": handle_ping,
    }

    # -- out ------------------------------------------------------------

    def messages_lost(self, channel: str, reason: str) -> None:
        """Messages on ``channel`` may not have reached this client (a node
        lost its connection to the shared store); docs/protocol.md."""
        if not self.closed:
            self.conn.send_json(
                {"type": "messages_lost", "channel": channel, "reason": reason}
            )

    def send_error(
        self, error: PushdError, frame: dict, code: str | None = None
    ) -> None:
        if self.closed:
            return
        out: dict = {
            "type": "error",
            "code": code or error.code,
            "message": error.message,
        }
        if isinstance(frame.get("type"), str):
            out["orig"] = frame["type"][:40]
        if isinstance(frame.get("channel"), str):
            out["channel"] = frame["channel"][:200]
        if "ref" in frame:
            out["ref"] = frame["ref"]
        self.conn.send_json(out)


def _echoable(payload: bytes) -> dict:
    """The parts of a refused frame an error may echo (its type), if any."""
    try:
        frame = json.loads(payload)
    except (ValueError, RecursionError):
        return {}
    if isinstance(frame, dict) and isinstance(frame.get("type"), str):
        return {"type": frame["type"]}
    return {}


def parse_since(since: Any) -> tuple[int, str | None] | None:
    """``{"offset": N, "epoch": "..."}`` from a subscribe frame, validated."""
    if since is None:
        return None
    offset = since.get("offset") if isinstance(since, dict) else None
    epoch = since.get("epoch") if isinstance(since, dict) else None
    if (
        isinstance(offset, bool)
        or not isinstance(offset, int)
        or offset < 0
        or (epoch is not None and not isinstance(epoch, str))
    ):
        raise InvalidField('\'since\' must be {"offset": N >= 0, "epoch": "..."}')
    return offset, epoch


def _require(frame: dict, name: str) -> Any:
    if name not in frame:
        raise MissingField("%s needs %r" % (frame["type"], name))
    return frame[name]
