"""Several pushd nodes (real processes) on one real Redis behave as one."""

import json
import os
import signal

import treq
from clients import connect_ws
from pytest_twisted import ensureDeferred

from pushd.auth import channel_signature, make_user_token
from pushd.testing import eventually_equals

SECRET = "cluster-secret-that-is-at-least-32-bytes"


async def start_nodes(pushd_process, redis_server, count, **backend):
    backend.setdefault("heartbeat", 0.3)
    backend.setdefault("node-ttl", 1.5)
    backend.setdefault("timeout", 1)
    spec = redis_server.spec(**backend)
    procs = [
        pushd_process(
            "--listen",
            "tcp:0:interface=127.0.0.1",
            "--api-secret",
            SECRET,
            "--backend",
            spec,
            "--client-events",
        )
        for _ in range(count)
    ]
    for proc in procs:
        proc.http_port = await proc.port()
        proc.url = "http://127.0.0.1:%d" % proc.http_port
    return procs


async def api(node, method, path, body=None):
    response = await treq.request(
        method,
        node.url + path,
        headers={"Authorization": "Bearer " + SECRET},
        data=json.dumps(body).encode() if body is not None else None,
    )
    text = await response.text()
    return response.code, (json.loads(text) if text else None)


async def user_on(node, user, info=None):
    client = await connect_ws(
        node.http_port, "?token=" + make_user_token(SECRET, user, info)
    )
    client.connection_id = (await client.next_of("connected"))["connection_id"]
    return client


async def join_presence(client, channel="presence-room"):
    client.send(
        {
            "type": "subscribe",
            "channel": channel,
            "auth": channel_signature(SECRET, client.connection_id, channel),
        }
    )
    return (await client.next_of("subscribed"))["members"]


@ensureDeferred
async def test_fan_out_and_order_across_three_nodes(pushd_process, redis_server):
    """A message published on any of three nodes reaches every subscriber on every node once, in one order."""
    nodes = await start_nodes(pushd_process, redis_server, 3)
    clients = []
    for node in nodes:
        for _ in range(2):
            client = await connect_ws(node.http_port)
            await client.next_of("connected")
            await client.subscribe("news")
            clients.append(client)
    for n in range(60):
        code, _ = await api(
            nodes[n % 3],
            "POST",
            "/api/channels/news/messages",
            {"event": "e", "data": n},
        )
        assert code == 202
    for client in clients:
        got = [(await client.next_of("message"))["data"] for _ in range(60)]
        assert got == list(range(60))
    # A duplicate would arrive before a marker published after everything.
    await api(
        nodes[0], "POST", "/api/channels/news/messages", {"event": "e", "data": "end"}
    )
    for client in clients:
        assert (await client.next_of("message"))["data"] == "end"
        client.assert_nothing_queued()  # once each, no duplicates
    code, body = await api(nodes[1], "GET", "/api/channels/news")
    assert body["subscribers"] == 6
    for client in clients:
        await client.close()


