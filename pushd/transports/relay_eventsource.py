"""EventSource on relay subscriber locations (nchan's behaviour).

``GET`` with ``Accept: text/event-stream`` opens a stream of the channel:
the stored messages from the oldest (or those after ``Last-Event-ID``, or
the ``last_event_id`` query parameter for polyfills), then live ones.  Each
event carries ``id: <offset>.<epoch>`` to resume from and the raw body as
``data:`` lines; a message published with ``X-EventSource-Event`` (or any
event other than ``message``) sets ``event:``.  A client that stops reading
is dropped past ``send-queue-bytes``, as on /sse.
"""

from __future__ import annotations

import re
import secrets
from typing import TYPE_CHECKING, Any

from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from pushd.interfaces import IConnection
from pushd.message import CHANNEL_DELETED, Message, Outgoing
from pushd.transports import SlowConsumerGuard
from pushd.transports.relay_subscriber import body_of
from pushd.transports.sse import sse_field

if TYPE_CHECKING:
    from pushd.apps import App
    from pushd.transports.relay import Relay
    from pushd.transports.relay_locations import Location

_LINE_BREAK = re.compile(rb"\r\n|\r|\n")
_log = Logger()


def wants_event_stream(request: Any) -> bool:
    return b"text/event-stream" in (request.getHeader(b"accept") or b"")


def event_block(event_id: str | None, event: str | None, body: bytes) -> bytes:
    """One event.  The body goes out line by line (split on CR, LF and
    CRLF, as EventSource splits them); ``id`` and ``event`` go through the
    SSE writer, which refuses a line break (ValueError) rather than let a
    field smuggle in another field or event (issue 11)."""
    out = b""
    if event_id:
        out += sse_field(b"id", event_id.encode("utf-8"))
    if event and event != "message":
        out += sse_field(b"event", event.encode("utf-8"))
    for line in _LINE_BREAK.split(body):
        out += sse_field(b"data", line)
    return out + b"\n"


def _message_block(message: Message) -> bytes | None:
    """The event for ``message``, or None (logged) if it cannot be sent
    without breaking the stream."""
    position = None
    if message.offset is not None:
        position = "%d.%s" % (message.offset, message.epoch or "")
    try:
        return event_block(position, message.event, body_of(message))
    except ValueError:
        _log.error(
            "not sending message {id} on {channel} over relay EventSource: "
            "it would break the stream",
            id=message.id,
            channel=message.channel,
        )
        return None


def parse_event_id(text: str) -> tuple[int, str] | None:
    """``12.ab12cd`` -> (12, "ab12cd"); anything else: None (from the oldest)."""
    offset, dot, epoch = text.strip().partition(".")
    if not dot or not offset.isdigit():
        return None
    return int(offset), epoch


@implementer(IConnection)
class EventSourceStream(SlowConsumerGuard):
    """One open event stream on one relay channel, as the hub sees it."""

    transport_name = "relay"

    _log = Logger()

    def __init__(
        self, relay: Relay, location: Location, app: App, channel: str, request: Any
    ) -> None:
        self.relay, self.location, self.app = relay, location, app
        self.channel, self.request = channel, request
        self.connection_id = "relay-es-" + secrets.token_urlsafe(9)
        self.session: Any = None
        self.closed = False
        self.position: tuple[int, str] | None = None
        # Live messages that arrive while the stored ones are replayed.
        self.early: list[Message] | None = []
        self._beat: LoopingCall | None = None
        self._streaming = False
        self._going_away = False

    async def run(self) -> bytes | None:
        hub, request = self.relay.hub, self.request
        retention = self.location.retention
        request.notifyFinish().addBoth(self._gone)
        last = (request.getHeader(b"last-event-id") or b"").decode(
            "utf-8", "replace"
        ) or (request.args.get(b"last_event_id") or [b""])[0].decode("utf-8", "replace")
        since = self.position = parse_event_id(last)
        await hub.relay.requested(self.app, self.channel, retention)
        self.session = hub.open_session(self, self.app)
        self.session.subscriptions.add(self.channel)
        await hub.subscribe(self.session, self.channel)
        hub.release(self.session, self.channel)
        stored = await hub.kept_messages(
            self.app, self.channel, retention, retention.size, since
        )
        if self._going_away:
            return self._unavailable()
        if self.closed:
            return None
        self._start_stream()
        for message in stored.messages:
            # Anonymous: never what was published to some users only.
            if message.reaches(self.connection_id, None):
                self._deliver(message, _message_block(message))
        early, self.early = self.early or [], None
        for message in early:
            self._deliver(message, _message_block(message))
        return None

    def _unavailable(self) -> bytes:
        request = self.request
        request.setResponseCode(503)
        request.setHeader(
            b"retry-after", b"%d" % self.relay.hub.config.relay_retry_after
        )
        request.setHeader(b"content-length", b"0")
        return b""

    def _start_stream(self) -> None:
        request = self.request
        request.setResponseCode(200)
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"cache-control", b"no-cache")
        request.setHeader(b"x-accel-buffering", b"no")  # nginx: do not buffer
        request.registerProducer(self, True)
        self._streaming = True
        request.write(b": pushd relay\n\n")  # headers out: the client's onopen
        self._beat = LoopingCall(self._write, b": keepalive\n\n")
        self._beat.clock = self.relay.hub.clock
        self._beat.start(self.relay.hub.config.sse_heartbeat, now=False)

    def _fresh(self, message: Message) -> bool:
        """Not sent yet: positions only grow within an epoch."""
        if message.offset is None or self.position is None:
            return True
        offset, epoch = self.position
        return message.epoch != epoch or message.offset > offset

    def _deliver(self, message: Message, block: bytes | None) -> None:
        if message.event == CHANNEL_DELETED:
            self._finish()
            return
        if self.closed or block is None or not self._fresh(message):
            return
        if message.offset is not None:
            self.position = (message.offset, message.epoch or "")
        self._write(block)

    def _write(self, data: bytes) -> None:
        if self.closed:
            return
        if self.too_far_behind(len(data), self.relay.hub.config.send_queue_bytes):
            self._log.info(
                "dropping slow relay EventSource {id}", id=self.connection_id
            )
            self._finish()
            return
        self.request.write(data)

    def _finish(self) -> None:
        if self.closed:
            return
        self._gone(None)
        request = self.request
        if self._streaming:
            request.unregisterProducer()
        if not request.finished and not request._disconnected:
            request.finish()

    def _gone(self, _: object) -> None:
        self.closed = True
        if self._beat is not None and self._beat.running:
            self._beat.stop()
        if self.session is not None:
            self.session.close()

    # -- IConnection ---------------------------------------------------------

    def send_json(self, frame: dict) -> None:
        """``messages_lost`` (this node may have missed messages): end the
        stream, so EventSource reconnects with its last id and gets what is
        stored from there."""
        if frame.get("type") == "messages_lost" and self._streaming:
            self._finish()

    def send_message(self, outgoing: Outgoing) -> None:
        message = outgoing.message
        if self.closed:
            return
        if self.early is not None:
            self.early.append(message)
            return
        block = outgoing.wire("relay-es", lambda _: _message_block(message))
        self._deliver(message, block)

    def close(self, code: int, reason: str) -> None:
        """Shutting down: end the stream; EventSource reconnects by itself
        (elsewhere, or here once back) and resumes from its last id.  Not
        streaming yet: 503 with Retry-After."""
        if self._streaming:
            self._finish()
        elif not self.closed:
            self._going_away = True
            self._gone(None)
