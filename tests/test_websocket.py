"""WebSocket clients against a real pushd over real sockets."""

from types import SimpleNamespace

import treq
from pytest_twisted import ensureDeferred


async def publish(server, channel, event="tick", data=None):
    response = await treq.post(
        server.url + "/api/channels/%s/messages" % channel,
        json={"event": event, "data": data},
        headers=server.auth(),
    )
    assert response.code == 202, await response.text()
    return (await response.json())["id"]


@ensureDeferred
async def test_connect_subscribe_receive(start_server):
    """A client gets connected, subscribed, then the published message."""
    server = await start_server()
    client = await server.connect()
    hello = await client.next_of("connected")
    assert len(hello["connection_id"]) >= 12
    await client.subscribe("news")
    message_id = await publish(server, "news", "headline", {"title": "hi", "n": [1, 2]})
    frame = await client.next_of("message")
    assert frame == {
        "type": "message",
        "channel": "news",
        "event": "headline",
        "data": {"title": "hi", "n": [1, 2]},
        "id": message_id,
    }


@ensureDeferred
async def test_messages_arrive_in_publish_order_to_every_subscriber(start_server):
    """Three subscribers each get 100 messages, in the order published."""
    server = await start_server()
    clients = await server.subscribed("ordered", 3)
    for n in range(100):
        await publish(server, "ordered", data=n)
    for client in clients:
        got = [(await client.next_of("message"))["data"] for _ in range(100)]
        assert got == list(range(100))


@ensureDeferred
async def test_unsubscribe_stops_delivery(start_server):
    """After unsubscribe, messages on that channel no longer arrive."""
    server = await start_server()
    client = await server.connected()
    await client.subscribe("a")
    await client.subscribe("b")
    client.send({"type": "unsubscribe", "channel": "a"})
    assert (await client.next_of("unsubscribed"))["channel"] == "a"
    await publish(server, "a", data="not for you")
    await publish(server, "b", data="for you")
    frame = await client.next_of("message")
    assert (frame["channel"], frame["data"]) == ("b", "for you")


@ensureDeferred
async def test_ping_pong_echoes_ref(start_server):
    """A client's ping gets a pong with its ref, to measure latency."""
    server = await start_server()
    client = await server.connected()
    client.send({"type": "ping", "ref": 42})
    assert await client.next() == {"type": "pong", "ref": 42}


@ensureDeferred
async def test_wrong_or_missing_client_key_closes_4001(start_server):
    """With a client key configured, a wrong or missing key gets close code 4001."""
    server = await start_server(client_key="ck-123")
    for query in ("?key=wrong", ""):
        client = await server.connect(query)
        code, _reason = await client.wait_closed()
        assert code == 4001
        assert client.frames.pending == []
    good = await server.connected("?key=ck-123")
    await good.subscribe("ok")


@ensureDeferred
async def test_bad_frames_get_error_frames_and_others_unaffected(start_server):
    """Garbage from one client gets error frames; another client keeps receiving."""
    server = await start_server(max_subscriptions=2)
    bystander = await server.connected()
    await bystander.subscribe("calm")
    bad = await server.connected()
    cases = [
        (b"not json{", "invalid_json"),
        (b"[1, 2]", "invalid_frame"),
        ({"no": "type"}, "invalid_frame"),
        ({"type": "dance"}, "unknown_type"),
        ({"type": "subscribe"}, "missing_field"),
        ({"type": "subscribe", "channel": "bad name!"}, "invalid_channel"),
        ({"type": "subscribe", "channel": 7}, "invalid_channel"),
    ]
    for payload, code in cases:
        bad.send(payload)
        frame = await bad.next_of("error")
        assert frame["code"] == code, (payload, frame)
        assert frame["message"]
    for payload, code in [(b"\xff\xfe", "invalid_json"), (b'{"type": "ping"}', "pong")]:
        bad.send(payload, binary=True)
        frame = await bad.next()
        assert frame.get("code", frame["type"]) == code, (payload, frame)
    await bad.subscribe("one")
    await bad.subscribe("two")
    bad.send({"type": "subscribe", "channel": "three"})
    frame = await bad.next_of("error")
    assert (frame["code"], frame["channel"]) == ("too_many_subscriptions", "three")
    await publish(server, "calm", data="still here")
    assert (await bystander.next_of("message"))["data"] == "still here"


