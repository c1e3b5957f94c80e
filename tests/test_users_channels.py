"""Users, signatures, channel kinds and presence, end to end over real sockets."""

import json
import time

import jwt
import treq
from pytest_twisted import ensureDeferred

from pushd.auth import channel_signature, make_user_token

SECRET = "test-api-secret-that-is-at-least-32-bytes"


def token(user, info=None, ttl=60, secret=SECRET):
    return make_user_token(secret, user, info, ttl)


async def as_user(server, user, info=None, key=""):
    client = await server.connect("?token=%s%s" % (token(user, info), key))
    hello = await client.next_of("connected")
    assert hello["user_id"] == user
    client.connection_id = hello["connection_id"]
    return client


def sub_frame(client, channel, channel_data=None, secret=SECRET, **extra):
    frame = {
        "type": "subscribe",
        "channel": channel,
        "auth": channel_signature(secret, client.connection_id, channel, channel_data),
    }
    if channel_data is not None:
        frame["channel_data"] = channel_data
    frame.update(extra)
    return frame


async def api(server, method, path, body=None, headers=None):
    response = await treq.request(
        method,
        server.url + path,
        headers=headers or server.auth(),
        data=json.dumps(body).encode() if body is not None else None,
    )
    text = await response.text()
    return response.code, (json.loads(text) if text else None)


async def refused(client, frame, code="forbidden"):
    client.send(frame)
    error = await client.next_of("error")
    assert error["code"] == code, error
    return error


# -- identity ------------------------------------------------------------------


@ensureDeferred
async def test_token_formats_and_refusals(start_server):
    """pushd1 and JWT tokens identify the user; forged, expired, unsigned-JWT
    and missing tokens are refused with documented close codes."""
    server = await start_server(anonymous=False)
    await as_user(server, "ann", {"name": "Ann"})
    good_jwt = jwt.encode({"sub": "bob", "exp": int(time.time()) + 60}, SECRET, "HS256")
    client = await server.connect("?token=" + good_jwt)
    assert (await client.next_of("connected"))["user_id"] == "bob"
    cases = [
        (token("eve", secret="not-the-secret"), 4002),
        (token("ann")[:-2] + "00", 4002),
        (token("ann", ttl=-1), 4005),
        (
            jwt.encode({"sub": "bob", "exp": int(time.time()) - 5}, SECRET, "HS256"),
            4005,
        ),
        (
            jwt.encode({"sub": "bob", "exp": int(time.time()) + 60}, "w" * 40, "HS256"),
            4002,
        ),
        (jwt.encode({"sub": "bob", "exp": int(time.time()) + 60}, None, "none"), 4002),
        (jwt.encode({"sub": "bob"}, SECRET, "HS256"), 4002),
        ("garbage", 4002),
        ("", 4006),
    ]
    for bad, code in cases:
        client = await server.connect("?token=" + bad)
        assert (await client.wait_closed())[0] == code, bad
        assert client.frames.pending == []


# -- private -------------------------------------------------------------------


@ensureDeferred
async def test_private_channel_needs_the_apps_signature(start_server):
    """Private channels need the app's signature for this connection; others are refused."""
    server = await start_server()
    client = await as_user(server, "ann")
    other = await as_user(server, "bob")
    await refused(client, {"type": "subscribe", "channel": "private-x"})
    await refused(
        client, {"type": "subscribe", "channel": "private-x", "auth": "00" * 32}
    )
    # a signature made for another connection does not work here
    await refused(client, dict(sub_frame(other, "private-x"), type="subscribe"))
    await refused(client, sub_frame(client, "private-x", secret="wrong-secret"))
    client.send(sub_frame(client, "private-x"))
    assert (await client.next_of("subscribed"))["channel"] == "private-x"
    # Pusher's "key:signature" form is accepted too
    frame = sub_frame(other, "private-x")
    frame["auth"] = "somekey:" + frame["auth"]
    other.send(frame)
    await other.next_of("subscribed")


# -- presence ------------------------------------------------------------------


