"""The listening port's front door: keep-alive publishes without Twisted Web.

A backend publishing one message per request pays for Twisted Web's HTTP/1.1
channel and Request objects on every one of them; profiled, that was ~45% of
a publish once routing had been trimmed (bench/README.md).  So every
connection starts here.  Request heads are parsed with httptools (llhttp,
Node's parser), and the three publish routes:

* ``POST /api/channels/{channel}/messages``
* ``POST /api/messages``
* ``POST /api/batch``

are answered here, by the same route code (pushd.api.native) on a small
request object (pushd.fastrequest), with the bytes Twisted Web would send.

Anything else, and anything this door is not sure about (another method or
path, a percent-encoded channel, no or several Content-Lengths, a body over
``max-message-size``, chunked bodies, ``Expect``, ``Upgrade``, more than
``HEAD_LIMIT`` bytes or ``HEADER_LIMIT`` lines of headers, bytes llhttp
rejects, TLS that negotiated HTTP/2), is handed with the bytes received
since the last request boundary to Twisted Web's channel
(pushd.httpchannel.PushHTTPChannel), which keeps the connection from then
on: its answers, limits and errors are exactly those of before.  The header
and body deadlines of pushd.httpchannel hold here too (a late request is
handed over and refused 408 there), as does Twisted Web's idle timeout.

``http-fast-path: false`` turns the door off (every connection goes straight
to Twisted Web).
"""

from __future__ import annotations

import re
from typing import Any

import httptools
from twisted.internet import tcp
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from pushd.api.front import failure_response
from pushd.directsend import write_now
from pushd.fastrequest import FastRequest
from pushd.transports.upgrade import take_over, upgrade_endpoint

HEAD_LIMIT = 8192  # bytes of request line and headers served here
HEADER_LIMIT = 64  # header lines served here
ABORT_AFTER = 15.0  # Twisted Web's abortTimeout after an idle timeout

# The request-target of a route served here: printable ASCII, no
# percent-escapes in the path (Twisted would decode them; werkzeug decides).
_ROUTES = re.compile(
    rb"/api/(?:channels/([!-$&-.0-9:->@-~]+)/messages|messages|batch)(?:\?[!-~]*)?\Z"
)
_REFUSE = frozenset(
    (b"transfer-encoding", b"expect", b"upgrade", b"content-encoding", b"te")
)


class _Unsure(Exception):
    """The head is not one this door serves."""


class _Head:
    """httptools callbacks: collects one request head."""

    __slots__ = ("headers", "lengths", "raw", "url")

    def __init__(self) -> None:
        self.url = b""
        self.headers: dict[bytes, bytes] = {}
        self.raw: list = []
        self.lengths = 0

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        low = name.lower()
        if low in _REFUSE or len(self.raw) >= HEADER_LIMIT:
            raise _Unsure()
        if low == b"content-length":
            self.lengths += 1
        self.headers[low] = value
        self.raw.append((name, value))


