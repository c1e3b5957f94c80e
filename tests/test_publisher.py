"""The publisher WebSocket (GET /api/publish): real pushd, real sockets."""

from __future__ import annotations

import json
import os
import signal
import sys
import time

import treq
from clients import connect_ws
from pytest_twisted import ensureDeferred
from test_webhooks import receivers, targets  # noqa: F401  (fixture)
from twisted.internet import reactor

from pushd.auth import make_user_token, request_text, sign
from pushd.backends.redis import RedisBackend
from pushd.history import HistoryRule, Retention
from pushd.testing import eventually

SECRET = "test-api-secret-that-is-at-least-32-bytes"


async def publisher(server, headers=None, expect_open=True):
    headers = server.auth() if headers is None else headers
    client = await connect_ws(
        server.port, path="/api/publish", headers=headers, expect_open=expect_open
    )
    server.clients.append(client)
    return client


def signed(timestamp: float | None = None, secret: str = SECRET) -> dict:
    ts = "%.6f" % (time.time() if timestamp is None else timestamp)
    text = request_text(b"GET", b"/api/publish", ts, b"")
    return {"X-Pushd-Timestamp": ts, "X-Pushd-Signature": sign(secret, text)}


async def handshake_status(server, headers: dict) -> tuple[int, dict]:
    """What pushd answers a WebSocket upgrade of /api/publish with."""
    upgrade = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version": "13",
    }
    response = await treq.get(server.url + "/api/publish", headers=upgrade | headers)
    return response.code, json.loads(await response.text())


@ensureDeferred
async def test_messages_are_acked_in_order_and_delivered(start_server):
    """A list frame is answered with one ack per message, in order, each with
    the publisher's id and the message id; subscribers get the messages in
    the order sent, with those ids."""
    server = await start_server()
    sub = await server.connected()
    await sub.subscribe("a")
    await sub.subscribe("b")
    pub = await publisher(server)
    pub.send(
        [
            {"id": 1, "channel": "a", "event": "first", "data": 1},
            {"id": "two", "channel": "b", "event": "second", "data": {"x": 2}},
            {"id": 3, "channels": ["a", "b"], "event": "both", "data": None},
        ]
    )
    acks = await pub.next()
    assert [(a["id"], a["status"]) for a in acks] == [(1, 202), ("two", 202), (3, 202)]
    frames = [await sub.next_of("message") for _ in range(4)]
    assert [(f["channel"], f["event"], f["id"]) for f in frames] == [
        ("a", "first", acks[0]["message_id"]),
        ("b", "second", acks[1]["message_id"]),
        ("a", "both", acks[2]["message_id"]),
        ("b", "both", acks[2]["message_id"]),
    ]
    pub.send({"id": 9, "channel": "a", "event": "one", "data": "object frame"})
    ack = await pub.next()
    assert (ack["id"], ack["status"]) == (9, 202)
    assert (await sub.next_of("message"))["id"] == ack["message_id"]


@ensureDeferred
async def test_bad_messages_get_their_own_error(start_server):
    """Each invalid message is answered with the REST API's status and error
    code in its place (data nested too deep included); the valid ones around
    it are still published."""
    server = await start_server()
    sub = await server.connected()
    await sub.subscribe("ok")
    pub = await publisher(server)
    deep: object = 1
    for _ in range(server.hub.config.max_json_depth + 1):
        deep = [deep]
    pub.send(
        [
            {"id": 1, "channel": "bad channel", "event": "e", "data": 1},
            {"id": 2, "channel": "ok", "event": "e", "data": "delivered"},
            {"id": 3, "channel": "ok", "data": 1},
            "not an object",
            {"id": 5, "channel": "ok", "event": "pushd:x", "data": 1},
            {"id": 6, "event": "e", "data": 1},
            {"id": 7, "channel": "ok", "event": "e"},
            {"id": [7], "channel": "ok", "event": "e", "data": 1},
            {"id": 9, "channel": "ok", "event": "e", "data": 1, "exclude": 5},
            {"id": 10, "channel": "ok", "event": "e", "data": deep},
        ]
    )
    answers = await pub.next()
    assert [(a["id"], a["status"], a.get("error")) for a in answers] == [
        (1, 400, "invalid_channel"),
        (2, 202, None),
        (3, 400, "missing_field"),
        (None, 400, "invalid_frame"),
        (5, 400, "invalid_field"),
        (6, 400, "missing_field"),
        (7, 400, "missing_field"),
        (None, 400, "invalid_field"),
        (9, 400, "invalid_field"),
        (10, 400, "invalid_json"),
    ]
    frame = await sub.next_of("message")
    assert (frame["id"], frame["data"]) == (answers[1]["message_id"], "delivered")
    sub.assert_nothing_queued()


