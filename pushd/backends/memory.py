"""The embedded default backend: one node, everything in this process.

It is also the reference implementation of ``IBackend``: the contract suite
in ``pushd.testing`` runs against it first.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from zope.interface import implementer

from pushd.backends import parse_argstring
from pushd.interfaces import Deliver, IBackend
from pushd.message import Message


@implementer(IBackend)
class MemoryBackend:
    _log = Logger()

    def __init__(self) -> None:
        self._subscribers: dict[str, list[Deliver]] = {}
        self._occupancy: dict[str, int] = {}

    def start(self) -> Deferred:
        return succeed(None)

    def stop(self) -> Deferred:
        self._subscribers.clear()
        self._occupancy.clear()
        return succeed(None)

    def publish(self, message: Message) -> Deferred:
        for deliver in tuple(self._subscribers.get(message.channel, ())):
            try:
                deliver(message)
            except Exception:
                # One broken subscriber must not stop the others' delivery.
                self._log.failure("delivery to {deliver!r} failed", deliver=deliver)
        return succeed(message)

    def subscribe(self, channel: str, deliver: Deliver) -> Deferred:
        self._subscribers.setdefault(channel, []).append(deliver)
        return succeed(None)

    def unsubscribe(self, channel: str, deliver: Deliver) -> Deferred:
        delivers = self._subscribers.get(channel)
        if delivers is not None and deliver in delivers:
            delivers.remove(deliver)
            if not delivers:
                del self._subscribers[channel]
        return succeed(None)

    def report_occupancy(self, channel: str, count: int) -> None:
        if count > 0:
            self._occupancy[channel] = count
        else:
            self._occupancy.pop(channel, None)

    def occupancy(self, channel: str | None = None) -> Deferred:
        if channel is not None:
            return succeed({channel: self._occupancy.get(channel, 0)})
        return succeed(dict(self._occupancy))


def from_argstring(reactor: object, argstring: str) -> MemoryBackend:
    """``--backend memory`` takes no arguments yet."""
    args = parse_argstring(argstring)
    if args:
        raise ValueError("takes no arguments, got %s" % ", ".join(sorted(args)))
    return MemoryBackend()