@ensureDeferred
async def test_oversized_frame_closes_1009(start_server):
    """A frame over max-message-size closes the connection with 1009."""
    server = await start_server(max_message_size=1024)
    client = await server.connected()
    client.send({"type": "ping", "ref": "x" * 2000})
    code, _ = await client.wait_closed()
    assert code == 1009
    await server.wait_sessions(0)


@ensureDeferred
async def test_flooding_client_is_refused_then_closed(start_server):
    """Past the burst a client gets rate_limited errors, then close 4108."""
    server = await start_server(client_rate=1, client_burst=5)
    client = await server.connected()
    for _ in range(20):
        client.send({"type": "ping"})
    code, _ = await client.wait_closed()
    kinds = [f.get("code", f["type"]) for f in client.frames.pending]
    assert kinds == ["pong"] * 5 + ["rate_limited"] * 5
    assert code == 4108


@ensureDeferred
async def test_invalid_utf8_text_frame_closes_1007(start_server):
    """A text frame that is not UTF-8 breaks the WebSocket protocol: close 1007."""
    server = await start_server()
    client = await server.connected()
    client.proto.sendMessage(b"\xff\xfe", isBinary=False)
    code, _ = await client.wait_closed()
    assert code == 1007


@ensureDeferred
async def test_slow_consumer_is_dropped_and_others_get_everything(start_server):
    """A client that stops reading is disconnected once it falls
    send-queue-bytes behind; a reading client on the same channel misses nothing."""
    server = await start_server(
        send_queue_bytes=256 * 1024, max_message_size=512 * 1024
    )
    fast = await server.connected()
    slow = await server.connected()
    await fast.subscribe("firehose")
    await slow.subscribe("firehose")
    slow.proto.transport.pauseProducing()  # stop reading from the socket
    blob = "x" * 200_000
    count = 100  # 20 MB: more than loopback's kernel buffers can hide
    got = []
    for n in range(count):
        await server.hub.publish(
            server.app, ["firehose"], "blob", {"n": n, "blob": blob}
        )
        # Paced by the reading client, not by time.
        got.append((await fast.next_of("message"))["data"]["n"])
    await server.wait_sessions(1, timeout=10)
    assert got == list(range(count))
    assert server.hub.local_subscribers("firehose") == 1
    slow.proto.transport.resumeProducing()
    await slow.wait_closed()


@ensureDeferred
async def test_coalesced_frames_keep_their_order(start_server):
    """Messages and replies produced in one reactor iteration share a write,
    and arrive in the order they were produced."""
    server = await start_server()
    client = await server.connected()
    await client.subscribe("a")
    session = next(iter(server.hub.sessions.values()))
    for n in range(3):
        await server.hub.publish(server.app, ["a"], "e", n)
    session.receive(b'{"type": "unsubscribe", "channel": "a"}')
    await server.hub.publish(server.app, ["a"], "e", "after unsubscribe")
    session.receive(b'{"type": "ping", "ref": 1}')
    frames = [await client.next() for _ in range(5)]
    assert [f.get("data", f["type"]) for f in frames] == [
        0,
        1,
        2,
        "unsubscribed",
        "pong",
    ]


@ensureDeferred
async def test_origin_not_allowed_closes_4003(start_server):
    """Browsers from other sites are refused (WebSocket 4003, SSE 403)."""
    from autobahn.twisted.websocket import WebSocketClientFactory
    from clients import WSClient, _ClientProtocol
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ClientEndpoint

    server = await start_server(
        allowed_origins=("https://app.example.com", "https://*.example.org")
    )

    async def from_origin(origin):
        client = WSClient()
        factory = WebSocketClientFactory(
            "ws://127.0.0.1:%d/ws" % server.port, origin=origin
        )
        factory.protocol, factory.client = _ClientProtocol, client
        await TCP4ClientEndpoint(reactor, "127.0.0.1", server.port).connect(factory)
        server.clients.append(client)
        return client

    evil = await from_origin("https://evil.example.net")
    assert (await evil.wait_closed())[0] == 4003
    for good in ("https://app.example.com", "https://chat.example.org"):
        client = await from_origin(good)
        await client.next_of("connected")
    response = await treq.get(
        server.url + "/sse?channel=x", headers={"Origin": "https://evil.example.net"}
    )
    assert (response.code, (await response.json())["error"]) == (403, "forbidden")


