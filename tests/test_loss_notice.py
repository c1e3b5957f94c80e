"""What each transport says when its node may have missed messages, and what
/ready says meanwhile (issue 10; docs/protocol.md, "Delivery guarantees")."""

import json

import treq
from pytest_twisted import ensureDeferred
from test_sse import open_stream
from twisted.internet import reactor

from pushd.backends.redis import RedisBackend
from pushd.testing import eventually


def redis_backend(redis_server):
    return RedisBackend(
        reactor, port=redis_server.port, heartbeat=0.2, node_ttl=1.0, timeout=0.5
    )


@ensureDeferred
async def test_websocket_and_sse_subscribers_are_told_after_a_redis_restart(
    start_server, redis_server
):
    """After Redis comes back, a WebSocket subscriber of a channel without
    history gets a messages_lost frame, an SSE subscriber the
    pushd:messages_lost event with the same JSON, and both then get new
    messages as usual; /ready answers 503 with the reason during the
    outage and 200 after, /health 200 throughout."""
    server = await start_server(backend=redis_backend(redis_server))
    ws = await server.connected()
    await ws.subscribe("news")
    stream = await open_stream(server, "channel=news")
    await stream.next_of("pushd:connected")
    await stream.next_of("pushd:subscribed")

    redis_server.stop()
    await eventually(lambda: server.hub.unready_reason() is not None)
    ready = await treq.get(server.url + "/ready")
    assert ready.code == 503
    body = await ready.json()
    assert body["status"] == "unavailable"
    assert body["reason"] == "Redis is unreachable"
    # An unauthenticated probe learns that Redis is down, not where it is.
    assert str(redis_server.port) not in json.dumps(body)
    health = await treq.get(server.url + "/health")
    assert health.code == 200
    await health.content()

    redis_server.start()
    frame = await ws.next_of("messages_lost", timeout=10)
    assert set(frame) == {"type", "channel", "reason"}
    assert frame["channel"] == "news" and frame["reason"]
    event = await stream.next_of("pushd:messages_lost")
    assert event["data"] == frame
    # Ready once every channel of this node has caught up (the SSE stream's
    # own frame channel too, which may come after news).
    await eventually(lambda: server.hub.unready_reason() is None)
    ready = await treq.get(server.url + "/ready")
    assert (ready.code, await ready.json()) == (200, {"status": "ready"})

    response = await treq.post(
        server.url + "/api/channels/news/messages",
        json={"event": "e", "data": "after"},
        headers=server.auth(),
    )
    assert response.code == 202
    assert (await ws.next_of("message"))["data"] == "after"
    assert (await stream.next_of("e"))["data"]["data"] == "after"


@ensureDeferred
async def test_relay_subscriber_is_answered_409_messages_lost(start_server):
    """A long-polling relay subscriber whose node reports a gap it could not
    fill is answered 409 messages_lost at once, instead of waiting on."""
    server = await start_server()
    waiting = treq.get(server.url + "/subscriber/feed")
    await eventually(lambda: server.hub.local_subscribers("feed") == 1)
    # What a backend reports (IDeliveryGaps) when the history lacks messages.
    server.hub._lost("default/feed", "history trimmed", True)
    response = await waiting
    assert response.code == 409
    assert response.headers.getRawHeaders("x-pushd-messages-lost") == ["1"]
    assert await response.json() == {
        "error": "messages_lost",
        "message": "history trimmed",
    }


@ensureDeferred
async def test_ready_with_the_memory_backend(start_server):
    """A single-node backend is always ready."""
    server = await start_server()
    response = await treq.get(server.url + "/ready")
    assert (response.code, await response.json()) == (200, {"status": "ready"})
