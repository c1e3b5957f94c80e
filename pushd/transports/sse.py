"""Server-Sent Events: ``GET /sse?channel=a&channel=b`` for clients without WebSocket.

A thin adapter around a Session: each ``channel`` parameter becomes a
``subscribe`` frame, so SSE follows exactly the WebSocket rules.  What the
Session sends comes out as events:

* messages: ``event: <the message's event>``, ``data: <the message frame JSON>``,
  and on channels with history ``id: <positions>``, where positions is
  ``channel=offset.epoch&...`` (URL-encoded) for every channel seen so far;
* pushd's own frames: ``event: pushd:<type>`` (``pushd:connected``,
  ``pushd:subscribed``, ``pushd:error``, ``pushd:member_added``...).

A reconnecting EventSource sends the last id back as ``Last-Event-ID`` (or,
for polyfills, ``?lastEventId=``); each channel then recovers from its
position.  A comment line goes out every ``sse-heartbeat`` seconds so
proxies keep the connection.

Channel signatures name a connection id, which the server issues (random,
registered cluster-wide) and sends in ``pushd:connected`` together with a
``stream_secret``.  Private and presence channels are then added with
``POST /sse/frames`` (``pushd.transports.sse_frames``), the signature in the
body: never in a URL, where access logs would keep it, and never for an id
the client chose (issue 11: a closed WebSocket's id and signature, replayed
in a query string, used to open its private channels to anyone).
"""

from __future__ import annotations

import json
from urllib.parse import parse_qsl, urlencode

from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from pushd.api import error_response
from pushd.auth import new_connection_id, stream_secret
from pushd.errors import CloseCode, NotFound
from pushd.identify import Refused, identify
from pushd.interfaces import IConnection
from pushd.limits import RETRY_AFTER, client_ip
from pushd.message import Outgoing, encode_json
from pushd.transports import SlowConsumerGuard
from pushd.transports.sse_frames import post_frame


def sse_field(name: bytes, value: bytes) -> bytes:
    """One ``name: value`` line.  CR or LF in a value would end the field
    early and let its sender forge fields (an ``id:``, an ``event:``) in
    other clients' streams, so the writer refuses it whatever upstream
    checked (issue 11)."""
    if b"\n" in value or b"\r" in value:
        raise ValueError("SSE %s field would hold a line break" % name.decode())
    return b"%s: %s\n" % (name, value)


def _sse_body(json_frame: bytes, event: str) -> bytes:
    return (
        sse_field(b"event", event.encode("utf-8"))
        + sse_field(b"data", json_frame)
        + b"\n"
    )


def parse_positions(last_event_id: str) -> dict[str, tuple[int, str]]:
    """``chat-1=12.ab12&news=3.ff00`` -> {channel: (offset, epoch)}; junk is ignored."""
    positions = {}
    for channel, position in parse_qsl(last_event_id or ""):
        offset, _, epoch = position.partition(".")
        if offset.isdigit():
            positions[channel] = (int(offset), epoch)
    return positions


@implementer(IConnection)
class SSEConnection(SlowConsumerGuard):
    """One open ``text/event-stream`` response, as the Session sees it."""

    transport_name = "sse"
    metrics = None  # the hub's Metrics, to count closes by code

    _log = Logger()

    def __init__(
        self, request, connection_id: str, send_queue_bytes: int, positions: dict
    ) -> None:
        self.request = request
        self.connection_id = connection_id
        self.positions = dict(positions)
        self._limit = send_queue_bytes
        self.closed = False
        request.registerProducer(self, True)

    def _write(self, data: bytes) -> None:
        if self.closed:
            return
        if self.too_far_behind(len(data), self._limit):
            self._log.info("dropping slow SSE client {id}", id=self.connection_id)
            self.close(CloseCode.SLOW_CONSUMER, "slow consumer: too far behind")
            return
        self.request.write(data)

    def send_json(self, frame: dict) -> None:
        self._write(_sse_body(encode_json(frame), "pushd:" + frame["type"]))

    def send_message(self, outgoing: Outgoing) -> None:
        message = outgoing.message
        try:
            body = outgoing.wire("sse", lambda raw: _sse_body(raw, message.event))
            if message.offset is not None:
                self.positions[message.channel] = (message.offset, message.epoch)
                ids = urlencode(
                    {c: "%d.%s" % p for c, p in sorted(self.positions.items())}
                )
                body = sse_field(b"id", ids.encode()) + body
        except ValueError:
            self._log.error(
                "not sending message {id} on {channel} over SSE: it would "
                "break the stream",
                id=message.id,
                channel=message.channel,
            )
            return
        self._write(body)

    def heartbeat(self) -> None:
        self._write(b": keepalive\n\n")

    def close(self, code: int, reason: str) -> None:
        if self.closed:
            return
        if self.metrics is not None:
            self.metrics.closed_by_server(code)
        self.request.write(
            _sse_body(
                encode_json({"type": "close", "code": code, "reason": reason}),
                "pushd:close",
            )
        )
        self.closed = True
        self.request.unregisterProducer()
        self.request.finish()