@ensureDeferred
async def test_users_and_presence_across_nodes(pushd_process, redis_server):
    """Users, presence, client events, messages to users and force-logout work the same across nodes."""
    a, b, c = await start_nodes(pushd_process, redis_server, 3)
    watcher = await user_on(c, "watcher")
    assert [m["user_id"] for m in await join_presence(watcher)] == ["watcher"]
    ann_a, ann_b = await user_on(a, "ann", {"n": 1}), await user_on(b, "ann", {"n": 1})
    members = await join_presence(ann_a)
    assert [m["user_id"] for m in members] == ["ann", "watcher"]
    await join_presence(ann_b)
    added = await watcher.next_of("member_added")
    assert (added["user_id"], added["user_info"]) == ("ann", {"n": 1})
    code, body = await api(c, "GET", "/api/users/ann")
    assert body == {"user_id": "ann", "online": True, "connections": 2}
    code, body = await api(a, "GET", "/api/users")
    assert body == {"online": 2}
    code, body = await api(b, "GET", "/api/channels/presence-room/users")
    assert [u["user_id"] for u in body["users"]] == ["ann", "watcher"]
    # a client event from node A reaches the watcher on node C, not the sender
    ann_a.send(
        {
            "type": "client_event",
            "channel": "presence-room",
            "event": "client-hi",
            "data": 1,
        }
    )
    frame = await watcher.next_of("message")
    assert (frame["event"], frame["user_id"]) == ("client-hi", "ann")
    assert (await ann_b.next_of("message"))["event"] == "client-hi"
    # a message to the user, sent through node C, reaches both tabs
    code, _ = await api(
        c, "POST", "/api/users/ann/messages", {"event": "dm", "data": "hi"}
    )
    assert (await ann_a.next_of("message"))["data"] == "hi"
    assert (await ann_b.next_of("message"))["data"] == "hi"
    # force logout through node B closes the tabs on A and B
    code, _ = await api(b, "DELETE", "/api/users/ann")
    assert code == 204
    assert (await ann_a.wait_closed())[0] == 4010
    assert (await ann_b.wait_closed())[0] == 4010
    removed = await watcher.next_of("member_removed")
    assert removed["user_id"] == "ann"

    async def ann_online_seen_from_a():
        return (await api(a, "GET", "/api/users/ann"))[1]["online"]

    # Disconnects are recorded in the background after the close.
    await eventually_equals(ann_online_seen_from_a, False)
    watcher.assert_nothing_queued()
    await watcher.close()


@ensureDeferred
async def test_killed_node_leaves_no_ghost_members(pushd_process, redis_server):
    """kill -9 of a node: within node-ttl + heartbeat its users leave presence."""
    a, b = await start_nodes(pushd_process, redis_server, 2)
    watcher = await user_on(a, "watcher")
    await join_presence(watcher)
    bob = await user_on(b, "bob")
    await join_presence(bob)
    assert (await watcher.next_of("member_added"))["user_id"] == "bob"
    os.kill(b.proc.pid, signal.SIGKILL)
    removed = await watcher.next_of("member_removed", timeout=6)
    assert removed["user_id"] == "bob"
    code, body = await api(a, "GET", "/api/channels/presence-room/users")
    assert code == 200
    assert [u["user_id"] for u in body["users"]] == ["watcher"]
    _code, body = await api(a, "GET", "/api/users")
    assert body == {"online": 1}
    await watcher.close()


@ensureDeferred
async def test_redis_restart_mid_stream(pushd_process, redis_server):
    """During an outage: a clear 503 and delivery to nobody, never a hang;
    after Redis is back, nodes resubscribe, tell their subscribers that
    messages may have been lost, and deliver everything published after."""
    a, b = await start_nodes(pushd_process, redis_server, 2)
    on_a, on_b = [], []
    for node, group in ((a, on_a), (b, on_b)):
        client = await connect_ws(node.http_port)
        await client.next_of("connected")
        await client.subscribe("live")
        group.append(client)
    code, _ = await api(
        a, "POST", "/api/channels/live/messages", {"event": "e", "data": "before"}
    )
    assert code == 202
    for client in on_a + on_b:
        assert (await client.next_of("message"))["data"] == "before"

    redis_server.stop()
    await a.wait_for(r"redis backend: lost")
    code, body = await api(
        a, "POST", "/api/channels/live/messages", {"event": "e", "data": "during"}
    )
    assert (code, body["error"]) == (503, "backend_unavailable")
    assert "not published" in body["message"]

    redis_server.start()
    await a.wait_for(r"redis backend: connection to .* restored")
    await b.wait_for(r"redis backend: connection to .* restored")
    for client in on_a + on_b:  # "during" reached nobody; they are told
        lost = await client.next_of("messages_lost")
        assert lost["channel"] == "live"
    for n in range(20):
        code, _ = await api(
            (a, b)[n % 2],
            "POST",
            "/api/channels/live/messages",
            {"event": "e", "data": n},
        )
        assert code == 202
    for client in on_a + on_b:
        assert [(await client.next_of("message"))["data"] for _ in range(20)] == list(
            range(20)
        )
    assert a.log().count("redis backend: lost") == 1  # logged once, not per message
    for client in on_a + on_b:
        await client.close()
