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


class CommandProtocol(txredisapi.RedisProtocol):  # type: ignore[misc,valid-type]
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
