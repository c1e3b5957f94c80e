"""Test helpers for pushd and for authors of backend plugins.

``BackendContract`` is the specification of the backend interfaces
(``pushd.interfaces``) as executable tests, one mixin per interface
(``PubSubContract``, ``HistoryContract``, ...); the tests of an interface
the backend does not provide are skipped.  A backend passes it by
subclassing it in a pytest module (with pytest-twisted installed) and
providing ``make_backend``::

    class TestMyBackend(BackendContract):
        async def make_backend(self):
            return MyBackend(...)

Backends shared between nodes also provide ``make_peer(backend)``, a second
node on the same shared store, and the cross-node tests run too.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import fields, replace
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from zope.interface.verify import verifyObject

from pushd.history import Retention
from pushd.interfaces import (
    FEATURES,
    REQUIRED,
    IHistory,
    IIdempotencyStore,
    IInProcess,
    IOccupancy,
    IOffline,
    IPresence,
    IPubSub,
    IUsers,
)
from pushd.message import Message
from pushd.testing_relay import RelayStateContract


async def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait until ``check()`` is true, polling the reactor; fail after ``timeout``."""
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    waited = 0.0
    while not check():
        if waited >= timeout:
            raise AssertionError("condition not met within %ss" % timeout)
        await deferLater(reactor, 0.01, lambda: None)
        waited += 0.01


async def eventually_equals(
    fetch: Callable[[], Any], expected: Any, timeout: float = 5.0
) -> None:
    """Wait until ``await fetch()`` equals ``expected`` (for fire-and-forget writes)."""
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    waited, value = 0.0, None
    while waited < timeout:
        value = await fetch()
        if value == expected:
            return
        await deferLater(reactor, 0.02, lambda: None)
        waited += 0.02
    raise AssertionError("%r != %r after %ss" % (value, expected, timeout))


def every_field_message(app: str = "default", channel: str = "all-fields") -> Message:
    """A message with every field set to a value that is easy to get wrong
    (unicode, nesting, empty containers, floats), for round-trip tests."""
    sample = Message(
        channel,
        "client-ünïcode",
        {"text": 'héllo \u2603 | " {', "nested": [1, 2.5, None, {}, []], "t": True},
        "id-every-field",
        app,
        exclude="conn-123",
        users=("ann", "bob/é"),
        user_id="sender",
        offset=41,
        epoch="e90c4",
        time=1234567890.125,
        content_type="text/plain; charset=utf-8",
    )
    missing = [
        f.name for f in fields(Message) if f.init and getattr(sample, f.name) is None
    ]
    assert not missing, "every_field_message leaves %s unset" % missing
    return sample


def _msg(channel: str, n: Any, event: str = "e") -> Message:
    """A message whose key is ``channel`` (app ``default``)."""
    app, _, name = channel.partition("/")
    return Message(name, event, n, "id-%s" % (n,), app)


class _Contract:
    """What every contract mixin shares: making, starting and stopping the
    backends under test, and skipping duties a backend declares it lacks."""

    async def make_backend(self) -> Any:
        raise NotImplementedError

    async def make_peer(self, backend: Any) -> Any:
        """A second node sharing ``backend``'s store, or None for single-node backends."""
        return None

    async def _started(self, *needs: Any) -> Any:
        """A started backend; skips the test unless it provides ``needs``."""
        backend = await self.make_backend()
        for iface in needs:
            if not iface.providedBy(backend):
                pytest.skip("backend does not provide %s" % iface.getName())
        await backend.start()
        self._to_stop = getattr(self, "_to_stop", [])
        self._to_stop.append(backend)
        return backend

    async def _peer(self, backend: Any) -> Any:
        peer = await self.make_peer(backend)
        if peer is None:
            pytest.skip("single-node backend")
        await peer.start()
        self._to_stop.append(peer)
        return peer

    @pytest_twisted.async_yield_fixture(autouse=True)
    async def _stop_backends(self):
        yield
        for backend in getattr(self, "_to_stop", []):
            await backend.stop()
        self._to_stop = []


