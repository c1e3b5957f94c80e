"""The hub's relay channels: HTTP push relay state, the same on every node.

Part of the hub (``hub.relay``), split out to keep hub.py small; it is the
only caller of ``IRelayState``.  The backend provides that state when it can
(memory, SQLite, Redis: shared by every node); for a backend that does not,
each node keeps its own in memory.

A relay channel exists from a ``PUT`` or a publish through a publisher
location until it is deleted or its location's ``store.ttl`` passes without
another; a channel with stored messages exists too.  Subscribers never
create state: asking for an unknown channel stores nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pushd.backends.memory_relay import MemoryRelayState

if TYPE_CHECKING:
    from pushd.apps import App
    from pushd.history import Retention
    from pushd.interfaces import IRelayState


class RelayChannels:
    def __init__(self, hub: Any, state: IRelayState | None) -> None:
        self._hub = hub
        self._state: Any = state or MemoryRelayState(hub.clock.seconds)

    def _keep(self, key: str, retention: Retention | None) -> None:
        # Messages published to the channel any other way (REST, WebSocket
        # client events) are queued for relay subscribers too, on this node.
        self._hub.history.keep(key, retention)

    async def create(self, app: App, channel: str, retention: Retention) -> None:
        """The channel exists (again) for ``retention.ttl`` seconds."""
        key = app.channel_key(channel)
        await self._state.relay_create(key, retention.ttl)
        self._keep(key, retention)

    async def exists(self, app: App, channel: str, retention: Retention) -> bool:
        if await self._state.relay_exists(app.channel_key(channel)):
            return True
        stored = await self._hub.kept_messages(app, channel, retention, 1)
        return bool(stored.epoch)

    async def requested(self, app: App, channel: str, retention: Retention) -> None:
        """A subscriber asks: remembered for existing channels only."""
        key = app.channel_key(channel)
        if await self._state.relay_requested(key, self._hub.clock.seconds()):
            self._keep(key, retention)

    async def delete(self, app: App, channel: str, retention: Retention) -> bool:
        """Delete the channel everywhere (subscribers are told); fires with
        whether it existed."""
        if not await self.exists(app, channel, retention):
            return False
        key = app.channel_key(channel)
        await self._state.relay_delete(key)
        self._keep(key, None)
        await self._hub.delete_channel(app, channel)
        return True

    async def info(
        self,
        app: App,
        channel: str,
        retention: Retention,
        subscribers: int | None = None,
    ) -> dict:
        """What publisher locations answer: stored messages, subscribers on
        every node (or ``subscribers``: those a publish reached) and seconds
        since a subscriber last asked (-1: never)."""
        stored = await self._hub.kept_messages(app, channel, retention, retention.size)
        if subscribers is None:
            subscribers = await self._hub.subscriber_count(app, channel)
        requested = await self._state.relay_last_requested(app.channel_key(channel))
        return {
            "channel": channel,
            "messages": len(stored.messages),
            "subscribers": subscribers,
            "last_requested": -1
            if requested is None
            else max(0, int(self._hub.clock.seconds() - requested)),
        }
