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


@ensureDeferred
async def test_ping_errors_and_rate_limit_close(start_server):
    """pusher:ping gets pusher:pong; a frame that is not JSON or an unknown
    event gets pusher:error; a client that floods past client-burst is told
    (pusher:error 4302) and then closed with 4302, which pusher-js does not
    retry."""
    server = await start_server(client_key=KEY, client_rate=1, client_burst=4)
    client = await pusher_client(server)
    client.send({"event": "pusher:ping", "data": {}})
    assert await client.next() == {"event": "pusher:pong", "data": {}}
    client.send(b"{not json")
    assert (await client.next())["event"] == "pusher:error"
    client.send({"event": "pusher:nonsense", "data": {}})
    error = await client.next()
    assert error["data"]["message"] == "unknown event 'pusher:nonsense'"
    for _ in range(12):
        client.send({"event": "pusher:ping", "data": {}})
    frames = []
    while True:
        frame = await client.next()
        frames.append(frame)
        if frame["event"] == "pusher:error" and "rate limit exceeded" in str(frame):
            break
    assert any(
        f["data"].get("code") == 4302 for f in frames if f["event"] == "pusher:error"
    )
    assert (await client.wait_closed())[0] == 4302


@ensureDeferred
async def test_slow_pusher_consumer_closed_with_4100(start_server):
    """A Pusher client that stops reading is closed with 4100 (pusher-js
    reconnects after a backoff) once it is send-queue-bytes behind; a
    reading Pusher client on the same channel misses nothing."""
    server = await start_server(
        client_key=KEY, send_queue_bytes=256 * 1024, max_message_size=512 * 1024
    )
    fast, slow = await pusher_client(server), await pusher_client(server)
    for client in (fast, slow):
        client.send({"event": "pusher:subscribe", "data": {"channel": "firehose"}})
        assert (await client.next())["event"].endswith("subscription_succeeded")
    conn = server.hub.sessions[slow.socket_id].conn  # the server's end
    slow.proto.transport.pauseProducing()
    blob, count = "x" * 200_000, 100  # 20 MB: more than kernel buffers hide
    got = []
    for n in range(count):
        await server.hub.publish(server.app, ["firehose"], "blob", {"n": n, "b": blob})
        # Paced by the reading client, not by time.
        got.append(json.loads((await fast.next())["data"])["n"])
    await server.wait_sessions(1, timeout=10)
    assert got == list(range(count))
    # What the client reads of it depends on the kernel buffers; what the
    # server said is certain.
    assert conn.localCloseCode == 4100
    slow.proto.transport.resumeProducing()
    await slow.wait_closed()
