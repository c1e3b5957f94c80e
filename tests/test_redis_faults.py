"""Redis killed (-9) and restarted under a steady publish rate, with two real
pushd processes: nothing acknowledged is lost or doubled, no client is left
in silence, and cluster state heals by itself (issue 10)."""

import time

import pytest
from pytest_twisted import ensureDeferred

from pushd.soak import Publisher, Scenario, until
from pushd.testing import RedisServer


@pytest.fixture(params=[False, True], ids=["empty-restart", "persistent"])
def redis_kind(request):
    server = RedisServer(persist=request.param)
    yield server
    server.close()


@ensureDeferred
async def test_redis_restart_loses_nothing_acknowledged(redis_kind, tmp_path):
    """Every 202-acknowledged message on a channel with history reaches every
    subscriber on both nodes once and in order; on a channel without history
    each subscriber gets everything or a messages_lost notice; users,
    presence members and subscriber counts are right again within a few
    heartbeats, and no member is announced as leaving or arriving."""
    scenario = Scenario(redis_kind, str(tmp_path), heartbeat=0.5, node_ttl=3)
    try:
        await scenario.start()
        publisher = Publisher(scenario.nodes)
        publisher.start()
        await until(lambda: len(publisher.acked) >= 50, 10)
        healed = await scenario.restart_redis(outage=1.0)
        assert healed < 0.5 + 3
        acked_at_restart = len(publisher.acked)
        await until(lambda: len(publisher.acked) >= acked_at_restart + 50, 10)
        await publisher.stop()
        figures = await scenario.check(publisher.acked)
        assert publisher.refused > 0  # the outage was real
        assert figures["lost"] == figures["duplicated"] == figures["reordered"] == 0
        assert figures["live_silent_loss"] == 0
        assert figures["spurious_presence"] == 0
    finally:
        scenario.stop()


@ensureDeferred
async def test_publish_during_outage_is_refused_without_side_effects(
    redis_server, tmp_path
):
    """While Redis is down a publish answers 503 and reaches nobody, not even
    the node's own subscribers, so a retry cannot duplicate it; /ready says
    why, /health stays 200."""
    import treq

    scenario = Scenario(redis_server, str(tmp_path))
    try:
        await scenario.start()
        a = scenario.nodes[0]
        redis_server.stop()
        await until(lambda: "redis backend: lost" in a.log(), 10)
        code, body = await a.api(
            "POST", "/api/channels/%s/messages" % "live-feed", {"event": "e", "data": 1}
        )
        assert (code, body["error"]) == (503, "backend_unavailable")
        ready = await treq.get(a.url + "/ready")
        assert ready.code == 503
        assert "unreachable" in (await ready.json())["reason"]
        health = await treq.get(a.url + "/health")
        assert health.code == 200
        await health.content()
        redis_server.start()
        await until(scenario.healthy, 10)
        for client in scenario.subscribers:  # told, not left in silence
            await until(lambda c=client: c.of("messages_lost", "live-feed"), 5)
        # Delivery is ordered: had the refused message reached anyone, it
        # would come before a marker published now.
        code, _ = await a.api(
            "POST", "/api/channels/live-feed/messages", {"event": "e", "data": "end"}
        )
        assert code == 202
        for client in scenario.subscribers:
            await until(lambda c=client: "end" in c.data("live-feed"), 5)
            assert client.data("live-feed") == ["end"]
        assert scenario.subscribers[0].of("messages_lost", "live-feed")[0] == {
            "type": "messages_lost",
            "channel": "live-feed",
            "reason": scenario.subscribers[0].of("messages_lost")[0]["reason"],
        }
    finally:
        scenario.stop()


@ensureDeferred
async def test_retries_across_nodes_and_an_outage_publish_once(redis_server, tmp_path):
    """A publisher retrying with one Idempotency-Key on both nodes, before,
    during and after a Redis outage, gets one id, and every subscriber on
    both nodes gets the message once."""
    scenario = Scenario(redis_server, str(tmp_path))
    try:
        await scenario.start()
        a, b = scenario.nodes
        body = {"event": "n", "data": "once"}
        path = "/api/channels/kept-feed/messages"
        code, first = await a.api("POST", path, body, **{"Idempotency-Key": "k1"})
        assert code == 202
        for node in (b, a, b):
            code, again = await node.api(
                "POST", path, body, **{"Idempotency-Key": "k1"}
            )
            assert (code, again) == (202, first)
        redis_server.stop()
        await until(lambda: "redis backend: lost" in b.log(), 10)
        code, _ = await b.api(
            "POST", path, {**body, "data": "twice"}, **{"Idempotency-Key": "k2"}
        )
        assert code == 503  # refused, delivered nowhere
        redis_server.start()
        await until(scenario.healthy, 10)
        code, second = await a.api(
            "POST", path, {**body, "data": "twice"}, **{"Idempotency-Key": "k2"}
        )
        assert code == 202
        code, again = await b.api(
            "POST", path, {**body, "data": "twice"}, **{"Idempotency-Key": "k2"}
        )
        assert (code, again) == (202, second)
        # A duplicate would arrive before a marker published after everything.
        code, _ = await a.api("POST", path, {**body, "data": "end"})
        assert code == 202
        for client in scenario.subscribers:
            await until(lambda c=client: "end" in c.data("kept-feed"), 5)
            assert client.data("kept-feed") == ["once", "twice", "end"]
    finally:
        scenario.stop()


