"""The Hub: channels, local subscribers, users and fan-out.  No I/O.

The hub knows sessions (one per client, any transport) and a backend (how
messages and membership travel between nodes).  It subscribes the backend to
a channel once per node, when the first local session joins, and fans each
message the backend delivers out to the local sessions, encoding it once.

Channels are keyed by ``app id/channel`` so apps never see each other.
Users get a ``personal-<user>`` channel joined automatically: messages to a
user and force-logout travel on it, so they reach every node for free.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.logger import Logger
from twisted.python.failure import Failure

from pushd.apps import App, AppRegistry
from pushd.channels import (
    PERSONAL,
    PRESENCE,
    personal_channel,
)
from pushd.config import Config
from pushd.errors import (
    BackendUnavailable,
    CloseCode,
    InvalidField,
    MissingField,
    OutcomeUnknown,
    PushdError,
)
from pushd.guards import HubGuards
from pushd.history import HistoryPolicy, HistoryResult, Retention
from pushd.hub_batch import HubBatch, check_targets
from pushd.idempotency import MemoryIdempotencyStore, claim, validate_key
from pushd.identify import Refused
from pushd.inputs import check_value
from pushd.interfaces import (
    IBackendLifecycle,
    IConnection,
    IDeliveryGaps,
    IHistory,
    IIdempotencyStore,
    IInFlight,
    IInProcess,
    IMemberReturns,
    IOccupancy,
    IOffline,
    IPresence,
    IPubSub,
    IReadiness,
    IRelayState,
    IUsers,
    require_features,
)
from pushd.limits import ConnectionLimits
from pushd.message import (
    CHANNEL_DELETED,
    LOGOUT,
    MEMBER_ADDED,
    MEMBER_REMOVED,
    Message,
    Outgoing,
    new_message_id,
)
from pushd.metrics import Metrics
from pushd.metrics import now as metrics_now
from pushd.queries import HubQueries
from pushd.relay_channels import RelayChannels
from pushd.session import Session


class _Channel:
    """Local state of one channel on this node."""

    __slots__ = ("direct", "feeds", "pending", "sessions", "solo", "waiters")

    def __init__(self) -> None:
        self.sessions: set = set()
        # How they are reached: two or more connections of one kind share
        # a feed (one append per publish, pushd.transports.feed); the
        # others, a call each.  A feed for one costs more than the call
        # (bench/chat.py: 1,000 channels of one), so the first connection
        # of a kind is called directly (its "solo") until a second joins.
        self.feeds: dict = {}  # feed key -> feed
        self.solo: dict = {}  # feed key -> the session in `direct`
        self.direct: set = set()
        # Presence subscribers between reading the member list and getting
        # their `subscribed` reply: what arrives meanwhile waits here, so
        # no member event is missed or overtakes the list.
        self.pending: dict = {}
        # Deferreds of sessions waiting for the backend subscription; None
        # once the backend is subscribed.
        self.waiters: list[Deferred] | None = []


class Hub(HubQueries, HubGuards, HubBatch):
    _log = Logger()

    def __init__(self, backend: IBackendLifecycle, clock: Any, config: Config) -> None:
        require_features(backend, config)
        # Only the service starts and stops it; everything else goes through
        # the hub's methods, which use the feature interfaces below.
        self.backend = backend
        self._pubsub: IPubSub = IPubSub(backend)
        self._occupancy: IOccupancy | None = IOccupancy(backend, None)
        self._kept: IHistory | None = IHistory(backend, None)
        self._presence: IPresence | None = IPresence(backend, None)
        self._users: IUsers | None = IUsers(backend, None)
        self._offline: IOffline | None = IOffline(backend, None)
        self._in_process: IInProcess | None = IInProcess(backend, None)
        # Publishes on their way back to this node (Redis), which the
        # WebSocket flush waits for (pushd.transports.websocket.Flusher).
        self.in_flight: IInFlight | None = IInFlight(backend, None)
        self._init_guards(backend, clock)
        self.clock = clock
        self.config = config
        self.apps = AppRegistry(config.app_list())
        self.history = HistoryPolicy(config.history_rules(), clock)
        self.relay = RelayChannels(self, IRelayState(backend, None))
        self.webhooks = None
        if config.webhooks:
            from pushd.webhooks import Webhooks

            self.webhooks = Webhooks(
                clock,
                config.webhooks,
                config.webhook_queue,
                config.webhook_timeout,
                config.webhook_retries,
                vacate_delay=config.webhook_vacate_delay,
            )
        self.sessions: dict[str, Session] = {}
        self._channels: dict[str, _Channel] = {}
        self.started_at = clock.seconds()
        self.limits = ConnectionLimits(config, clock)
        self.metrics = Metrics(self)
        if self._presence is not None:
            self._presence.watch_departures(self._departed)
        if IDeliveryGaps.providedBy(backend):
            backend.watch_gaps(self._lost)
        if IMemberReturns.providedBy(backend):
            backend.watch_returns(self._returned)
        # Backends that do not share keys between nodes: this node's memory.
        self.idempotency = IIdempotencyStore(backend, None) or MemoryIdempotencyStore(
            clock.seconds
        )

    def unready_reason(self) -> str | None:
        """Why this node cannot serve every request now, or None (``/ready``)."""
        readiness = IReadiness(self.backend, None)
        return readiness.unready_reason() if readiness is not None else None

    # -- sessions -------------------------------------------------------

    def open_session(
        self,
        conn: IConnection,
        app: App,
        user_id: str | None = None,
        user_info: Any = None,
    ) -> Session:
        """Attach a new client connection; returns its Session.

        An identified user is recorded as online and joined to its personal
        channel before this returns (with a synchronous backend) or shortly
        after (with a remote one).
        """
        session = Session(self, conn, app, user_id, user_info, self.config, self.clock)
        self.sessions[session.connection_id] = session
        self.metrics.opened(session.transport_name, app.id)
        self._register_connection(session)
        if user_id is not None:
            self._background(
                Deferred.fromCoroutine(self._user_arrived(session)), "user connection"
            )
        return session

    def sign_in(self, session: Session, user_id: str, user_info: Any) -> None:
        """A connection proved its user after opening (Pusher's
        ``pusher:signin``): from now on it is that user's connection, exactly
        as if it had connected with a user token."""
        session.user_id, session.user_info = user_id, user_info
        self._background(
            Deferred.fromCoroutine(self._user_arrived(session)), "user connection"
        )

    async def _user_arrived(self, session: Session) -> None:
        """Join the user's personal and kept channels, mark it online, then
        hand over what waited while it was offline (oldest first).

        Online is recorded after the channels are joined, so a message
        published meanwhile is delivered live and may also have been stored:
        offline delivery is at least once, never lost."""
        app, user_id = session.app, session.user_id
        assert user_id is not None
        offline = self._offline
        kept = await offline.kept_channels(app.id, user_id) if offline else []
        channels = [personal_channel(user_id)] + [
            c for c in kept if c != personal_channel(user_id)
        ]
        for name in channels:
            if session.closed:
                return
            session.subscriptions.add(name)
            await self.subscribe(session, name, (user_id, session.user_info))
            self.release(session, name)
        if self._users is not None:
            await self._users.connect_user(app.id, user_id, session.connection_id)
        if offline is None:
            return
        waiting = await offline.take_offline(app.id, user_id)
        if session.closed:
            for message in waiting:  # it left again: keep them for next time
                await offline.store_offline(
                    message,
                    [user_id],
                    self.config.offline_queue,
                    self.config.offline_ttl,
                )
            return
        for message in waiting:
            session.send_message(Outgoing(message))

    def admit(self, app: App, ip: str) -> None:
        """Count a new client connection from ``ip`` in, or raise Refused
        (over_capacity: close 4100 / HTTP 503); the transport calls
        ``limits.release`` when it closes."""
        try:
            self.limits.admit(app.id, ip)
        except Refused as e:
            self.metrics.refused(e.reason)
            raise

    def drop_session(self, session: Session) -> None:
        """Forget a closed session, everything it subscribed to, and its user."""
        self.sessions.pop(session.connection_id, None)
        self._unregister_connection(session)
        for channel in tuple(session.subscriptions):
            self.unsubscribe(session, channel)
        if session.user_id is not None and self._users is not None:
            self._background(
                self._users.disconnect_user(
                    session.app.id, session.user_id, session.connection_id
                ),
                "disconnect_user",
            )

    def close_all(self, code: int, reason: str) -> None:
        for session in tuple(self.sessions.values()):
            try:
                session.disconnect(code, reason)
            except Exception:
                self._log.failure("closing {id} failed", id=session.connection_id)

    # -- subscriptions --------------------------------------------------

    async def subscribe(
        self,
        session: Session,
        name: str,
        identity: tuple[str, Any] | None = None,
        since: tuple[int, str | None] | None = None,
    ) -> tuple[dict | None, HistoryResult | None]:
        """Add ``session`` to channel ``name`` once the backend delivers it here.

        Fires with (members, history):

        * with ``identity`` (user id, user info) the user is recorded as a
          member; on presence channels ``members`` is the member list (user
          id -> info) and a user's first connection is announced to others;
        * on channels that keep history, ``history`` is the channel's
          position and, with ``since`` (offset, epoch), what the client
          missed.

        In both cases the session is held (``pending``) until the caller has
        sent its reply and calls ``release``, so nothing arrives before the
        reply, nothing is missed and nothing is sent twice.  Raises
        BackendUnavailable if the backend cannot subscribe.
        """
        presence = name.startswith(PRESENCE)
        if presence and self._presence is None:
            raise self._unsupported("presence channels")
        key = session.app.channel_key(name)
        ch = self._channels.get(key)
        first = ch is None
        if ch is None:
            ch = self._channels[key] = _Channel()
        if ch.waiters is not None:
            waiter: Deferred = Deferred()
            ch.waiters.append(waiter)
            if first:
                # The waiter is registered first: a synchronous backend fires
                # it right here, and the channel must not look vacant then.
                d = self._pubsub.subscribe(key, self._on_message)
                d.addCallbacks(
                    self._backend_subscribed,
                    self._backend_failed,
                    callbackArgs=(key, ch),
                    errbackArgs=(key, ch),
                )
            await waiter
        try:
            members, history = await self._catch_up(
                session, name, key, ch, identity, since
            )
        except BaseException:
            # A failing backend must not leave the session held in
            # `pending` (collecting every later message) nor the channel
            # subscribed with nobody on it (issue 11).
            ch.pending.pop(session, None)
            if session.identities.get(name) == identity and identity is not None:
                self._background(
                    Deferred.fromCoroutine(
                        self._leave(session, name, key, identity[0])
                    ),
                    "leave after failed subscribe",
                )
                session.identities.pop(name, None)
            self._maybe_vacate(key, ch)
            raise
        if session.closed:
            ch.pending.pop(session, None)
            self._maybe_vacate(key, ch)
            return None, None
        if session not in ch.pending:
            self._add(session, name, key, ch)
        return members, history

    async def _catch_up(
        self,
        session: Session,
        name: str,
        key: str,
        ch: _Channel,
        identity: tuple[str, Any] | None,
        since: tuple[int, str | None] | None,
    ) -> tuple[dict | None, HistoryResult | None]:
        """Read the history and record the member, holding the session in
        ``pending`` meanwhile; see ``subscribe``."""
        members = history = None
        presence = name.startswith(PRESENCE)
        retention = self.history.retention(name, key) if self._kept else None
        if retention is not None and self._kept is not None and not session.closed:
            ch.pending[session] = []  # until release(), after the reply
            history = await self._kept.history(
                key,
                since[0] if since else None,
                since[1] if since else None,
                retention.size,
                retention,
            )
        if identity is not None and self._presence and not session.closed:
            session.identities[name] = identity
            if presence and session not in ch.pending:
                ch.pending[session] = []  # until release(), after the reply
            joined = await self._presence.join(
                key, identity[0], identity[1], session.connection_id
            )
            if presence:
                members = await self._presence.members(key)
                if joined:
                    await self._system(
                        session.app,
                        name,
                        MEMBER_ADDED,
                        {"user_id": identity[0], "user_info": identity[1]},
                        exclude=session.connection_id,
                    )
                    self.emit(
                        session.app, "member_added", channel=name, user_id=identity[0]
                    )
        return members, history

    def _add(self, session: Session, name: str, key: str, ch: _Channel) -> None:
        ch.sessions.add(session)
        self._feed_in(session, ch)
        if self._occupancy is not None:
            self._occupancy.report_occupancy(key, len(ch.sessions))
        if (
            self.webhooks is not None
            and len(ch.sessions) == 1
            and self.webhooks.occupied(session.app, name)
        ):
            self._background(
                Deferred.fromCoroutine(self._announce_occupied(session.app, name, key)),
                "channel_occupied",
            )

    async def _announce_occupied(self, app: App, name: str, key: str) -> None:
        # Only the node that made the channel occupied cluster-wide says so.
        if await self.subscriber_count(app, name) <= self.local_subscribers(
            name, app.id
        ):
            self.emit(app, "channel_occupied", channel=name)

    def _departed(self, app_id: str, channel: str, user_id: str) -> None:
        app = self.apps.by_id(app_id)
        if app is not None:
            self.emit(app, "member_removed", channel=channel, user_id=user_id)

    def _returned(self, app_id: str, channel: str, user_id: str) -> None:
        app = self.apps.by_id(app_id)
        if app is not None:
            self.emit(app, "member_added", channel=channel, user_id=user_id)

    def _lost(self, key: str, reason: str, kept: bool) -> None:
        """The backend may have missed messages on ``key``: tell its local
        subscribers (``messages_lost``), unless the channel keeps history
        and the backend found none, which means nothing was published."""
        ch = self._channels.get(key)
        if ch is None:
            return
        name = key.partition("/")[2]
        if not kept and self.history.retention(name) is not None:
            return
        self._log.info("telling subscribers of {key}: {reason}", key=key, reason=reason)
        for session in tuple(ch.sessions):
            session.messages_lost(name, reason)

    def emit(self, app: App, name: str, **fields: Any) -> None:
        """Send a webhook event, if any webhook wants it; never waits."""
        if self.webhooks is not None:
            self.webhooks.emit(app, name, **fields)

    def release(self, session: Session, name: str, after: int | None = None) -> None:
        """The held subscriber got its reply (and any replay up to offset
        ``after``): deliver what waited and is newer, then go live."""
        ch = self._channels.get(session.app.channel_key(name))
        if ch is None:
            return
        waiting = ch.pending.pop(session, None)
        if waiting is None or session.closed:
            return
        self._add(session, name, session.app.channel_key(name), ch)
        for outgoing in waiting:
            offset = outgoing.message.offset
            if after is None or offset is None or offset > after:
                session.send_message(outgoing)

    def unsubscribe(self, session: Session, name: str) -> None:
        session.subscriptions.discard(name)
        key = session.app.channel_key(name)
        identity = session.identities.pop(name, None)
        if identity is not None:
            self._background(
                Deferred.fromCoroutine(self._leave(session, name, key, identity[0])),
                "leave",
            )
        ch = self._channels.get(key)
        if ch is not None:
            ch.pending.pop(session, None)
        if ch is None or session not in ch.sessions:
            if ch is not None:
                self._maybe_vacate(key, ch)
            return
        ch.sessions.discard(session)
        self._unfeed(session, ch)
        if self._occupancy is not None:
            self._occupancy.report_occupancy(key, len(ch.sessions))
        if self.webhooks is not None and not ch.sessions:
            app = session.app
            self.webhooks.vacated(app, name, lambda: self._vacant(app, name))
        self._maybe_vacate(key, ch)

    @staticmethod
    def _feed_in(session: Session, ch: _Channel) -> None:
        """From now on the channel's messages reach ``session`` (see
        ``_Channel``)."""
        conn = session.feed
        if conn is None:
            ch.direct.add(session)
            return
        key = conn.feed_key
        feed = ch.feeds.get(key)
        if feed is None:
            solo = ch.solo.pop(key, None)
            if solo is None:
                ch.solo[key] = session
                ch.direct.add(session)
                return
            # The second of its kind: a feed for both (what the first has
            # queued already goes out before anything the feed gets).
            ch.direct.discard(solo)
            feed = ch.feeds[key] = conn.new_feed()
            feed.join(solo.feed)
        feed.join(conn)

    @staticmethod
    def _unfeed(session: Session, ch: _Channel) -> None:
        """No more of the channel's messages: what was published before
        is still delivered (the feed's frames move to the session's own
        queue)."""
        ch.direct.discard(session)
        conn = session.feed
        if conn is None:
            return
        key = conn.feed_key
        if ch.solo.get(key) is session:
            del ch.solo[key]
            return
        feed = ch.feeds.get(key)
        if feed is not None:
            feed.leave(conn)
            if not feed.pos:
                del ch.feeds[key]

    async def _vacant(self, app: App, name: str) -> bool:
        return await self.subscriber_count(app, name) == 0

    async def _leave(self, session: Session, name: str, key: str, user_id: str) -> None:
        if self._presence is None:
            return
        last = await self._presence.leave(key, user_id, session.connection_id)
        if last and name.startswith(PRESENCE):
            await self._system(session.app, name, MEMBER_REMOVED, {"user_id": user_id})
            self.emit(session.app, "member_removed", channel=name, user_id=user_id)

    def _maybe_vacate(self, key: str, ch: _Channel) -> None:
        if ch.sessions or ch.pending or ch.waiters or self._channels.get(key) is not ch:
            return
        del self._channels[key]
        if ch.waiters is None:
            self._background(
                self._pubsub.unsubscribe(key, self._on_message), "unsubscribe"
            )

    def _backend_subscribed(self, _: object, key: str, ch: _Channel) -> None:
        waiters, ch.waiters = ch.waiters or [], None
        # Each waiter adds its session (or vacates, if its client left) when
        # it resumes; vacating here would race a synchronous backend.
        for waiter in waiters:
            waiter.callback(None)

    def _backend_failed(self, failure, key: str, ch: _Channel) -> None:
        self._log.failure("backend could not subscribe {channel}", failure, channel=key)
        if self._channels.get(key) is ch:
            del self._channels[key]
        waiters, ch.waiters = ch.waiters or [], None
        for waiter in waiters:
            waiter.errback(BackendUnavailable("cannot subscribe now; retry later"))

    # -- publishing -----------------------------------------------------

    async def publish(
        self,
        app: App,
        channels: list,
        event: object,
        data: Any,
        exclude: object = None,
        users: object = None,
        user_id: str | None = None,
        content_type: str | None = None,
        retention: Retention | None = None,
        idempotency_key: str | None = None,
    ) -> str:
        """Publish one message to each channel in order; fires with its id.

        ``exclude``: a connection id that must not receive it (the sender's).
        ``users``: only connections of these users receive it.
        ``retention``: keep it even if no history rule matches (HTTP relay
        locations have their own store).
        ``idempotency_key``: a publish with a key already used within
        ``idempotency-window`` seconds publishes nothing and fires with the
        first one's id (pushd.idempotency).
        """
        event = self._valid_event(event)
        check_value(data, self.config.max_json_depth)
        if not channels:
            raise MissingField("name at least one channel")
        limit = self.config.max_channels_per_publish
        if len(channels) > limit:
            raise InvalidField("at most %d channels per publish" % limit)
        users = check_targets(exclude, users)
        sender = exclude if isinstance(exclude, str) else None  # checked above
        names = [self._valid_channel(c) for c in channels]
        message_id = new_message_id()
        publish = partial(
            self._publish_each,
            app,
            names,
            message_id,
            event,
            data,
            sender,
            users,
            user_id,
            content_type,
            retention,
        )
        if idempotency_key is None:
            await publish()
            return message_id
        key = "%s/%s" % (app.id, validate_key(idempotency_key))
        window = self.config.idempotency_window
        first = await claim(self.idempotency, key, message_id, window)
        if first is not None:
            return first
        try:
            await publish()
        except OutcomeUnknown:
            # Maybe published: the claim stays, so a retry cannot duplicate it.
            raise
        except BaseException:
            self._background(self.idempotency.release(key), "idempotency release")
            raise
        await self.idempotency.settle(key, message_id, window)
        return message_id

    async def _publish_each(
        self,
        app: App,
        names: list[str],
        message_id: str,
        event: str,
        data: Any,
        exclude: str | None,
        users: tuple | None,
        user_id: str | None,
        content_type: str | None,
        retention: Retention | None,
    ) -> None:
        for name in names:
            message = Message(
                name,
                event,
                data,
                message_id,
                app.id,
                exclude,
                users,
                user_id,
                time=self.clock.seconds(),
                content_type=content_type,
            )
            started = metrics_now()
            message = await self._publish(message, retention)
            self.metrics.observe_publish(metrics_now() - started)
            self.metrics.count_published(app.id)
            if user_id is not None and event.startswith("client-"):
                self.emit(
                    app,
                    "client_event",
                    channel=name,
                    event=event,
                    data=data,
                    user_id=user_id,
                    connection_id=exclude,
                )
            else:
                self._published(app, message)

    def _store_offline(self, app: App, name: str, message: Message) -> None:
        """Keep ``message`` for offline users: the personal channel's user
        and whoever keeps the channel.  In the background, in call order."""
        if self._offline is None:
            return
        if name.startswith(PERSONAL):
            users = [name[len(PERSONAL) :]]
        elif self._in_process is not None and not self._in_process.has_keepers(
            message.key
        ):
            return  # nobody keeps the channel: most publishes
        else:
            users = []
        self._background(
            self._offline.store_offline(
                message, users, self.config.offline_queue, self.config.offline_ttl
            ),
            "store offline",
        )

    async def _system(
        self, app: App, channel: str, event: str, data: Any, exclude: str | None = None
    ) -> None:
        # pushd's own events are never kept in a channel's history.
        await self._publish(
            Message(channel, event, data, new_message_id(), app.id, exclude), keep=False
        )

    async def _publish(
        self, message: Message, retention: Retention | None = None, keep: bool = True
    ) -> Message:
        return await self._settle(self._hand_over(message, retention, keep), message)

    def _hand_over(
        self, message: Message, retention: Retention | None = None, keep: bool = True
    ) -> Deferred:
        """The backend's publish of ``message``, with the history it is kept
        in; a batch takes an already-fired result without awaiting."""
        if keep and retention is None:
            retention = self._retention(message)
        if self._kept is None:
            retention = None
        try:
            return self._pubsub.publish(message, retention if keep else None)
        except Exception:
            return fail()

    def _retention(self, message: Message) -> Retention | None:
        """The history ``message`` is kept in, if any."""
        if self._kept is None:
            return None
        return self.history.retention(message.channel, message.key)

    async def _settle(self, d: Deferred, message: Message) -> Message:
        """The published message; a backend's own failure as BackendUnavailable."""
        try:
            return await d
        except PushdError:
            raise
        except Exception as e:
            raise self._publish_failed(message, e) from None

    def _publish_failed(self, message: Message, e: Exception) -> BackendUnavailable:
        """Logs the backend's failure to publish (called where it was caught)
        and says so to the publisher."""
        self._log.failure("publish to {channel} failed", channel=message.key)
        return BackendUnavailable("backend failed to publish: %s" % e)

    async def delete_channel(self, app: App, channel: str) -> None:
        """Drop the channel's history and tell its subscribers everywhere
        (WebSocket: ``channel_deleted``; waiting HTTP subscribers: 410)."""
        if self._kept is not None:
            await self._kept.forget(app.channel_key(channel))
        await self._system(app, channel, CHANNEL_DELETED, None)

    async def logout(self, app: App, user_id: str) -> None:
        """Close every connection of ``user_id`` on every node (4010)."""
        await self._system(app, personal_channel(user_id), LOGOUT, None)

    def _on_message(self, message: Message) -> None:
        """Fan one message out to the local subscribers of its channel."""
        ch = self._channels.get(message.key)
        if ch is None:
            return
        pending = ch.pending
        if not (ch.sessions or pending):
            return
        if message.event == LOGOUT:
            for session in tuple(ch.sessions) + tuple(pending):
                session.disconnect(CloseCode.LOGGED_OUT, "logged out by the app")
            return
        outgoing = Outgoing(message)
        exclude, users = message.exclude, message.users
        if exclude is None and users is None:
            # For everyone: one append per feed (pushd.transports.feed), a
            # call for each of the others.
            feeds = ch.feeds
            if feeds:
                for feed in feeds.values():  # appending changes no channel
                    try:
                        feed.append(outgoing)
                    except Exception:
                        self._log.failure("delivery to {key} failed", key=message.key)
            for session in tuple(ch.direct):
                try:
                    session.send_message(outgoing)
                except Exception:
                    self._log.failure(
                        "delivery to {id} failed", id=session.connection_id
                    )
            self.metrics.count_delivered(len(ch.sessions))
            if pending:
                for waiting in pending.values():
                    waiting.append(outgoing)
            return
        # Counted once per message, not per delivery (bench/fanout.py).
        sessions = tuple(ch.sessions)
        delivered = len(sessions)
        for session in sessions:
            if exclude is not None and session.connection_id == exclude:
                delivered -= 1
                continue
            if users is not None and session.user_id not in users:
                delivered -= 1
                continue
            try:
                session.send_message(outgoing)
            except Exception:
                self._log.failure("delivery to {id} failed", id=session.connection_id)
        self.metrics.count_delivered(delivered)
        if not pending:
            return
        for session, waiting in pending.items():
            if session.connection_id != exclude and (
                users is None or session.user_id in users
            ):
                waiting.append(outgoing)

    def _background(self, d: Deferred, what: str) -> None:
        if d.called and not isinstance(d.result, Failure):
            return  # done already (a synchronous backend): nothing to log

        def failed(failure: Any) -> None:
            if failure.check(BackendUnavailable):
                # An outage, logged once by the backend; no traceback here.
                self._log.warn(
                    "{what} failed: {why}", what=what, why=failure.value.message
                )
            else:
                self._log.failure("{what} failed", failure, what=what)

        d.addErrback(failed)
