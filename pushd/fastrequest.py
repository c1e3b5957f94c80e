"""A request read by pushd.frontdoor, shaped like Twisted Web's for the API code.

The publish routes (pushd.api.native) read a request's method, URI, headers
and body and set a status and headers through ``json_response``; the access
log reads a few more attributes.  This object offers exactly those, so the
front door runs the very same route code as Twisted Web does, and answers
with the bytes Twisted Web would write (status line, ``Server`` and ``Date``
first, then the route's headers in the order it set them).
"""

from __future__ import annotations

import time
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.web.http import RESPONSES, datetimeToString
from twisted.web.http_headers import Headers, _nameEncoder
from twisted.web.server import version as SERVER

_CANONICAL: dict[bytes, bytes] = {}


def _canonical(name: bytes) -> bytes:
    """``content-type`` -> ``Content-Type``, as Twisted Web writes names."""
    found = _CANONICAL.get(name)
    if found is None:
        found = _CANONICAL[name] = _nameEncoder.encode(name)
    return found


class _Clock:
    """``Server`` and ``Date`` lines, made once a second (Twisted Web formats
    the date for every request)."""

    second = -1
    lines = b""

    def server_and_date(self) -> bytes:
        now = int(time.time())
        if now != self.second:
            self.second = now
            self.lines = b"Server: %s\r\nDate: %s\r\n" % (
                SERVER,
                datetimeToString(now),
            )
        return self.lines


CLOCK = _Clock()


class FastRequest:
    """One complete request (head and body) and the answer being built."""

    body_too_large = False  # the front door hands larger bodies to Twisted Web
    content = None
    code = 200
    sentLength = 0
    route: Any = None  # the front door's match of the request-target

    def __init__(
        self,
        method: bytes,
        uri: bytes,
        clientproto: bytes,
        headers: dict[bytes, bytes],
        raw_headers: list,
        transport: Any,
    ) -> None:
        self.method = method
        self.uri = uri
        self.clientproto = clientproto
        self._headers = headers  # lowercased name -> last value, as getHeader
        self._raw_headers = raw_headers  # (name, value) in order, for the log
        self.transport = transport
        self.raw_body = b""
        self.response_headers: dict[bytes, bytes] = {}

    # -- what the routes read -------------------------------------------

    def getHeader(self, name: bytes) -> bytes | None:
        return self._headers.get(name.lower())

    @property
    def requestHeaders(self) -> Headers:
        """All headers, as Twisted Web keeps them (the access log joins
        repeated forwarding headers)."""
        headers = Headers()
        for name, value in self._raw_headers:
            headers.addRawHeader(name, value)
        return headers

    def getClientAddress(self) -> IPv4Address | IPv6Address:
        return self.transport.getPeer()

    # -- what the routes write ------------------------------------------

    def setResponseCode(self, code: int, message: bytes | None = None) -> None:
        self.code = code

    def setHeader(self, name: bytes, value: bytes) -> None:
        self.response_headers[name.lower()] = value

    def persistent(self) -> bool:
        """Twisted Web's rule (HTTPChannel.checkPersistence): HTTP/1.1 stays
        open unless the first Connection header has a ``close`` token."""
        if self.clientproto != b"HTTP/1.1":
            return False
        if b"connection" not in self._headers:
            return True
        first = next(v for n, v in self._raw_headers if n.lower() == b"connection")
        return b"close" not in [t.lower() for t in first.split(b" ")]

    def response(self, body: bytes, persistent: bool) -> bytes:
        """The whole answer, byte for byte as Twisted Web would send it."""
        headers = self.response_headers
        if b"content-length" not in headers:  # Twisted sets it for bytes
            headers[b"content-length"] = b"%d" % len(body)
        self.sentLength = len(body)
        lines = [
            b"%s %d %s\r\n"
            % (self.clientproto, self.code, RESPONSES.get(self.code, b"Unknown Status"))
        ]
        if not persistent and self.clientproto == b"HTTP/1.1":
            lines.append(b"Connection: close\r\n")
        lines.append(CLOCK.server_and_date())
        for name, value in headers.items():
            lines.append(b"%s: %s\r\n" % (_canonical(name), value))
        lines.append(b"\r\n")
        lines.append(body)
        return b"".join(lines)
