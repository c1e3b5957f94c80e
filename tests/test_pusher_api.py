"""The Pusher HTTP API, called by the official Python library (pusher)."""

from __future__ import annotations

import json
import time
from unittest import mock

import pusher
import pytest
import treq
from pusher.http import GET, POST, Request
from pusherjs import APP_ID, KEY, call, library
from pytest_twisted import ensureDeferred

from pushd.apps import App

Q = "?key=" + KEY


async def started(start_server, **settings):
    settings.setdefault("client_key", KEY)
    settings.setdefault("pusher_app_id", APP_ID)
    return await start_server(**settings)


async def send(server, request: Request, body: bytes | None = None):
    """Send a request the library signed (optionally with another body)."""
    response = await treq.request(
        request.method,
        server.url + request.signed_path,
        data=request.body if body is None else body,
        headers={"Content-Type": "application/json"},
    )
    return response.code, await response.json()


def signed(server, method, path, params=None, secret=None, at=None):
    client = library(server, secret=secret)._pusher_client
    with mock.patch("pusher.http.time.time", return_value=at or time.time()):
        return Request(client, method, path, params or {})


@ensureDeferred
async def test_trigger_reaches_subscribers_as_the_published_string(start_server):
    """trigger() publishes to every named channel; pushd's own clients get
    the data as the string the library sent (JSON-encoded by it)."""
    server = await started(start_server)
    a, b = await server.connected(Q), await server.connected(Q)
    await a.subscribe("news")
    await b.subscribe("sport")
    result = await call(library(server).trigger, ["news", "sport"], "goal", {"n": 1})
    assert result == {}
    for client, channel in ((a, "news"), (b, "sport")):
        frame = await client.next_of("message")
        assert (frame["channel"], frame["event"]) == (channel, "goal")
        assert json.loads(frame["data"]) == {"n": 1}


@ensureDeferred
async def test_events_info_and_socket_id_exclusion(start_server):
    """POST /events with info answers subscription_count/user_count per
    channel; socket_id keeps the event from that connection."""
    server = await started(start_server)
    client = await server.connected(Q)
    await client.subscribe("news")
    request = signed(
        server,
        POST,
        "/apps/%s/events" % APP_ID,
        {
            "name": "e",
            "data": "x",
            "channels": ["news", "presence-x"],
            "info": "subscription_count,user_count",
            "socket_id": "1.2",
        },
    )
    code, body = await send(server, request)
    assert code == 200
    assert body == {
        "channels": {
            "news": {"subscription_count": 1},
            "presence-x": {"subscription_count": 0, "user_count": 0},
        }
    }
    assert (await client.next_of("message"))["data"] == "x"


@ensureDeferred
async def test_trigger_batch(start_server):
    """trigger_batch() publishes each event in order; more than
    pusher-max-batch events is 400 and publishes nothing."""
    server = await started(start_server, pusher_max_batch=3)
    client = await server.connected(Q)
    await client.subscribe("news")
    batch = [{"channel": "news", "name": "n", "data": str(i)} for i in range(3)]
    assert await call(library(server).trigger_batch, batch) == {}
    assert [(await client.next_of("message"))["data"] for _ in range(3)] == [
        "0",
        "1",
        "2",
    ]
    with pytest.raises(pusher.errors.PusherBadRequest):
        await call(library(server).trigger_batch, batch + batch[:1])
    request = signed(
        server,
        POST,
        "/apps/%s/batch_events" % APP_ID,
        {
            "batch": [
                {
                    "channel": "news",
                    "name": "i",
                    "data": "",
                    "info": "subscription_count",
                }
            ]
        },
    )
    assert await send(server, request) == (200, {"batch": [{"subscription_count": 1}]})
    await client.next_of("message")
    client.assert_nothing_queued()


@ensureDeferred
async def test_channels_channel_and_users(start_server):
    """channels_info, channel_info and users_info answer what is occupied,
    how many subscribe and which users are present; user_count and users
    only for presence channels (400 otherwise)."""
    server = await started(start_server)
    lib = library(server)
    await (await server.connected(Q)).subscribe("news")
    sid = await server.connected(Q)
    from pushd.auth import channel_signature

    data = json.dumps({"user_id": 5, "user_info": {"n": 1}})
    sid.send(
        {
            "type": "subscribe",
            "channel": "presence-room",
            "auth": channel_signature(
                server.secret, sid.connection_id, "presence-room", data
            ),
            "channel_data": data,
        }
    )
    await sid.next_of("subscribed")
    assert await call(lib.channels_info) == {
        "channels": {"news": {}, "presence-room": {}}
    }
    assert await call(lib.channels_info, "presence-", ["user_count"]) == {
        "channels": {"presence-room": {"user_count": 1}}
    }
    with pytest.raises(pusher.errors.PusherBadRequest):
        await call(lib.channels_info, None, ["user_count"])
    assert await call(lib.channel_info, "news", ["subscription_count"]) == {
        "occupied": True,
        "subscription_count": 1,
    }
    assert await call(lib.channel_info, "empty") == {"occupied": False}
    assert await call(
        lib.channel_info, "presence-room", ["user_count", "subscription_count"]
    ) == {"occupied": True, "user_count": 1, "subscription_count": 1}
    with pytest.raises(pusher.errors.PusherBadRequest):
        await call(lib.channel_info, "news", ["user_count"])
    assert await call(lib.users_info, "presence-room") == {"users": [{"id": "5"}]}
    with pytest.raises(pusher.errors.PusherBadRequest):
        await call(lib.users_info, "news")


