"""Pusher protocol v7 on /app/{key}, driven by the real pusher-js (Node build)."""

from __future__ import annotations

import json
import re

import pytest
import treq
from clients import connect_ws
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

from pushd.auth import channel_signature
from pushd.testing import eventually

SECRET = "test-api-secret-that-is-at-least-32-bytes"  # conftest's

pytestmark = pytest.mark.skipif(not has_pusher_js(), reason="needs node + tests/js")


@async_yield_fixture
async def pusher_env(start_server, tmp_path):
    """A factory: ``await pusher_env(**settings)`` -> (server, node, auth)."""
    made = []

    async def make(**settings):
        settings.setdefault("client_key", KEY)
        settings.setdefault("pusher_app_id", APP_ID)
        server = await start_server(**settings)
        auth = await start_auth_server(library(server))
        node = Driver(tmp_path, "node%d" % len(made))
        made.append((node, auth))
        return server, node, auth

    yield make
    for node, auth in made:
        node.stop()
        await auth.listening.stopListening()


async def publish(server, channel, event, data):
    response = await treq.post(
        server.url + "/api/channels/%s/messages" % channel,
        json={"event": event, "data": data},
        headers=server.auth(),
    )
    assert response.code == 202, await response.text()


@ensureDeferred
async def test_connects_subscribes_and_receives_native_publish(pusher_env):
    """pusher-js connects with a Pusher socket id, subscribes to a public
    channel and gets a native JSON publish back as the object it was."""
    server, node, _ = await pusher_env()
    socket_id = await node.connect("a", server)
    assert re.fullmatch(r"\d+\.\d+", socket_id)
    await node.subscribe("a", "news")
    await publish(server, "news", "App\\Events\\OrderShipped", {"order": 7})
    got = await node.wait_for(id="a", channel="news", event="App\\Events\\OrderShipped")
    assert got["data"] == {"order": 7}


@ensureDeferred
async def test_unknown_key_is_refused_with_4001_and_no_retry(pusher_env):
    """A wrong app key gets pusher:error 4001; pusher-js gives up."""
    server, node, _ = await pusher_env()
    node.send(op="connect", id="a", key="wrong-key", options=node.options(server))
    await node.wait_for(
        id="a",
        conn_error={"code": 4001, "message": "app key wrong-key not in this cluster"},
    )
    await node.wait_for(id="a", state="disconnected")
    assert not node.matching(id="a", state="connected")
    assert len(server.hub.sessions) == 0


@ensureDeferred
async def test_private_channel_needs_the_apps_signature(pusher_env):
    """A private channel opens with the signature the app's library made; a
    signature with another secret gets pusher:subscription_error, status 403,
    and no events of that channel."""
    server, node, auth = await pusher_env()
    await node.connect("a", server, auth=auth)
    await node.subscribe("a", "private-orders")
    node.send(
        op="connect",
        id="b",
        key=KEY,
        options=node.options(server, auth, user="bob&secret=not-the-secret"),
    )
    await node.wait_for(id="b", state="connected")
    node.send(op="subscribe", id="b", channel="private-orders")
    error = await node.wait_for(id="b", event="pusher:subscription_error")
    assert error["data"]["status"] == 403
    await publish(server, "private-orders", "paid", {"n": 1})
    await node.wait_for(id="a", channel="private-orders", event="paid")
    assert not node.matching(id="b", event="paid")


@ensureDeferred
async def test_presence_members_once_per_user_with_integer_ids(pusher_env):
    """Presence: the member list arrives with subscription_succeeded; a user
    with a numeric id (as Laravel sends) joins; its second connection is not
    announced again, and it leaves once its last connection has gone."""
    server, node, auth = await pusher_env()
    await node.connect("ann", server, auth=auth, user="ann")
    first = await node.subscribe("ann", "presence-room")
    assert first["me"] == {"id": "ann", "info": {"name": "Ann"}}
    assert first["count"] == 1
    await node.connect("bob1", server, auth=auth, user="7")
    joined = await node.subscribe("bob1", "presence-room")
    assert joined["count"] == 2
    added = await node.wait_for(id="ann", event="pusher:member_added")
    assert added["data"] == {"id": "7", "info": {"name": "7"}}
    await node.connect("bob2", server, auth=auth, user="7")
    await node.subscribe("bob2", "presence-room")
    node.send(op="disconnect", id="bob1")
    await server.wait_sessions(2)
    await publish(server, "presence-room", "tick", 1)
    await node.wait_for(id="ann", event="tick")
    assert len(node.matching(id="ann", event="pusher:member_added")) == 1
    assert not node.matching(id="ann", event="pusher:member_removed")
    node.send(op="disconnect", id="bob2")
    removed = await node.wait_for(id="ann", event="pusher:member_removed")
    assert removed["data"]["id"] == "7"
    assert len(node.matching(id="ann", event="pusher:member_added")) == 1


