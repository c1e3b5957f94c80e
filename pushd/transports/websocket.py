"""WebSocket transport: Autobahn glue around a Session.

Owns nothing but the socket: frames go to the Session, the Session's frames
come back through the ``IConnection`` methods.  Two things live here because
they are about this socket only:

* fan-out writes a prepared frame (encoded once per publish, cached on the
  ``Outgoing``) straight to the TCP transport;
* slow consumers: the protocol is a streaming producer on its transport, so
  Twisted tells us when the kernel stops taking bytes; past
  ``send-queue-bytes`` of backlog the client is disconnected (4109), so one
  stalled phone cannot grow the server's memory without bound.
"""

from __future__ import annotations

from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory
from autobahn.websocket.protocol import PreparedMessage
from twisted.internet import tcp
from twisted.logger import Logger
from zope.interface import implementer

from pushd.auth import new_connection_id
from pushd.config import Config
from pushd.directsend import write_now
from pushd.errors import CloseCode
from pushd.identify import Refused, identify
from pushd.interfaces import IFeedConnection
from pushd.limits import client_ip
from pushd.message import Outgoing, encode_json
from pushd.transports import SlowConsumerGuard
from pushd.transports.feed import Feed, take_all
from pushd.transports.lean import LeanServerProtocol, freeze_options

_OPEN = LeanServerProtocol.STATE_OPEN
_TUPLE_UP_TO = 8  # entries of the tuple of queued frames; past that a list (_queue)
# A pass may wait for copies in flight this many times flush-copy-wait in
# all (one wait before it and between any two of its slices, each at most
# flush-copy-wait): a bound for channels of 10,000 (100 slices).
_PASS_WAITS = 5


def _prepare(payload: bytes) -> PreparedMessage:
    return PreparedMessage(payload, False, False, False)


