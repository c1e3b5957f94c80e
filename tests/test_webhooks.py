"""Webhooks against a real HTTP receiver on 127.0.0.1."""

import hashlib
import hmac
import json

import pytest
from pytest_twisted import ensureDeferred
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from pushd.auth import channel_signature, make_user_token
from pushd.testing import eventually
from pushd.webhooks import WebhookTarget

SECRET = "test-api-secret-that-is-at-least-32-bytes"


class Receiver(Resource):
    """Records events; can fail the first N attempts or never answer."""

    isLeaf = True

    def __init__(self, fail_first=0, hang=False):
        super().__init__()
        self.fail_first, self.hang = fail_first, hang
        self.attempts, self.events, self.hung = [], [], []

    def render_POST(self, request):
        body = request.content.read()
        signature = request.getHeader(b"x-pushd-signature").decode()
        expected = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        event = json.loads(body)
        self.attempts.append((request.getHeader(b"x-pushd-event-id").decode(), event))
        if self.hang:
            self.hung.append(request)
            return NOT_DONE_YET
        if not hmac.compare_digest(signature, expected):
            request.setResponseCode(401)
            return b"bad signature"
        if len(self.attempts) <= self.fail_first:
            request.setResponseCode(503)
            return b"try later"
        self.events.append(event)
        return b"ok"

    def names(self):
        return [(e["name"], e.get("channel"), e.get("user_id")) for e in self.events]


@pytest.fixture
def receivers():
    ports = []

    async def start(**kwargs):
        receiver = Receiver(**kwargs)
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Site(receiver)
        )
        ports.append((port, receiver))
        receiver.url = "http://127.0.0.1:%d/hook" % port.getHost().port
        return receiver

    yield start
    for port, receiver in ports:
        for request in receiver.hung:
            request.channel.transport.abortConnection()
        port.stopListening()


def targets(receiver, events=None):
    from pushd.webhooks import DEFAULT_EVENTS

    return (WebhookTarget(receiver.url, frozenset(events or DEFAULT_EVENTS)),)


@ensureDeferred
async def test_every_event_kind_is_signed_and_delivered(start_server, receivers):
    """Every webhook event kind reaches the receiver, signed with the app secret."""
    receiver = await receivers()
    server = await start_server(
        webhooks=targets(
            receiver,
            [
                "channel_occupied",
                "channel_vacated",
                "member_added",
                "member_removed",
                "client_event",
                "message_published",
            ],
        ),
        webhook_vacate_delay=0.2,
        client_events=True,
    )
    ann = await server.connect("?token=" + make_user_token(SECRET, "ann"))
    ann_id = (await ann.next_of("connected"))["connection_id"]
    ann.send(
        {
            "type": "subscribe",
            "channel": "presence-room",
            "auth": channel_signature(SECRET, ann_id, "presence-room"),
        }
    )
    await ann.next_of("subscribed")
    ann.send(
        {
            "type": "client_event",
            "channel": "presence-room",
            "event": "client-wave",
            "data": {"hi": 1},
        }
    )
    await server.hub.publish(server.app, ["presence-room"], "news", {"n": 1})
    await ann.close()
    await eventually(
        lambda: ("channel_vacated", "presence-room", None) in receiver.names()
    )
    names = receiver.names()
    for wanted in [
        ("channel_occupied", "presence-room", None),
        ("member_added", "presence-room", "ann"),
        ("client_event", "presence-room", "ann"),
        ("message_published", "presence-room", None),
        ("member_removed", "presence-room", "ann"),
        ("channel_vacated", "presence-room", None),
    ]:
        assert wanted in names, (wanted, names)
    client_event = next(e for e in receiver.events if e["name"] == "client_event")
    assert (client_event["event"], client_event["data"]) == ("client-wave", {"hi": 1})
    published = next(e for e in receiver.events if e["name"] == "message_published")
    assert (published["event"], published["data"], published["app"]) == (
        "news",
        {"n": 1},
        "default",
    )
    assert len({e["id"] for e in receiver.events}) == len(receiver.events)


@ensureDeferred
async def test_failures_are_retried_with_the_same_event_id(start_server, receivers):
    """A webhook the receiver failed is retried with the same event id, so it is counted once."""
    receiver = await receivers(fail_first=2)
    server = await start_server(webhooks=targets(receiver, ["channel_occupied"]))
    client = await server.connected()
    await client.subscribe("news")
    await eventually(lambda: server.hub.webhooks.delivered == 1, timeout=10)
    ids = [event_id for event_id, _ in receiver.attempts]
    assert len(ids) == 3 and len(set(ids)) == 1
    assert len(receiver.events) == 1


@ensureDeferred
async def test_quick_reconnect_sends_no_vacated(start_server, receivers):
    """A client that reconnects quickly causes no channel_vacated/occupied flapping."""
    receiver = await receivers()
    server = await start_server(webhooks=targets(receiver), webhook_vacate_delay=0.5)
    first = await server.connected()
    await first.subscribe("news")
    await first.close()
    second = await server.connected()
    await second.subscribe("news")
    webhooks = server.hub.webhooks
    # Settled: no vacate check waiting for its delay, nothing being sent.
    await eventually(lambda: webhooks.vacate_checks == 0 and webhooks.pending == 0)
    assert receiver.names() == [("channel_occupied", "news", None)]


@ensureDeferred
async def test_dead_receiver_cannot_grow_memory_and_delivery_goes_on(
    start_server, receivers
):
    """A receiver that never answers: events beyond webhook-queue are dropped
    and counted, and clients keep getting their messages."""
    receiver = await receivers(hang=True)
    server = await start_server(
        webhooks=targets(receiver, ["message_published"]),
        webhook_queue=5,
        webhook_timeout=30,
    )
    client = await server.connected()
    await client.subscribe("news")
    for n in range(20):
        await server.hub.publish(server.app, ["news"], "e", n)
    assert [(await client.next_of("message"))["data"] for _ in range(20)] == list(
        range(20)
    )
    assert server.hub.webhooks.pending == 5
    assert server.hub.webhooks.dropped == 15


@ensureDeferred
async def test_a_receiver_refusing_with_4xx_is_not_retried(start_server, receivers):
    """400-499 (but 429) is the receiver's final word: one attempt, counted failed."""
    receiver = await receivers()
    receiver.render_POST = lambda request: (
        (request.setResponseCode(400), b"no")[1]
        if not receiver.attempts.append(("x", {}))
        else b""
    )
    server = await start_server(webhooks=targets(receiver, ["channel_occupied"]))
    client = await server.connected()
    await client.subscribe("news")
    await eventually(lambda: server.hub.webhooks.failed == 1)
    # A retry would be counted as pending until it was sent.
    await eventually(lambda: server.hub.webhooks.pending == 0)
    assert len(receiver.attempts) == 1 and server.hub.webhooks.delivered == 0