@ensureDeferred
async def test_null_origin_follows_allowed_origins(start_server):
    """Pages opened from file:// send ``Origin: null``: WebSocket and SSE both
    follow allowed-origins for it (allowed by ``*`` or ``null``, else refused
    with 4003 / 403), instead of the WebSocket answering HTTP 400."""
    from clients import connect_ws

    anyone = await start_server()
    client = await connect_ws(anyone.port, origin="null")
    anyone.clients.append(client)
    await client.next_of("connected")

    strict = await start_server(allowed_origins=("https://app.example.com",))
    refused = await connect_ws(strict.port, origin="null")
    strict.clients.append(refused)
    assert (await refused.wait_closed())[0] == 4003
    response = await treq.get(strict.url + "/sse?channel=x", headers={"Origin": "null"})
    assert (response.code, (await response.json())["error"]) == (403, "forbidden")

    files = await start_server(allowed_origins=("https://app.example.com", "null"))
    client = await connect_ws(files.port, origin="null")
    files.clients.append(client)
    await client.next_of("connected")


def test_flush_window_sends_a_lone_frame_at_once_and_batches_under_load():
    """After a quiet spell a frame goes out in the same reactor iteration (no
    added latency); frames queued within ``flush-window`` of the last flush
    wait for the window and then share one write per connection."""
    from twisted.internet.task import Clock

    from pushd.transports.websocket import Flusher

    class Conn:
        connection_id = "c"
        _out = None

        def __init__(self):
            self.flushes = 0

        def flush(self):
            self.flushes += 1
            return 0

    class Counted:
        def flushed(self, frames, nbytes, writes=0):
            pass

    clock, conn = Clock(), Conn()
    clock.advance(100)
    flusher = Flusher(clock, Counted(), window=0.01)
    flusher.schedule(conn)
    assert [c.getTime() for c in clock.getDelayedCalls()] == [100]  # at once
    clock.advance(0)
    assert conn.flushes == 1
    flusher.schedule(conn)  # right after that flush: waits out the window
    assert [c.getTime() for c in clock.getDelayedCalls()] == [100.01]
    flusher.schedule(conn)  # joins the same flush
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(0.01)
    assert conn.flushes == 3  # both queued connections flushed together
    clock.advance(1)  # quiet again: the next frame goes out at once
    flusher.schedule(conn)
    assert [c.getTime() for c in clock.getDelayedCalls()] == [101.01]


def _turn(clock):
    """One reactor turn on a task.Clock: the calls due now, not the ones
    they schedule (``Clock.advance(0)`` would run those too)."""
    due = [c for c in clock.calls if c.getTime() <= clock.seconds()]
    for call in due:
        clock.calls.remove(call)
        call.called = 1
        call.func(*call.args, **call.kw)


def _queued_connections(clock, per_turn, n):
    """``n`` WebSocket protocols sharing one Flusher of ``per_turn``
    connections per reactor turn; each records the bytes of its writes."""
    from pushd.transports.websocket import Flusher, PushServerProtocol

    class Counted:
        frames = writes = 0

        def flushed(self, frames, nbytes, writes=0):
            self.frames += frames
            self.writes += writes

    class Factory:
        flusher = Flusher(clock, Counted(), per_turn=per_turn)

    conns = []
    for i in range(n):
        conn = PushServerProtocol()
        conn.factory, conn.state, conn.connection_id = Factory, conn.STATE_OPEN, i
        conn.writes = []
        # No socket: write_now hands everything to transport.write.
        conn.transport = SimpleNamespace(write=conn.writes.append)
        conns.append(conn)
    return conns