class PubSubContract(_Contract):
    """``IBackendLifecycle`` and ``IPubSub``: what every backend provides."""

    @pytest_twisted.ensureDeferred
    async def test_provides_required_interfaces(self):
        """The backend can be selected at all: it provides what the hub
        needs of every backend, and every optional duty it declares."""
        backend = await self._started(IPubSub)
        for iface in REQUIRED + tuple(FEATURES.values()):
            if iface in REQUIRED or iface.providedBy(backend):
                assert verifyObject(iface, backend)

    @pytest_twisted.ensureDeferred
    async def test_publish_reaches_subscriber_in_order(self):
        """Subscribers get every message, in publish order."""
        backend = await self._started(IPubSub)
        got: list = []
        await backend.subscribe("default/c", got.append)
        for n in range(50):
            stored = await backend.publish(_msg("default/c", n))
            assert stored.key == "default/c" and stored.data == n
        await eventually(lambda: len(got) == 50)
        assert [m.data for m in got] == list(range(50))
        assert got[0].id == "id-0" and got[0].event == "e"

    @pytest_twisted.ensureDeferred
    async def test_channels_are_isolated(self):
        """A subscriber never gets another channel's messages."""
        backend = await self._started(IPubSub)
        a: list = []
        b: list = []
        await backend.subscribe("default/a", a.append)
        await backend.subscribe("default/b", b.append)
        await backend.publish(_msg("default/a", 1))
        await backend.publish(_msg("default/b", 2))
        await eventually(lambda: len(a) == 1 and len(b) == 1)
        assert (a[0].data, b[0].data) == (1, 2)

    @pytest_twisted.ensureDeferred
    async def test_unsubscribe_stops_delivery(self):
        """A client that left a channel gets nothing more from it."""
        backend = await self._started(IPubSub)
        got: list = []
        marker: list = []
        await backend.subscribe("default/c", got.append)
        await backend.subscribe("default/marker", marker.append)
        await backend.unsubscribe("default/c", got.append)
        await backend.unsubscribe("default/never-subscribed", got.append)
        await backend.publish(_msg("default/c", 1))
        await backend.publish(_msg("default/marker", 2))
        await eventually(lambda: marker)
        assert got == []

    @pytest_twisted.ensureDeferred
    async def test_publish_without_subscribers_succeeds(self):
        """Publishing to an empty channel is not an error for the publisher."""
        backend = await self._started(IPubSub)
        stored = await backend.publish(_msg("default/nobody-home", 1))
        assert stored.data == 1

    @pytest_twisted.ensureDeferred
    async def test_cross_node_delivery(self):
        """A message published on one node reaches subscribers on the other, once."""
        one = await self._started(IPubSub)
        two = await self._peer(one)
        got_one: list = []
        got_two: list = []
        await one.subscribe("default/shared", got_one.append)
        await two.subscribe("default/shared", got_two.append)
        for n in range(20):
            await (one if n % 2 else two).publish(_msg("default/shared", n))
        await eventually(lambda: len(got_one) == 20 and len(got_two) == 20)
        assert [m.data for m in got_one] == [m.data for m in got_two] == list(range(20))

    @pytest_twisted.ensureDeferred
    async def test_every_message_field_round_trips_live(self):
        """Whatever a publisher set on a message (targeting, sender, type,
        time, data) is what subscribers get."""
        backend = await self._started(IPubSub)
        sample = every_field_message()
        got: list = []
        await backend.subscribe(sample.key, got.append)
        assert await backend.publish(sample) == sample
        await eventually(lambda: len(got) == 1)
        assert got == [sample]


