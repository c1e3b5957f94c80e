"""Fan-out through Redis (issue 16): what arrives together goes out together,
and every node delivers one channel in one order."""

from __future__ import annotations

import hashlib
import json
from types import SimpleNamespace

import pytest
import treq
import txredisapi
from clients import ws_total
from pytest_twisted import ensureDeferred
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults

from pushd.auth import make_user_token
from pushd.backends.redis import _PUBLISH, _PUBLISH_KEPT, RedisBackend
from pushd.backends.redis_commands import CommandProtocol
from pushd.backends.redis_subscriber import Subscriber, parse_reply
from pushd.history import rule_from_mapping
from pushd.message import Message, encode_message, new_message_id

# What Redis writes on a subscriber connection: a SUBSCRIBE acknowledgement,
# two pub/sub messages, a pmessage, replies of other kinds.
STREAM = (
    b"*3\r\n$9\r\nsubscribe\r\n$3\r\nch1\r\n:1\r\n"
    b"*3\r\n$7\r\nmessage\r\n$3\r\nch1\r\n$5\r\nhello\r\n"
    b"*3\r\n$7\r\nmessage\r\n$3\r\nch1\r\n$0\r\n\r\n"
    b"+OK\r\n"
    b"-ERR unknown command\r\n"
    b"$-1\r\n"
    b"*2\r\n*1\r\n:7\r\n$2\r\nab\r\n"
    b"*3\r\n$7\r\nmessage\r\n$3\r\nch2\r\n$4\r\n\xc3\xa9\r\n\r\n"
)


def recording_subscriber():
    """A Subscriber whose backend and reply queue record what it hands over."""
    events: list = []
    proto = Subscriber(charset="utf-8")
    proto.factory = SimpleNamespace(
        backend=SimpleNamespace(
            _received=lambda channel, payload: events.append(("msg", channel, payload))
        )
    )
    proto.replyQueue = SimpleNamespace(put=lambda r: events.append(("reply", r)))
    proto.replyQueue.waiting = [object()]  # a command waits: acks are handed on
    return proto, events


def canonical(events: list) -> list:
    """Errors compare by message (ResponseError has no equality)."""
    return [
        ("reply", ("error", str(e[1])))
        if isinstance(e[1], txredisapi.ResponseError)
        else e
        for e in events
    ]


def test_subscriber_parses_every_reply_of_a_read_at_once():
    """Every reply in one read is handed over before dataReceived returns, in
    order, messages with their payload as bytes and other replies as
    txredisapi's own reader gives them; a read split anywhere (even inside a
    CRLF) gives the same result."""
    proto, whole = recording_subscriber()
    proto.dataReceived(STREAM)
    assert canonical(whole) == [
        ("reply", ["subscribe", "ch1", 1]),
        ("msg", "ch1", b"hello"),
        ("msg", "ch1", b""),
        ("reply", "OK"),
        ("reply", ("error", "unknown command")),
        ("reply", None),
        ("reply", [[7], "ab"]),
        ("msg", "ch2", "\xe9\r\n".encode()),
    ]
    for cut in range(1, len(STREAM)):
        proto, events = recording_subscriber()
        proto.dataReceived(STREAM[:cut])
        proto.dataReceived(STREAM[cut:])
        assert canonical(events) == canonical(whole), cut
        assert proto._pending == b""


def test_subscriber_drops_a_connection_that_does_not_speak_resp():
    """Bytes that are not a Redis reply close the connection (it reconnects
    and catches up) instead of guessing where the next reply starts."""
    proto, events = recording_subscriber()
    closed = []
    proto.transport = SimpleNamespace(loseConnection=lambda: closed.append(True))
    proto.dataReceived(b"*3\r\n$7\r\nmessage\r\n$3\r\nch1\r\n$x\r\n")
    assert closed == [True]
    assert events == []


def test_parse_reply_waits_for_the_whole_reply():
    """A partial reply leaves its start in place for the next read."""
    assert parse_reply(b"$5\r\nhel", 0)[1] == 0
    assert parse_reply(b"*2\r\n$1\r\na\r\n", 0)[1] == 0
    assert parse_reply(b"xx$1\r\na\r\n", 2) == (b"a", 9)


async def redis_command(redis_server):
    return await txredisapi.Connection("127.0.0.1", redis_server.port, reconnect=False)


