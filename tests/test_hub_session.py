"""Hub and Session logic without sockets or a running reactor."""

import json

import pytest
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from zope.interface import implementer

import pushd.message
from pushd.backends.memory import MemoryBackend
from pushd.config import Config
from pushd.errors import CloseCode
from pushd.hub import Hub
from pushd.interfaces import IConnection


@implementer(IConnection)
class FakeConnection:
    """Records what the session sends; uses the Outgoing cache like a transport."""

    def __init__(self, connection_id):
        self.connection_id = connection_id
        self.sent = []
        self.closed_with = None

    def send_json(self, frame):
        self.sent.append(frame)

    def send_message(self, outgoing):
        self.sent.append(json.loads(outgoing.wire("fake", lambda raw: raw)))

    def close(self, code, reason):
        self.closed_with = (code, reason)

    def types(self):
        return [f["type"] for f in self.sent]


class SlowBackend(MemoryBackend):
    """A memory backend whose subscribe waits until the test says so."""

    def __init__(self):
        super().__init__()
        self.pending = []

    def subscribe(self, channel, deliver):
        d = Deferred()
        self.pending.append(d)
        d.addCallback(lambda _: MemoryBackend.subscribe(self, channel, deliver))
        return d


def make_hub(backend=None, **settings):
    clock = Clock()
    return Hub(backend or MemoryBackend(), clock, Config(**settings)), clock


def frame(**fields):
    return json.dumps(fields).encode()


def open_session(hub, name="c1", user=None, info=None):
    conn = FakeConnection(name)
    return hub.open_session(conn, hub.apps.by_id("default"), user, info), conn


def publish(hub, channel, data):
    d = Deferred.fromCoroutine(
        hub.publish(hub.apps.by_id("default"), [channel], "e", data)
    )
    out = []
    d.addBoth(out.append)
    return out[0]


def test_fan_out_encodes_each_message_once(monkeypatch):
    """Delivering to many subscribers costs one JSON encoding, not one each."""
    hub, _ = make_hub()
    conns = []
    for n in range(5):
        session, conn = open_session(hub, "c%d" % n)
        session.receive(frame(type="subscribe", channel="news"))
        conns.append(conn)
    calls = []
    real = pushd.message.frame_json
    monkeypatch.setattr(
        pushd.message, "frame_json", lambda m: calls.append(m) or real(m)
    )
    publish(hub, "news", {"x": 1})
    assert len(calls) == 1
    assert all(c.sent[-1]["data"] == {"x": 1} for c in conns)


def test_frames_stay_in_order_while_backend_subscribe_waits():
    """subscribe, unsubscribe, ping: replies come in that order even though
    the subscribe waited on the backend."""
    backend = SlowBackend()
    hub, _ = make_hub(backend)
    session, conn = open_session(hub)
    session.receive(frame(type="subscribe", channel="a"))
    session.receive(frame(type="unsubscribe", channel="a"))
    session.receive(frame(type="ping"))
    assert conn.sent == []
    backend.pending[0].callback(None)
    assert conn.types() == ["subscribed", "unsubscribed", "pong"]
    assert hub.local_subscribers("a") == 0


def test_second_subscriber_waits_for_the_same_backend_subscription():
    """Two clients subscribing at once share one backend subscription and both get messages."""
    backend = SlowBackend()
    hub, _ = make_hub(backend)
    s1, c1 = open_session(hub, "c1")
    s2, c2 = open_session(hub, "c2")
    s1.receive(frame(type="subscribe", channel="a"))
    s2.receive(frame(type="subscribe", channel="a"))
    assert len(backend.pending) == 1
    backend.pending[0].callback(None)
    assert c1.types() == c2.types() == ["subscribed"]
    assert hub.local_subscribers("a") == 2


def test_client_leaving_during_backend_subscribe_leaves_no_subscriber():
    """A client that leaves while its subscribe is pending leaves no ghost subscriber behind."""
    backend = SlowBackend()
    hub, _ = make_hub(backend)
    session, conn = open_session(hub)
    session.receive(frame(type="subscribe", channel="a"))
    session.close()
    backend.pending[0].callback(None)
    assert hub.local_subscribers("a") == 0
    assert "default/a" not in hub._channels
    assert conn.sent == []


def test_backend_failure_gives_error_frame_and_no_subscription():
    """When the backend cannot subscribe, the client gets an error frame, not a subscription that never delivers."""

    class Broken(MemoryBackend):
        def subscribe(self, channel, deliver):
            return fail(ConnectionError("redis down"))

    hub, _ = make_hub(Broken())
    session, conn = open_session(hub)
    session.receive(frame(type="subscribe", channel="a"))
    assert conn.sent[-1]["code"] == "backend_unavailable"
    assert session.subscriptions == set()
    assert "default/a" not in hub._channels