def _header(request, name: bytes) -> str | None:
    value = request.getHeader(name)
    return value.decode("latin-1") if value is not None else None


class SSEResource(Resource):
    isLeaf = True
    _log = Logger()

    def __init__(self, hub, heartbeat: float) -> None:
        super().__init__()
        self.hub = hub
        self.heartbeat = heartbeat

    def render_POST(self, request):
        if request.postpath != [b"frames"]:
            return error_response(request, NotFound("POST /sse/frames only"))
        d = Deferred.fromCoroutine(post_frame(self.hub, request))

        def answer(body: bytes) -> None:
            if not request.finished and not request._disconnected:
                request.write(body)
                request.finish()

        d.addCallback(answer)
        d.addErrback(lambda f: self._log.failure("POST /sse/frames failed", f))
        return NOT_DONE_YET

    def render_GET(self, request):
        if request.postpath not in ([], [b""]):
            return error_response(request, NotFound("GET /sse opens a stream"))
        args = {
            k.decode(): [v.decode("utf-8", "replace") for v in vs]
            for k, vs in request.args.items()
        }
        first = lambda name: args.get(name, [""])[0]  # noqa: E731
        try:
            app, user_id, info = identify(
                self.hub,
                first("key"),
                first("token"),
                (request.getHeader(b"origin") or b"").decode() or None,
            )
            channels = args.get("channel", [])
            ip = client_ip(
                request.getClientAddress().host,
                _header(request, b"x-forwarded-for"),
                _header(request, b"forwarded"),
                self.hub.config.trusted_proxies,
            )
            self.hub.admit(app, ip)  # released when the stream ends
        except Refused as e:
            if e.status == 503:
                request.setHeader(b"retry-after", b"%d" % RETRY_AFTER)
            return error_response(request, e)
        last = (request.getHeader(b"last-event-id") or b"").decode(
            "utf-8", "replace"
        ) or first("lastEventId")
        positions = parse_positions(last)
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"cache-control", b"no-cache")
        request.setHeader(b"x-accel-buffering", b"no")  # nginx: do not buffer
        request.write(b"retry: 2000\n\n")
        connection_id = new_connection_id()
        conn = SSEConnection(
            request, connection_id, self.hub.config.send_queue_bytes, positions
        )
        conn.metrics = self.hub.metrics
        conn.send_json(
            {
                "type": "connected",
                "connection_id": connection_id,
                "stream_secret": stream_secret(app.secret, connection_id),
                **({"user_id": user_id} if user_id is not None else {}),
            }
        )
        session = self.hub.open_session(conn, app, user_id, info)
        self.hub.attach_stream(session)
        beat = LoopingCall(conn.heartbeat)
        beat.clock = self.hub.clock
        beat.start(self.heartbeat, now=False)

        def gone(_):
            conn.closed = True
            if beat.running:
                beat.stop()
            self.hub.limits.release(app.id, ip)
            session.close()

        request.notifyFinish().addBoth(gone)
        for channel in channels:
            frame: dict = {"type": "subscribe", "channel": channel}
            if channel in positions:
                frame["since"] = {
                    "offset": positions[channel][0],
                    "epoch": positions[channel][1],
                }
            session.receive(json.dumps(frame).encode())
        return NOT_DONE_YET
