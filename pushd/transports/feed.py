"""One channel's frames for its WebSocket subscribers, shared until written.

Fanning a publish out one call per subscriber cost 1.3-2 us per delivery
on the 1 x 1,000 fan-out: a third of the server's CPU at half load, and
since it ran between the Flusher's slices it stretched every pass, which
is what the p99 at half load is made of (bench/README.md, "Latency").
Here a publish appends its frame to the channel's feed once, whatever the
number of subscribers, and each subscriber takes the frames it has not had
when the Flusher writes it: per delivery, what is left is that write.

What a subscriber gets is what it would have got one call at a time:

* each member has a position in the feed (the first frame published after
  it joined); a write takes everything from there, in order, in one send();
* anything queued to a connection directly (a reply, a filtered message)
  first moves its pending feed frames into its own queue (``settle``), so
  frames never overtake each other; frames of several feeds are merged by
  a stamp every appended frame gets;
* leaving (unsubscribe, close) settles too: what was published while it
  was subscribed is still delivered, nothing after.

Frames stay shared until every member present when a pass started has
been written by it; then the pass trims them, so a feed holds at most
about two passes of frames however many subscribers it has.  A member
whose transport is paused (a slow client) is written as usual and counted
against ``send-queue-bytes`` (pushd.transports.SlowConsumerGuard).
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import count
from typing import Any

from pushd.message import Outgoing

# The order of every frame appended to any feed of this process: frames of
# several feeds for one connection are merged by it.
_order = count()


class Feed:
    __slots__ = (
        "_flusher",
        "_joined",
        "_make",
        "base",
        "frames",
        "pos",
        "queued",
        "stamps",
    )

    def __init__(self, flusher: Any, make: Callable[[Outgoing], bytes]) -> None:
        self._flusher = flusher
        self._make = make  # the members' wire form of a message
        self.base = 0  # absolute index of frames[0]
        self.frames: list[bytes] = []
        self.stamps: list[int] = []  # each frame's place in _order
        self.pos: dict[Any, int] = {}  # member -> absolute index of its next frame
        self.queued = False  # in the Flusher's next pass
        # The frames from one position on, joined: members written in one
        # pass mostly start at the same position, so it is joined once.
        self._joined: tuple[int, int, bytes] = (-1, -1, b"")

    @property
    def end(self) -> int:
        return self.base + len(self.frames)

    def append(self, outgoing: Outgoing) -> None:
        """One publish for every member: the frame is built and stored once."""
        self.frames.append(self._make(outgoing))
        self.stamps.append(next(_order))
        flusher = self._flusher
        flusher.fed += len(self.pos)
        if not self.queued:
            self.queued = True
            flusher.schedule_feed(self)

    def join(self, member: Any) -> None:
        """From now on: ``member`` gets the frames appended after this."""
        self.pos[member] = self.base + len(self.frames)
        member._feeds += (self,)

    def leave(self, member: Any) -> None:
        """``member`` keeps what was appended until now, and gets no more."""
        if member not in self.pos:
            return
        member.settle()
        del self.pos[member]
        member._feeds = tuple(f for f in member._feeds if f is not self)

    def take(self, member: Any) -> bytes | None:
        """The frames ``member`` has not had, joined; it has had them now."""
        p = self.pos[member]
        end = self.base + len(self.frames)
        if p >= end:
            return None
        self.pos[member] = end
        joined = self._joined
        if joined[0] == p and joined[1] == end:
            return joined[2]
        p = max(p, self.base)
        data = (
            b"".join(self.frames[p - self.base :]) if end - p > 1 else self.frames[-1]
        )
        self._joined = (p, end, data)
        return data

    def take_stamped(self, member: Any) -> list[tuple[int, bytes]]:
        """Like ``take``, frame by frame with their stamps (for merging the
        feeds of a member of several)."""
        p = self.pos[member]
        end = self.base + len(self.frames)
        if p >= end:
            return []
        self.pos[member] = end
        i = max(p, self.base) - self.base
        return list(zip(self.stamps[i:], self.frames[i:], strict=True))

    def trim(self, upto: int) -> None:
        """Drop the frames before ``upto``: every member has had them."""
        drop = upto - self.base
        if drop > 0:
            del self.frames[:drop]
            del self.stamps[:drop]
            self.base = upto


def take_all(feeds: tuple[Feed, ...], member: Any) -> bytes | None:
    """Everything ``member``'s feeds hold for it, in the order appended."""
    if len(feeds) == 1:
        return feeds[0].take(member)
    stamped: list[tuple[int, bytes]] = []
    for feed in feeds:
        stamped += feed.take_stamped(member)
    if not stamped:
        return None
    stamped.sort()  # stamps are unique: the frames are never compared
    return b"".join(frame for _, frame in stamped)