class OccupancyContract(_Contract):
    @pytest_twisted.ensureDeferred
    async def test_occupancy(self):
        """Channel subscriber counts (REST channel info) follow what nodes report."""
        backend = await self._started(IOccupancy)
        backend.report_occupancy("x", 3)
        backend.report_occupancy("y", 1)
        await eventually_equals(lambda: backend.occupancy(None), {"x": 3, "y": 1})
        assert (await backend.occupancy("x")) == {"x": 3}
        backend.report_occupancy("y", 0)
        await eventually_equals(lambda: backend.occupancy("y"), {"y": 0})
        assert (await backend.occupancy(None)) == {"x": 3}

    @pytest_twisted.ensureDeferred
    async def test_occupancy_is_summed_over_nodes(self):
        """Subscriber counts include every node's subscribers."""
        one = await self._started(IOccupancy)
        two = await self._peer(one)
        one.report_occupancy("shared", 2)
        two.report_occupancy("shared", 5)
        await eventually_equals(lambda: one.occupancy("shared"), {"shared": 7})
        assert (await two.occupancy(None)) == {"shared": 7}


class PresenceContract(_Contract):
    @pytest_twisted.ensureDeferred
    async def test_membership_counts_users_once(self):
        """A user with two connections joins once and leaves with the last
        one (presence members see one member_added and one member_removed)."""
        backend = await self._started(IPresence)
        assert await backend.join("p", "ann", {"n": 1}, "c1") is True
        assert await backend.join("p", "ann", {"n": 1}, "c2") is False
        assert await backend.join("p", "bob", None, "c3") is True
        assert await backend.members("p") == {"ann": {"n": 1}, "bob": None}
        assert await backend.leave("p", "ann", "c1") is False
        assert await backend.leave("p", "ann", "c2") is True
        assert await backend.leave("p", "ann", "c2") is False
        assert await backend.members("p") == {"bob": None}
        members = backend.members("empty")
        assert isinstance(members, Deferred)  # as the interface says
        assert await members == {}


class UsersContract(_Contract):
    @pytest_twisted.ensureDeferred
    async def test_users_online(self):
        """Is-online and online counts (REST, Thunderpush) count users and
        their connections per app."""
        backend = await self._started(IUsers)
        await backend.connect_user("a", "ann", "c1")
        await backend.connect_user("a", "ann", "c2")
        await backend.connect_user("a", "bob", "c3")
        await backend.connect_user("other-app", "ann", "c4")
        assert await backend.user_connections("a", "ann") == 2
        assert await backend.users_online("a") == 2
        await backend.disconnect_user("a", "ann", "c1")
        await backend.disconnect_user("a", "ann", "c2")
        await backend.disconnect_user("a", "nobody", "c9")
        assert await backend.user_connections("a", "ann") == 0
        assert await backend.users_online("a") == 1
        assert await backend.users_online("other-app") == 1


