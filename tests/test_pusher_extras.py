"""Webhooks in Pusher's format (checked by the official Python library) and
pushd's recovery extension, over raw Pusher protocol clients."""

from __future__ import annotations

import json

import pytest
from clients import connect_ws
from pusherjs import KEY, library
from pytest_twisted import ensureDeferred
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.threads import deferToThread
from twisted.web.resource import Resource
from twisted.web.server import Site

from pushd.auth import channel_signature
from pushd.testing import eventually
from pushd.webhooks import PUSHER_EVENTS, WebhookTarget, target_from_mapping


class PusherReceiver(Resource):
    """An app's webhook endpoint: accepts what the library validates."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.library = None
        self.requests: list[dict] = []
        self.refused = 0

    def render_POST(self, request):
        body = request.content.read().decode()
        key = (request.getHeader(b"x-pusher-key") or b"").decode()
        signature = (request.getHeader(b"x-pusher-signature") or b"").decode()
        webhook = self.library.validate_webhook(key, signature, body)
        if webhook is None:
            self.refused += 1
            request.setResponseCode(401)
            return b"bad signature"
        self.requests.append(webhook)
        return b"ok"

    def events(self) -> list[tuple]:
        return [
            tuple(e.get(k) for k in ("name", "channel", "user_id", "event", "data"))
            for r in self.requests
            for e in r["events"]
        ]


async def pusher_client(server, query="?protocol=7"):
    client = await connect_ws(server.port, query, path="/app/" + KEY)
    server.clients.append(client)
    hello = await client.next()
    client.socket_id = json.loads(hello["data"])["socket_id"]
    return client


async def join(server, client, channel, user):
    data = json.dumps({"user_id": user})
    client.send(
        {
            "event": "pusher:subscribe",
            "data": {
                "channel": channel,
                "auth": "%s:%s"
                % (
                    KEY,
                    channel_signature(server.secret, client.socket_id, channel, data),
                ),
                "channel_data": data,
            },
        }
    )
    reply = await client.next()
    assert reply["event"] == "pusher_internal:subscription_succeeded", reply


@ensureDeferred
async def test_pusher_webhooks_batched_signed_and_shaped(start_server):
    """A receiver written for Pusher gets channel_occupied, member_added,
    client_event (with socket_id and user_id), member_removed and
    channel_vacated, signed with X-Pusher-Key/X-Pusher-Signature as the
    official library checks them; events of one moment share a request."""
    receiver = PusherReceiver()
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        Site(receiver)
    )
    url = "http://127.0.0.1:%d/hook" % port.getHost().port
    try:
        server = await start_server(
            client_key=KEY,
            client_events=True,
            webhook_vacate_delay=0.05,
            webhooks=(WebhookTarget(url, PUSHER_EVENTS, None, "pusher"),),
        )
        receiver.library = library(server)
        ann, bob = await pusher_client(server), await pusher_client(server)
        await join(server, ann, "presence-room", 1)
        await eventually(lambda: len(receiver.requests) == 1)
        assert receiver.events() == [
            ("member_added", "presence-room", "1", None, None),
            ("channel_occupied", "presence-room", None, None, None),
        ]
        assert receiver.requests[0]["time_ms"] > 0
        await join(server, bob, "presence-room", 2)
        ann.send(
            {"event": "client-typing", "channel": "presence-room", "data": {"on": True}}
        )
        await eventually(lambda: len(receiver.events()) == 4)
        client_event = receiver.requests[-1]["events"][-1]
        assert client_event == {
            "name": "client_event",
            "channel": "presence-room",
            "event": "client-typing",
            "data": '{"on":true}',
            "socket_id": ann.socket_id,
            "user_id": "1",
        }
        await bob.close()
        await ann.close()
        await eventually(lambda: len(receiver.events()) == 7)
        assert receiver.events()[4:] == [
            ("member_removed", "presence-room", "2", None, None),
            ("member_removed", "presence-room", "1", None, None),
            ("channel_vacated", "presence-room", None, None, None),
        ]
        assert receiver.refused == 0
    finally:
        await port.stopListening()


def test_pusher_format_takes_only_pushers_events():
    """format: pusher accepts Pusher's event names only; unknown formats are
    refused with a clear message."""
    target = target_from_mapping({"url": "http://h/x", "format": "pusher"})
    assert target.format == "pusher"
    with pytest.raises(ValueError, match="webhook events must be a list of"):
        target_from_mapping(
            {"url": "http://h/x", "format": "pusher", "events": ["message_published"]}
        )
    with pytest.raises(ValueError, match="pushd or pusher"):
        target_from_mapping({"url": "http://h/x", "format": "soketi"})


@ensureDeferred
async def test_recovery_extension_on_channels_with_history(start_server):
    """pushd's opt-in extension: on channels with history Pusher events carry
    offset/epoch; a client that resubscribes with ``since`` gets
    ``recovered: true`` and exactly the events it missed, in order, then
    live ones.  Without ``since`` nothing is replayed."""
    from pushd.history import HistoryRule, Retention

    server = await start_server(
        client_key=KEY, history=(HistoryRule("feed-*", Retention(size=10, ttl=60)),)
    )
    lib = library(server)
    client = await pusher_client(server)
    client.send({"event": "pusher:subscribe", "data": {"channel": "feed-a"}})
    ok = await client.next()
    assert ok["event"] == "pusher_internal:subscription_succeeded"
    assert ok["offset"] == 0 and "epoch" in ok
    for n in (1, 2):
        await deferToThread(lib.trigger, "feed-a", "n", str(n))
    seen = [await client.next() for _ in (1, 2)]
    assert [(e["data"], e["offset"]) for e in seen] == [("1", 1), ("2", 2)]
    await client.close()
    for n in (3, 4):
        await deferToThread(lib.trigger, "feed-a", "n", str(n))
    again = await pusher_client(server)
    since = {"offset": seen[-1]["offset"], "epoch": seen[-1]["epoch"]}
    again.send(
        {"event": "pusher:subscribe", "data": {"channel": "feed-a", "since": since}}
    )
    ok = await again.next()
    assert ok["event"] == "pusher_internal:subscription_succeeded"
    assert ok["recovered"] is True
    missed = [await again.next() for _ in (3, 4)]
    assert [(e["event"], e["data"], e["offset"]) for e in missed] == [
        ("n", "3", 3),
        ("n", "4", 4),
    ]
    await deferToThread(lib.trigger, "feed-a", "n", "5")
    assert (await again.next())["offset"] == 5
    fresh = await pusher_client(server)
    fresh.send({"event": "pusher:subscribe", "data": {"channel": "feed-a"}})
    ok = await fresh.next()
    assert "recovered" not in ok
    await fresh.close()
    fresh.assert_nothing_queued()
