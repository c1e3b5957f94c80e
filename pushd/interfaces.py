"""The plug points of pushd.  These docstrings are the specification.

Backends carry messages between nodes; connections carry frames to one
client.  The hub talks to both only through these interfaces, which is what
lets a Redis backend, an on-disk backend or a third-party plugin replace the
in-memory default, and SSE or long-polling sit beside WebSocket.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from zope.interface import Attribute, Interface
from zope.interface.interface import InterfaceClass

from pushd.message import Message, Outgoing

if TYPE_CHECKING:  # names used in the annotations below only
    from twisted.internet.defer import Deferred

    from pushd.history import HistoryResult, Retention

Deliver = Callable[[Message], None]


class IBackendLifecycle(Interface):
    """What every backend provides: it can be started and stopped.

    A backend provides this, ``IPubSub``, and whichever of the feature
    interfaces below it supports (``FEATURES``); ``IBackend`` is all of them.
    Every method returns a Deferred (a synchronous backend returns an
    already-fired one), so callers never care whether the backend is
    in-process or across a network.  Methods may fail with
    ``pushd.errors.BackendUnavailable`` when a shared store is unreachable.
    Every channel argument is a channel key, ``app/channel``
    (``pushd.message.channel_key``).
    """

    def start() -> Deferred[None]:
        """Connect or open whatever the backend needs; fire when ready."""

    def stop() -> Deferred[None]:
        """Release every resource; fire when done.  Called once."""


class IPubSub(Interface):
    """Moves published messages to every node that has subscribers (required)."""

    def publish(
        message: Message, retention: Retention | None = None
    ) -> Deferred[Message]:
        """Deliver ``message`` to every ``deliver`` callback subscribed to
        ``message.key``, on every node, in publish order per channel.

        ``retention`` (size, ttl) is only given to backends that provide
        ``IHistory``: the channel keeps history, the message gets the next
        ``offset`` of the channel's current ``epoch`` (a new epoch, offsets
        from 1, whenever the history was lost), is kept for ``history``, and
        is delivered with that position.  Fires with the message as
        delivered.  Delivery to local callbacks may happen before the
        Deferred fires; callers must not depend on either order.
        """

    def subscribe(channel: str, deliver: Deliver) -> Deferred[None]:
        """Call ``deliver(message)`` for every message later published to
        ``channel`` on any node.  The hub calls this once per channel per
        node, when the channel gets its first local subscriber; fires once
        messages published afterwards are sure to be delivered.
        """

    def unsubscribe(channel: str, deliver: Deliver) -> Deferred[None]:
        """Stop calling ``deliver`` for ``channel``.  Unknown pairs are ignored."""


class IOccupancy(Interface):
    """Subscriber counts over all nodes.  Without it, counts (REST channel
    info, Thunderpush, webhooks' channel_occupied/vacated) are this node's."""

    def report_occupancy(channel: str, count: int) -> None:
        """Record that this node now has ``count`` local subscribers on
        ``channel`` (0 removes it).  Fire and forget: the hub calls it on every
        change and never waits.
        """

    def occupancy(channel: str | None = None) -> Deferred[dict[str, int]]:
        """Subscriber counts summed over all live nodes.  With ``channel``,
        a dict with just that channel (count 0 if vacant); without, every
        occupied channel.
        """


class IHistory(Interface):
    """Kept messages with positions, for recovery and the history API.
    Required by ``history`` rules and configured ``relay-locations``."""

    def history(
        channel: str,
        since: int | None,
        epoch: str | None,
        limit: int,
        retention: Retention,
    ) -> Deferred[HistoryResult]:
        """The kept messages after position (``since``, ``epoch``), oldest
        first, at most ``limit``; see ``pushd.history.HistoryResult`` for what
        ``recovered`` promises.  ``since`` None: the latest ``limit``
        messages.  ``since`` 0: everything, from the first message."""

    def forget(channel: str) -> Deferred[None]:
        """Drop the channel's kept history (its next message starts a new epoch)."""


class IPresence(Interface):
    """Who is in a channel (presence channels, member webhooks).  Without
    it, subscribing to a presence channel is refused (``not_supported``)."""

    def join(
        channel: str, user_id: str, user_info: object, connection_id: str
    ) -> Deferred[bool]:
        """Record that ``connection_id`` of ``user_id`` is in ``channel``.
        Fires True when this is the user's first connection there (on any
        node): the moment presence channels announce ``member_added``.
        """

    def leave(channel: str, user_id: str, connection_id: str) -> Deferred[bool]:
        """Undo ``join``; fires True when it was the user's last connection
        there (``member_removed``).  Unknown pairs fire False."""

    def members(channel: str) -> Deferred[dict[str, object]]:
        """Users in ``channel`` on all nodes: user id -> user info."""

    def watch_departures(callback: Callable[[str, str, str], None]) -> None:
        """Call ``callback(app, channel, user_id)`` whenever the backend
        itself removes a user's last connection from a presence channel (a
        dead node's users, cleaned up by this node), so the hub can send the
        ``member_removed`` webhook for it."""


class IUsers(Interface):
    """Which users are online, on all nodes (REST and Thunderpush user
    queries; offline delivery needs it to know who is offline)."""

    def connect_user(app: str, user_id: str, connection_id: str) -> Deferred[None]:
        """Record a connection of an identified user (for is-online and counts)."""

    def disconnect_user(app: str, user_id: str, connection_id: str) -> Deferred[None]:
        """Undo ``connect_user``; unknown pairs are ignored."""

    def user_connections(app: str, user_id: str) -> Deferred[int]:
        """How many connections ``user_id`` of ``app`` has, on all nodes."""

    def users_online(app: str) -> Deferred[int]:
        """How many distinct users of ``app`` have at least one connection."""


class IOffline(Interface):
    """Messages that wait for offline users (kept channels, messages to
    users).  Without it, nothing waits and the keep-channel API answers
    ``not_supported``."""

    def keep_channel(
        app: str, user_id: str, channel: str, keep: bool
    ) -> Deferred[None]:
        """Make ``user_id`` a lasting member of ``channel`` (a channel name of
        ``app``, not a key; its messages wait for the user while offline),
        or stop (``keep`` False)."""

    def kept_channels(app: str, user_id: str) -> Deferred[list[str]]:
        """The channels ``user_id`` keeps, sorted."""

    def store_offline(
        message: Message, users: list[str], size: int, ttl: float
    ) -> Deferred[int]:
        """Store ``message`` for every user who keeps its channel, plus
        ``users``, that has no connection on any node; at most ``size``
        messages per user (oldest dropped), for ``ttl`` seconds.  Fires with
        how many users it was stored for."""

    def take_offline(app: str, user_id: str) -> Deferred[list[Message]]:
        """Remove and return what waits for ``user_id``, oldest first."""


class IRelayState(Interface):
    """HTTP push relay channels (``pushd.transports.relay``), the same on
    every node: which channels exist and when a subscriber last asked.

    A backend shared by several nodes provides this too, so a ``PUT`` on one
    node is honoured by all and every node answers the same channel
    information.  ``channel`` is a channel key (``app/channel``).  A channel
    exists from ``relay_create`` until ``relay_delete`` or until ``ttl``
    seconds pass without another ``relay_create``; nothing else creates
    state, so what subscribers (who need no credentials) do cannot grow it.
    """

    def relay_create(channel: str, ttl: float) -> Deferred[None]:
        """The channel exists from now until ``ttl`` seconds from now
        (renewed by each call: every publish and ``PUT``)."""

    def relay_exists(channel: str) -> Deferred[bool]:
        """Whether the channel exists (created and neither deleted nor expired)."""

    def relay_requested(channel: str, now: float) -> Deferred[bool]:
        """A subscriber asked for the channel at ``now`` (Unix seconds).
        Recorded only if the channel exists; fires with whether it does."""

    def relay_last_requested(channel: str) -> Deferred[float | None]:
        """When a subscriber last asked for the existing channel; None if
        never since it was created, or if it does not exist."""

    def relay_delete(channel: str) -> Deferred[bool]:
        """Forget the channel; fires with whether it existed."""


class IBackend(
    IBackendLifecycle, IPubSub, IOccupancy, IHistory, IPresence, IUsers, IOffline
):
    """Every duty pushd 0.1 asked of a backend, in one declaration.

    The built-in backends provide it.  Duties added later are interfaces of
    their own, outside this one, so a backend written against it keeps
    working (docs/plugins.md, "Adding a backend duty").
    """


# Optional features, by the name errors and docs use.  The hub finds what a
# backend provides with ``providedBy`` once, at construction.
FEATURES: dict[str, InterfaceClass] = {
    "occupancy": IOccupancy,
    "history": IHistory,
    "presence": IPresence,
    "users": IUsers,
    "offline": IOffline,
    "relay state": IRelayState,
}
REQUIRED: tuple[InterfaceClass, ...] = (IBackendLifecycle, IPubSub)


def missing_features(backend: object) -> list[str]:
    """The names of the optional features ``backend`` does not provide."""
    return [name for name, iface in FEATURES.items() if not iface.providedBy(backend)]


def require_features(backend: object, config: Any) -> None:
    """Refuse, before anything starts, a configuration that needs a feature
    the backend lacks; ValueError says which and why."""
    name = type(backend).__name__
    for iface in REQUIRED:
        if not iface.providedBy(backend):
            raise ValueError(
                "backend %s does not provide %s, which every backend must"
                % (name, iface.getName())
            )
    if not IHistory.providedBy(backend):
        for setting, value in (
            ("history", config.history_rules()),
            ("relay-locations", config.relay_locations),
        ):
            if value:
                raise ValueError(
                    "backend %s keeps no history (IHistory), which the %r "
                    "setting needs: remove it or choose a backend with history "
                    "(memory, redis, sqlite)" % (name, setting)
                )


class IBackendFactory(Interface):
    """A twisted.plugin that makes backends; how ``--backend NAME:ARGS`` is served.

    Third-party packages provide one in ``twisted/plugins/<anything>.py``.
    """

    name = Attribute("Tag used in --backend, e.g. 'redis'.")
    description = Attribute("One line shown by --help-backends.")

    def make_backend(reactor: object, argstring: str) -> IBackendLifecycle:
        """Return an unstarted backend configured by ``argstring`` (the text
        after ``NAME:``, ``key=value`` pairs separated by ``:``).  Raise
        ``ValueError`` with a clear message for bad arguments.
        """


class IConnection(Interface):
    """One client's way out, as seen by its Session (one per transport)."""

    connection_id = Attribute("Server-assigned id, unique across nodes.")

    def send_json(frame: dict) -> None:
        """Send one control frame to this client."""

    def send_message(outgoing: Outgoing) -> None:
        """Send one published message; the transport reuses the encoding
        cached on ``outgoing`` and applies its own slow-consumer policy."""

    def close(code: int, reason: str) -> None:
        """Close the connection with a close code from ``pushd.errors.CloseCode``."""


class IFeedConnection(IConnection):
    """A connection that takes a channel's messages from a feed shared by
    the channel's subscribers (pushd.transports.feed): a publish then costs
    one append, not one call per subscriber."""

    feed_key = Attribute(
        "Hashable; connections with equal keys share one feed per channel."
    )

    def new_feed() -> Any:
        """A feed for a channel, for connections of this ``feed_key``: with
        ``append(outgoing)``, ``join(conn)``, ``leave(conn)`` and ``pos`` (its
        members)."""


class IReadiness(Interface):
    """A backend that can be unreachable says so, for ``/ready``."""

    def unready_reason() -> str | None:
        """None while the backend can serve every request; otherwise one
        sentence saying why not (e.g. "Redis at 10.0.0.5:6379 is
        unreachable"), which ``/ready`` answers with 503."""


class IDeliveryGaps(Interface):
    """A backend whose node can miss messages (a lost connection to a shared
    store) reports it, so clients are told instead of left in silence."""

    def watch_gaps(callback: Callable[[str, str, bool], None]) -> None:
        """Call ``callback(channel, reason, kept)`` when this node may have
        missed messages on ``channel`` (an ``app/channel`` key) that it could
        not recover.  ``kept`` is False when the backend found no history for
        the channel at all: then nothing was missed if the channel keeps
        history (no message was published), and anything may have been
        missed if it does not."""


class IInProcess(Interface):
    """Optional, for a backend that keeps everything in this process (the
    memory backend): the same work as ``IPubSub.publish`` and
    ``IOffline.store_offline``, answered at once.  The hub uses it on every
    publish: a Deferred per call and an offline-store call for channels
    nobody keeps were a tenth of a chat-like message's cost (bench/chat.py).
    """

    def publish_now(message: Message, retention: Retention | None) -> Message:
        """``publish`` that has run by the time it returns: the message as
        delivered (with its history position if kept).  Raises what
        ``publish`` would fail with."""

    def has_keepers(channel: str) -> bool:
        """Whether any user keeps ``channel`` (an ``app/channel`` key) for
        offline delivery now; when not, ``store_offline`` with no other
        users would store nothing."""


class IInFlight(Interface):
    """Optional, for a backend whose publishes reach this node's own
    subscribers only after a round trip (Redis: the copy comes back on the
    subscriber connection a reactor turn or two later).  Before the
    WebSocket flush starts writing, it asks whether copies are on their way
    and waits for them (at most ``flush-copy-wait`` seconds), so they share
    the flush's send() to each subscriber instead of needing sends of their
    own (bench/README.md, Redis).  A backend without it is never waited for.
    """

    def in_flight() -> int:
        """How many of this node's publishes to channels it has subscribers
        on have not come back to it yet (0 when none)."""

    def watch_landed(callback: Callable[[], None]) -> None:
        """Call ``callback()`` whenever ``in_flight()`` drops to 0 (the last
        copy arrived, or was given up on)."""


class IMemberReturns(Interface):
    """A backend that can be evicted (its lease lapsed while it was alive)
    puts its members back, and says so like a join."""

    def watch_returns(callback: Callable[[str, str, str], None]) -> None:
        """Call ``callback(app, channel, user_id)`` whenever the backend itself
        announces ``member_added`` for a user it re-registered on a presence
        channel after other nodes removed it, so the hub can send the
        ``member_added`` webhook for it."""


class IIdempotencyStore(Interface):
    """Remembers publishes by the publisher's idempotency key, on every node
    that shares the store, so a retried publish is accepted once."""

    def claim(key: str, value: str, window: float) -> Deferred[str | None]:
        """Record ``value`` under ``key`` for ``window`` seconds unless ``key``
        is already recorded.  Fires None when this call recorded it, else
        with the value recorded first."""

    def settle(key: str, value: str, window: float) -> Deferred[None]:
        """Replace what ``key`` holds with ``value`` (the final answer), for
        ``window`` seconds from now."""

    def release(key: str) -> Deferred[None]:
        """Forget ``key`` (its publish failed; a retry may try again)."""


class INonceStore(Interface):
    """Single-use values, remembered where every node sharing the store sees
    them: the replay guard of signed REST requests (issue 11), so a request
    refused as a replay on one node is refused on all."""

    def use_nonce(nonce: str, ttl: float) -> Deferred[bool]:
        """Record ``nonce`` for ``ttl`` seconds.  Fires True when this is its
        first use (on any node) within that time, False when it was already
        used."""


class IConnectionRegistry(Interface):
    """Connection ids the server issued, and which are live, across nodes.

    Channel signatures and SSE stream secrets are bound to a connection id;
    the registry makes an id unique across nodes and tells any node whether
    the connection behind it is still open (issue 11)."""

    def register_connection(connection_id: str) -> Deferred[bool]:
        """Record ``connection_id`` as live on this node.  Fires False when
        it is already registered (on any node): the caller must not use it."""

    def unregister_connection(connection_id: str) -> Deferred[None]:
        """The connection closed: it is no longer live.  Unknown ids are
        ignored."""

    def connection_live(connection_id: str) -> Deferred[bool]:
        """True while ``connection_id`` is registered by a node that is alive."""


class IMultiProcess(Interface):
    """A backend whose state lives outside the process (a shared store), so
    that several pushd processes using it behave as one server: every
    message, member, user and position is seen by all of them.

    A marker without methods: ``--workers N`` (``pushd.workers``) runs N
    processes on one port and is refused at start for a backend that does
    not declare it (``memory`` and ``sqlite`` deliver within one process).
    A third-party backend declares it only when two instances in separate
    processes pass the cross-node contract tests (``make_peer``) against
    one store."""