class HistoryContract(_Contract):
    @pytest_twisted.ensureDeferred
    async def test_history_positions_and_recovery(self):
        """Kept messages get offsets 1, 2, ... in one epoch; recovery says
        whether everything after a position is still there (a reconnecting
        client gets exactly what it missed, or is told it missed some)."""
        backend = await self._started(IHistory)
        got: list = []
        await backend.subscribe("default/h", got.append)
        keep = Retention(size=5, ttl=60)
        stored = [
            await backend.publish(_msg("default/h", n), keep) for n in range(1, 4)
        ]
        assert [m.offset for m in stored] == [1, 2, 3]
        epoch = stored[0].epoch
        assert epoch and all(m.epoch == epoch for m in stored)
        await eventually(lambda: len(got) == 3)
        assert [(m.offset, m.epoch) for m in got] == [
            (1, epoch),
            (2, epoch),
            (3, epoch),
        ]
        result = await backend.history("default/h", 1, epoch, 10, keep)
        assert ([m.data for m in result.messages], result.recovered) == ([2, 3], True)
        assert (result.epoch, result.offset) == (epoch, 3)
        assert (await backend.history("default/h", 3, epoch, 10, keep)).messages == []
        result = await backend.history("default/h", 0, None, 10, keep)
        assert ([m.data for m in result.messages], result.recovered) == (
            [1, 2, 3],
            True,
        )
        result = await backend.history("default/h", 1, "another-epoch", 10, keep)
        assert ([m.data for m in result.messages], result.recovered) == (
            [1, 2, 3],
            False,
        )
        for n in range(4, 11):
            await backend.publish(_msg("default/h", n), keep)
        result = await backend.history("default/h", 2, epoch, 10, keep)
        assert ([m.data for m in result.messages], result.recovered) == (
            [6, 7, 8, 9, 10],
            False,
        )  # 3..5 were trimmed away
        result = await backend.history("default/h", 7, epoch, 2, keep)
        assert ([m.data for m in result.messages], result.recovered) == ([9, 10], False)
        result = await backend.history("default/nothing", 0, None, 10, keep)
        assert (result.messages, result.recovered) == ([], True)

    @pytest_twisted.ensureDeferred
    async def test_history_expires_and_epoch_changes(self):
        """Kept messages go after their ttl, and a client that had some is
        told its position is from a lost history (new epoch)."""
        backend = await self._started(IHistory)
        keep = Retention(size=5, ttl=0.3)
        first = await backend.publish(_msg("default/t", 1), keep)

        async def kept() -> list:
            return (await backend.history("default/t", 0, None, 10, keep)).messages

        # Backends expire on their own clocks (Redis by itself): wait for it.
        await eventually_equals(kept, [], timeout=5)
        second = await backend.publish(_msg("default/t", 2), keep)
        assert second.epoch != first.epoch and second.offset == 1
        result = await backend.history("default/t", 1, first.epoch, 10, keep)
        assert ([m.data for m in result.messages], result.recovered) == ([2], False)

    @pytest_twisted.ensureDeferred
    async def test_every_message_field_round_trips_in_history(self):
        """A message read back from history (recovery, the history API) is
        the message that was published, with its position."""
        backend = await self._started(IHistory)
        sample = every_field_message()
        got: list = []
        await backend.subscribe(sample.key, got.append)
        keep = Retention(size=5, ttl=60)
        unplaced = replace(sample, offset=None, epoch=None)
        kept = await backend.publish(unplaced, keep)
        assert kept.offset == 1 and kept.epoch
        assert replace(kept, offset=None, epoch=None) == unplaced
        await eventually(lambda: len(got) == 1)
        assert got == [kept]
        assert (await backend.history(sample.key, 0, None, 5, keep)).messages == [kept]

    @pytest_twisted.ensureDeferred
    async def test_forget_drops_history_and_keeps_time_and_content_type(self):
        """Deleting a channel drops its history (a new epoch follows); kept
        messages keep their time and content type (HTTP relay headers)."""
        backend = await self._started(IHistory)
        keep = Retention(size=5, ttl=60)
        first = await backend.publish(
            replace(
                _msg("default/f", "<b>hi</b>"), time=1234.5, content_type="text/html"
            ),
            keep,
        )
        kept = (await backend.history("default/f", 0, None, 5, keep)).messages
        assert [(m.data, m.time, m.content_type) for m in kept] == [
            ("<b>hi</b>", 1234.5, "text/html")
        ]
        await backend.forget("default/f")
        assert (await backend.history("default/f", 0, None, 5, keep)).messages == []
        again = await backend.publish(_msg("default/f", 2), keep)
        assert again.offset == 1 and again.epoch != first.epoch