def text_frame(payload: bytes) -> bytes:
    """``payload`` as one unmasked WebSocket text frame (RFC 6455 5.2): what
    ``PreparedMessage(...).payloadHybi`` is, for a fifth of its cost, paid
    once per publish (bench/chat.py: one subscriber per channel)."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return b"\x81\x7e" + n.to_bytes(2, "big") + payload
    return b"\x81\x7f" + n.to_bytes(8, "big") + payload


@implementer(IFeedConnection)
class PushServerProtocol(  # type: ignore[misc]  # Autobahn's own bases disagree
    SlowConsumerGuard, LeanServerProtocol
):
    _log = Logger()  # not .log: Autobahn owns that name
    session = None
    connection_id = ""
    _refusal: tuple[int, str] | None = None
    _identity: tuple = (None, None, None)  # app, user id, user info
    _socket = None
    _out: Any = None  # queued frames: bytes, a tuple or a list (see _queue)
    _more = 0  # frames in _out after the first
    _feeds: tuple[Feed, ...] = ()  # the channel feeds it is a member of
    _admitted: tuple | None = None  # (app id, client IP) counted in the limits
    transport_name = "ws"
    client_ip = ""

    def onConnect(self, request):
        self.connection_id = new_connection_id()
        self.client_ip = self.factory.client_ip(self.transport, request.headers)
        self._refusal, self._identity = self.factory.check_client(request)
        return None

    def _admit(self) -> bool:
        """Count this connection in the connection limits, or close it with
        4100 over_capacity (docs/operations.md)."""
        app = self._identity[0]
        try:
            self.factory.hub.admit(app, self.client_ip)
        except Refused as e:
            self._refuse(e.close_code, e.message)
            return False
        self._admitted = (app.id, self.client_ip)
        return True

    def _refuse(self, code: int, reason: str) -> None:
        # The frame-level call: Autobahn's sendClose refuses 4100-style codes
        # only in some versions; this one takes any.
        self.sendCloseFrame(code, reason.encode("utf-8")[:120], isReply=False)

    def onOpen(self):
        if self._refusal is not None:
            self.sendClose(*self._refusal)
            return
        if not self._admit():
            return
        try:
            self._become_producer()
            # `connected` goes first: opening the session may already deliver
            # (what waited for an offline user).
            hello = {"type": "connected", "connection_id": self.connection_id}
            if self._identity[1] is not None:
                hello["user_id"] = self._identity[1]
            self.send_json(hello)
            self.session = self.factory.hub.open_session(self, *self._identity)
        except Exception:
            self._log.failure("opening connection from {peer} failed", peer=self.peer)
            self.sendClose(CloseCode.INTERNAL_ERROR, "internal error")

    def _become_producer(self) -> None:
        # Twisted Web's HTTPChannel registered itself on this transport
        # before Autobahn took the socket over; take its place.
        transport: Any = self.transport
        if getattr(transport, "producer", None) is not None:
            transport.unregisterProducer()
        transport.registerProducer(self, True)
        # Direct sends only on a plain TCP transport whose buffer we can see;
        # TLS and anything else always go through transport.write().
        if isinstance(transport, tcp.Connection) and hasattr(transport, "_tempDataLen"):
            self._socket = transport.getHandle()

    def onMessage(self, payload, isBinary):
        if self.session is not None:
            self.session.receive(payload)

    def onClose(self, wasClean, code, reason):
        admitted, self._admitted = self._admitted, None
        if admitted is not None:
            self.factory.hub.limits.release(*admitted)
        session, self.session = self.session, None
        if session is not None:
            session.close()

    # -- IConnection ------------------------------------------------------

    def send_json(self, frame: dict) -> None:
        if self.state == _OPEN:
            self._send_counted(text_frame(encode_json(frame)))

    def send_message(self, outgoing: Outgoing) -> None:
        # The fan-out path, once per subscriber: _send_counted and _queue
        # inlined (bench/fanout.py).
        if self.state == _OPEN:
            data = self.frame_bytes(outgoing)
            if self._feeds:
                self.settle()  # a filtered message: after the feeds' frames
            if self._paused:
                self._send_counted(data)
            elif self._out is None:
                self._out = data
                self.factory.flusher.schedule(self)
            else:
                self._queue(data)

    def _send_counted(self, data: bytes) -> None:
        """Every byte queued for this client counts against send-queue-bytes:
        replies (pong, errors, member lists) as much as messages, or a client
        that never reads could grow them without bound (issue 11)."""
        if self.too_far_behind(len(data), self.factory.config.send_queue_bytes):
            self._log.info("dropping slow client {id}", id=self.connection_id)
            self.close(CloseCode.SLOW_CONSUMER, "slow consumer: too far behind")
            return
        self._queue(data)

    def frame_bytes(self, outgoing: Outgoing) -> bytes:
        """The message as this protocol's WebSocket frame, built once per
        publish (cached on ``outgoing``) and shared by every subscriber."""
        return outgoing.wire("ws", text_frame)

    # -- channel feeds (pushd.transports.feed) -----------------------------

    @property
    def feed_key(self) -> tuple:
        """Connections with the same key share a channel's feed: the same
        Flusher and the same wire form."""
        return (self.factory.flusher, type(self).frame_bytes)

    def new_feed(self) -> Feed:
        return Feed(self.factory.flusher, self.frame_bytes)

    def settle(self) -> None:
        """Move what this connection's feeds hold for it into its own
        queue, ahead of whatever is queued next (see pushd.transports.feed)."""
        data = take_all(self._feeds, self)
        if data is not None:
            if self._paused:
                self._backlog += len(data)  # counted, as anything queued
            self._append(data)

    # -- output: coalesced by the Flusher ----------------------------------
    #
    # Every frame pushd sends goes through _queue (or its inlined copy in
    # send_message), so frames keep their order; what is queued is written
    # with one send() per connection when the Flusher reaches it, so
    # publishes handled before then share the syscall that dominates
    # fan-out cost (bench/fanout.py).  One or two frames are kept as bytes,
    # then a tuple of up to _TUPLE_UP_TO (rebuilt per frame: a few pointers),
    # more as a list.  A list is an object the garbage collector tracks for
    # as long as it lives: one per connection, alive from a publish to its
    # flush, was 1,000 per publish at half load; the collections that ran
    # meanwhile promoted them, and every few thousand promoted triggered a
    # full collection, which walks every connection's objects (~20 ms with
    # 1,000 connections: the slowest 1% of deliveries at half load,
    # bench/README.md "Latency").  A tuple of bytes is untracked by the
    # first collection that sees it, so it is never promoted.  Rebuilding a
    # tuple per frame costs what copying its pointers costs: past a few
    # frames (flat out, 15-20 per connection per pass) a list's append is
    # cheaper, and collections matter less than throughput there.

    def _queue(self, data: bytes) -> None:
        if self._feeds:
            self.settle()
        self._append(data)

    def _append(self, data: bytes) -> None:
        out = self._out
        if out is None:
            self._out = data
            self.factory.flusher.schedule(self)
            return
        more = self._more
        if more >= _TUPLE_UP_TO:
            if more == _TUPLE_UP_TO:
                self._out = out = list(out)
            out.append(data)
        elif more > 1:
            self._out = out + (data,)  # noqa: RUF005  (no list built on the way)
        elif more:
            self._out = (out, data)
        else:
            self._out = out + data
        self._more = more + 1

    def flush(self) -> int:
        """Write what is queued (and what its feeds hold for it); the number
        of bytes it came to."""
        out, self._out = self._out, None
        more, self._more = self._more, 0
        if self._feeds:
            return self._flush_fed(b"".join(out) if more > 1 else out)
        if out and self.state == _OPEN:
            data = b"".join(out) if more > 1 else out
            # One send() now when nothing is queued (pushd.directsend).
            write_now(self.transport, self._socket, data)
            return len(data)
        return 0

    def _flush_fed(self, out: bytes | None) -> int:
        # Taken whatever happens: the feeds are trimmed past this member.
        tail = take_all(self._feeds, self)
        if self.state != _OPEN:
            return 0
        if tail is not None:
            if self.too_far_behind(len(tail), self.factory.config.send_queue_bytes):
                self._out = out  # written before the close frame
                self._log.info("dropping slow client {id}", id=self.connection_id)
                self.close(CloseCode.SLOW_CONSUMER, "slow consumer: too far behind")
                return 0
            out = out + tail if out else tail
        if out:
            write_now(self.transport, self._socket, out)
            return len(out)
        return 0

    def close(self, code: int, reason: str) -> None:
        # Only an open connection needs closing: one already closing finishes
        # its handshake (or times out) on its own, and aborting it would
        # discard the frames still buffered for the client.
        if self.state == _OPEN:
            self.flush()  # what was queued before the close goes first
            self.factory.hub.metrics.closed_by_server(code)
            # Autobahn's public sendClose refuses the protocol-level codes
            # (1001 going away, 1009...); the frame-level call takes any.
            self.sendCloseFrame(code, reason.encode("utf-8")[:120], isReply=False)


class Flusher:
    """Connections with queued frames, written in passes of a few at a time.

    After a quiet spell a pass starts in the same reactor iteration
    (``callLater(0)`` runs before the reactor polls again), so a lone
    message costs no latency.  A pass writes the connections queued when it
    started, ``per_turn`` (``flush-slice``) of them per reactor iteration:
    one send() each is
    ~10-15 us of kernel time on loopback, so writing 1,000 subscribers in
    one go kept the reactor from reading anything for 15 ms.  Between
    slices it reads what arrived; a message published meanwhile joins the
    pending write of every connection the pass has not reached (one send()
    for both), and queues the others for the next pass, which follows at
    once.  So no connection waits for much more than one pass of writes
    after a message arrives, whatever its place in the subscriber set, and
    the busier the server, the more frames each send() carries
    (bench/README.md, "Latency").

    With ``window`` (``flush-window``) a pass starts at most once per
    ``window`` seconds after the previous one ended: messages that arrive
    one at a time (from Redis, or from publishers out of step) then share
    each connection's send() instead of paying one syscall per subscriber
    each.

    With ``copies`` (the backend's ``IInFlight``, Redis) a pass, or the
    next slice of one, does not start while this node's own publishes are
    on their way back to it: it waits until they have landed, each time at
    most ``wait`` (``flush-copy-wait``) seconds and in one pass at most
    five times that.  A publish through Redis is fanned out a reactor turn or two
    after it was read, so without the wait its copy would land just after
    the slice that could have carried it, and reach each subscriber in a
    send() of its own: a publisher through Redis then got half the frames
    per send() the memory backend gets (bench/README.md, Redis).  The wait
    is only ever for copies already sent; a backend without ``IInFlight``
    (memory) is never waited for.
    """

    def __init__(
        self,
        reactor,
        metrics,
        window: float = 0.0,
        per_turn: int = 0,
        copies: Any = None,
        wait: float = 0.0,
    ) -> None:
        self._reactor = reactor
        self._window = window
        self._copies: Any = copies if wait > 0 else None
        self._wait = wait
        self._held: float | None = None  # when the current wait began
        self._budget = wait * _PASS_WAITS  # what the current pass may still wait
        if self._copies is not None:
            self._copies.watch_landed(self._landed)
        self._slice = per_turn or 1 << 62  # 0: a pass in one go
        self._pending: list[PushServerProtocol] = []  # for the next pass
        self._feeds: list[Feed] = []  # channel feeds for the next pass
        self._trims: list[tuple[Feed, int]] = []  # feeds in this pass, and their end
        self.fed = 0  # feed frames for the metrics, counted when appended
        self._pass: list[PushServerProtocol] = []  # being written
        self._at = 0  # next index in _pass
        self._call: Any = None  # the DelayedCall; True while writing
        self._metrics = metrics
        self._last = float("-inf")

    def schedule(self, proto: PushServerProtocol) -> None:
        self._pending.append(proto)
        if self._call is None:
            self._call = self._reactor.callLater(self._delay(), self._flush)

    def schedule_feed(self, feed: Feed) -> None:
        """Every member of ``feed`` in the next pass."""
        self._feeds.append(feed)
        if self._call is None:
            self._call = self._reactor.callLater(self._delay(), self._flush)

    def _delay(self) -> float:
        if self._window:
            return max(0.0, self._last + self._window - self._reactor.seconds())
        return 0.0

    def _flush(self) -> None:
        if self._copies is not None and self._hold():
            return
        self._call = True  # schedule() only queues while a slice is written
        try:
            self._write_slice()
        finally:
            self._call = None
            if self._at < len(self._pass):
                # The rest of this pass, once the reactor has read what came in.
                self._call = self._reactor.callLater(0, self._flush)
            else:
                self._pass = []
                self._budget = self._wait * _PASS_WAITS  # the next pass's
                if self._trims:
                    # Every member present when the pass began has had
                    # those frames (one written later joined after them).
                    for feed, end in self._trims:
                        feed.trim(end)
                    self._trims = []
                if self._window:
                    # From the end: a pass longer than the window (1,000
                    # sends) still leaves the window for reading.
                    self._last = self._reactor.seconds()
                if self._pending or self._feeds:
                    self._call = self._reactor.callLater(self._delay(), self._flush)

    def _hold(self) -> bool:
        """Put off the pass, or its next slice, while our copies are in
        flight; True if put off.  One wait lasts at most ``wait`` seconds,
        and the waits of one pass add up to at most ``_PASS_WAITS`` times
        that, however many slices it has."""
        if not self._copies.in_flight():
            self._stop_holding()
            return False
        now = self._reactor.seconds()
        if self._held is None:
            self._held = now
        left = min(self._held + self._wait, now + self._budget) - now
        if left < 1e-6:
            self._stop_holding()
            return False
        self._call = self._reactor.callLater(left, self._flush)
        return True

    def _stop_holding(self) -> None:
        if self._held is not None:
            self._budget -= self._reactor.seconds() - self._held
            self._held = None

    def _landed(self) -> None:
        """The last copy in flight arrived: a held pass (or slice) goes on
        at the next reactor iteration (after everything read in this one)."""
        if self._held is not None and self._call is not None and self._call is not True:
            self._call.cancel()
            self._call = self._reactor.callLater(0, self._flush)

    def _start_pass(self) -> None:
        todo, self._pending, self._at = self._pending, [], 0
        if self._feeds:
            feeds, self._feeds = self._feeds, []
            for feed in feeds:
                feed.queued = False  # a frame appended from now: next pass
                todo += feed.pos  # every member (one queued twice writes once)
                self._trims.append((feed, feed.end))
        self._pass = todo

    def _write_slice(self) -> None:
        if not self._pass:
            self._start_pass()
        # A slice is `per_turn` connections written: members of a feed that
        # have had everything already cost a look, not a turn.
        todo, i, limit = self._pass, self._at, self._slice
        size = len(todo)
        frames, self.fed = self.fed, 0
        written = writes = 0
        while i < size and writes < limit:
            proto = todo[i]
            i += 1
            try:
                if proto._out:
                    frames += 1 + proto._more
                n = proto.flush()
            except Exception:
                PushServerProtocol._log.failure(
                    "flushing {id} failed", id=proto.connection_id
                )
                continue
            if n:
                written += n
                writes += 1
        self._at = i
        # Counted once per slice (one reactor turn), not per frame.
        self._metrics.flushed(frames, written, writes)


class PushServerFactory(WebSocketServerFactory):
    protocol = PushServerProtocol

    def __init__(self, hub, config: Config) -> None:
        super().__init__()
        self.hub = hub
        self.config = config
        self.flusher = Flusher(
            hub.clock,
            hub.metrics,
            config.flush_window,
            config.flush_slice,
            copies=hub.in_flight,
            wait=config.flush_copy_wait,
        )
        options = dict(
            maxMessagePayloadSize=config.max_message_size,
            maxFramePayloadSize=config.max_message_size,
            autoPingTimeout=config.ping_timeout,
            # The request is complete when the protocol gets it (Twisted Web
            # or the front door read it under http-header-timeout), so the
            # handshake never waits: no timer per connection.
            openHandshakeTimeout=0,
            closeHandshakeTimeout=2,
            # Send the close frame (1009, 1007...) before dropping, so the
            # client learns why it was disconnected.
            failByDrop=False,
            # Origin: null (file:// pages, sandboxed frames) is checked by
            # allowed-origins like any other origin (identify), not refused
            # with HTTP 400 by Autobahn before pushd sees it.
            allowNullOrigin=True,
        )
        if config.ping_interval:
            options["autoPingInterval"] = config.ping_interval
        self.setProtocolOptions(**options)
        freeze_options(self)

    def client_ip(self, transport, headers: dict) -> str:
        """The client's IP, through trusted proxies (pushd.limits)."""
        return client_ip(
            getattr(transport.getPeer(), "host", ""),
            headers.get("x-forwarded-for"),
            headers.get("forwarded"),
            self.config.trusted_proxies,
        )

    def check_client(self, request) -> tuple[tuple[int, str] | None, tuple]:
        """Who is connecting: ((close code, reason) to refuse, or None;
        (app, user id, user info))."""
        try:
            return None, identify(
                self.hub,
                request.params.get("key", [""])[0],
                request.params.get("token", [""])[0],
                request.headers.get("origin"),
            )
        except Refused as e:
            return (e.close_code, e.message), (None, None, None)
