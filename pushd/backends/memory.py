"""The embedded default backend: one node, everything in this process.

It is also the reference implementation of ``IBackend``: the contract suite
in ``pushd.testing`` runs against it first.
"""

from __future__ import annotations

import secrets
import time
from collections import deque
from dataclasses import replace
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from zope.interface import alsoProvides, implementer

from pushd.backends import parse_argstring
from pushd.backends.memory_relay import MemoryRelayState
from pushd.backends.stores import LocalStores
from pushd.history import HistoryResult, Retention, answer_since
from pushd.idempotency import MemoryIdempotencyStore
from pushd.interfaces import (
    Deliver,
    IBackend,
    IConnectionRegistry,
    IIdempotencyStore,
    IInProcess,
    INonceStore,
    IRelayState,
)
from pushd.message import Message, channel_key


class _Stream:
    """A channel's kept messages; lost with the process, hence the epoch."""

    __slots__ = ("epoch", "kept", "offset")

    def __init__(self, size: int) -> None:
        self.epoch = secrets.token_hex(4)
        self.offset = 0
        self.kept: deque = deque(maxlen=size)  # (message, expires at)

    def prune(self, now: float) -> None:
        while self.kept and self.kept[0][1] <= now:
            self.kept.popleft()


@implementer(IBackend, IIdempotencyStore, INonceStore, IConnectionRegistry)
@implementer(IRelayState)  # pushd.backends.memory_relay
class MemoryBackend(LocalStores, MemoryRelayState):
    _log = Logger()

    def __init__(self, clock: Any = None) -> None:
        if type(self) is MemoryBackend:
            # This class only: the hub's IInProcess shortcuts would bypass a
            # subclass's own publish or offline store (sqlite, plugins built
            # on this one); a subclass that keeps both may declare it itself.
            alsoProvides(self, IInProcess)
        self._now = clock.seconds if clock is not None else time.time
        self._init_stores()
        MemoryRelayState.__init__(self, self._now)
        self._streams: dict[str, _Stream] = {}
        self._subscribers: dict[str, list[Deliver]] = {}
        self._occupancy: dict[str, int] = {}
        # channel -> user -> (user info, {connection ids})
        self._members: dict[str, dict[str, tuple[object, set[str]]]] = {}
        # app -> user -> {connection ids}
        self._users: dict[str, dict[str, set[str]]] = {}
        # (app, user) -> kept channels; channel key -> users keeping it
        self._kept: dict[tuple[str, str], set[str]] = {}
        self._keepers: dict[str, set[str]] = {}
        # (app, user) -> deque of (message, expires at)
        self._offline: dict[tuple[str, str], deque] = {}
        self._idempotency = MemoryIdempotencyStore(self._now)

    def start(self) -> Deferred:
        return succeed(None)

    def stop(self) -> Deferred:
        self._subscribers.clear()
        self._occupancy.clear()
        self._members.clear()
        self._users.clear()
        self._streams.clear()
        self._kept.clear()
        self._keepers.clear()
        self._offline.clear()
        self._relay.clear()
        return succeed(None)

    def publish(self, message: Message, retention: Retention | None = None) -> Deferred:
        try:
            return succeed(self.publish_now(message, retention))
        except Exception:
            return fail()

    def publish_now(self, message: Message, retention: Retention | None) -> Message:
        if retention is not None:
            message = self._keep(message, retention)
        for deliver in tuple(self._subscribers.get(message.key, ())):
            try:
                deliver(message)
            except Exception:
                # One broken subscriber must not stop the others' delivery.
                self._log.failure("delivery to {deliver!r} failed", deliver=deliver)
        return message

    def has_keepers(self, channel: str) -> bool:
        return channel in self._keepers

    def _keep(self, message: Message, retention: Retention) -> Message:
        now = self._now()
        stream = self._streams.get(message.key)
        if stream is None or stream.kept.maxlen != retention.size:
            stream = self._streams[message.key] = _Stream(retention.size)
        stream.prune(now)
        if not stream.kept and stream.offset:
            # Everything expired: the history is gone, say so with a new epoch.
            stream = self._streams[message.key] = _Stream(retention.size)
        stream.offset += 1
        message = replace(message, offset=stream.offset, epoch=stream.epoch)
        stream.kept.append((message, now + retention.ttl))
        return message

    def forget(self, channel: str) -> Deferred:
        self._streams.pop(channel, None)
        return succeed(None)

    def history(
        self,
        channel: str,
        since: int | None,
        epoch: str | None,
        limit: int,
        retention: Retention,
    ) -> Deferred:
        stream = self._streams.get(channel)
        if stream is None:
            return succeed(HistoryResult([], "", 0, since in (None, 0)))
        stream.prune(self._now())
        kept = [m for m, _ in stream.kept]
        return succeed(
            answer_since(kept, stream.epoch, stream.offset, since, epoch, limit)
        )

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

    def watch_departures(self, callback) -> None:
        """One process: no node can die under us, so nothing to report."""

    def report_occupancy(self, channel: str, count: int) -> None:
        if count > 0:
            self._occupancy[channel] = count
        else:
            self._occupancy.pop(channel, None)

    def occupancy(self, channel: str | None = None) -> Deferred:
        if channel is not None:
            return succeed({channel: self._occupancy.get(channel, 0)})
        return succeed(dict(self._occupancy))

    def join(
        self, channel: str, user_id: str, user_info: object, connection_id: str
    ) -> Deferred:
        users = self._members.setdefault(channel, {})
        first = user_id not in users
        info, connections = users.get(user_id, (user_info, set()))
        connections.add(connection_id)
        users[user_id] = (user_info if user_info is not None else info, connections)
        return succeed(first)

    def leave(self, channel: str, user_id: str, connection_id: str) -> Deferred:
        users = self._members.get(channel, {})
        entry = users.get(user_id)
        if entry is None or connection_id not in entry[1]:
            return succeed(False)
        entry[1].discard(connection_id)
        if entry[1]:
            return succeed(False)
        del users[user_id]
        if not users:
            del self._members[channel]
        return succeed(True)

    def members(self, channel: str) -> Deferred:
        return succeed(
            {u: info for u, (info, _) in self._members.get(channel, {}).items()}
        )

    def connect_user(self, app: str, user_id: str, connection_id: str) -> Deferred:
        self._users.setdefault(app, {}).setdefault(user_id, set()).add(connection_id)
        return succeed(None)

    def disconnect_user(self, app: str, user_id: str, connection_id: str) -> Deferred:
        users = self._users.get(app, {})
        connections = users.get(user_id)
        if connections is not None:
            connections.discard(connection_id)
            if not connections:
                del users[user_id]
        return succeed(None)

    def user_connections(self, app: str, user_id: str) -> Deferred:
        return succeed(len(self._users.get(app, {}).get(user_id, ())))

    def users_online(self, app: str) -> Deferred:
        return succeed(len(self._users.get(app, {})))

    def keep_channel(
        self, app: str, user_id: str, channel: str, keep: bool
    ) -> Deferred:
        key = channel_key(app, channel)
        kept = self._kept.setdefault((app, user_id), set())
        keepers = self._keepers.setdefault(key, set())
        if keep:
            kept.add(channel)
            keepers.add(user_id)
        else:
            kept.discard(channel)
            keepers.discard(user_id)
        if not kept:
            del self._kept[(app, user_id)]
        if not keepers:
            del self._keepers[key]
        return succeed(None)

    def kept_channels(self, app: str, user_id: str) -> Deferred:
        return succeed(sorted(self._kept.get((app, user_id), ())))

    def store_offline(
        self, message: Message, users: list, size: int, ttl: float
    ) -> Deferred:
        keepers = self._keepers.get(message.key)
        if not users and not keepers:
            return succeed(0)  # the common case: nobody keeps the channel
        online = self._users.get(message.app, {})
        stored = 0
        expires = self._now() + ttl
        for user in set(users) | (keepers or set()):
            if user in online:
                continue
            box = self._offline.get((message.app, user))
            if box is None or box.maxlen != size:
                box = self._offline[(message.app, user)] = deque(box or (), maxlen=size)
            box.append((message, expires))
            stored += 1
        return succeed(stored)

    def take_offline(self, app: str, user_id: str) -> Deferred:
        now = self._now()
        box = self._offline.pop((app, user_id), ())
        return succeed([m for m, expires in box if expires > now])

    # -- idempotency keys (one process: this node's memory) ----------------

    def claim(self, key: str, value: str, window: float) -> Deferred:
        return self._idempotency.claim(key, value, window)

    def settle(self, key: str, value: str, window: float) -> Deferred:
        return self._idempotency.settle(key, value, window)

    def release(self, key: str) -> Deferred:
        return self._idempotency.release(key)


def from_argstring(reactor: object, argstring: str) -> MemoryBackend:
    """``--backend memory`` takes no arguments yet."""
    args = parse_argstring(argstring)
    if args:
        raise ValueError("takes no arguments, got %s" % ", ".join(sorted(args)))
    return MemoryBackend(reactor)