@ensureDeferred
async def test_presence_members_join_once_per_user_and_leave_with_last_tab(
    start_server,
):
    """Presence members see a user once, however many tabs, and see it leave with its last tab."""
    server = await start_server()
    watcher = await as_user(server, "watcher", {"name": "W"})
    watcher.send(sub_frame(watcher, "presence-room"))
    reply = await watcher.next_of("subscribed")
    assert reply["members"] == [{"user_id": "watcher", "user_info": {"name": "W"}}]
    tabs = []
    for _ in range(3):
        tab = await as_user(server, "ann", {"name": "Ann"})
        tab.send(sub_frame(tab, "presence-room"))
        members = (await tab.next_of("subscribed"))["members"]
        assert [m["user_id"] for m in members] == ["ann", "watcher"]
        tabs.append(tab)
    added = await watcher.next_of("member_added")
    assert (added["user_id"], added["user_info"]) == ("ann", {"name": "Ann"})
    code, body = await api(server, "GET", "/api/channels/presence-room/users")
    assert code == 200
    assert body["users"] == [
        {"user_id": "ann", "user_info": {"name": "Ann"}},
        {"user_id": "watcher", "user_info": {"name": "W"}},
    ]
    await tabs[0].close()
    tabs[1].send({"type": "unsubscribe", "channel": "presence-room"})
    await tabs[1].next_of("unsubscribed")
    # the third tab drops its socket without a close frame
    tabs[2].proto.transport.abortConnection()
    removed = await watcher.next_of("member_removed")
    assert removed == {
        "type": "member_removed",
        "channel": "presence-room",
        "user_id": "ann",
    }
    await server.wait_sessions(2)  # watcher and tabs[1]: no ghost of the dropped tab
    _code, body = await api(server, "GET", "/api/channels/presence-room/users")
    assert [u["user_id"] for u in body["users"]] == ["watcher"]
    watcher.assert_nothing_queued()


@ensureDeferred
async def test_presence_refusals_and_signed_channel_data(start_server):
    """Presence subscriptions need signed channel data naming the user; forged ones are refused."""
    server = await start_server()
    anonymous = await server.connected()
    await refused(anonymous, sub_frame(anonymous, "presence-room"))
    data = json.dumps({"user_id": "guest-7", "user_info": {"n": 7}})
    anonymous.send(sub_frame(anonymous, "presence-room", data))
    reply = await anonymous.next_of("subscribed")
    assert reply["members"] == [{"user_id": "guest-7", "user_info": {"n": 7}}]
    # channel_data that was not the one signed is refused
    other = await as_user(server, "ann")
    frame = sub_frame(other, "presence-room", data)
    frame["channel_data"] = json.dumps({"user_id": "admin"})
    await refused(other, frame)


# -- personal and peer -------------------------------------------------------------


@ensureDeferred
async def test_personal_channels_and_messages_to_users(start_server):
    """A user gets messages on every connection; others cannot listen in."""
    server = await start_server()
    ann1, ann2 = await as_user(server, "ann"), await as_user(server, "ann")
    bob = await as_user(server, "bob")
    anonymous = await server.connected()
    await refused(bob, {"type": "subscribe", "channel": "personal-ann"})
    await refused(anonymous, {"type": "subscribe", "channel": "personal-ann"})
    await ann1.subscribe("personal-ann")  # already joined: re-acknowledged
    code, body = await api(
        server,
        "POST",
        "/api/users/ann/messages",
        {"event": "dm", "data": {"text": "hi"}},
    )
    assert code == 202
    for client in (ann1, ann2):
        frame = await client.next_of("message")
        assert (frame["channel"], frame["data"], frame["id"]) == (
            "personal-ann",
            {"text": "hi"},
            body["id"],
        )
    code, body = await api(server, "GET", "/api/users/ann")
    assert body == {"user_id": "ann", "online": True, "connections": 2}
    code, body = await api(server, "GET", "/api/users")
    assert body == {"online": 2}
    bob.assert_nothing_queued()
    anonymous.assert_nothing_queued()