class OfflineContract(_Contract):
    @pytest_twisted.ensureDeferred
    async def test_offline_store_for_absent_users_and_keepers(self):
        """Messages wait, bounded and in order, only for users with no
        connection: named ones and those keeping the channel."""
        backend = await self._started(IOffline, IUsers)
        await backend.keep_channel("default", "ann", "news", True)
        await backend.keep_channel("default", "bob", "news", True)
        await backend.connect_user("default", "bob", "c1")  # bob is online
        assert await backend.kept_channels("default", "ann") == ["news"]
        for n in range(5):
            stored = await backend.store_offline(_msg("default/news", n), [], 3, 60)
            assert stored == 1  # ann only
        assert (
            await backend.store_offline(
                _msg("default/personal-eve", "dm"), ["eve"], 3, 60
            )
            == 1
        )
        assert [m.data for m in await backend.take_offline("default", "ann")] == [
            2,
            3,
            4,
        ]
        assert await backend.take_offline("default", "ann") == []
        got = await backend.take_offline("default", "eve")
        assert [(m.channel, m.data) for m in got] == [("personal-eve", "dm")]
        assert await backend.take_offline("default", "bob") == []
        await backend.keep_channel("default", "ann", "news", False)
        assert await backend.kept_channels("default", "ann") == []
        assert await backend.store_offline(_msg("default/news", 9), [], 3, 60) == 0

    @pytest_twisted.ensureDeferred
    async def test_every_message_field_round_trips_offline(self):
        """A message that waited for an offline user is the message that
        was published, position included."""
        backend = await self._started(IOffline)
        sample = every_field_message()
        assert await backend.store_offline(sample, ["eve"], 5, 60) == 1
        assert await backend.take_offline(sample.app, "eve") == [sample]


class InProcessContract(_Contract):
    """IInProcess: the answers given at once are the ones ``publish`` and
    ``store_offline`` give, or the hub's shortcuts would change what
    subscribers and offline users get."""

    @pytest_twisted.ensureDeferred
    async def test_publish_now_is_publish(self):
        """Delivered before it returns, in order, with the history position
        ``publish`` gives a kept message."""
        backend = await self._started(IInProcess)
        got: list = []
        await backend.subscribe("default/n", got.append)
        keep = Retention(size=5, ttl=60)
        first = backend.publish_now(_msg("default/n", 1), keep)
        assert [m.data for m in got] == [1] and first.offset == 1
        second = await backend.publish(_msg("default/n", 2), keep)
        third = backend.publish_now(_msg("default/n", 3), None)
        assert [m.data for m in got] == [1, 2, 3]
        assert (second.offset, third.offset) == (2, None)

    @pytest_twisted.ensureDeferred
    async def test_has_keepers_follows_keep_channel(self):
        """A channel has keepers exactly while someone keeps it, and then
        ``store_offline`` stores for them; without keepers it stores nothing."""
        backend = await self._started(IInProcess, IOffline)
        assert not backend.has_keepers("default/news")
        assert await backend.store_offline(_msg("default/news", 1), [], 3, 60) == 0
        await backend.keep_channel("default", "ann", "news", True)
        assert backend.has_keepers("default/news")
        assert not backend.has_keepers("other/news")
        assert await backend.store_offline(_msg("default/news", 2), [], 3, 60) == 1
        await backend.keep_channel("default", "ann", "news", False)
        assert not backend.has_keepers("default/news")


class IdempotencyContract(_Contract):
    """IIdempotencyStore: a publish's key is claimed once, on every node."""

    @pytest_twisted.ensureDeferred
    async def test_provides_idempotency_store(self):
        """The backend declares and implements IIdempotencyStore."""
        assert verifyObject(IIdempotencyStore, await self._started(IIdempotencyStore))

    @pytest_twisted.ensureDeferred
    async def test_first_claim_wins_until_released(self):
        """A key is claimed once: later claims (on any node) get the first
        value, the settled one once settled, and nothing after a release."""
        store = await self._started(IIdempotencyStore)
        peer = await self.make_peer(store)
        if peer is not None:
            await peer.start()
            self._to_stop.append(peer)
        other = peer or store
        assert await store.claim("app/k1", "p:one", 60) is None
        assert await other.claim("app/k1", "p:two", 60) == "p:one"
        await store.settle("app/k1", "one", 60)
        assert await other.claim("app/k1", "p:three", 60) == "one"
        assert await store.claim("app/k2", "p:other", 60) is None
        await store.release("app/k1")
        assert await other.claim("app/k1", "p:four", 60) is None

    @pytest_twisted.ensureDeferred
    async def test_keys_expire_after_the_window(self):
        """After ``window`` seconds a key can be claimed again."""
        from twisted.internet import reactor
        from twisted.internet.task import deferLater

        store = await self._started(IIdempotencyStore)
        assert await store.claim("app/k", "p:one", 0.2) is None
        waited = 0.0
        while await store.claim("app/k", "p:two", 0.2) is not None:
            assert waited < 3, "key did not expire"
            await deferLater(reactor, 0.05, lambda: None)
            waited += 0.05