def test_close_unsubscribes_everything_and_reports_occupancy():
    """A closed connection leaves every channel, and channel counts drop to match."""
    backend = MemoryBackend()
    hub, _ = make_hub(backend)
    session, _ = open_session(hub)
    for ch in ("a", "b"):
        session.receive(frame(type="subscribe", channel=ch))
    assert backend._occupancy == {"default/a": 1, "default/b": 1}
    session.close()
    assert backend._occupancy == {} and backend._subscribers == {}
    assert hub.sessions == {}


def test_rate_limit_refills_over_time():
    """A client over its frame rate is refused for a while, then served again."""
    hub, clock = make_hub(client_rate=2, client_burst=3)
    session, conn = open_session(hub)
    for _ in range(4):
        session.receive(frame(type="ping"))
    assert [f.get("code", f["type"]) for f in conn.sent] == ["pong"] * 3 + [
        "rate_limited"
    ]
    clock.advance(1.0)  # two more tokens
    conn.sent.clear()
    for _ in range(3):
        session.receive(frame(type="ping"))
    assert [f.get("code", f["type"]) for f in conn.sent] == [
        "pong",
        "pong",
        "rate_limited",
    ]
    assert conn.closed_with is None


def test_sustained_flood_closes_with_4108():
    """A client that keeps flooding past its refusals is disconnected with 4108."""
    hub, _ = make_hub(client_rate=1, client_burst=2)
    session, conn = open_session(hub)
    for _ in range(10):
        session.receive(frame(type="ping"))
    assert conn.closed_with[0] == CloseCode.RATE_LIMITED


def test_unexpected_handler_error_is_reported_not_raised(monkeypatch):
    """A server bug in one frame gives the client an internal_error frame and keeps the connection."""
    hub, _ = make_hub()
    session, conn = open_session(hub)

    async def explode():
        raise RuntimeError("bug")

    monkeypatch.setattr(hub, "subscribe", lambda s, c, i: explode())
    session.receive(frame(type="subscribe", channel="a"))
    assert conn.sent[-1]["code"] == "internal_error"
    assert session.subscriptions == set()


@pytest.mark.parametrize(
    "channels,error",
    [
        ([], "missing_field"),
        (["ok", "no way"], "invalid_channel"),
        (["c%d" % n for n in range(101)], "invalid_field"),
    ],
)
def test_publish_validation(channels, error):
    """A publish to no channel, too many channels or a bad name is refused with the right error code."""
    hub, _ = make_hub()
    d = Deferred.fromCoroutine(hub.publish(hub.apps.by_id("default"), channels, "e", 1))
    out = []
    d.addErrback(lambda f: out.append(f.value.code))
    assert out == [error]


class SlowMembersBackend(MemoryBackend):
    """Memory backend whose member list arrives when the test says so."""

    def __init__(self):
        super().__init__()
        self.waiting = []

    def members(self, channel):
        d = Deferred()
        self.waiting.append((d, MemoryBackend.members(self, channel)))
        return d

    def release_members(self):
        for d, result in self.waiting:
            result.addCallback(d.callback)
        self.waiting = []


def test_presence_events_wait_for_the_member_list():
    """A message and a member event that arrive while a presence subscriber
    waits for its member list are delivered after its `subscribed` reply."""
    from pushd.auth import channel_signature

    backend = SlowMembersBackend()
    hub, _ = make_hub(backend)
    secret = hub.apps.by_id("default").secret
    ann, ann_conn = open_session(hub, "c1", "ann")
    ann.receive(
        frame(
            type="subscribe",
            channel="presence-x",
            auth=channel_signature(secret, "c1", "presence-x"),
        )
    )
    publish(hub, "presence-x", "early")  # published while ann waits
    bob, bob_conn = open_session(hub, "c2", "bob")
    bob.receive(
        frame(
            type="subscribe",
            channel="presence-x",
            auth=channel_signature(secret, "c2", "presence-x"),
        )
    )
    assert ann_conn.sent == []
    backend.release_members()
    backend.release_members()
    assert [f["type"] for f in ann_conn.sent] == [
        "subscribed",
        "message",
        "member_added",
    ]
    assert ann_conn.sent[0]["members"] == [{"user_id": "ann", "user_info": None}]
    assert ann_conn.sent[1]["data"] == "early"
    assert bob_conn.sent[0]["type"] == "subscribed"
    assert hub.local_subscribers("presence-x") == 2
