"""One channel space: Pusher clients (pusher-js, Laravel Echo), pushd's
WebSocket clients and SSE streams on the same channels, published to through
the Pusher HTTP API (official Python library) and pushd's own REST API."""

from __future__ import annotations

import pytest
import treq
from pusherjs import (
    APP_ID,
    KEY,
    Driver,
    call,
    has_pusher_js,
    library,
    start_auth_server,
)
from pytest_twisted import async_yield_fixture, ensureDeferred
from test_sse import open_stream

from pushd.auth import channel_signature

pytestmark = pytest.mark.skipif(not has_pusher_js(), reason="needs node + tests/js")
Q = "?key=" + KEY


@async_yield_fixture
async def env(start_server, tmp_path):
    server = await start_server(
        client_key=KEY, pusher_app_id=APP_ID, client_events=True
    )
    auth = await start_auth_server(library(server))
    node = Driver(tmp_path)
    yield server, node, auth
    node.stop()
    await auth.listening.stopListening()


async def rest_publish(server, channel, event, data):
    response = await treq.post(
        server.url + "/api/channels/%s/messages" % channel,
        json={"event": event, "data": data},
        headers=server.auth(),
    )
    assert response.code == 202, await response.text()


@ensureDeferred
async def test_pusher_publish_reaches_native_and_sse_as_the_string(env):
    """A Pusher API publish (data: a string, here JSON the library encoded)
    reaches pusher-js parsed, and pushd's WebSocket and SSE clients as that
    exact string."""
    server, node, _ = env
    await node.connect("p", server)
    await node.subscribe("p", "news")
    ws = await server.connected(Q)
    await ws.subscribe("news")
    stream = await open_stream(server, "key=%s&channel=news" % KEY)
    await stream.next_of("pushd:connected")
    await stream.next_of("pushd:subscribed")
    await call(library(server).trigger, "news", "goal", {"score": [1, 0]})
    got = await node.wait_for(id="p", event="goal")
    assert got["data"] == {"score": [1, 0]}
    frame = await ws.next_of("message")
    assert frame["data"] == '{"score": [1, 0]}'
    event = await stream.next_of("goal")
    assert event["data"]["data"] == '{"score": [1, 0]}'


@ensureDeferred
async def test_native_publish_reaches_pusher_as_json_string(env):
    """pushd's REST API publishes JSON values: pusher-js gets objects back as
    objects, strings as the same strings."""
    server, node, _ = env
    await node.connect("p", server)
    await node.subscribe("p", "news")
    await rest_publish(server, "news", "a", {"x": [1, "two"]})
    await rest_publish(server, "news", "b", "plain text")
    await rest_publish(server, "news", "c", 42)
    assert (await node.wait_for(id="p", event="a"))["data"] == {"x": [1, "two"]}
    assert (await node.wait_for(id="p", event="b"))["data"] == "plain text"
    assert (await node.wait_for(id="p", event="c"))["data"] == 42


@ensureDeferred
async def test_client_events_cross_between_protocols(env):
    """A pusher-js client event reaches a pushd WebSocket client on the same
    private channel, and a pushd client_event reaches pusher-js."""
    server, node, auth = env
    await node.connect("p", server, auth=auth)
    await node.subscribe("p", "private-room")
    ws = await server.connected(Q)
    ws.send(
        {
            "type": "subscribe",
            "channel": "private-room",
            "auth": channel_signature(server.secret, ws.connection_id, "private-room"),
        }
    )
    await ws.next_of("subscribed")
    node.send(
        op="trigger",
        id="p",
        channel="private-room",
        event="client-hi",
        data={"from": "pusher"},
    )
    frame = await ws.next_of("message")
    assert (frame["event"], frame["data"]) == ("client-hi", {"from": "pusher"})
    ws.send(
        {
            "type": "client_event",
            "channel": "private-room",
            "event": "client-yo",
            "data": {"from": "pushd"},
        }
    )
    got = await node.wait_for(id="p", event="client-yo")
    assert got["data"] == {"from": "pushd"}
    ws.assert_nothing_queued()


@ensureDeferred
async def test_laravel_echo_public_and_presence(env):
    """Laravel Echo (broadcaster 'pusher', wsHost, wsPort, forceTLS false)
    hears a Laravel-named event on a public channel, and on a presence
    channel sees here/joining/leaving and whispers."""
    server, node, auth = env
    for id, user in (("e1", "1"), ("e2", "2")):
        node.send(
            op="echo",
            id=id,
            options=dict(
                node.options(server),
                key=KEY,
                authEndpoint="%s/auth?user=%s" % (auth.url, user),
            ),
        )
        await node.wait_for(id=id, state="connected")
    node.send(op="echo_listen", id="e1", channel="orders", event="OrderShipped")
    await node.wait_for(id="e1", echo="subscribed", channel="orders")
    await call(
        library(server).trigger,
        "orders",
        "App\\Events\\OrderShipped",
        {"order": {"id": 9}},
    )
    got = await node.wait_for(id="e1", echo="event", channel="orders")
    assert got["data"] == {"order": {"id": 9}}
    node.send(op="echo_join", id="e1", channel="room")
    assert (await node.wait_for(id="e1", echo="here"))["users"] == [{"name": "1"}]
    node.send(op="echo_join", id="e2", channel="room")
    users = (await node.wait_for(id="e2", echo="here"))["users"]
    assert sorted(u["name"] for u in users) == ["1", "2"]
    assert (await node.wait_for(id="e1", echo="joining"))["user"] == {"name": "2"}
    node.send(op="echo_whisper", id="e2", channel="room", data={"typing": True})
    assert (await node.wait_for(id="e1", echo="whisper"))["data"] == {"typing": True}
    node.send(op="disconnect", id="e2")
    assert (await node.wait_for(id="e1", echo="leaving"))["user"] == {"name": "2"}
    assert not node.matching(id="e2", echo="whisper")