@ensureDeferred
async def test_evicted_live_node_puts_its_users_and_members_back(
    redis_server, tmp_path
):
    """A node that cannot renew its lease for longer than node-ttl (frozen
    here with SIGSTOP, as a long GC pause or a partition would) is cleaned
    up by the other node, whose clients see its member leave; when it runs
    again it re-registers its users, members and counts, and the member is
    announced back, once."""
    import os
    import signal

    scenario = Scenario(redis_server, str(tmp_path), heartbeat=0.5, node_ttl=2)
    try:
        await scenario.start()
        a, b = scenario.nodes
        on_a = scenario.members[0]
        os.kill(b.proc.pid, signal.SIGSTOP)
        try:
            await until(lambda: on_a.of("member_removed", "presence-room"), 10)
            _, online = await a.api("GET", "/api/users")
            assert online == {"online": 1}
        finally:
            os.kill(b.proc.pid, signal.SIGCONT)
        await until(scenario.healthy, 0.5 + 2 + 3)
        await until(lambda: on_a.of("member_added", "presence-room")[1:], 5)
        # Presence events are ordered: anything else would come before this.
        code, _ = await a.api(
            "POST", "/api/channels/presence-room/messages", {"event": "end", "data": 1}
        )
        assert code == 202
        await until(lambda: on_a.of("message", "presence-room"), 5)
        events = [
            (f["type"], f["user_id"])
            for f in on_a.frames
            if f["type"] in ("member_added", "member_removed")
        ]
        assert events[-2:] == [
            ("member_removed", "user-node-b"),
            ("member_added", "user-node-b"),
        ]
        assert events.count(("member_removed", "user-node-b")) == 1
    finally:
        scenario.stop()


@ensureDeferred
async def test_redis_outage_longer_than_node_ttl_evicts_only_dead_nodes(tmp_path):
    """Redis down for longer than node-ttl, then back with its data: every
    lease has lapsed, yet the live nodes keep their users and members (each
    renews its own lease before anyone counts others dead) and nobody sees
    them leave; the node that really died meanwhile (kill -9) is cleaned up,
    its member announced as gone, once."""
    redis = RedisServer(persist=True)
    scenario = Scenario(redis, str(tmp_path), heartbeat=0.3, node_ttl=1.5)
    try:
        await scenario.start(spares=1)
        dead = scenario.spares[0]
        await scenario.restart_redis(outage=2.0, during=dead.kill)

        def gone(member):
            return member.of("member_removed", "presence-room")

        # Dead nodes are cleaned up only after the grace a reconnected node
        # gives the others (node-ttl + 1 s reconnect backoff + 1 s timeout).
        for member in scenario.members:
            await until(lambda m=member: gone(m), 10)
        assert await scenario.healthy()
        for member in scenario.members:
            assert [e["user_id"] for e in scenario._events(member)[-1:]] == [
                "user-node-c"
            ]
        figures = await scenario.check()
        assert figures["spurious_presence"] == len(scenario.members)  # c, once each
    finally:
        scenario.stop()
        redis.close()


@ensureDeferred
async def test_connected_user_gets_each_message_once_across_a_restart(
    redis_server, tmp_path
):
    """Messages to a user who stays connected through a Redis restart (empty)
    are delivered live or, if her node missed them, kept for her next
    connection -- never both, so nothing arrives twice; and whatever reached
    her neither way, she was told about (messages_lost on her channel)."""
    from pushd.soak import connect

    scenario = Scenario(redis_server, str(tmp_path))
    channel = "personal-user-node-b"
    try:
        await scenario.start()
        a, b = scenario.nodes
        user = scenario.members[1]  # user-node-b, connected to node b
        acked = []

        async def send(n):
            code, _ = await a.api(
                "POST", "/api/users/user-node-b/messages", {"event": "dm", "data": n}
            )
            if code == 202:
                acked.append(n)

        for n in range(10):
            await send(n)
        scenario.redis.stop()
        await until(lambda: "redis backend: lost" in b.log(), 10)
        scenario.redis.start()
        n, started = 10, time.monotonic()
        while not await scenario.healthy():  # publish through the recovery
            assert time.monotonic() - started < 10, "cluster did not heal"
            await send(n)
            n += 1
        for m in range(n, n + 10):
            await send(m)
        await until(lambda: acked[-1] in user.data(channel), 10)
        user.proto.sendClose(1000)
        await until(lambda: user.closed is not None, 5)
        again = await connect(b, "user-node-b")

        # Online again (counted) before the markers, so what was kept for
        # her is taken before they are published.
        async def online():
            _, body = await b.api("GET", "/api/users/user-node-b")
            return body["online"]

        await until(online, 5)

        def got():
            return user.data(channel) + again.data(channel)

        for marker in ("end-1", "end-2"):
            await a.api(
                "POST",
                "/api/users/user-node-b/messages",
                {"event": "dm", "data": marker},
            )
            await until(lambda m=marker: m in again.data(channel), 5)
        received = [x for x in got() if x not in ("end-1", "end-2")]
        assert len(received) == len(set(received))  # nothing twice
        if not set(acked) <= set(received):
            assert user.of("messages_lost", channel)  # not in silence
    finally:
        scenario.stop()
