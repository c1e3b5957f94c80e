"""Pusher Channels protocol v7 on ``/app/{key}``: an adapter around a Session.

Pusher frames (``{"event", "channel", "data"}``) become the Session's frames
(``pusher:subscribe`` -> ``subscribe``, ``client-*`` -> ``client_event``,
``pusher:ping`` -> ``ping``), and the Session's frames come back as Pusher's
(``subscribed`` -> ``pusher_internal:subscription_succeeded``, errors ->
``pusher:subscription_error`` / ``pusher:error``).  Everything else --
socket, coalesced writes, slow-consumer guard -- is the WebSocket
transport's; messages are encoded once per publish in Pusher's form
(``pushd.pusher.message_frame``).  What only Pusher has lives here:
``pusher:signin`` and the client-event rate limit.  docs/pusher.md.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

from twisted.internet.error import AlreadyCalled, AlreadyCancelled

from pushd.auth import InvalidToken, signature_matches, validate_user_id
from pushd.channels import validate_channel
from pushd.errors import CloseCode, InvalidField, InvalidJSON, PushdError
from pushd.identify import Refused, identify
from pushd.inputs import loads
from pushd.message import Message, Outgoing, encode_json
from pushd.pusher import (
    APP_NOT_FOUND,
    CLIENT_EVENT_RATE_LIMITED,
    CLOSE_CODES,
    ENCRYPTED,
    NO_PROTOCOL,
    SERVER_TO_USER,
    UNAUTHORIZED,
    UNSUPPORTED_PROTOCOL,
    data_string,
    message_frame,
    new_socket_id,
    presence_data,
    to_pushd_channel,
    to_pusher_channel,
    user_auth_text,
)
from pushd.session import parse_since
from pushd.transports.websocket import (
    PushServerFactory,
    PushServerProtocol,
    _prepare,
)

PROTOCOL_VERSION = 7
_OPEN = PushServerProtocol.STATE_OPEN
# Session error codes -> the status pusher:subscription_error reports.
_STATUS = {"forbidden": 403, "unauthorized": 401, "backend_unavailable": 503}


def _encode(message: Message) -> Any:
    return _prepare(encode_json(message_frame(message)))


class PusherProtocol(PushServerProtocol):
    """One Pusher client; ``connection_id`` is its ``socket_id``."""

    _signin_call = None
    # Subscriptions waiting for pusher:signin on apps with anonymous: false
    # (at most max-subscriptions); None: not waiting.
    _held: list[dict] | None = None
    transport_name = "pusher"
    _held_bytes = 0
    _event_tokens = 0.0
    _event_refilled = 0.0

    def onConnect(self, request):
        self.connection_id = new_socket_id()
        self._refusal, self._identity = self.factory.check_pusher_client(request)
        return None

    def onOpen(self):
        if self._refusal is not None:
            self._refuse(*self._refusal)
            return
        if not self._admit():
            return
        try:
            self._become_producer()
            config, clock = self.factory.config, self.factory.hub.clock
            established = {
                "socket_id": self.connection_id,
                "activity_timeout": config.pusher_activity_timeout,
            }
            # data is a JSON string, as the protocol documents it.
            self._send_pusher(
                {
                    "event": "pusher:connection_established",
                    "data": data_string(established),
                }
            )
            app = self._identity[0]
            self.session = self.factory.hub.open_session(self, app)
            self._event_tokens = config.pusher_client_event_rate
            self._event_refilled = clock.seconds()
            if not app.anonymous:
                self._held = []
                self._signin_call = clock.callLater(
                    config.pusher_signin_timeout, self._signin_expired
                )
        except Exception:
            self._log.failure("opening connection from {peer} failed", peer=self.peer)
            self.close(CloseCode.INTERNAL_ERROR, "internal error")

    def onClose(self, wasClean, code, reason):
        self._cancel_signin_timer()
        super().onClose(wasClean, code, reason)

    # -- in: Pusher frames -> Session -------------------------------------

    def onMessage(self, payload, isBinary):
        session = self.session
        if session is None:
            return
        try:
            frame = loads(payload, self.factory.config.max_json_depth)
            event = frame["event"]
            if not isinstance(event, str):
                raise TypeError
        except InvalidJSON as e:
            if session.admit():
                self._error(None, "frame is not valid JSON: %s" % e.message)
            return
        except (TypeError, KeyError):
            if session.admit():
                self._error(None, "frames are JSON objects with a string 'event'")
            return
        data = frame.get("data")
        if isinstance(data, str) and event.startswith("pusher:"):
            try:  # some clients send data JSON-encoded
                data = loads(data, self.factory.config.max_json_depth)
            except InvalidJSON:
                pass
        if event == "pusher:pong":
            return
        handler = self._handlers.get(event)
        if handler is not None:
            handler(self, session, data if isinstance(data, dict) else {})
        elif event.startswith("client-"):
            self.handle_client_event(session, event, frame.get("channel"), data)
        elif session.admit():
            self._error(None, "unknown event %r" % event[:40])

    def handle_ping(self, session, data: dict) -> None:
        session.receive_frame({"type": "ping"})

    def handle_subscribe(self, session, data: dict) -> None:
        channel = data.get("channel")
        frame = {"type": "subscribe", "channel": channel}
        if isinstance(channel, str) and channel.startswith(SERVER_TO_USER):
            # Only the signed-in user's own channel exists for it.
            if session.user_id is None or channel != SERVER_TO_USER + session.user_id:
                if session.admit():
                    self._subscription_error(
                        channel, "sign in as the user of %s first" % channel, 403
                    )
                return
            frame["channel"] = to_pushd_channel(channel)
        for name in ("auth", "channel_data", "since"):
            if data.get(name) is not None:
                frame[name] = data[name]
        if self._held is None:
            session.receive_frame(frame)
        else:
            self._hold(session, frame)

    def _hold(self, session, frame: dict) -> None:
        """Keep a subscription until pusher:signin (anonymous: false).

        The connection has proved nothing yet, so what it may make us keep
        is bounded: each held frame is charged against the rate limit, keeps
        only checked strings (a 64 KB frame of nested empty lists parses to
        over a megabyte of objects), and all of them together stay within
        max-subscriptions frames and max-message-size bytes.
        """
        if not session.admit():
            return
        channel = frame["channel"]
        config = self.factory.config
        try:
            validate_channel(channel)
            parse_since(frame.get("since"))
            if not all(
                isinstance(frame.get(name, ""), str)
                for name in ("auth", "channel_data")
            ):
                raise InvalidField("auth and channel_data must be strings")
        except PushdError as e:
            name = channel[:200] if isinstance(channel, str) else ""
            self._subscription_error(to_pusher_channel(name), e.message, 400)
            return
        held = self._held
        assert held is not None
        size = len(encode_json(frame))
        if (
            len(held) >= config.max_subscriptions
            or self._held_bytes + size > config.max_message_size
        ):
            self._subscription_error(to_pusher_channel(channel), "sign in first", 401)
            return
        held.append(frame)
        self._held_bytes += size

    def handle_unsubscribe(self, session, data: dict) -> None:
        channel = data.get("channel")
        if isinstance(channel, str) and channel.startswith(SERVER_TO_USER):
            return  # the user's channel lasts as long as the connection
        if self._held is not None:
            self._held = [f for f in self._held if f["channel"] != channel]
            self._held_bytes = sum(len(encode_json(f)) for f in self._held)
            return
        session.receive_frame({"type": "unsubscribe", "channel": channel})

    def handle_signin(self, session, data: dict) -> None:
        """``pusher:signin``: the app vouches for the user with a signature
        over ``socket_id::user::user_data``; the connection becomes that
        user's (``#server-to-user-<id>``, send_to_user, terminate)."""
        if not session.admit():
            return
        auth, user_data = data.get("auth"), data.get("user_data")
        app = session.app
        if not isinstance(auth, str) or not isinstance(user_data, str):
            self._error(UNAUTHORIZED, "pusher:signin needs auth and user_data")
            return
        key, _, signature = auth.rpartition(":")
        if session.user_id is not None:
            self._error(None, "this connection is already signed in")
            return
        if (app.key is not None and key != app.key) or not signature_matches(
            app.secret, user_auth_text(self.connection_id, user_data), signature
        ):
            self._error(UNAUTHORIZED, "invalid signature for pusher:signin")
            return
        try:
            user = loads(user_data, self.factory.config.max_json_depth)
            user_id = user["id"]
            if isinstance(user_id, int) and not isinstance(user_id, bool):
                user_id = str(user_id)
            user_id = validate_user_id(user_id)
        except (InvalidJSON, TypeError, KeyError, InvalidToken):
            self._error(UNAUTHORIZED, "user_data must be JSON with a valid 'id'")
            return
        self._cancel_signin_timer()
        self.factory.hub.sign_in(session, user_id, user.get("user_info"))
        self._send_pusher(
            {"event": "pusher:signin_success", "data": {"user_data": user_data}}
        )
        held, self._held, self._held_bytes = self._held or [], None, 0
        for frame in held:
            session.receive_admitted(frame)  # charged when held

    def handle_client_event(self, session, event: str, channel: Any, data) -> None:
        """``client-*``: the Session applies pushd's rules (app allows them,
        private-/presence- channel, subscribed, never echoed); Pusher's own
        come first: not on encrypted channels, size and rate limits."""
        if not self._take_event_token():
            if session.admit():
                self._error(
                    CLIENT_EVENT_RATE_LIMITED,
                    "client event rejected: more than %g per second"
                    % self.factory.config.pusher_client_event_rate,
                )
            return
        limit = self.factory.config.pusher_max_event_size
        if isinstance(channel, str) and channel.startswith(ENCRYPTED):
            message = "client events are not supported on encrypted channels"
        elif len(data_string(data).encode("utf-8")) > limit:
            message = "client event data is over %d bytes" % limit
        else:
            session.receive_frame(
                {
                    "type": "client_event",
                    "channel": channel,
                    "event": event,
                    "data": data,
                }
            )
            return
        if session.admit():
            self._error(None, message)

    _handlers = {
        "pusher:ping": handle_ping,
        "pusher:subscribe": handle_subscribe,
        "pusher:unsubscribe": handle_unsubscribe,
        "pusher:signin": handle_signin,
    }

    def _take_event_token(self) -> bool:
        rate = self.factory.config.pusher_client_event_rate
        now = self.factory.hub.clock.seconds()
        self._event_tokens = min(
            max(rate, 1.0), self._event_tokens + (now - self._event_refilled) * rate
        )
        self._event_refilled = now
        if self._event_tokens >= 1:
            self._event_tokens -= 1
            return True
        return False

    def _signin_expired(self) -> None:
        self._signin_call = None
        self.close(
            UNAUTHORIZED,
            "this app needs pusher:signin within %g s"
            % (self.factory.config.pusher_signin_timeout),
        )

    def _cancel_signin_timer(self) -> None:
        call, self._signin_call = self._signin_call, None
        if call is not None:
            try:
                call.cancel()
            except (AlreadyCalled, AlreadyCancelled):
                pass

    # -- out: Session frames -> Pusher frames ------------------------------

    def send_json(self, frame: dict) -> None:
        kind = frame.get("type")
        if kind == "subscribed":
            data = presence_data(frame["members"]) if "members" in frame else {}
            out = {
                "event": "pusher_internal:subscription_succeeded",
                "channel": to_pusher_channel(frame["channel"]),
                "data": data_string(data),
            }
            for name in ("offset", "epoch", "recovered"):  # recovery extension
                if name in frame:
                    out[name] = frame[name]
            self._send_pusher(out)
        elif kind == "pong":
            self._send_pusher({"event": "pusher:pong", "data": {}})
        elif kind == "error":
            if frame.get("orig") == "subscribe" and "channel" in frame:
                self._subscription_error(
                    to_pusher_channel(frame["channel"]),
                    frame["message"],
                    _STATUS.get(frame["code"], 400),
                )
            else:
                code = (
                    CLOSE_CODES[CloseCode.RATE_LIMITED]
                    if (frame["code"] == "rate_limited")
                    else None
                )
                self._error(code, frame["message"])
        elif kind not in ("unsubscribed", "connected"):
            out = {"event": "pushd:%s" % kind, "data": data_string(frame)}
            if "channel" in frame:
                out["channel"] = to_pusher_channel(frame["channel"])
            self._send_pusher(out)

    def frame_bytes(self, outgoing: Outgoing) -> bytes:
        return outgoing.wire_of("pusher", _encode).payloadHybi

    def close(self, code: int, reason: str) -> None:
        """Close with the Pusher code for ``code``, after a ``pusher:error``
        saying why (pusher-js decides from the code whether to reconnect)."""
        self._refuse(CLOSE_CODES.get(code, code), reason)

    def _refuse(self, code: int, reason: str) -> None:
        if self.state == _OPEN:
            # Queued uncounted: one small frame before the close, which must
            # not itself trip the slow-consumer guard (and close again).
            error = {"event": "pusher:error", "data": {"code": code, "message": reason}}
            self._queue(_prepare(encode_json(error)).payloadHybi)
            super().close(code, reason)

    def _send_pusher(self, frame: dict) -> None:
        super().send_json(frame)

    def _error(self, code: int | None, message: str) -> None:
        self._send_pusher(
            {"event": "pusher:error", "data": {"code": code, "message": message}}
        )

    def _subscription_error(self, channel: str, message: str, status: int) -> None:
        self._send_pusher(
            {
                "event": "pusher:subscription_error",
                "channel": channel,
                "data": data_string(
                    {
                        "type": "AuthError" if status in (401, 403) else "Error",
                        "error": message,
                        "status": status,
                    }
                ),
            }
        )


