"""Cost of the WebSocket wire forms: pushd's own frame and Pusher's.

    python bench/wireforms.py

Prints, as medians of 5 runs of 3x20000 calls, the cost of encoding one
message once per publish (what one publish costs per node, whatever the
number of subscribers) and of fetching the cached form per delivery (what
each subscriber costs).  Per delivery both should be a dictionary lookup.
"""

from __future__ import annotations

import os
import statistics
import sys
import timeit

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pushd.message import Message, Outgoing
from pushd.transports.pusher import _encode
from pushd.transports.websocket import text_frame

MESSAGE = Message(
    "news",
    "App\\Events\\OrderShipped",
    {"order": {"id": 9, "items": list(range(20))}},
    "abc",
    "default",
)


def main() -> None:
    cached = Outgoing(MESSAGE)
    cached.wire("ws", text_frame)
    cached.wire_of("pusher", _encode)
    cases = [
        (
            "encode per publish, native",
            lambda: Outgoing(MESSAGE).wire("ws", text_frame),
        ),
        (
            "encode per publish, pusher",
            lambda: Outgoing(MESSAGE).wire_of("pusher", _encode),
        ),
        ("per delivery (cached), native", lambda: cached.wire("ws", text_frame)),
        ("per delivery (cached), pusher", lambda: cached.wire_of("pusher", _encode)),
    ]
    for name, call in cases:
        runs = [
            min(timeit.repeat(call, number=20000, repeat=3)) / 20000 * 1e6
            for _ in range(5)
        ]
        print("%-32s median %.2f us" % (name, statistics.median(runs)))


if __name__ == "__main__":
    main()
