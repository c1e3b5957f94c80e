"""The Redis subscriber connection: every message of one read, delivered now.

txredisapi's pure-Python reader hands over one reply per reactor iteration:
after each bulk string it pauses the transport and parses the rest of the
read in a ``callLater(0)``.  On the subscriber connection that meant one
WebSocket flush (one send() per local subscriber) per pub/sub message, which
is why fan-out through Redis delivered 0.4-0.5x what the memory backend did
(issue 16).  This protocol parses RESP2 itself and dispatches everything a
read holds before returning, so messages that arrived together share the
next flush, as HTTP publishes read in one iteration do.

Replies other than pub/sub messages (AUTH, SELECT, SUBSCRIBE...) go to
txredisapi's usual handling in the same form its own reader gives them.
"""

from __future__ import annotations

from typing import Any

import txredisapi
from twisted.logger import Logger

_INCOMPLETE = object()
_MESSAGE = b"message"
# RESP2 type bytes
_BULK, _ARRAY, _STATUS, _ERROR, _INTEGER = b"$*+-:"


def parse_reply(buf: bytes, pos: int) -> tuple[Any, int]:
    """One RESP2 reply starting at ``pos``: (reply, position after it), or
    (_INCOMPLETE, pos) while the read holds only part of it.  Bulk strings
    stay bytes; errors become txredisapi.ResponseError, as txredisapi does."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        return _INCOMPLETE, pos
    kind = buf[pos]
    if kind == _BULK:
        size = int(buf[pos + 1 : end])
        if size < 0:
            return None, end + 2
        stop = end + 2 + size
        if stop + 2 > len(buf):
            return _INCOMPLETE, pos
        return buf[end + 2 : stop], stop + 2
    if kind == _ARRAY:
        count = int(buf[pos + 1 : end])
        if count < 0:
            return None, end + 2
        items = []
        at = end + 2
        for _ in range(count):
            item, at = parse_reply(buf, at)
            if item is _INCOMPLETE:
                return _INCOMPLETE, pos
            items.append(item)
        return items, at
    line = buf[pos + 1 : end].decode("utf-8", "replace")
    if kind == _STATUS:
        return line, end + 2
    if kind == _INTEGER:
        return int(line), end + 2
    if kind == _ERROR:
        return txredisapi.ResponseError(line[4:] if line[:4] == "ERR " else line), (
            end + 2
        )
    raise ValueError("not a RESP2 reply: %r" % buf[pos : pos + 20])


class Subscriber(txredisapi.SubscriberProtocol):
    """Hands pub/sub messages and (re)connections to the backend
    (``factory.backend``: ``_subscriber_up``, ``_subscriber_down``,
    ``_received(channel, payload bytes)``)."""

    _log = Logger()
    _pending = b""

    def connectionMade(self):
        # txredisapi's connectionMade does AUTH and SELECT and fires the
        # factory's deferred: it must run first (the pitfall).
        d = super().connectionMade()
        d.addCallback(lambda _: self.factory.backend._subscriber_up(self))
        return d

    def connectionLost(self, reason):
        super().connectionLost(reason)
        self.factory.backend._subscriber_down(self)

    def dataReceived(self, data: bytes, unpause: bool = False) -> None:
        buf = self._pending + data if self._pending else data
        pos, size = 0, len(buf)
        while pos < size:
            try:
                reply, pos = parse_reply(buf, pos)
            except ValueError:
                # Not RESP: start afresh on a new connection rather than
                # guess where the next reply starts.
                self._log.failure("redis subscriber connection: unreadable reply")
                self._pending = b""
                self.transport.loseConnection()
                return
            if reply is _INCOMPLETE:
                break
            try:
                self._dispatch(reply)
            except Exception:
                self._log.failure("redis subscriber connection: handling a reply")
        self._pending = buf[pos:]

    def _dispatch(self, reply: Any) -> None:
        if (
            type(reply) is list
            and len(reply) == 3
            and reply[0] == _MESSAGE
            and type(reply[1]) is bytes
        ):
            # The hot path: one pub/sub message, its payload left as bytes
            # for the codec.
            self.factory.backend._received(reply[1].decode("utf-8"), reply[2])
        else:
            self.replyReceived(self._convert(reply))

    def _convert(self, reply: Any) -> Any:
        """What txredisapi's own reader would have handed over."""
        if type(reply) is bytes:
            return self.tryConvertData(reply)
        if type(reply) is list:
            return [self._convert(item) for item in reply]
        return reply