class BackendContract(
    PubSubContract,
    OccupancyContract,
    PresenceContract,
    UsersContract,
    HistoryContract,
    OfflineContract,
    InProcessContract,
    IdempotencyContract,
    RelayStateContract,
):
    """The whole contract: every duty's tests; those of duties the backend
    does not provide are skipped (it declares them by not providing the
    interface).  A new duty adds its own ``...Contract`` mixin here."""

    @pytest_twisted.ensureDeferred
    async def test_every_method_returns_a_deferred(self):
        """Callers can always wait for a backend, whichever it is: every
        method the interfaces say returns a Deferred does (none is a bare
        coroutine or value)."""
        backend = await self._started(IPubSub)
        got: list = []
        keep = Retention(size=5, ttl=60)
        calls: dict[Any, list[tuple[str, tuple]]] = {
            IPubSub: [
                ("subscribe", ("default/d", got.append)),
                ("publish", (_msg("default/d", 1),)),
                ("unsubscribe", ("default/d", got.append)),
            ],
            IOccupancy: [("occupancy", ("default/d",))],
            IHistory: [
                ("history", ("default/d", None, None, 5, keep)),
                ("forget", ("default/d",)),
            ],
            IPresence: [
                ("join", ("default/p", "u", None, "c")),
                ("members", ("default/p",)),
                ("leave", ("default/p", "u", "c")),
            ],
            IUsers: [
                ("connect_user", ("default", "u", "c")),
                ("user_connections", ("default", "u")),
                ("users_online", ("default",)),
                ("disconnect_user", ("default", "u", "c")),
            ],
            IOffline: [
                ("keep_channel", ("default", "u", "news", True)),
                ("kept_channels", ("default", "u")),
                ("store_offline", (_msg("default/news", 1), [], 5, 60)),
                ("take_offline", ("default", "u")),
            ],
        }
        for iface, methods in calls.items():
            if iface.providedBy(backend):
                for name, args in methods:
                    d = getattr(backend, name)(*args)
                    assert isinstance(d, Deferred), "%s.%s" % (iface.getName(), name)
                    await d


class _StoreContract:
    """Subclasses give ``make_store`` (started, on the real reactor's clock)
    and, for stores shared by nodes, ``make_peer(store)``: a second node on
    the same shared state."""

    async def make_store(self) -> Any:
        raise NotImplementedError

    async def make_peer(self, store: Any) -> Any:
        return None

    async def _peer(self, store: Any) -> Any:
        peer = await self.make_peer(store)
        if peer is None:
            pytest.skip("single-node store")
        return peer


class NonceStoreContract(_StoreContract):
    """Every INonceStore must pass these."""

    @pytest_twisted.ensureDeferred
    async def test_provides_nonce_store(self):
        """The store declares and implements INonceStore."""
        from pushd.interfaces import INonceStore

        assert verifyObject(INonceStore, await self.make_store())

    @pytest_twisted.ensureDeferred
    async def test_nonce_is_used_once(self):
        """A nonce is accepted once within its ttl; others are independent."""
        store = await self.make_store()
        assert await store.use_nonce("app/sig-1", 60) is True
        assert await store.use_nonce("app/sig-1", 60) is False
        assert await store.use_nonce("app/sig-2", 60) is True

    @pytest_twisted.ensureDeferred
    async def test_nonce_expires(self):
        """After its ttl a nonce is forgotten (bounded memory)."""
        store = await self.make_store()
        assert await store.use_nonce("app/short", 0.2) is True
        await eventually_equals(lambda: store.use_nonce("app/short", 0.2), True)

    @pytest_twisted.ensureDeferred
    async def test_nonce_is_seen_by_every_node(self):
        """A nonce used on one node is refused on another."""
        store = await self.make_store()
        peer = await self._peer(store)
        assert await store.use_nonce("app/shared", 60) is True
        assert await peer.use_nonce("app/shared", 60) is False