@implementer(IPushProducer)
class FrontDoor(Protocol):
    """One connection: publishes served here until the first request that is
    not, then Twisted Web's channel for good."""

    _log = Logger()
    transport: Any  # a TCP (or TLS) transport: a producer/consumer too

    def __init__(self, site: Any, addr: Any) -> None:
        self._site = site
        self._addr = addr
        self._routes = site.fast_routes  # name -> async handler(request[, channel])
        self._buf = b""
        self._handed: Any = None  # Twisted Web's channel, once handed over
        self._head: tuple | None = None  # (request, body start, length) parsed
        self._busy = False  # answering a request (the backend is publishing)
        self._full = False  # the transport's write buffer is full
        self._reading = True
        self._done = False  # the last answer closes the connection
        self._wait: str | None = None  # "headers" or "body" while one is late
        self._wait_start = 0.0
        self._last_read = 0.0
        self._timer: Any = None
        self._first = True  # no byte read yet
        self._looping = False  # inside _serve_buffered
        self._lost = False
        self._out: list[bytes] = []  # answers not yet written
        self._socket: Any = None  # for direct sends (plain TCP only)

    # -- connection ------------------------------------------------------

    def connectionMade(self) -> None:
        self.transport.registerProducer(self, True)
        # Direct sends only on a plain TCP transport whose buffer we can
        # see (as pushd.transports.websocket); TLS goes through write().
        if isinstance(self.transport, tcp.Connection) and hasattr(
            self.transport, "_tempDataLen"
        ):
            self._socket = self.transport.getHandle()
        now = self._site.reactor.seconds()
        self._wait, self._wait_start, self._last_read = "headers", now, now
        first = self._site.header_timeout
        if self._site.timeOut is not None:
            first = min(first, self._site.timeOut)
        self._timer = self._site.reactor.callLater(first, self._tick)

    def dataReceived(self, data: bytes) -> None:
        if self._handed is not None:
            self._handed.dataReceived(data)
            return
        if self._done:
            return  # Twisted Web drops what follows a closing answer too
        if self._first:
            # The first bytes: TLS that chose HTTP/2 is Twisted Web's.
            self._first = False
            if getattr(self.transport, "negotiatedProtocol", None) not in (
                None,
                b"http/1.1",
            ):
                self._buf = data
                self._hand_over()
                return
        self._last_read = self._site.reactor.seconds()
        self._buf = self._buf + data if self._buf else data
        self._serve_buffered()
        if self._busy and len(self._buf) > self._site.max_body + HEAD_LIMIT:
            self._read(False)  # pipelined requests wait for the one in flight

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._lost = True
        self._cancel_timer()
        if self._handed is not None:
            self._handed.connectionLost(reason)
        self._buf = b""

    # -- IPushProducer: the transport's write buffer ----------------------

    def pauseProducing(self) -> None:
        self._full = True
        self._read(False)

    def resumeProducing(self) -> None:
        self._full = False
        if not self._busy:
            self._read(True)
            self._serve_buffered()

    def stopProducing(self) -> None:
        pass  # connectionLost follows

    def _read(self, on: bool) -> None:
        if on != self._reading and self.transport is not None:
            self._reading = on
            if on:
                self.transport.resumeProducing()
            else:
                self.transport.pauseProducing()

    # -- requests --------------------------------------------------------

    def _serve_buffered(self) -> None:
        """Serve every complete request buffered, in order, until one is
        answered later, one is handed over, or the rest is incomplete."""
        if self._looping:
            return  # an answer given at once: the loop below goes on
        self._looping = True
        try:
            self._serve_loop()
        finally:
            self._looping = False
        self._flush()

    def _serve_loop(self) -> None:
        while self._buf and not (self._busy or self._full or self._done):
            if self._handed is not None:
                return
            if self._head is None:
                end = self._buf.find(b"\r\n\r\n", 0, HEAD_LIMIT)
                if end < 0:
                    if len(self._buf) >= HEAD_LIMIT or not self._buf[:1].isupper():
                        self._hand_over()
                    else:
                        self._waiting("headers")
                    return
                if self._buf.startswith(b"GET ") and self._upgrade(end):
                    return
                self._head = self._parse(end + 4)
                if self._head is None:
                    self._hand_over()
                    return
            request, start, length = self._head
            if len(self._buf) < start + length:
                self._waiting("body")
                return
            self._head, self._wait = None, None
            request.raw_body = self._buf[start : start + length]
            self._buf = self._buf[start + length :]
            self._answer(request)

    def _parse(self, head_end: int) -> tuple | None:
        """(request, body start, body length) of a head served here."""
        head = _Head()
        parser = httptools.HttpRequestParser(head)
        try:
            parser.feed_data(self._buf[:head_end])
        except Exception:  # llhttp's errors and _Unsure
            return None
        match = _ROUTES.match(head.url)
        if match is None or head.lengths != 1 or parser.get_method() != b"POST":
            return None
        length = int(head.headers[b"content-length"])
        if length > self._site.max_body:
            return None  # Twisted Web answers 413 at once
        version = parser.get_http_version()
        if version not in ("1.1", "1.0"):
            return None
        request = FastRequest(
            b"POST",
            head.url,
            b"HTTP/" + version.encode("ascii"),
            head.headers,
            head.raw,
            self.transport,
        )
        request.route = match
        return request, head_end, length

    def _answer(self, request: FastRequest) -> None:
        match = request.route
        channel = match.group(1)
        if channel is not None:
            handler = self._routes["publish"]
            coro = handler(request, channel.decode("ascii"))
        else:
            name = match.group(0)[5:].partition(b"?")[0].decode("ascii")
            coro = self._routes[name](request)
        self._busy = True
        self._step(None, coro, request)

    def _step(self, result: object, coro: Any, request: FastRequest) -> None:
        """Run the route's coroutine up to its next wait (a Deferred not yet
        fired: a backend round trip) or its end, without a Deferred of its
        own when it ends at once (the memory backend, or a refusal).  As
        Twisted's inlineCallbacks: a failure is thrown in where it waited, a
        result is read there from the Deferred itself."""
        try:
            if isinstance(result, Failure):
                waiting = result.throwExceptionIntoGenerator(coro)
            else:
                waiting = coro.send(None)
        except StopIteration as done:
            self._respond(request, done.value)
            return
        except Exception:
            self._respond(request, failure_response(request, Failure(), self._log))
            return
        if isinstance(waiting, Deferred):
            waiting.addBoth(self._step, coro, request)
            return
        coro.close()  # only Deferreds can be awaited under Twisted
        error = TypeError("awaited %r, not a Deferred" % (waiting,))
        self._respond(request, failure_response(request, Failure(error), self._log))

    def _respond(self, request: FastRequest, body: bytes) -> None:
        self._busy = False
        if self._lost:
            return  # the client left while it was published
        persistent = request.persistent()
        self._out.append(request.response(body, persistent))
        if self._site.access_log:
            self._site.log(request)  # type: ignore[arg-type]
        if not persistent:
            self._done = True
            self._buf = b""
            self._flush()
            self.transport.loseConnection()
            return
        if self._looping:
            return  # the loop serves the next request, and writes at its end
        if not self._full:
            self._read(True)
            self._serve_buffered()
        self._flush()

    def _flush(self) -> None:
        """Write the answers given, with one send() when the socket takes
        them all (no write registration, no extra reactor turn)."""
        if not self._out or self._lost:
            return
        data = b"".join(self._out) if len(self._out) > 1 else self._out[0]
        self._out = []
        write_now(self.transport, self._socket, data)

    # -- WebSocket ---------------------------------------------------------

    def _upgrade(self, head_end: int) -> bool:
        """A plain WebSocket upgrade of /ws or /app/{key} goes straight to
        its endpoint's protocol (pushd.transports.upgrade), with the bytes
        from the request on."""
        endpoint = upgrade_endpoint(self._buf[:head_end])
        factory = self._site.upgrades.get(endpoint) if endpoint else None
        if factory is None:
            return False
        self._flush()
        self._cancel_timer()
        self.transport.unregisterProducer()
        self._read(True)
        buf, self._buf = self._buf, b""
        self._handed = take_over(factory, self.transport, self._addr, buf)
        return True

    # -- Twisted Web -----------------------------------------------------

    def _hand_over(self) -> Any:
        """From here on, Twisted Web's channel has the connection, starting
        with the buffered bytes (a request boundary)."""
        self._flush()
        self._cancel_timer()
        self.transport.unregisterProducer()
        self._read(True)
        channel = self._site.twisted_protocol(self._addr)
        self._handed = channel
        channel.makeConnection(self.transport)
        if self._wait == "headers":  # the deadline runs on, not anew
            left = self._wait_start + self._site.header_timeout
            channel._channel._arm(
                max(0.0, left - self._site.reactor.seconds()), "headers"
            )
        buf, self._buf = self._buf, b""
        if buf:
            channel.dataReceived(buf)
        return channel

    # -- deadlines ---------------------------------------------------------

    def _waiting(self, what: str) -> None:
        """A request is incomplete: its deadline runs (from its first byte,
        or from the end of its headers for the body)."""
        if self._wait == what:
            return
        now = self._site.reactor.seconds()
        self._wait, self._wait_start = what, now
        due = now + self._limit(what)
        if self._timer is None or not self._timer.active():
            self._timer = self._site.reactor.callLater(due - now, self._tick)
        elif self._timer.getTime() > due:
            self._timer.reset(due - now)

    def _limit(self, what: str) -> float:
        if what == "headers":
            return self._site.header_timeout
        return self._site.body_timeout

    def _tick(self) -> None:
        """The connection's one timer: a late request, or an idle one."""
        self._timer = None
        if self._handed is not None or self._done or self.transport is None:
            return
        now = self._site.reactor.seconds()
        due = None
        if self._wait is not None and not self._busy:
            limit = self._limit(self._wait)
            due = self._wait_start + limit
            if now >= due:
                self._hand_over()._channel._expired(limit, self._wait)
                return
        if self._site.timeOut is not None:
            idle = self._last_read + self._site.timeOut
            if self._busy:  # answering is not idling
                idle = max(idle, now + self._site.timeOut)
            elif now >= idle:
                self._time_out()
                return
            due = idle if due is None else min(due, idle)
        if due is not None:
            self._timer = self._site.reactor.callLater(due - now, self._tick)

    def _time_out(self) -> None:
        """Twisted Web's idle timeout (HTTPChannel.timeoutConnection)."""
        self._log.info("Timing out client: {peer}", peer=str(self.transport.getPeer()))
        self._done = True
        self.transport.loseConnection()
        self._timer = self._site.reactor.callLater(
            ABORT_AFTER, self.transport.abortConnection
        )

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
