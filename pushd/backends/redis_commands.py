"""The Redis command connection's protocol: txredisapi's, with cheaper commands.

txredisapi builds every command through a generic encoder that makes two
calls and a bytearray copy per argument (13 calls for one publish's EVALSHA:
a tenth of a publish's cost on this node, bench/compare.py with one
subscriber).  Strings and bytes, all pushd sends, are framed here in one
pass; anything else goes to txredisapi's encoder, so the bytes on the wire
and the errors stay as they were.  Replies are read by txredisapi's own
reader (hiredis' C parser when installed, which setup.py asks for).
"""

from __future__ import annotations

from typing import Any

import txredisapi
from twisted.internet import tcp

from pushd.directsend import write_now


class CommandProtocol(txredisapi.RedisProtocol):  # type: ignore[misc,valid-type]
    _socket: Any = None

    def connectionMade(self):
        transport: Any = self.transport
        if isinstance(transport, tcp.Connection):
            self._socket = transport.getHandle()
        return super().connectionMade()

    def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        """Sent at once (pushd.directsend), not at the reactor's next write
        turn: a publish's copy then comes back from Redis one reactor turn
        sooner, and under load joins a WebSocket flush in progress as a
        publish on the memory backend does (bench/README.md, Redis).
        txredisapi's pipelining hands the command over instead of writing
        it; it is taken back here and written."""
        if self.pipelining or self._socket is None or not self.connected:  # type: ignore[has-type]
            return super().execute_command(*args, **kwargs)
        self.pipelining = True
        try:
            result = super().execute_command(*args, **kwargs)
        finally:
            self.pipelining = False
        self.pipelined_replies.pop()
        write_now(self.transport, self._socket, self.pipelined_commands.pop())
        return result

    def _build_command(self, *args: Any, **kwargs: Any) -> bytes:
        if self.charset is None:
            return super()._build_command(*args, **kwargs)
        parts = [b"*%d\r\n" % len(args)]
        append = parts.append
        for arg in args:
            kind = type(arg)
            if kind is str:
                try:
                    arg = arg.encode(self.charset, self.errors)
                except UnicodeError:
                    arg = self._encode_value(arg)  # its InvalidData
            elif kind is not bytes:
                arg = self._encode_value(arg)
            append(b"$%d\r\n" % len(arg))
            append(arg)
            append(b"\r\n")
        return b"".join(parts)