@ensureDeferred
async def test_client_events_reach_others_not_the_sender(pusher_env):
    """client-* events on a private channel reach the other subscribers (with
    the sender's user_id on presence channels), never the sender."""
    server, node, auth = await pusher_env(client_events=True)
    await node.connect("a", server, auth=auth, user="ann")
    await node.connect("b", server, auth=auth, user="bob")
    for id in ("a", "b"):
        await node.subscribe(id, "private-chat")
        await node.subscribe(id, "presence-chat")
    node.send(op="bind", id="b", channel="presence-chat", event="client-typing")
    node.send(
        op="trigger",
        id="a",
        channel="private-chat",
        event="client-typing",
        data={"on": True},
    )
    node.send(
        op="trigger",
        id="a",
        channel="presence-chat",
        event="client-typing",
        data={"on": False},
    )
    got = await node.wait_for(id="b", channel="private-chat", event="client-typing")
    assert got["data"] == {"on": True} and "user_id" not in got
    got = await node.wait_for(id="b", bound="client-typing")
    assert got["data"] == {"on": False} and got["meta"] == {"user_id": "ann"}
    await publish(server, "private-chat", "done", None)
    await node.wait_for(id="a", channel="private-chat", event="done")
    assert not node.matching(id="a", event="client-typing")


@ensureDeferred
async def test_client_events_refused_when_disabled_or_public(pusher_env):
    """Without client-events, or on a public channel, a client event gets a
    pusher:error and reaches nobody."""
    server, node, auth = await pusher_env()
    await node.connect("a", server, auth=auth)
    await node.connect("b", server, auth=auth)
    for id in ("a", "b"):
        await node.subscribe(id, "private-chat")
    node.send(op="trigger", id="a", channel="private-chat", event="client-x", data=1)
    error = await node.wait_for(
        id="a",
        conn_error={"code": None, "message": "client events are disabled for this app"},
    )
    assert error
    await publish(server, "private-chat", "done", None)
    await node.wait_for(id="b", channel="private-chat", event="done")
    assert not node.matching(id="b", event="client-x")


@ensureDeferred
async def test_client_event_rate_limit_4301(pusher_env):
    """Past pusher-client-event-rate, client events are rejected with
    pusher:error 4301 and not delivered; the connection stays open."""
    server, node, auth = await pusher_env(
        client_events=True, pusher_client_event_rate=5
    )
    await node.connect("a", server, auth=auth)
    await node.connect("b", server, auth=auth)
    for id in ("a", "b"):
        await node.subscribe(id, "private-chat")
    for n in range(8):
        node.send(
            op="trigger", id="a", channel="private-chat", event="client-n", data=n
        )
    await node.wait_for(
        id="a",
        count=3,
        conn_error={
            "code": 4301,
            "message": "client event rejected: more than 5 per second",
        },
    )
    await publish(server, "private-chat", "done", None)
    await node.wait_for(id="b", channel="private-chat", event="done")
    assert [line["data"] for line in node.matching(id="b", event="client-n")] == [
        0,
        1,
        2,
        3,
        4,
    ]
    assert not node.matching(id="a", state="disconnected")


@ensureDeferred
async def test_signin_send_to_user_and_terminate(pusher_env):
    """pusher:signin with the app's signature makes the connection the
    user's: send_to_user reaches every connection of that user (and no one
    else), terminate_connections closes them with 4009 and pusher-js does
    not reconnect."""
    server, node, auth = await pusher_env()
    lib = library(server)
    for id, user in (("ann1", "ann"), ("ann2", "ann"), ("bob", "bob")):
        await node.connect(id, server, auth=auth, user=user)
        node.send(op="signin", id=id)
        signed_in = await node.wait_for(
            id=id, signed_in={"id": user, "user_info": {"name": user.title()}}
        )
        assert signed_in
    # pusher-js subscribes #server-to-user-<id> itself once signed in.
    await eventually(
        lambda: (
            server.hub.local_subscribers("personal-ann") == 2
            and server.hub.local_subscribers("personal-bob") == 1
        )
    )
    assert await call(lib.send_to_user, "ann", "note", {"hi": 1}) == {}
    for id in ("ann1", "ann2"):
        got = await node.wait_for(id=id, user_event="note")
        assert got["data"] == {"hi": 1}
    assert await call(lib.terminate_user_connections, "ann") == {}
    for id in ("ann1", "ann2"):
        await node.wait_for(
            id=id, conn_error={"code": 4009, "message": "logged out by the app"}
        )
        await node.wait_for(id=id, state="disconnected")
    await server.wait_sessions(1)
    assert await call(lib.send_to_user, "bob", "note", 2) == {}
    await node.wait_for(id="bob", user_event="note")
    assert not node.matching(
        id="bob", conn_error={"code": 4009, "message": "logged out by the app"}
    )
    assert len(node.matching(id="ann1", state="connected")) == 1