@ensureDeferred
async def test_messages_of_one_redis_read_share_one_write(redis_server, start_server):
    """Five messages that Redis sends together (one script publishing them)
    reach each WebSocket subscriber in one write of five frames, in order,
    not in five flushes of a send() per subscriber each."""
    server = await start_server(backend=RedisBackend(reactor, port=redis_server.port))
    clients = await server.subscribed("news", 3)
    writes = await ws_total(server, "pushd_writes_total")
    frames = await ws_total(server, "pushd_frames_sent_total")
    payloads = [
        encode_message(Message("news", "e", n, new_message_id(), "default"))
        for n in range(5)
    ]
    redis = await redis_command(redis_server)
    try:
        await redis.eval(
            "for _, p in ipairs(ARGV) do redis.call('PUBLISH', KEYS[1], p) end",
            ["pushd:c:default/news"],
            payloads,
        )
    finally:
        await redis.disconnect()
    for client in clients:
        got = [(await client.next_of("message"))["data"] for _ in range(5)]
        assert got == [0, 1, 2, 3, 4]
    assert await ws_total(server, "pushd_frames_sent_total") - frames == 15
    assert await ws_total(server, "pushd_writes_total") - writes == 3


@pytest.mark.parametrize("kept", [False, True], ids=["plain", "history"])
@ensureDeferred
async def test_concurrent_publishes_on_two_nodes_arrive_in_one_order(
    redis_server, start_server, kept
):
    """Two publishers, one on each of two nodes, publishing at the same time:
    every subscriber on both nodes gets every message once, all in the same
    order, each publisher's messages in the order it sent them (with and
    without history, whose positions then follow that order)."""
    history = (rule_from_mapping({"channel": "news", "size": 500, "ttl": 60}),)
    history = history if kept else ()
    nodes = [
        await start_server(
            backend=RedisBackend(reactor, port=redis_server.port), history=history
        )
        for _ in range(2)
    ]
    clients = []
    for node in nodes:
        for _ in range(2):
            client = await node.connected()
            await client.subscribe("news")
            clients.append(client)
    count = 60

    async def publish_all(node, name, count=count):
        for n in range(count):
            response = await treq.post(
                node.url + "/api/channels/news/messages",
                json.dumps({"event": "e", "data": "%s%d" % (name, n)}).encode(),
                headers=node.auth(),
            )
            assert response.code == 202
            await response.content()

    await gatherResults(
        [
            Deferred.fromCoroutine(publish_all(node, name))
            for node, name in zip(nodes, ["a", "b"], strict=True)
        ]
    )
    orders = []
    for client in clients:
        frames = [await client.next_of("message") for _ in range(2 * count)]
        orders.append([f["data"] for f in frames])
        if kept:
            assert [f["offset"] for f in frames] == list(range(1, 2 * count + 1))
    assert all(order == orders[0] for order in orders)
    for name in "ab":
        mine = [d for d in orders[0] if d.startswith(name)]
        assert mine == ["%s%d" % (name, n) for n in range(count)]
    # Nothing twice: the next frame anyone gets is a marker published last.
    await publish_all(nodes[0], "end", 1)
    for client in clients:
        assert (await client.next_of("message"))["data"] == "end0"


async def command_counts(redis) -> dict:
    """Commands Redis ran since the last CONFIG RESETSTAT (those called from
    scripts included), without the test's own CONFIG and INFO."""
    info = await redis.execute_command("INFO", "commandstats")
    counts = {}
    for line in info.splitlines():
        if line.startswith("cmdstat_"):
            name, _, fields = line[len("cmdstat_") :].partition(":")
            calls = int(fields.split(",")[0].split("=")[1])
            if calls and name.split("|")[0] not in ("config", "info"):
                counts[name] = calls
    return counts


@pytest.mark.parametrize("kept", [False, True], ids=["plain", "history"])
@ensureDeferred
async def test_publish_nobody_keeps_costs_one_redis_round_trip(
    redis_server, start_server, kept
):
    """A publish on a channel that no user keeps for offline delivery costs
    Redis one script call: PUBLISH (with the history writes on a channel
    that keeps history) and one EXISTS, no offline-store script; subscribers
    still get it."""
    history = (rule_from_mapping({"channel": "news", "size": 10, "ttl": 60}),)
    server = await start_server(
        backend=RedisBackend(
            reactor, port=redis_server.port, heartbeat=60, node_ttl=120
        ),
        history=history if kept else (),
    )
    client = await server.connected()
    await client.subscribe("news")
    redis = await redis_command(redis_server)
    try:
        await redis.execute_command("CONFIG", "RESETSTAT")
        response = await treq.post(
            server.url + "/api/channels/news/messages",
            json.dumps({"event": "e", "data": 1}).encode(),
            headers=server.auth(),
        )
        assert response.code == 202
        assert (await client.next_of("message"))["data"] == 1
        counts = await command_counts(redis)
    finally:
        await redis.disconnect()
    script = counts.pop("evalsha", 0) + counts.pop("eval", 0)
    assert script == 1
    assert counts.pop("publish") == counts.pop("exists") == 1
    if kept:
        assert counts.pop("pexpire") == 3
        assert set(counts) <= {"get", "set", "del", "xrevrange", "incr", "xadd"}
    else:
        assert counts == {}