@ensureDeferred
async def test_signature_failures_are_401(start_server):
    """Wrong secret, wrong key, wrong app id, a stale timestamp, a body
    that does not match body_md5, another path or version: all 401, and
    nothing is published."""
    server = await started(start_server)
    client = await server.connected(Q)
    await client.subscribe("news")
    path = "/apps/%s/events" % APP_ID
    event = {"name": "e", "data": "x", "channels": ["news"]}
    with pytest.raises(pusher.errors.PusherBadAuth):
        await call(library(server, secret="x" * 40).trigger, "news", "e", "x")
    with pytest.raises(pusher.errors.PusherBadAuth):
        await call(library(server, key="other-key").trigger, "news", "e", "x")
    with pytest.raises(pusher.errors.PusherBadAuth):
        await call(library(server, app_id="999").trigger, "news", "e", "x")
    stale = signed(server, POST, path, event, at=time.time() - 601)
    assert (await send(server, stale))[0] == 401
    fresh = signed(server, POST, path, event, at=time.time() - 590)
    assert (await send(server, fresh))[0] == 200
    await client.next_of("message")
    request = signed(server, POST, path, event)
    tampered = request.body.replace(b'"x"', b'"y"')
    assert (await send(server, request, tampered))[0] == 401
    other = signed(server, POST, "/apps/%s/batch_events" % APP_ID, event)
    response = await treq.post(
        server.url + path + "?" + other.query_string, data=other.body
    )
    assert response.code == 401
    request = signed(server, GET, "/apps/%s/channels" % APP_ID)
    url = server.url + request.signed_path.replace(
        "auth_version=1.0", "auth_version=2.0"
    )
    assert (await treq.get(url)).code == 401
    assert (await treq.get(server.url + "/apps/%s/channels" % APP_ID)).code == 401
    client.assert_nothing_queued()


@ensureDeferred
async def test_limits_and_bad_bodies(start_server):
    """Event data over pusher-max-event-size is 413; a body that is not JSON,
    data that is not a string or a reserved event name is 400; more than
    max-channels-per-publish channels is 400."""
    server = await started(start_server, pusher_max_event_size=100)
    path = "/apps/%s/events" % APP_ID
    ok = {"name": "e", "data": "x" * 100, "channels": ["news"]}
    assert (await send(server, signed(server, POST, path, ok)))[0] == 200
    with pytest.raises(pusher.errors.PusherBadStatus, match="413"):
        await call(library(server).trigger, "news", "e", "x" * 101)
    for bad in (
        dict(ok, data={"a": 1}),
        dict(ok, name="pusher:x"),
        dict(ok, channels=["c%d" % i for i in range(101)]),
        dict(ok, channels=["bad channel"]),
        dict(ok, socket_id="abc"),
        {"name": "e", "data": "x"},
    ):
        code, body = await send(server, signed(server, POST, path, bad))
        assert code == 400, (bad, body)
    request = signed(server, POST, path, ok)
    request.body = b"not json"
    request.query_params.pop("auth_signature")
    request._generate_auth()
    assert (await send(server, request))[0] == 400


@ensureDeferred
async def test_apps_by_pusher_id_and_keyless_default(start_server):
    """Each app answers at its pusher-id; an app without one at its pushd
    id; a single app with no client key takes any auth_key."""
    apps = (
        App("chat", "chat-key-1234", "chat-secret-1234", pusher_id="101"),
        App("news", "news-key-1234", "news-secret-1234"),
    )
    server = await start_server(apps=apps)
    chat = pusher.Pusher(
        "101",
        "chat-key-1234",
        "chat-secret-1234",
        host="127.0.0.1",
        port=server.port,
        ssl=False,
    )
    news = pusher.Pusher(
        "1",
        "news-key-1234",
        "news-secret-1234",
        host="127.0.0.1",
        port=server.port,
        ssl=False,
    )
    assert await call(chat.channels_info) == {"channels": {}}
    request = Request(news._pusher_client, GET, "/apps/news/channels", {})
    assert await send(server, request) == (200, {"channels": {}})
    crossed = pusher.Pusher(
        "101",
        "news-key-1234",
        "news-secret-1234",
        host="127.0.0.1",
        port=server.port,
        ssl=False,
    )
    with pytest.raises(pusher.errors.PusherBadAuth):
        await call(crossed.channels_info)
    request = Request(chat._pusher_client, GET, "/apps/chat/channels", {})
    assert (await send(server, request))[0] == 401
    single = await start_server()
    anykey = pusher.Pusher(
        "77", "anything", single.secret, host="127.0.0.1", port=single.port, ssl=False
    )
    assert await call(anykey.channels_info) == {"channels": {}}
