"""The questions the REST APIs and the relay ask the hub.

They are answered from the backend's feature interfaces (all nodes), or,
for a backend without the feature, from this node or with a 501
``not_supported``.  Transports and APIs ask these, never the backend.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pushd.apps import App
from pushd.channels import validate_channel
from pushd.errors import FeatureUnavailable
from pushd.history import HistoryPolicy, HistoryResult, Retention
from pushd.message import channel_key

if TYPE_CHECKING:
    from pushd.interfaces import IHistory, IOccupancy, IOffline, IPresence, IUsers


class HubQueries:
    """Mixed into ``pushd.hub.Hub``, which sets the attributes below."""

    backend: Any
    history: HistoryPolicy
    _occupancy: IOccupancy | None
    _kept: IHistory | None
    _presence: IPresence | None
    _users: IUsers | None
    _offline: IOffline | None
    _channels: dict[str, Any]

    def _unsupported(self, feature: str) -> FeatureUnavailable:
        return FeatureUnavailable(
            "this pushd's backend (%s) does not support %s"
            % (type(self.backend).__name__, feature)
        )

    async def channel_history(
        self,
        app: App,
        channel: str,
        since: int | None,
        epoch: str | None,
        limit: int | None,
    ) -> HistoryResult | None:
        """Kept messages of ``channel``; None when it keeps no history."""
        retention = self.history.retention(
            validate_channel(channel), app.channel_key(channel)
        )
        if retention is None or self._kept is None:
            return None
        limit = retention.size if limit is None else min(limit, retention.size)
        return await self._kept.history(
            app.channel_key(channel), since, epoch, limit, retention
        )

    async def kept_messages(
        self,
        app: App,
        channel: str,
        retention: Retention,
        limit: int,
        since: tuple[int, str] | None = None,
    ) -> HistoryResult:
        """The latest ``limit`` messages kept under ``retention`` (a store
        with rules of its own, like a relay location); with ``since``
        (offset, epoch), those after that position."""
        if self._kept is None:
            raise self._unsupported("history")
        return await self._kept.history(
            app.channel_key(channel),
            since[0] if since else None,
            since[1] if since else None,
            limit,
            retention,
        )

    async def channel_users(self, app: App, channel: str) -> dict:
        """Members of ``channel``: user id -> user info, on all nodes."""
        if self._presence is None:
            raise self._unsupported("channel members")
        return await self._presence.members(app.channel_key(validate_channel(channel)))

    async def occupied_channels(self, app: App) -> dict[str, int]:
        """Subscriber counts of ``app``'s occupied channels, by name."""
        if self._occupancy is None:
            counts = {k: len(ch.sessions) for k, ch in self._channels.items()}
        else:
            counts = await self._occupancy.occupancy(None)
        prefix = channel_key(app.id, "")
        return {
            key[len(prefix) :]: n
            for key, n in counts.items()
            if n > 0 and key.startswith(prefix)
        }

    async def subscriber_count(self, app: App, channel: str) -> int:
        """Subscribers of ``channel`` on all nodes (this node's without
        IOccupancy)."""
        if self._occupancy is None:
            return self.local_subscribers(channel, app.id)
        key = app.channel_key(channel)
        return (await self._occupancy.occupancy(key)).get(key, 0)

    async def users_online(self, app: App) -> int:
        """How many users of ``app`` have a connection, on all nodes."""
        if self._users is None:
            raise self._unsupported("user queries")
        return await self._users.users_online(app.id)

    async def user_connections(self, app: App, user_id: str) -> int:
        """How many connections ``user_id`` has, on all nodes."""
        if self._users is None:
            raise self._unsupported("user queries")
        return await self._users.user_connections(app.id, user_id)

    async def kept_channels(self, app: App, user_id: str) -> list[str]:
        """The channels ``user_id`` keeps (messages wait while offline)."""
        if self._offline is None:
            raise self._unsupported("offline delivery")
        return await self._offline.kept_channels(app.id, user_id)

    async def keep_channel(
        self, app: App, user_id: str, channel: str, keep: bool
    ) -> None:
        """Make ``user_id`` a lasting member of ``channel``, or stop."""
        if self._offline is None:
            raise self._unsupported("offline delivery")
        await self._offline.keep_channel(
            app.id, user_id, validate_channel(channel), keep
        )

    def local_channel_count(self) -> int:
        """Channels with a subscriber on this node."""
        return sum(1 for ch in self._channels.values() if ch.sessions)

    @property
    def node_id(self) -> str:
        return str(getattr(self.backend, "node_id", None) or "local")

    def backend_state(self) -> dict:
        """What the backend says of itself (up, reconnects, commands...);
        an in-process backend is simply up."""
        state = getattr(self.backend, "state", None)
        return dict(state()) if callable(state) else {"up": True}

    async def cluster_nodes(self) -> list[dict]:
        """The nodes alive, with the age of their lease (seconds since they
        last renewed it); a single-node backend is just this node."""
        nodes = getattr(self.backend, "nodes", None)
        if nodes is None:
            return [{"id": self.node_id, "lease_age_seconds": 0.0}]
        return await nodes()

    def local_subscribers(self, name: str, app: str = "default") -> int:
        """Subscribers of channel ``name`` of app id ``app`` on this node."""
        ch = self._channels.get(channel_key(app, name))
        return len(ch.sessions) if ch is not None else 0