@ensureDeferred
async def test_peer_channels_only_for_named_members_of_the_presence_channel(
    start_server,
):
    """Peer channels are open only to the two users they name."""
    server = await start_server()
    ann, bob, eve = [await as_user(server, u) for u in ("ann", "bob", "eve")]
    await refused(
        ann, {"type": "subscribe", "channel": "peer-room:ann&bob"}
    )  # not in room
    for client in (ann, bob, eve):
        client.send(sub_frame(client, "presence-room"))
        await client.next_of("subscribed")
    assert [(await ann.next_of("member_added"))["user_id"] for _ in "xx"] == [
        "bob",
        "eve",
    ]
    assert (await bob.next_of("member_added"))["user_id"] == "eve"
    await ann.subscribe("peer-room:ann&bob")
    await bob.subscribe("peer-room:ann&bob")
    await refused(eve, {"type": "subscribe", "channel": "peer-room:ann&bob"})
    await refused(
        eve, {"type": "subscribe", "channel": "peer-room:eve"}, "invalid_channel"
    )


# -- client events -------------------------------------------------------------


@ensureDeferred
async def test_client_events_reach_others_not_the_sender(start_server):
    """Client events reach the other subscribers, marked with the sender, and not the sender."""
    server = await start_server(client_events=True)
    ann, bob = await as_user(server, "ann"), await as_user(server, "bob")
    for client in (ann, bob):
        client.send(sub_frame(client, "private-chat"))
        await client.next_of("subscribed")
        await client.subscribe("public")
    ann.send(
        {
            "type": "client_event",
            "channel": "private-chat",
            "event": "client-typing",
            "data": {"on": True},
        }
    )
    frame = await bob.next_of("message")
    assert (frame["event"], frame["data"], frame["user_id"]) == (
        "client-typing",
        {"on": True},
        "ann",
    )
    await refused(
        ann, {"type": "client_event", "channel": "public", "event": "client-x"}
    )
    await refused(
        ann,
        {"type": "client_event", "channel": "private-chat", "event": "x"},
        "invalid_field",
    )
    await refused(
        ann, {"type": "client_event", "channel": "private-other", "event": "client-x"}
    )
    ann.assert_nothing_queued()
    bob.assert_nothing_queued()


@ensureDeferred
async def test_client_events_refused_when_app_disables_them(start_server):
    """Apps that disable client events get them refused."""
    server = await start_server()
    ann = await as_user(server, "ann")
    ann.send(sub_frame(ann, "private-chat"))
    await ann.next_of("subscribed")
    error = await refused(
        ann, {"type": "client_event", "channel": "private-chat", "event": "client-x"}
    )
    assert "disabled" in error["message"]


# -- publishing options, force logout --------------------------------------------


@ensureDeferred
async def test_publish_excluding_sender_and_to_some_users(start_server):
    """'exclude' and 'users' limit who gets a message, as the publisher asked."""
    server = await start_server()
    ann, bob = await as_user(server, "ann"), await as_user(server, "bob")
    carl = await as_user(server, "carl")
    for client in (ann, bob, carl):
        await client.subscribe("news")
    code, _ = await api(
        server,
        "POST",
        "/api/channels/news/messages",
        {"event": "e", "data": 1, "exclude": ann.connection_id},
    )
    assert code == 202
    assert (await bob.next_of("message"))["data"] == 1
    assert (await carl.next_of("message"))["data"] == 1
    code, _ = await api(
        server,
        "POST",
        "/api/channels/news/messages",
        {"event": "e", "data": 2, "users": ["ann", "carl"]},
    )
    assert (await ann.next_of("message"))["data"] == 2
    assert (await carl.next_of("message"))["data"] == 2
    code, body = await api(
        server,
        "POST",
        "/api/channels/news/messages",
        {"event": "e", "data": 3, "users": "ann"},
    )
    assert (code, body["error"]) == (400, "invalid_field")
    code, body = await api(
        server,
        "POST",
        "/api/channels/news/messages",
        {"event": "pushd:logout", "data": 3},
    )
    assert (code, body["error"]) == (400, "invalid_field")
    for client in (ann, bob, carl):
        client.assert_nothing_queued()


