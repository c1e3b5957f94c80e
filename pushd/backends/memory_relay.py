"""Relay channel state in this process: the one-node ``IRelayState``.

The memory and SQLite backends provide it, and the hub uses it directly
when a third-party backend does not (each node then has its own).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from pushd.interfaces import IRelayState


class _Entry:
    __slots__ = ("expires", "requested")

    def __init__(self, expires: float) -> None:
        self.expires = expires
        self.requested: float | None = None


@implementer(IRelayState)
class MemoryRelayState:
    """Channels in insertion order of their last renewal, so expired ones
    are found at the front and dropped as new ones arrive."""

    def __init__(self, now: Callable[[], float] | None = None) -> None:
        self._now = now or time.time
        self._relay: OrderedDict[str, _Entry] = OrderedDict()

    def _relay_entry(self, channel: str) -> _Entry | None:
        entry = self._relay.get(channel)
        if entry is not None and entry.expires <= self._now():
            del self._relay[channel]
            return None
        return entry

    def _relay_prune(self, now: float) -> None:
        while self._relay:
            channel, entry = next(iter(self._relay.items()))
            if entry.expires > now:
                break
            del self._relay[channel]

    def relay_create(self, channel: str, ttl: float) -> Deferred:
        now = self._now()
        self._relay_prune(now)
        entry = self._relay_entry(channel)
        if entry is None:
            entry = self._relay[channel] = _Entry(now + ttl)
        else:
            entry.expires = now + ttl
            self._relay.move_to_end(channel)
        return succeed(None)

    def relay_exists(self, channel: str) -> Deferred:
        return succeed(self._relay_entry(channel) is not None)

    def relay_requested(self, channel: str, now: float) -> Deferred:
        entry = self._relay_entry(channel)
        if entry is not None:
            entry.requested = now
        return succeed(entry is not None)

    def relay_last_requested(self, channel: str) -> Deferred:
        entry = self._relay_entry(channel)
        return succeed(entry.requested if entry is not None else None)

    def relay_delete(self, channel: str) -> Deferred:
        existed = self._relay_entry(channel) is not None
        self._relay.pop(channel, None)
        return succeed(existed)

    def relay_size(self) -> int:
        """Channels held, expired ones included until pruned (for tests)."""
        return len(self._relay)
