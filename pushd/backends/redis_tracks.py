"""Per-channel positions on one node, so nothing kept is missed or doubled.

A node's subscriber connection can miss messages: while it reconnects after
a Redis restart, other nodes already publish (issue 10 measured 797
acknowledged messages lost on the late node).  For channels that keep
history every message has a position (epoch, offset), so each node remembers
the last one it delivered per channel and, whenever what arrives does not
follow it (a reconnect, a gap), reads what it missed from the stored stream
and delivers that first.  Meanwhile live messages wait in a buffer, and
anything already delivered is dropped: every local subscriber gets every
stored message once, in order.

Channels without history carry no positions: after a reconnect the node
can only say that messages may have been lost, which it reports
(``IDeliveryGaps``) so the hub tells the subscribers.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from pushd.message import Message

Stream = tuple[str, int, list[Message]]  # epoch ('' if none), offset, stored

_DUP, _NEXT, _GAP = range(3)
# Reading the stream to catch up is retried for up to 10 s before the
# subscribers are told that messages may be lost.
READ_ATTEMPTS, READ_RETRY_DELAY = 20, 0.5

HISTORY_GAP = (
    "messages were dropped from the channel's history before this node read them"
)
NO_POSITIONS = (
    "this node lost its connection to Redis; messages published meanwhile "
    "may not have reached it"
)
READ_FAILED = "this node could not read the channel's history to catch up"


class Track:
    """Where one channel's local delivery stands."""

    __slots__ = ("buffer", "busy", "epoch", "offset", "refill")

    def __init__(self) -> None:
        self.epoch: str | None = None
        self.offset = 0
        # Live messages waiting while the node catches up; None when live.
        self.buffer: deque[Message] | None = deque()
        self.busy = False
        self.refill = False


class Tracks:
    """Positions of every channel this node is subscribed to."""

    _log = Logger()

    def __init__(
        self,
        deliver: Callable[[Message], None],
        read: Callable[[str], Awaitable[Stream]],
        report: Callable[[str, str, bool], None],
        wait: Callable[[float], Awaitable[Any]],
    ) -> None:
        self._deliver = deliver
        self._read = read
        self._report = report
        self._wait = wait
        self._tracks: dict[str, Track] = {}

    def __contains__(self, key: str) -> bool:
        return key in self._tracks

    def start(self, key: str) -> Track:
        """A new subscription: hold what arrives until ``settle``."""
        track = self._tracks[key] = Track()
        return track

    def drop(self, key: str) -> None:
        self._tracks.pop(key, None)

    def settle(self, key: str, epoch: str | None, offset: int) -> Deferred:
        """The subscription is live and the stream stood at (epoch, offset)
        just after it: what was held and is newer goes out."""
        track = self._tracks.get(key)
        if track is None:
            return Deferred.fromCoroutine(_nothing())
        track.epoch, track.offset = epoch or None, offset
        return self._drain(key, track)

    def hold_all(self) -> None:
        """The subscriber connection is back: hold live messages everywhere
        until ``catch_up`` has delivered what was missed."""
        for track in self._tracks.values():
            if track.buffer is None:
                track.buffer = deque()

    def catch_up(self, key: str) -> Deferred:
        track = self._tracks.get(key)
        if track is None:
            return Deferred.fromCoroutine(_nothing())
        track.refill = True
        if track.buffer is None:
            track.buffer = deque()
        return self._drain(key, track)

    def received(self, message: Message) -> None:
        """A live message: deliver it, drop it (seen) or catch up first."""
        track = self._tracks.get(message.key)
        if track is None:
            return
        if track.buffer is not None:
            track.buffer.append(message)
            return
        if message.offset is None:
            self._deliver(message)
            return
        verdict = _verdict(track, message)
        if verdict == _NEXT:
            track.epoch, track.offset = message.epoch, message.offset
            self._deliver(message)
        elif verdict == _GAP:
            track.buffer = deque([message])
            track.refill = True
            self._drain(message.key, track)

    def _drain(self, key: str, track: Track) -> Deferred:
        if track.busy:
            return Deferred.fromCoroutine(_nothing())
        d = Deferred.fromCoroutine(self._drain_now(key, track))
        d.addErrback(lambda f: self._log.failure("catching up {key}", f, key=key))
        return d

    async def _drain_now(self, key: str, track: Track) -> None:
        track.busy = True
        filled = False
        try:
            while self._tracks.get(key) is track:
                if track.refill:
                    track.refill = False
                    await self._fill(key, track)
                    filled = True
                if not track.buffer:
                    break
                message = track.buffer.popleft()
                if message.offset is None:
                    self._deliver(message)
                    continue
                verdict = _verdict(track, message)
                if verdict == _GAP and not filled:
                    track.buffer.appendleft(message)
                    track.refill = True
                    continue
                if verdict != _DUP:
                    track.epoch, track.offset = message.epoch, message.offset
                    self._deliver(message)
                    filled = False
            track.buffer = None
        finally:
            track.busy = False

    async def _fill(self, key: str, track: Track) -> None:
        """Deliver what the stream holds after the track's position."""
        for _ in range(READ_ATTEMPTS):
            try:
                epoch, offset, stored = await self._read(key)
                break
            except Exception:
                # Redis went away again while we caught up: hold on (live
                # messages wait) rather than skip what is stored.
                if self._tracks.get(key) is not track:
                    return
                await self._wait(READ_RETRY_DELAY)
        else:
            self._report(key, READ_FAILED, True)
            return
        if not epoch:
            if track.epoch is None:
                self._report(key, NO_POSITIONS, False)
            return
        if epoch == track.epoch:
            missing = [m for m in stored if (m.offset or 0) > track.offset]
            # offset < track.offset: Redis came back with an older copy
            # (appendfsync everysec) and will reuse positions we delivered.
            complete = track.offset == offset or (
                track.offset < offset
                and bool(stored)
                and (stored[0].offset or 0) <= track.offset + 1
            )
        else:
            missing = stored
            complete = offset == 0 or (bool(stored) and stored[0].offset == 1)
        for message in missing:
            self._deliver(message)
        track.epoch, track.offset = epoch, offset
        if not complete:
            self._report(key, HISTORY_GAP, True)


def _verdict(track: Track, message: Message) -> int:
    assert message.offset is not None
    if message.epoch == track.epoch:
        if message.offset <= track.offset:
            return _DUP
        return _NEXT if message.offset == track.offset + 1 else _GAP
    return _NEXT if message.offset == 1 else _GAP


async def _nothing() -> Any:
    return None