@ensureDeferred
async def test_frames_refused_whole_publish_nothing(start_server):
    """Invalid JSON (NaN, a lone surrogate anywhere), an empty list or more
    than publisher-max-items messages: one error for the frame, nothing in it published, and the connection
    stays usable."""
    server = await start_server(publisher_max_items=2)
    sub = await server.connected()
    await sub.subscribe("c")
    pub = await publisher(server)
    item = {"channel": "c", "event": "e", "data": 1}
    pub.send(b"{not json")
    pub.send([])
    pub.send([item, item, item])
    pub.send(b"[NaN]")
    pub.send([item, {"channel": "c", "event": "e", "data": {"s": "\ud800"}}])
    answers = [await pub.next() for _ in range(5)]
    assert [(a["id"], a["status"], a["error"]) for a in answers] == [
        (None, 400, "invalid_json"),
        (None, 400, "invalid_frame"),
        (None, 400, "invalid_frame"),
        (None, 400, "invalid_json"),
        (None, 400, "invalid_json"),
    ]
    assert "publisher-max-items" in answers[2]["message"]
    pub.send([item, item])
    assert [a["status"] for a in await pub.next()] == [202, 202]
    assert [(await sub.next_of("message"))["data"] for _ in range(2)] == [1, 1]
    sub.assert_nothing_queued()


@ensureDeferred
async def test_oversize_frame_closes_1009(start_server):
    """A frame over publisher-max-frame bytes closes the connection with
    1009 (message too big) and publishes nothing."""
    server = await start_server(publisher_max_frame=1000)
    sub = await server.connected()
    await sub.subscribe("c")
    pub = await publisher(server)
    pub.send([{"channel": "c", "event": "e", "data": "x" * 2000}])
    code, _ = await pub.wait_closed()
    assert code == 1009
    sub.assert_nothing_queued()


@ensureDeferred
async def test_idempotency_key_publishes_once(start_server, backend_for):
    """The same idempotency key twice (in one frame or two) is one delivery,
    and both are answered with the same message id, on memory and Redis."""
    server = await start_server(backend=backend_for())
    sub = await server.connected()
    await sub.subscribe("c")
    pub = await publisher(server)
    item = {"channel": "c", "event": "e", "data": "once", "idempotency_key": "k-1"}
    pub.send([dict(item, id=1), dict(item, id=2)])
    first = await pub.next()
    pub.send(dict(item, id=3))
    again = await pub.next()
    ids = {first[0]["message_id"], first[1]["message_id"], again["message_id"]}
    assert len(ids) == 1
    assert (await sub.next_of("message"))["data"] == "once"
    pub.send({"channel": "c", "event": "e", "data": "next", "idempotency_key": "k 2"})
    assert (await pub.next())["error"] == "invalid_field"  # keys have no spaces
    pub.send({"channel": "c", "event": "e", "data": "next"})
    await pub.next()
    assert (await sub.next_of("message"))["data"] == "next"


