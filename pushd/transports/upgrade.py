"""WebSocket upgrades straight to Autobahn, without Twisted Web's request.

Through Twisted Web a handshake built an HTTP channel and a Request,
walked the resource tree, and WebSocketResource wrote the request back
into bytes for Autobahn to read again: about a fifth of a handshake
(bench/connections.py).  A connection's first request that is a plain
WebSocket upgrade of a pushd endpoint (``GET /ws`` or ``GET /app/{key}``,
HTTP/1.1, no body, well-formed header lines, the whole head in hand) is
given to the endpoint's protocol directly, with the bytes read so far;
Autobahn then reads it as it did behind WebSocketResource (same answers,
same refusals).  Every other request goes to Twisted Web as before.
"""

from __future__ import annotations

import re
from typing import Any

from twisted.protocols.policies import ProtocolWrapper

HEAD_LIMIT = 8192  # bytes of request line and headers taken here
HEADER_LIMIT = 64  # header lines taken here

# The request line of an upgrade served here: the path exactly /ws or
# /app/{key} (no percent-escapes, which Twisted Web would decode).
_TARGET = re.compile(rb"GET /(ws|app/[-.0-9A-Z_a-z~]+)(?:\?[!-~]*)? HTTP/1\.1\Z")
# A header line Twisted Web accepts: a token, a colon, a value.
_HEADER = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+:[^\r\n]*\Z")
# What makes a request not a plain upgrade, or one Twisted Web answers.
_NOT_HERE = (b"content-length:", b"transfer-encoding:", b"expect:")


def upgrade_endpoint(head: bytes) -> bytes | None:
    """``b"ws"`` or ``b"app"`` when ``head`` (request line and headers,
    without the blank line) is a plain WebSocket upgrade of that endpoint;
    None: Twisted Web's request."""
    if len(head) > HEAD_LIMIT:
        return None
    lines = head.split(b"\r\n")
    if len(lines) > HEADER_LIMIT + 1:
        return None
    match = _TARGET.match(lines[0])
    if match is None:
        return None
    upgrade = False
    for line in lines[1:]:
        if _HEADER.match(line) is None:
            return None
        lower = line[:20].lower()
        if lower.startswith(_NOT_HERE):
            return None
        upgrade = upgrade or lower.startswith(b"upgrade:")
    if not upgrade:
        return None
    return match.group(1).partition(b"/")[0]


def take_over(factory: Any, transport: Any, addr: Any, data: bytes) -> Any:
    """Give ``transport`` to a new protocol of ``factory`` and feed it
    ``data`` (the request head and whatever followed it)."""
    proto = factory.buildProtocol(addr)
    if isinstance(transport, ProtocolWrapper):  # TLS
        transport.wrappedProtocol = proto
    elif isinstance(getattr(transport, "protocol", None), ProtocolWrapper):
        transport.protocol.wrappedProtocol = proto
    else:
        transport.protocol = proto
    proto.makeConnection(transport)
    proto.dataReceived(data)
    return proto
