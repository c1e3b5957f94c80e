"""Channel feeds: a publish is appended once per channel and every WebSocket
subscriber takes it when written (pushd.transports.feed).  What each
client receives must be exactly what one call per subscriber gave: every
message once, in publish order, replies and filtered messages in their
place, nothing after an unsubscribe."""

from __future__ import annotations

from types import SimpleNamespace

from pytest_twisted import ensureDeferred


async def _frames(client, n: int) -> list:
    """The next ``n`` frames' data (messages) or types (anything else)."""
    out = []
    for _ in range(n):
        frame = await client.next()
        out.append(frame["data"] if frame["type"] == "message" else frame["type"])
    return out


@ensureDeferred
async def test_messages_of_several_channels_arrive_in_publish_order(start_server):
    """Clients on two busy channels get the messages of both interleaved
    exactly as they were published, though each channel's subscribers share
    one feed per channel and all of it goes out in one write."""
    server = await start_server()
    clients = await server.subscribed("a", 3)
    for client in clients:
        await client.subscribe("b")
    published = []
    for n in range(10):  # one reactor turn: one flush pass for all of them
        for channel in ("a", "b"):
            await server.hub.publish(server.app, [channel], "e", f"{channel}{n}")
            published.append(f"{channel}{n}")
    for client in clients:
        assert await _frames(client, 20) == published


@ensureDeferred
async def test_a_reply_keeps_its_place_between_shared_messages(start_server):
    """A reply queued between two publishes on a channel with several
    subscribers reaches its client between the two messages (not after
    both, as a feed written after the client's own frames would send it)."""
    server = await start_server()
    first, other = await server.subscribed("room", 2)
    session = server.hub.sessions[first.connection_id]
    await server.hub.publish(server.app, ["room"], "e", 0)
    session.receive(b'{"type": "ping", "ref": 1}')
    await server.hub.publish(server.app, ["room"], "e", 1)
    assert await _frames(first, 3) == [0, "pong", 1]
    assert await _frames(other, 2) == [0, 1]


@ensureDeferred
async def test_a_filtered_message_keeps_its_place(start_server):
    """A message excluding its sender goes to the others one by one, in its
    place among the shared messages; the sender never gets it."""
    server = await start_server()
    sender, *others = await server.subscribed("room", 3)
    for n, exclude in ((0, None), (1, sender.connection_id), (2, None)):
        await server.hub.publish(server.app, ["room"], "e", n, exclude=exclude)
    assert await _frames(sender, 2) == [0, 2]
    for client in others:
        assert await _frames(client, 3) == [0, 1, 2]
    await server.hub.publish(server.app, ["room"], "e", "last")
    assert await _frames(sender, 1) == ["last"]


@ensureDeferred
async def test_unsubscribing_keeps_what_was_published_before_and_nothing_after(
    start_server,
):
    """Messages published while a client was subscribed still reach it when
    it unsubscribes before the flush; later ones do not, and the others on
    the channel get everything."""
    server = await start_server()
    leaving, staying = await server.subscribed("room", 2)
    session = server.hub.sessions[leaving.connection_id]
    for n in range(3):
        await server.hub.publish(server.app, ["room"], "e", n)
    session.receive(b'{"type": "unsubscribe", "channel": "room"}')
    await server.hub.publish(server.app, ["room"], "e", "after")
    session.receive(b'{"type": "ping", "ref": 1}')
    assert await _frames(leaving, 5) == [0, 1, 2, "unsubscribed", "pong"]
    assert await _frames(staying, 4) == [0, 1, 2, "after"]


@ensureDeferred
async def test_a_second_subscriber_shares_the_channel_from_its_first_message(
    start_server,
):
    """The first subscriber is written one call at a time; when a second
    joins, both take the channel's messages from a shared feed: the first
    misses nothing across the change, the second gets only what came after
    it subscribed, and both get every later message once."""
    server = await start_server()
    first = await server.connected()
    await first.subscribe("c")
    await server.hub.publish(server.app, ["c"], "e", 0)
    second = await server.connected()
    await second.subscribe("c")
    for n in (1, 2):
        await server.hub.publish(server.app, ["c"], "e", n)
    assert await _frames(first, 3) == [0, 1, 2]
    assert await _frames(second, 2) == [1, 2]
    second.send({"type": "unsubscribe", "channel": "c"})
    await second.next_of("unsubscribed")
    await server.hub.publish(server.app, ["c"], "e", 3)
    assert await _frames(first, 1) == [3]