class PusherFactory(PushServerFactory):
    protocol = PusherProtocol

    def check_pusher_client(self, request) -> tuple[tuple[int, str] | None, tuple]:
        """((Pusher close code, reason) to refuse, or None; (app, None, None)).

        The key is the last path segment of ``/app/{key}``; a single app
        without a client key takes any key.  An app that needs users
        (``anonymous: false``) admits the connection, which must then sign in
        within ``pusher-signin-timeout``.
        """
        nothing = (None, None, None)
        version = request.params.get("protocol", [""])[0]
        if not version:
            return (NO_PROTOCOL, "no protocol version supplied"), nothing
        if not version.isdigit() or int(version) < PROTOCOL_VERSION:
            return (
                (
                    UNSUPPORTED_PROTOCOL,
                    "unsupported protocol version %s" % version[:10],
                ),
                nothing,
            )
        key = unquote(request.path.rstrip("/").rpartition("/")[2])
        try:
            return None, identify(self.hub, key, "", request.headers.get("origin"))
        except Refused as e:
            if e.close_code == CloseCode.TOKEN_REQUIRED:
                return None, (self.hub.apps.by_key(key), None, None)
            if e.close_code == CloseCode.INVALID_CLIENT_KEY:
                return (APP_NOT_FOUND, "app key %s not in this cluster" % key[:40]), (
                    nothing
                )
            return (CLOSE_CODES.get(e.close_code, UNAUTHORIZED), e.message), nothing