@ensureDeferred
async def test_history_offline_and_webhooks_apply(start_server, receivers):  # noqa: F811
    """Published over the WebSocket, a message is kept in the channel's
    history, kept for an offline user, and announced by the
    message_published webhook, as a REST publish is."""
    receiver = await receivers()
    server = await start_server(
        history=(HistoryRule("chat-*", Retention(size=10, ttl=60)),),
        webhooks=targets(receiver, ["message_published"]),
    )
    pub = await publisher(server)
    pub.send(
        [
            {"id": 1, "channel": "chat-1", "event": "e", "data": "kept"},
            {"id": 2, "channel": "personal-ann", "event": "dm", "data": "for ann"},
        ]
    )
    acks = await pub.next()
    assert [a["status"] for a in acks] == [202, 202]
    response = await treq.get(
        server.url + "/api/channels/chat-1/history", headers=server.auth()
    )
    history = json.loads(await response.text())
    assert [(m["id"], m["data"]) for m in history["messages"]] == [
        (acks[0]["message_id"], "kept")
    ]
    ann = await server.connect("?token=" + make_user_token(SECRET, "ann"))
    await ann.next_of("connected")
    dm = await ann.next_of("message")
    assert (dm["id"], dm["data"]) == (acks[1]["message_id"], "for ann")
    await eventually(lambda: len(receiver.events) == 2)
    # Each webhook is its own POST: they may arrive in either order.
    assert sorted((e["channel"], e["message_id"]) for e in receiver.events) == [
        ("chat-1", acks[0]["message_id"]),
        ("personal-ann", acks[1]["message_id"]),
    ]


@ensureDeferred
async def test_handshake_without_valid_credentials_is_refused(start_server):
    """No credentials (401), a wrong secret (403), a signature that is stale,
    wrongly signed or replayed (401): the REST API's answer and no
    WebSocket; a signed handshake that is right opens one."""
    server = await start_server()
    assert await handshake_status(server, {}) == (
        401,
        {
            "error": "unauthorized",
            "message": "missing 'Authorization: Bearer <api secret>' header "
            "or X-Pushd-Signature",
        },
    )
    code, body = await handshake_status(server, {"Authorization": "Bearer wrong"})
    assert (code, body["error"]) == (403, "forbidden")
    code, body = await handshake_status(server, signed(time.time() - 3600))
    assert (code, body["error"]) == (401, "unauthorized")
    assert "window" in body["message"]
    code, body = await handshake_status(server, signed(secret="not-the-secret"))
    assert (code, body["error"]) == (401, "unauthorized")
    good = signed()
    pub = await publisher(server, headers=good)
    pub.send({"channel": "c", "event": "e", "data": 1})
    assert (await pub.next())["status"] == 202
    code, body = await handshake_status(server, good)
    assert code == 401 and "replay" in body["message"]
    refused = await publisher(server, headers={}, expect_open=False)
    refused.opened.addErrback(lambda failure: None)  # expected: never opens
    await refused.wait_closed()
    assert refused.proto is None  # never opened


@ensureDeferred
async def test_connection_closes_after_max_age(start_server):
    """After publisher-max-age the connection is closed with 4111, so the
    credentials are proved again by the next handshake."""
    server = await start_server(publisher_max_age=0.3)
    pub = await publisher(server)
    pub.send({"channel": "c", "event": "e", "data": 1})
    assert (await pub.next())["status"] == 202
    code, _ = await pub.wait_closed()
    assert code == 4111


@ensureDeferred
async def test_slow_backend_stops_reading_then_answers_all(redis_server, start_server):
    """While Redis does not answer, pushd stops reading the publisher's
    socket after the frame in progress (it buffers no more frames); once
    Redis answers again every frame is answered, in order, none lost."""
    server = await start_server(backend=RedisBackend(reactor, port=redis_server.port))
    sub = await server.connected()
    await sub.subscribe("c")
    pub = await publisher(server)
    pub.send({"id": 0, "channel": "c", "event": "e", "data": 0})
    assert (await pub.next())["status"] == 202
    await sub.next_of("message")
    factory = server.site.resource.children[b"api"]._publisher._factory
    (conn,) = factory.connections
    os.kill(redis_server.proc.pid, signal.SIGSTOP)
    try:
        for n in range(1, 51):
            pub.send([{"id": n, "channel": "c", "event": "e", "data": n}])
        # The server works on one frame and reads no further.
        await eventually(lambda: conn._busy and not conn._reading)
    finally:
        os.kill(redis_server.proc.pid, signal.SIGCONT)
    answers = [await pub.next(timeout=10) for _ in range(50)]
    assert [a[0]["id"] for a in answers] == list(range(1, 51))
    assert all(a[0]["status"] == 202 for a in answers)
    got = [(await sub.next_of("message", timeout=10))["data"] for _ in range(50)]
    assert got == list(range(1, 51))