@ensureDeferred
async def test_force_logout_closes_every_connection_of_the_user(start_server):
    """Force-logout closes every connection of the user with 4010, and no one else's."""
    server = await start_server()
    ann1, ann2, bob = (
        await as_user(server, "ann"),
        await as_user(server, "ann"),
        await as_user(server, "bob"),
    )
    code, body = await api(server, "DELETE", "/api/users/ann")
    assert code == 204
    assert (await ann1.wait_closed())[0] == 4010
    assert (await ann2.wait_closed())[0] == 4010
    code, body = await api(server, "DELETE", "/api/users/nobody")
    assert code == 204
    await server.wait_sessions(1)
    code, body = await api(server, "GET", "/api/users/ann")
    assert body["online"] is False
    bob.send({"type": "ping"})
    await bob.next_of("pong")


# -- signed REST requests --------------------------------------------------------


@ensureDeferred
async def test_signed_requests_expire_and_cannot_be_replayed(start_server):
    """A signed REST request works once, within its window; a replay or a stale one is refused."""
    from pushd.auth import request_text, sign

    server = await start_server(client_key="ck-12345678", signature_window=30)
    listener = await server.connected("?key=ck-12345678")
    await listener.subscribe("news")
    path, body = "/api/channels/news/messages", b'{"event": "e", "data": "signed"}'

    def headers(timestamp, secret=SECRET):
        return {
            "X-Pushd-Key": "ck-12345678",
            "X-Pushd-Timestamp": timestamp,
            "X-Pushd-Signature": sign(
                secret, request_text(b"POST", path.encode(), timestamp, body)
            ),
        }

    async def post(h):
        response = await treq.post(server.url + path, data=body, headers=h)
        return response.code, await response.json()

    fresh = headers("%d" % time.time())
    assert (await post(fresh))[0] == 202
    assert (await listener.next_of("message"))["data"] == "signed"
    code, reply = await post(fresh)  # the same request again
    assert (code, reply["error"]) == (401, "unauthorized") and "replay" in reply[
        "message"
    ]
    code, reply = await post(headers("%d" % (time.time() - 120)))  # captured long ago
    assert code == 401 and "window" in reply["message"]
    code, reply = await post(headers("%d" % time.time(), secret="guessed"))
    assert code == 401 and "signature" in reply["message"]
    listener.assert_nothing_queued()


# -- several apps ----------------------------------------------------------------

APPS = (
    {"id": "chat", "key": "chat-key-1", "secret": "chat-secret-1"},
    {"id": "news", "key": "news-key-1", "secret": "news-secret-1"},
)


@ensureDeferred
async def test_apps_never_see_each_other(start_server):
    """Apps on one pushd never see each other's channels, users or messages."""
    from pushd.apps import app_from_mapping

    server = await start_server(apps=tuple(app_from_mapping(a) for a in APPS))
    refused_client = await server.connect("?key=nope")
    assert (await refused_client.wait_closed())[0] == 4001
    chat = await server.connected("?key=chat-key-1")
    news = await server.connected("?key=news-key-1")
    await chat.subscribe("general")
    await news.subscribe("general")
    bearer = {"Authorization": "Bearer chat-secret-1"}
    code, _ = await api(
        server,
        "POST",
        "/api/channels/general/messages",
        {"event": "e", "data": "chat only"},
        headers=bearer,
    )
    assert code == 202
    assert (await chat.next_of("message"))["data"] == "chat only"
    code, body = await api(server, "GET", "/api/channels", headers=bearer)
    assert body == {"channels": {"general": {"subscribers": 1}}}
    ann_news = await server.connect(
        "?key=news-key-1&token=" + token("ann", secret="chat-secret-1")
    )
    assert (await ann_news.wait_closed())[
        0
    ] == 4002  # a chat token is not valid for news
    code, _ = await api(
        server, "GET", "/api/channels", headers={"Authorization": "Bearer " + SECRET}
    )
    assert code == 403
    news.assert_nothing_queued()