@ensureDeferred
async def test_keeping_on_one_node_stores_what_another_publishes_next(
    redis_server, start_server
):
    """A channel kept (PUT) through one node is kept for messages published
    right after through another: the offline user gets them on connect."""
    nodes = [
        await start_server(backend=RedisBackend(reactor, port=redis_server.port))
        for _ in range(2)
    ]
    # a node that has already published on the channel while nobody kept it
    response = await treq.post(
        nodes[0].url + "/api/channels/news/messages",
        json.dumps({"event": "e", "data": "before"}).encode(),
        headers=nodes[0].auth(),
    )
    assert response.code == 202
    response = await treq.put(
        nodes[1].url + "/api/users/ann/channels/news", headers=nodes[1].auth()
    )
    assert response.code == 204
    response = await treq.post(
        nodes[0].url + "/api/channels/news/messages",
        json.dumps({"event": "e", "data": "after"}).encode(),
        headers=nodes[0].auth(),
    )
    assert response.code == 202
    ann = await nodes[1].connected("?token=" + make_user_token(nodes[1].secret, "ann"))
    assert (await ann.next_of("message"))["data"] == "after"
    ann.assert_nothing_queued()


def test_commands_are_framed_as_txredisapi_frames_them():
    """The command connection's own framing (one pass per argument) puts the
    same bytes on the wire as txredisapi's encoder for every kind of
    argument, and refuses what txredisapi refuses with its error."""
    ours, theirs = CommandProtocol(charset="utf-8"), txredisapi.BaseRedisProtocol()
    for args in [
        ("EVALSHA", "0" * 40, 2, "pushd:c:a/é", "k", '{"data":"\u2713 \U0001f600"}'),
        ("SET", b"\x00\xff\r\n", 1.5, -3, bytearray(b"zz"), ""),
        ("PING",),
    ]:
        assert ours._build_command(*args) == theirs._build_command(*args)
    with pytest.raises(txredisapi.InvalidData):
        ours._build_command("SET", "k", "\ud800")


@ensureDeferred
async def test_publish_goes_through_the_lean_command_path_intact(redis_server):
    """A publish on a live connection (EVALSHA straight on the pooled
    connection, framed by pushd) reaches the local subscriber and the kept
    history with every character intact, the script loaded by the first
    publish and reused by the next."""
    backend = RedisBackend(reactor, port=redis_server.port)
    await backend.start()
    try:
        (conn,) = backend._redis._factory.pool
        assert type(conn) is CommandProtocol
        got: list = []
        await backend.subscribe("default/news", got.append)
        retention = rule_from_mapping({"channel": "news", "size": 10, "ttl": 60})
        sent = []
        for n, kept in enumerate([None, None, retention.retention, None]):
            message = Message(
                "news", "e", {"t": "é\u2713\U0001f600", "n": n}, new_message_id()
            )
            await backend.publish(message, kept)
            sent.append(message.data)
        assert [m.data for m in got] == sent
        for script in (_PUBLISH, _PUBLISH_KEPT):
            assert hashlib.sha1(script.encode()).hexdigest() in conn.script_hashes
        stored = await backend.history(
            "default/news", None, None, 10, retention.retention
        )
        assert [m.data for m in stored.messages] == [sent[2]]
    finally:
        await backend.stop()


@ensureDeferred
async def test_commands_go_to_redis_at_once(redis_server):
    """A command is on its way to Redis when execute_command returns, not
    left in Twisted's buffer until the reactor's next write turn (under load
    that turn comes after the next slice of a WebSocket flush, and a
    publish's copy then came back a turn later); its reply still comes back
    to its caller, and commands pipelined by txredisapi still wait for
    execute_pipeline."""
    backend = RedisBackend(reactor, port=redis_server.port)
    await backend.start()
    try:
        (conn,) = backend._redis._factory.pool
        transport = conn.transport
        pinged = conn.execute_command("ECHO", "é")
        assert transport._tempDataLen == 0 and not transport.dataBuffer
        assert await pinged == "é"
        conn.pipelining = True
        queued = conn.execute_command("ECHO", "later")
        conn.pipelining = False
        assert transport._tempDataLen == 0 and len(conn.pipelined_commands) == 1
        conn.pipelining = True
        await conn.execute_pipeline()
        assert await queued == "later"
    finally:
        await backend.stop()