def test_a_flush_writes_a_slice_per_reactor_turn_and_reads_in_between():
    """A flush to many connections writes ``flush-slice`` of them per reactor
    turn, so a publish that arrives meanwhile is read within one slice, not
    after the whole flush; its frame joins the pending write of every
    connection not yet reached (one send() with both frames), and the
    connections already written get it in the next pass, right after."""
    from twisted.internet.task import Clock

    clock = Clock()
    conns = _queued_connections(clock, per_turn=2, n=5)
    for conn in conns:
        conn._queue(b"a")
    _turn(clock)  # the first reactor turn: one slice
    assert [c.writes for c in conns] == [[b"a"], [b"a"], [], [], []]
    assert len(clock.getDelayedCalls()) == 1  # the rest, next turn
    for conn in conns:  # a second message, read between two slices
        conn._queue(b"b")
    _turn(clock)
    _turn(clock)
    assert [c.writes for c in conns] == [[b"a"], [b"a"], [b"ab"], [b"ab"], [b"ab"]]
    _turn(clock)  # the next pass: the two connections written first
    assert [c.writes for c in conns] == [[b"a", b"b"]] * 2 + [[b"ab"]] * 3
    assert clock.getDelayedCalls() == []


def test_flush_slice_zero_writes_every_connection_in_one_turn():
    """``flush-slice: 0`` keeps a flush in one reactor turn (the behaviour
    before slices), and a frame after a quiet spell still goes out in the
    turn it was queued in.  Frames queued together (two, or four) go out in
    order in one write, and pushd_frames_sent counts each frame."""
    from twisted.internet.task import Clock

    clock = Clock()
    conns = _queued_connections(clock, per_turn=0, n=300)
    for i, conn in enumerate(conns):
        for frame in (b"w", b"x", b"y", b"z") if i % 2 else (b"x", b"y"):
            conn._queue(frame)
    assert [c.getTime() for c in clock.getDelayedCalls()] == [0]
    _turn(clock)
    assert [c.writes for c in conns] == [[b"xy"], [b"wxyz"]] * 150
    assert clock.getDelayedCalls() == []
    counted = conns[0].factory.flusher._metrics
    assert (counted.frames, counted.writes) == (150 * 2 + 150 * 4, 300)


def test_queued_frames_are_never_promoted_by_the_garbage_collector():
    """Under load a connection holds several frames between a publish and
    its flush.  Held in a list (an object the collector tracks), 1,000 of
    them per publish were promoted by the collections that ran mid-pass and
    triggered a full collection every few seconds: a ~20 ms stall that was
    the slowest 1% of deliveries at half load.  Up to a handful of frames
    are held untracked once a collection has looked at them, and any
    number still go out in order in one write."""
    import gc

    from twisted.internet.task import Clock

    clock = Clock()
    conns = _queued_connections(clock, per_turn=0, n=12)
    frames = [bytes([97 + i]) for i in range(12)]
    for n, conn in enumerate(conns, 1):
        for frame in frames[:n]:
            conn._queue(frame)
    gc.collect(0)  # what a young collection mid-pass does to them
    tracked = [n for n, c in enumerate(conns, 1) if gc.is_tracked(c._out)]
    # the first two frames share one bytes; a tuple holds up to 9 frames
    assert tracked == [10, 11, 12]
    _turn(clock)
    assert [c.writes for c in conns] == [[b"".join(frames[:n])] for n in range(1, 13)]


@ensureDeferred
async def test_messages_arrive_in_order_to_every_subscriber_with_small_slices(
    start_server,
):
    """With a flush written two connections per reactor turn, twelve
    subscribers still get every one of 30 messages published back to back,
    in order (frames of one connection never overtake each other across
    slices and passes)."""
    server = await start_server(flush_slice=2)
    clients = await server.subscribed("sliced", 12)
    for n in range(30):
        await server.hub.publish(server.app, ["sliced"], "e", n)
    for client in clients:
        got = [(await client.next_of("message"))["data"] for _ in range(30)]
        assert got == list(range(30))


@ensureDeferred
async def test_frames_published_within_the_flush_window_arrive_in_order(start_server):
    """With a long flush window, messages published back to back still all
    arrive, in order, after the window (the first one at once)."""
    server = await start_server(flush_window=0.2)
    client = await server.connected()
    await client.subscribe("w")
    for n in range(20):
        await server.hub.publish(server.app, ["w"], "e", n)
    assert [(await client.next_of("message"))["data"] for _ in range(20)] == list(
        range(20)
    )