@ensureDeferred
async def test_redis_outage_is_a_per_message_error(redis_server, start_server):
    """With Redis down, each message is answered 503 backend_unavailable
    (never dropped silently) and the connection stays open for retries."""
    server = await start_server(backend=RedisBackend(reactor, port=redis_server.port))
    pub = await publisher(server)
    redis_server.stop()
    pub.send([{"id": n, "channel": "c", "event": "e", "data": n} for n in range(3)])
    answers = await pub.next(timeout=15)
    assert [(a["id"], a["status"], a["error"]) for a in answers] == [
        (n, 503, "backend_unavailable") for n in range(3)
    ]
    redis_server.start()


@ensureDeferred
async def test_delivery_to_another_node_through_redis(redis_server, start_server):
    """A message published over the WebSocket on one node reaches a
    subscriber of another node that shares the Redis server."""
    a = await start_server(backend=RedisBackend(reactor, port=redis_server.port))
    b = await start_server(backend=RedisBackend(reactor, port=redis_server.port))
    sub = await b.connected()
    await sub.subscribe("c")
    pub = await publisher(a)
    pub.send([{"id": n, "channel": "c", "event": "e", "data": n} for n in range(5)])
    acks = await pub.next()
    frames = [await sub.next_of("message") for _ in range(5)]
    assert [(f["data"], f["id"]) for f in frames] == [
        (n, acks[n]["message_id"]) for n in range(5)
    ]


@ensureDeferred
async def test_message_over_max_message_size_is_refused(start_server):
    """A message larger than max-message-size is refused (413
    body_too_large) in its place, as POST /api/batch refuses it, while the
    small ones in the same frame are published: a publisher cannot push
    subscribers and history past the operator's message limit just by
    using the WebSocket (it took a 1 MB message that REST answers 413)."""
    server = await start_server(max_message_size=1000)
    sub = await server.connected()
    await sub.subscribe("c")
    pub = await publisher(server)
    pub.send(
        [
            {"id": 1, "channel": "c", "event": "e", "data": "small"},
            {"id": 2, "channel": "c", "event": "e", "data": "x" * 2000},
            {"id": 3, "channel": "c", "event": "e", "data": ["é" * 600]},
        ]
    )
    answers = await pub.next()
    assert [(a["id"], a["status"], a.get("error")) for a in answers] == [
        (1, 202, None),
        (2, 413, "body_too_large"),
        (3, 413, "body_too_large"),  # counted in UTF-8 bytes, as on the wire
    ]
    assert "max-message-size" in answers[1]["message"]
    pub.send({"id": 4, "channel": "c", "event": "e", "data": "y" * 2000})
    assert (await pub.next())["status"] == 413
    assert (await sub.next_of("message"))["data"] == "small"
    sub.assert_nothing_queued()


@ensureDeferred
async def test_slow_backend_does_not_cost_the_publisher_its_connection(
    redis_server, start_server
):
    """While a frame waits on a slow Redis longer than ping-timeout, pushd
    reads nothing from the publisher, so its pong sits unread: that is
    pushd's own hold, not a dead peer.  The publisher keeps its connection
    and gets its answer (it used to be dropped for "ping timeout", its
    answer lost although the message was published)."""
    server = await start_server(
        backend=RedisBackend(reactor, port=redis_server.port, timeout=10),
        # Autobahn rounds its timers down to whole seconds.
        ping_interval=1,
        ping_timeout=1.5,
    )
    pub = await publisher(server)
    pub.send({"id": 0, "channel": "c", "event": "e", "data": 0})
    assert (await pub.next())["status"] == 202
    factory = server.site.resource.children[b"api"]._publisher._factory
    (conn,) = factory.connections
    os.kill(redis_server.proc.pid, signal.SIGSTOP)
    try:
        pub.send([{"id": 1, "channel": "c", "event": "e", "data": 1}])
        await eventually(lambda: conn._busy and not conn._reading)
        # A ping goes unanswered (unread) for longer than ping-timeout.
        await eventually(
            lambda: pub.closed.called or getattr(conn, "pongs_held", 0) >= 1, 5
        )
        assert not pub.closed.called, pub.close_code
    finally:
        os.kill(redis_server.proc.pid, signal.SIGCONT)
    answer = await pub.next(timeout=10)
    assert (answer[0]["id"], answer[0]["status"]) == (1, 202)
    pub.send({"id": 2, "channel": "c", "event": "e", "data": 2})
    assert (await pub.next())["status"] == 202