# -- the Flusher's passes, on a task.Clock (no sockets) ----------------------


def _turn(clock):
    """One reactor turn on a task.Clock: the calls due now, not the ones
    they schedule."""
    due = [c for c in clock.calls if c.getTime() <= clock.seconds()]
    for call in due:
        clock.calls.remove(call)
        call.called = 1
        call.func(*call.args, **call.kw)


async def _hub_with(n: int, per_turn: int):
    """A hub on the memory backend and ``n`` WebSocket protocols on channel
    "c" sharing a Flusher of ``per_turn`` connections per turn; each
    records its writes (no socket: everything through transport.write)."""
    from twisted.internet.task import Clock

    from pushd.backends.memory import MemoryBackend
    from pushd.config import Config
    from pushd.hub import Hub
    from pushd.transports.websocket import PushServerFactory, PushServerProtocol

    clock = Clock()
    config = Config(flush_slice=per_turn)
    hub = Hub(MemoryBackend(), clock, config)
    factory = PushServerFactory(hub, config)
    app = hub.apps.by_id("default")
    conns = []
    for i in range(n):
        conn = PushServerProtocol()
        conn.factory, conn.state, conn.connection_id = factory, conn.STATE_OPEN, f"c{i}"
        conn.writes = []
        conn.transport = SimpleNamespace(write=conn.writes.append)
        session = hub.open_session(conn, app, None, None)
        await hub.subscribe(session, "c")
        hub.release(session, "c")
        conns.append(conn)
    return clock, hub, app, conns


@ensureDeferred
async def test_a_message_read_mid_pass_joins_the_write_of_connections_not_reached():
    """A publish read between two slices of a pass goes out in the same
    send() as the pending message to every subscriber the pass has not
    written yet, and to the ones already written in the next pass: each
    waits at most about one pass, and busy connections coalesce."""
    clock, hub, app, conns = await _hub_with(5, per_turn=2)
    await hub.publish(app, ["c"], "e", "m1")
    _turn(clock)  # one slice: two connections written
    await hub.publish(app, ["c"], "e", "m2")
    _turn(clock)
    _turn(clock)  # the rest of the pass: the three others, both messages
    _turn(clock)  # the next pass: the two written first
    clock.advance(0)  # whatever is left of that pass writes nothing more
    writes = [
        [w.count(b'"m1"') + 2 * w.count(b'"m2"') for w in c.writes] for c in conns
    ]
    assert writes == [[1, 2], [1, 2], [3], [3], [3]]
    assert clock.getDelayedCalls() == []


@ensureDeferred
async def test_a_busy_channel_holds_no_frames_once_written():
    """The shared frames are dropped once every subscriber has had them:
    thousands of publishes leave nothing behind to grow the server."""
    clock, hub, app, conns = await _hub_with(3, per_turn=2)
    for n in range(2000):
        await hub.publish(app, ["c"], "e", n)
        if n % 7 == 0:
            _turn(clock)  # publishes between slices, several per pass
    clock.advance(0)
    clock.advance(0)
    (feed,) = hub._channels["default/c"].feeds.values()
    assert (len(feed.frames), len(feed.stamps)) == (0, 0)
    for conn in conns:
        got = b"".join(conn.writes)
        assert got.count(b'"type":"message"') == 2000


@ensureDeferred
async def test_metrics_count_every_write_and_byte_of_a_shared_message():
    """/metrics' frames, writes and bytes sent add up for a message written
    over several slices (the figures operators read frames per write from):
    one frame per subscriber, one write each, and every byte written."""
    clock, hub, app, conns = await _hub_with(5, per_turn=2)
    registry = hub.metrics.registry

    def sent(name):
        return registry.get_sample_value(name, {"transport": "ws"}) or 0

    before = {n: sent(n) for n in ("pushd_frames_sent_total", "pushd_writes_total")}
    before["bytes"] = sent("pushd_bytes_sent_total")
    await hub.publish(app, ["c"], "e", "m1")
    clock.advance(0)
    clock.advance(0)
    clock.advance(0)
    assert sent("pushd_frames_sent_total") - before["pushd_frames_sent_total"] == 5
    assert sent("pushd_writes_total") - before["pushd_writes_total"] == 5
    written = sum(len(w) for c in conns for w in c.writes)
    assert sent("pushd_bytes_sent_total") - before["bytes"] == written