# -- Thunderpush compatibility -------------------------------------------------------


@ensureDeferred
async def test_thunderpush_routes(start_server):
    """Thunderpush's server libraries work against pushd unchanged."""
    server = await start_server(client_key="tp-key-123")
    ann = await server.connect("?key=tp-key-123&token=" + token("ann"))
    await ann.next_of("connected")
    await ann.subscribe("room")
    base = "/api/1.0.0/tp-key-123"
    auth = {"X-Thunder-Secret-Key": SECRET, "Content-Type": "application/json"}
    assert await api(
        server, "POST", base + "/channels/room/", "Hello World!", auth
    ) == (200, {"count": 1})
    frame = await ann.next_of("message")
    assert (frame["event"], frame["data"]) == ("message", "Hello World!")
    assert await api(server, "GET", base + "/channels/room/", None, auth) == (
        200,
        {"users": ["ann"]},
    )
    assert await api(server, "GET", base + "/users/", None, auth) == (200, {"count": 1})
    assert await api(server, "GET", base + "/users/ann/", None, auth) == (
        200,
        {"online": True},
    )
    assert await api(server, "GET", base + "/users/bob/", None, auth) == (
        200,
        {"online": False},
    )
    assert await api(server, "POST", base + "/users/ann/", {"x": 1}, auth) == (
        200,
        {"count": 1},
    )
    assert (await ann.next_of("message"))["data"] == {"x": 1}
    response = await treq.post(
        server.url + base + "/channels/room/", data=b"not json", headers=auth
    )
    assert (response.code, await response.json()) == (
        400,
        {"message": "Request body is not valid JSON.", "status": 400},
    )
    wrong = {"X-Thunder-Secret-Key": "nope"}
    assert await api(server, "GET", base + "/users/", None, wrong) == (
        401,
        {"message": "Wrong API key/secret.", "status": 401},
    )
    assert await api(server, "GET", "/api/1.0.0/other-key/users/", None, auth) == (
        401,
        {"message": "Wrong API key/secret.", "status": 401},
    )
    response = await treq.delete(server.url + base + "/users/ann/", headers=auth)
    assert response.code == 204
    assert (await ann.wait_closed())[0] == 4010


@ensureDeferred
async def test_python_client_helpers_drive_the_whole_flow(start_server):
    """PushClient signs requests, mints user tokens and channel auths that
    pushd accepts."""
    from twisted.internet.threads import deferToThread

    from pushd.client import PushClient

    server = await start_server(client_key="pk-12345678")
    push = PushClient(server.url, SECRET, key="pk-12345678")
    client = await server.connect(
        "?key=pk-12345678&token=" + push.user_token("ann", {"a": 1})
    )
    hello = await client.next_of("connected")
    answer = push.channel_auth(
        hello["connection_id"],
        "presence-lobby",
        json.dumps({"user_id": "ann", "user_info": {"a": 1}}),
    )
    client.send(dict(answer, type="subscribe", channel="presence-lobby"))
    assert (await client.next_of("subscribed"))["members"][0]["user_id"] == "ann"
    await deferToThread(push.publish, "presence-lobby", "e", "via signed request")
    assert (await client.next_of("message"))["data"] == "via signed request"
    await deferToThread(push.publish_to_user, "ann", "dm", 1)
    assert (await client.next_of("message"))["channel"] == "personal-ann"
    assert await deferToThread(push.user, "ann") == {
        "user_id": "ann",
        "online": True,
        "connections": 1,
    }
    assert await deferToThread(push.users_online) == 1
    assert await deferToThread(push.channel_users, "presence-lobby") == {
        "ann": {"a": 1}
    }
    await deferToThread(push.logout, "ann")
    assert (await client.wait_closed())[0] == 4010
