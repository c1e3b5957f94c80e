"""HTTP requests that cannot hold the server: body limits and deadlines.

Twisted Web reads a whole body before rendering and waits for headers and
bodies as long as bytes keep trickling in (its idle timeout restarts with
every byte).  So one client could make the server buffer a declared 50 MB
body before it was told 413, or hold a connection forever with a header a
minute (issue 11).  Here:

* a ``Content-Length`` over the limit is answered 413 at once, before any
  of the body is read, and the connection closed; a chunked body is cut off
  the same way the moment it passes the limit;
* headers must be complete ``http-header-timeout`` seconds after the
  connection opened (or after the first byte of a later request on it),
  and a body ``http-body-timeout`` seconds after its headers; otherwise 408
  and the connection is closed.

Long-lived responses (SSE, long polls, WebSocket) are unaffected: the
deadlines end when the request has been read.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from twisted.web.http import HTTPChannel
from twisted.web.server import Request

from pushd.errors import BodyTooLarge, PushdError
from pushd.message import encode_json
from pushd.transports.upgrade import HEAD_LIMIT, take_over, upgrade_endpoint

LINGER = 2.0  # seconds a refused client may keep sending before it is cut off


class RequestTimeout(PushdError):
    code = "request_timeout"
    status = 408


class PushRequest(Request):
    """A request that never buffers a body past the site's limit."""

    body_too_large = False

    @property
    def max_body(self) -> int:
        site: Any = self.channel.site  # type: ignore[attr-defined]
        return site.max_body

    def gotLength(self, length):
        if length is not None and length > self.max_body:
            self.body_too_large = True
            self.channel.refuse(self._too_large())
            length = 0
        super().gotLength(length)

    def handleContentChunk(self, data):
        if self.body_too_large:
            return
        if self.content.tell() + len(data) > self.max_body:
            self.body_too_large = True
            self.content.seek(0)
            self.content.truncate()
            self.channel.refuse(self._too_large())
            return
        super().handleContentChunk(data)

    def _too_large(self) -> BodyTooLarge:
        return BodyTooLarge("body exceeds %d bytes" % self.max_body)


class PushHTTPChannel(HTTPChannel):
    """Deadlines on reading each request; early refusals that close; a
    first request that is a plain WebSocket upgrade goes straight to its
    endpoint (pushd.transports.upgrade)."""

    _deadline: Any = None
    _refused = False
    _fresh = True  # nothing read yet

    def connectionMade(self):
        super().connectionMade()
        self._arm(self.site.header_timeout, "headers")

    def dataReceived(self, data):
        if self._refused:
            return  # what follows a refusal is never read as a request
        if self._fresh:
            self._fresh = False
            if self._upgraded(data):
                return
        if (
            self._deadline is None
            and not self._handlingRequest
            and self._HTTPChannel__first_line  # waiting for a request line
        ):
            self._arm(self.site.header_timeout, "headers")
        super().dataReceived(data)

    def _upgraded(self, data: bytes) -> bool:
        """Hand the connection to a WebSocket endpoint if ``data`` starts
        with a whole, plain upgrade request for one."""
        upgrades = getattr(getattr(self, "site", None), "upgrades", None)
        end = data.find(b"\r\n\r\n", 0, HEAD_LIMIT + 4)
        if not upgrades or end < 0:
            return False
        factory = upgrades.get(upgrade_endpoint(data[:end]))
        if factory is None:
            return False
        self._disarm()
        self.setTimeout(None)
        transport: Any = self.transport
        self.transport = None
        take_over(factory, transport, transport.getPeer(), data)
        return True

    def allHeadersReceived(self):
        self._disarm()
        super().allHeadersReceived()
        if self.length != 0 and not self._refused:
            self._arm(self.site.body_timeout, "body")

    def allContentReceived(self):
        self._disarm()
        super().allContentReceived()

    def connectionLost(self, reason):
        self._disarm()
        super().connectionLost(reason)

    def refuse(self, error: PushdError) -> None:
        """Answer ``error`` now, whatever the request's state, and close."""
        if self._refused or self.transport is None:
            return
        self._refused = True
        self._disarm()
        body = encode_json(error.as_json())
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\n"
            b"cache-control: no-store\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n%s"
            % (
                error.status,
                error.code.replace("_", " ").encode("ascii"),
                len(body),
                body,
            )
        )
        # Lingering close: stop writing but read (and drop) what the client
        # still sends for a moment; closing with its body unread would reset
        # the connection and could discard the answer before it is read.
        self._networkProducer.unregisterProducer()
        if hasattr(self.transport, "loseWriteConnection"):
            self.transport.loseWriteConnection()
            transport: Any = self.transport
            self._deadline = self.callLater(LINGER, transport.abortConnection)
        else:
            self.transport.loseConnection()

    def _arm(self, seconds: float, what: str) -> None:
        self._disarm()
        self._deadline = self.callLater(seconds, partial(self._expired, seconds, what))

    def _disarm(self) -> None:
        if self._deadline is not None:
            if self._deadline.active():
                self._deadline.cancel()
            self._deadline = None

    def _expired(self, seconds: float, what: str) -> None:
        self._deadline = None
        self.refuse(
            RequestTimeout("request %s not received within %gs" % (what, seconds))
        )