class ConnectionRegistryContract(_StoreContract):
    """Every IConnectionRegistry must pass these."""

    @pytest_twisted.ensureDeferred
    async def test_provides_connection_registry(self):
        """The store declares and implements IConnectionRegistry."""
        from pushd.interfaces import IConnectionRegistry

        assert verifyObject(IConnectionRegistry, await self.make_store())

    @pytest_twisted.ensureDeferred
    async def test_ids_are_unique_and_live_until_unregistered(self):
        """An id registers once; it is live until unregistered."""
        store = await self.make_store()
        assert await store.connection_live("c-1") is False
        assert await store.register_connection("c-1") is True
        assert await store.register_connection("c-1") is False
        assert await store.connection_live("c-1") is True
        await store.unregister_connection("c-1")
        await store.unregister_connection("never-registered")
        assert await store.connection_live("c-1") is False

    @pytest_twisted.ensureDeferred
    async def test_ids_are_unique_and_live_across_nodes(self):
        """An id live on one node cannot be registered on another, and every
        node sees it live."""
        store = await self.make_store()
        peer = await self._peer(store)
        assert await store.register_connection("c-2") is True
        assert await peer.register_connection("c-2") is False
        assert await peer.connection_live("c-2") is True
        await store.unregister_connection("c-2")
        assert await peer.connection_live("c-2") is False


# -- a real redis-server, for tests and benchmarks -------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A private redis-server on a free port of 127.0.0.1 (from PATH or
    ``$REDIS_SERVER``); ``stop`` (kill -9) and ``start`` simulate an outage
    on the same port.  Without ``persist`` it comes back empty; with it, it
    keeps an append-only file synced on every write and comes back with
    everything it acknowledged."""

    def __init__(self, persist: bool = False) -> None:
        self.persist = persist
        binary = os.environ.get("REDIS_SERVER") or shutil.which("redis-server")
        if not binary:
            raise RuntimeError(
                "redis-server not found: install it (Debian: redis-server) "
                "or set $REDIS_SERVER"
            )
        self.binary: str = binary
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="pushd-redis-")
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes" if self.persist else "no",
                "--appendfsync",
                "always",
                "--dir",
                self.dir,
                "--protected-mode",
                "yes",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 10
        while not self.ping():
            if time.time() > deadline or self.proc.poll() is not None:
                raise RuntimeError("redis-server did not start on port %d" % self.port)
            time.sleep(0.02)

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def spec(self, **extra) -> str:
        args = {"host": "127.0.0.1", "port": self.port}
        args.update(extra)
        return "redis:" + ":".join("%s=%s" % kv for kv in args.items())


# -- which process holds a connection (--workers) ---------------------------------


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    fd_dir = "/proc/%d/fd" % pid
    for name in os.listdir(fd_dir):
        try:
            target = os.readlink(os.path.join(fd_dir, name))
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def connection_owners(pids: list[int], server_port: int) -> dict[int, int]:
    """Which of ``pids`` holds the server side of each TCP connection to
    ``server_port``: client port -> pid (Linux, from ``/proc``).

    How a test or benchmark learns which ``--workers`` process accepted a
    connection without asking pushd (whose answer would come from whichever
    worker accepted the question)."""
    owner_of = {inode: pid for pid in pids for inode in _socket_inodes(pid)}
    owners = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        with open(table) as f:
            next(f)
            for row in f:
                cols = row.split()
                local, remote, state, inode = cols[1], cols[2], cols[3], cols[9]
                if state == "0A" or int(local.rsplit(":", 1)[1], 16) != server_port:
                    continue  # 0A: the listening socket itself
                if inode in owner_of:
                    owners[int(remote.rsplit(":", 1)[1], 16)] = owner_of[inode]
    return owners