@ensureDeferred
async def test_signin_refused_and_server_to_user_only_for_that_user(pusher_env):
    """A signin signed with another secret gets pusher:error 4009 and no
    user; #server-to-user-<id> refuses anyone not signed in as <id>."""
    server, node, auth = await pusher_env()
    await node.connect("a", server, auth=auth, user="mallory&secret=guess-the-secret")
    node.send(op="signin", id="a")
    await node.wait_for(
        id="a",
        conn_error={"code": 4009, "message": "invalid signature for pusher:signin"},
    )
    assert all(s.user_id is None for s in server.hub.sessions.values())
    # pusher-js never subscribes another user's channel; a raw client tries.
    raw = await connect_ws(server.port, "?protocol=7", path="/app/" + KEY)
    server.clients.append(raw)
    assert (await raw.next())["event"] == "pusher:connection_established"
    raw.send({"event": "pusher:subscribe", "data": {"channel": "#server-to-user-ann"}})
    error = await raw.next()
    assert error["event"] == "pusher:subscription_error"
    assert json.loads(error["data"])["status"] == 403
    assert await call(library(server).send_to_user, "ann", "note", 1) == {}
    await raw.close()
    raw.assert_nothing_queued()


@ensureDeferred
async def test_protocol_version_and_signin_timeout(start_server):
    """Protocol versions below 7 (or none) are refused with 4007 / 4008; an
    app with anonymous: false closes a connection that does not sign in
    within pusher-signin-timeout with 4009."""
    from pushd.apps import App

    server = await start_server(
        apps=(App("strict", KEY, "strict-secret-1234", anonymous=False),),
        pusher_signin_timeout=0.2,
    )
    for query, code in (("?protocol=6", 4007), ("", 4008), ("?protocol=x", 4007)):
        client = await connect_ws(server.port, query, path="/app/" + KEY)
        error = await client.next()
        assert error["event"] == "pusher:error" and error["data"]["code"] == code
        assert (await client.wait_closed())[0] == code
    client = await connect_ws(server.port, "?protocol=7", path="/app/" + KEY)
    assert (await client.next())["event"] == "pusher:connection_established"
    # Until it signs in it hears nothing, not even on public channels.
    client.send({"event": "pusher:subscribe", "data": {"channel": "news"}})
    await eventually(lambda: len(server.hub.sessions) == 1)
    strict = server.hub.apps.by_id("strict")
    await server.hub.publish(strict, ["news"], "headline", "secret")
    error = await client.next()
    assert error["data"]["code"] == 4009
    assert (await client.wait_closed())[0] == 4009
    client.assert_nothing_queued()


@ensureDeferred
async def test_anonymous_false_app_subscribes_after_signin(pusher_env):
    """On an app with anonymous: false, pusher-js's subscriptions made before
    its signin completes wait for it, then succeed."""
    from pushd.apps import App

    server, node, auth = await pusher_env(
        client_key=None,
        apps=(App("strict", KEY, SECRET, anonymous=False, pusher_id=APP_ID),),
    )
    node.send(op="connect", id="a", key=KEY, options=node.options(server, auth))
    node.send(op="subscribe", id="a", channel="news")
    node.send(op="signin", id="a")
    await node.wait_for(id="a", channel="news", event="pusher:subscription_succeeded")
    await node.wait_for(id="a", signed_in={"id": "ann", "user_info": {"name": "Ann"}})
    strict = server.hub.apps.by_id("strict")
    await server.hub.publish(strict, ["news"], "headline", {"n": 1})
    assert (await node.wait_for(id="a", event="headline"))["data"] == {"n": 1}


@ensureDeferred
async def test_encrypted_channel_passes_ciphertext_through(pusher_env):
    """private-encrypted-: the library encrypts, pusher-js decrypts with the
    shared secret from the app's auth endpoint; pushd's own subscribers see
    only the ciphertext, and client events are refused there."""
    import base64

    import pusher

    server, node, _ = await pusher_env(client_events=True)
    lib = pusher.Pusher(
        app_id=APP_ID,
        key=KEY,
        secret=server.secret,
        host="127.0.0.1",
        port=server.port,
        ssl=False,
        encryption_master_key_base64=base64.b64encode(b"k" * 32).decode(),
    )
    auth = await start_auth_server(lib)
    try:
        await node.connect("a", server, auth=auth)
        await node.subscribe("a", "private-encrypted-vault")
        ws = await server.connected("?key=" + KEY)
        channel = "private-encrypted-vault"
        ws.send(
            {
                "type": "subscribe",
                "channel": channel,
                "auth": channel_signature(server.secret, ws.connection_id, channel),
            }
        )
        await ws.next_of("subscribed")
        await call(lib.trigger, channel, "open", {"code": 1234})
        got = await node.wait_for(id="a", channel=channel, event="open")
        assert got["data"] == {"code": 1234}
        frame = await ws.next_of("message")
        sealed = json.loads(frame["data"])
        assert set(sealed) == {"nonce", "ciphertext"} and "1234" not in frame["data"]
        # pusher-js refuses this itself; a raw client tries.
        raw = await connect_ws(server.port, "?protocol=7", path="/app/" + KEY)
        server.clients.append(raw)
        await raw.next()
        raw.send({"event": "client-x", "channel": channel, "data": {}})
        assert (await raw.next())["data"] == {
            "code": None,
            "message": "client events are not supported on encrypted channels",
        }
        ws.assert_nothing_queued()
    finally:
        await auth.listening.stopListening()
