"""Attacks on the Pusher adapter and its HTTP API, over real sockets."""

from __future__ import annotations

import json
import time

import treq
from clients import connect_ws
from pusherjs import APP_ID, KEY
from pytest_twisted import ensureDeferred

from pushd.apps import App
from pushd.auth import channel_signature, sign
from pushd.pusher import user_auth_text

STRICT_SECRET = "strict-secret-1234"


async def pusher_client(server):
    client = await connect_ws(server.port, "?protocol=7", path="/app/" + KEY)
    server.clients.append(client)
    hello = await client.next()
    client.socket_id = json.loads(hello["data"])["socket_id"]
    return client


def subscribe(client, channel, **fields):
    client.send({"event": "pusher:subscribe", "data": dict(channel=channel, **fields)})


def sign_in(client, user_id="ann"):
    user_data = json.dumps({"id": user_id})
    text = user_auth_text(client.socket_id, user_data)
    auth = "%s:%s" % (KEY, sign(STRICT_SECRET, text))
    client.send(
        {"event": "pusher:signin", "data": {"auth": auth, "user_data": user_data}}
    )


async def strict_server(start_server, **settings):
    return await start_server(
        apps=(App("strict", KEY, STRICT_SECRET, anonymous=False),), **settings
    )


@ensureDeferred
async def test_held_subscriptions_before_signin_are_bounded(start_server):
    """A connection to an anonymous: false app that has not signed in cannot
    make pushd keep more than max-message-size bytes of subscriptions, nor
    anything but strings: a frame of nested lists (a megabyte of objects
    from 64 KB) is refused at once, and past the byte budget further
    subscriptions get pusher:subscription_error 401.  What was held still
    subscribes once the connection signs in."""
    server = await strict_server(start_server, max_message_size=4096)
    client = await pusher_client(server)
    subscribe(client, "lists", auth=[[]] * 1000)
    error = await client.next()
    assert error["event"] == "pusher:subscription_error", error
    assert json.loads(error["data"])["status"] == 400
    padding = "x" * 1000
    for n in range(3):  # about 1 KB each: held
        subscribe(client, "news-%d" % n, auth=padding)
    subscribe(client, "news-3", auth=padding)  # over 4 KB in all
    error = await client.next()
    assert (error["event"], error["channel"]) == ("pusher:subscription_error", "news-3")
    assert json.loads(error["data"])["status"] == 401
    sign_in(client)
    assert (await client.next())["event"] == "pusher:signin_success"
    got = [await client.next() for _ in range(3)]
    assert [(f["event"], f["channel"]) for f in got] == [
        ("pusher_internal:subscription_succeeded", "news-%d" % n) for n in range(3)
    ]
    client.assert_nothing_queued()


@ensureDeferred
async def test_held_subscriptions_count_against_the_rate_limit(start_server):
    """Subscriptions held until signin are charged against client-burst like
    every other frame: past it the client is told it is rate limited."""
    server = await strict_server(start_server, client_burst=3, client_rate=0.01)
    client = await pusher_client(server)
    for n in range(4):
        subscribe(client, "news-%d" % n)
    error = await client.next()
    assert error["event"] == "pusher:error", error
    assert error["data"]["code"] == 4302


def signed_query(method, path, params, secret):
    """A query string signed as Pusher's libraries sign it."""
    query = "&".join("%s=%s" % kv for kv in sorted(params.items()))
    signature = sign(secret, "%s\n%s\n%s" % (method, path, query))
    return query + "&auth_signature=" + signature


@ensureDeferred
async def test_signed_query_parameters_are_the_ones_obeyed(start_server, secret):
    """The HTTP API acts on exactly the parameters the signature covers: a
    captured GET /channels?filter_by_prefix=private- resent with the key
    spelled FILTER_BY_PREFIX (signed alike, since keys are lowercased
    for signing) still lists only private- channels, not every channel."""
    server = await start_server(client_key=KEY, pusher_app_id=APP_ID)
    client = await server.connected("?key=" + KEY)
    await client.subscribe("news")
    channel = "private-room"
    auth = channel_signature(secret, client.connection_id, channel)
    client.send({"type": "subscribe", "channel": channel, "auth": auth})
    await client.next_of("subscribed")
    path = "/apps/%s/channels" % APP_ID
    params = {
        "auth_key": KEY,
        "auth_timestamp": str(int(time.time())),
        "auth_version": "1.0",
        "filter_by_prefix": "private-",
    }
    query = signed_query("GET", path, params, secret)
    for sent in (query, query.replace("filter_by_prefix", "FILTER_BY_PREFIX")):
        response = await treq.get(server.url + path + "?" + sent)
        assert response.code == 200
        assert await response.json() == {"channels": {channel: {}}}