@ensureDeferred
async def test_redis_down_idempotent_messages_are_answered_at_once(
    redis_server, start_server
):
    """With Redis down, messages carrying an idempotency key are answered 503
    at once, as those without are: each used to wait out the backend timeout
    first (3 s by default, so 50 minutes for a frame of 1000), the publisher
    getting no answer and pushd reading nothing from it meanwhile."""
    backend = RedisBackend(reactor, port=redis_server.port, timeout=10)
    server = await start_server(backend=backend)
    pub = await publisher(server)
    item = {"channel": "c", "event": "e", "data": 1}
    pub.send(dict(item, id=0, idempotency_key="k-0"))
    assert (await pub.next())["status"] == 202
    redis_server.stop()
    await eventually(lambda: not backend.state()["up"])
    pub.send([dict(item, id=n, idempotency_key="k-%d" % n) for n in range(1, 4)])
    answers = await pub.next(timeout=5)
    assert [(a["id"], a["status"], a["error"]) for a in answers] == [
        (n, 503, "backend_unavailable") for n in range(1, 4)
    ]
    redis_server.start()


@ensureDeferred
async def test_tiny_fragments_cost_no_more_than_the_message(start_server):
    """A message sent as thousands of 1-byte fragments holds about its own
    size in pushd's memory while it arrives, not one object per fragment
    (Autobahn kept each: ~60 bytes a fragment, so ~60 MB for one 1 MB
    message on the publisher, ~4 MB for a 64 KB one on /ws, measured); it is
    still published whole."""
    server = await start_server()
    sub = await server.connected()
    await sub.subscribe("c")
    pub = await publisher(server)
    (conn,) = server.site.resource.children[b"api"]._publisher._factory.connections
    text = json.dumps({"id": 1, "channel": "c", "event": "e", "data": "x" * 20000})
    raw = text.encode()
    pub.proto.beginMessage()
    for n in range(len(raw)):
        pub.proto.sendMessageFrame(raw[n : n + 1])
    await eventually(
        lambda: getattr(conn, "message_data_total_length", 0) == len(raw), 10
    )
    parts = {id(part): part for part in conn.message_data}.values()
    held = sys.getsizeof(conn.message_data) + sum(map(sys.getsizeof, parts))
    assert held < 2 * len(raw) + 1000, held
    pub.proto.endMessage()
    assert (await pub.next())["status"] == 202
    assert (await sub.next_of("message"))["data"] == "x" * 20000


def test_list_answers_are_the_results_encoded():
    """A list frame's answer is written from its parts for accepted
    messages; it is byte for byte what encoding each result gives, for every
    kind of publisher id and for refusals among them."""
    from pushd.errors import InvalidChannel
    from pushd.message import encode_json
    from pushd.transports.publisher import _list_answer, _result

    refs = (None, 0, -7, 10**30, "a", 'q"uote\\', "日本 é", 5)
    results = ["0123456789abcdef"] * 7 + [InvalidChannel("bad channel")]
    expected = encode_json(list(map(_result, refs, results)))
    assert _list_answer(refs, results) == expected
    decoded = json.loads(_list_answer(refs, results))
    assert [a["id"] for a in decoded] == list(refs)
    assert decoded[-1]["status"] == 400
