"""The one message codec: every field survives, and data stored by earlier
pushd versions is still read (or refused, saying why)."""

import json
import sqlite3
from contextlib import closing

import pytest
import pytest_twisted
import txredisapi
from twisted.internet import reactor
from twisted.logger import globalLogPublisher

from pushd.backends.redis import RedisBackend
from pushd.backends.sqlite import SqliteBackend
from pushd.errors import CodecError
from pushd.history import Retention
from pushd.message import (
    CODEC_VERSION,
    Message,
    Outgoing,
    channel_key,
    decode_message,
    encode_json,
    encode_message,
    split_key,
)
from pushd.testing import eventually, every_field_message

SAMPLE = every_field_message()
# What pushd wrote before the codec had a version, for SAMPLE.
LEGACY_REDIS = json.dumps(
    [
        SAMPLE.event,
        SAMPLE.data,
        SAMPLE.id,
        SAMPLE.exclude,
        list(SAMPLE.users),
        SAMPLE.user_id,
        SAMPLE.time,
        SAMPLE.content_type,
    ]
)
LEGACY_SQLITE = json.dumps(
    [SAMPLE.event, SAMPLE.data, SAMPLE.id, SAMPLE.user_id, SAMPLE.time, None]
)


def test_every_field_round_trips():
    """A message read back from a store is the message that was stored."""
    encoded = encode_message(SAMPLE)
    assert json.loads(encoded)["v"] == CODEC_VERSION
    assert decode_message(encoded) == SAMPLE
    assert decode_message(encoded.encode("utf-8")) == SAMPLE


def test_unset_fields_stay_unset():
    """A plain message does not come back with targeting or a position it
    never had (which would hide it from subscribers)."""
    plain = Message("c", "e", None, "i")
    assert decode_message(encode_message(plain)) == plain
    assert len(encode_message(plain)) < 60  # unset fields cost nothing


def test_position_can_be_put_in_front():
    """Redis scripts add a kept message's position by prefixing the object;
    readers see the position."""
    encoded = encode_message(Message("c", "e", 1, "i"))
    assert encoded.startswith('{"v":')
    placed = '{"offset":7,"epoch":"ab",' + encoded[1:]
    message = decode_message(placed)
    assert (message.offset, message.epoch, message.data) == (7, "ab", 1)


def test_previous_formats_are_read():
    """Messages stored by pushd before the codec (Redis pub/sub and streams,
    positioned pub/sub, offline inboxes, SQLite history) are still delivered
    after an upgrade."""
    key = SAMPLE.key
    unplaced = Message(
        SAMPLE.channel,
        SAMPLE.event,
        SAMPLE.data,
        SAMPLE.id,
        SAMPLE.app,
        SAMPLE.exclude,
        SAMPLE.users,
        SAMPLE.user_id,
        time=SAMPLE.time,
        content_type=SAMPLE.content_type,
    )
    assert decode_message(LEGACY_REDIS, key) == unplaced
    placed = decode_message("41|e90c4|" + LEGACY_REDIS, key)
    assert placed == SAMPLE
    inbox = json.dumps([SAMPLE.channel, 41, "e90c4", LEGACY_REDIS])
    assert decode_message(inbox, channel_key(SAMPLE.app, "")) == SAMPLE
    old_sqlite = decode_message(LEGACY_SQLITE, key)
    assert (old_sqlite.data, old_sqlite.user_id, old_sqlite.time) == (
        SAMPLE.data,
        SAMPLE.user_id,
        SAMPLE.time,
    )
    assert old_sqlite.exclude is None  # that format never kept it


@pytest.mark.parametrize(
    "payload,why",
    [
        ('{"v":2,"app":"a","channel":"c","event":"e","id":"i"}', "codec version 2"),
        ('{"app":"a","channel":"c","event":"e","id":"i"}', "codec version None"),
        ('{"v":1,"app":"a","channel":"c","id":"i"}', "no 'event'"),
        ("[1, 2]", "unknown stored message format"),
        ("not json", "malformed"),
        ("12|ep", "malformed"),
        ('"a string"', "not a stored message"),
    ],
)
def test_unreadable_messages_are_refused_clearly(payload, why):
    """A message from a newer pushd, or garbage in the store, is refused with
    an error an operator can act on, never misread as another message."""
    with pytest.raises(CodecError, match=why):
        decode_message(payload, "a/c")


def test_channel_key_splits_back():
    """Channels of different apps never share a key."""
    assert channel_key("app", "presence-x") == "app/presence-x"
    assert split_key(channel_key("app", "a/b")) == ("app", "a/b")


# -- stored data from before the codec, in real stores ------------------------------


@pytest_twisted.ensureDeferred
async def test_redis_reads_what_the_previous_version_stored(redis_server):
    """After an upgrade, a node on the same Redis still delivers messages
    published by not-yet-upgraded nodes, reads their kept history and hands
    out their offline inboxes."""
    raw = await txredisapi.Connection("127.0.0.1", redis_server.port, reconnect=False)
    backend = RedisBackend(reactor, port=redis_server.port)
    await backend.start()
    try:
        got: list = []
        await backend.subscribe(SAMPLE.key, got.append)
        await raw.publish("pushd:c:" + SAMPLE.key, LEGACY_REDIS)
        await raw.publish("pushd:c:" + SAMPLE.key, "41|e90c4|" + LEGACY_REDIS)
        await eventually(lambda: len(got) == 2)
        assert got[1] == SAMPLE and got[0].offset is None
        await raw.execute_command(
            "XADD", "pushd:h:" + SAMPLE.key, "41-1", "p", LEGACY_REDIS, "t", "%f" % 1e10
        )
        await raw.set("pushd:ho:" + SAMPLE.key, "41")
        await raw.set("pushd:he:" + SAMPLE.key, "e90c4")
        result = await backend.history(
            SAMPLE.key, 40, "e90c4", 10, Retention(size=50, ttl=60)
        )
        assert (result.messages, result.recovered) == ([SAMPLE], True)
        inbox = json.dumps([SAMPLE.channel, 41, "e90c4", LEGACY_REDIS])
        await raw.rpush("pushd:inbox:%s:eve" % SAMPLE.app, inbox)
        assert await backend.take_offline(SAMPLE.app, "eve") == [SAMPLE]
    finally:
        await backend.stop()
        await raw.disconnect()


@pytest_twisted.ensureDeferred
async def test_redis_refuses_newer_messages_and_keeps_delivering(redis_server):
    """A message a newer pushd wrote is dropped with a log line saying so;
    the subscribers still get every message this node can read."""
    raw = await txredisapi.Connection("127.0.0.1", redis_server.port, reconnect=False)
    backend = RedisBackend(reactor, port=redis_server.port)
    logged: list = []
    globalLogPublisher.addObserver(logged.append)
    await backend.start()
    try:
        got: list = []
        await backend.subscribe("default/c", got.append)
        newer = '{"v":2,"app":"default","channel":"c","event":"e","id":"x"}'
        await raw.publish("pushd:c:default/c", newer)
        await backend.publish(Message("c", "e", "after", "i2"))
        await eventually(lambda: got)
        assert [m.data for m in got] == ["after"]
        assert any("codec version 2" in str(e.get("why")) for e in logged)
    finally:
        globalLogPublisher.removeObserver(logged.append)
        await backend.stop()
        await raw.disconnect()


@pytest_twisted.ensureDeferred
async def test_redis_warns_about_previous_version_nodes(redis_server):
    """During a rolling upgrade, the operator is told at start that live
    nodes of the previous version share this Redis (they cannot read what
    upgraded nodes publish)."""
    raw = await txredisapi.Connection("127.0.0.1", redis_server.port, reconnect=False)
    await raw.zadd("pushd:nodes", reactor.seconds() + 60, "oldnode")
    logged: list = []
    globalLogPublisher.addObserver(logged.append)
    backend = RedisBackend(reactor, port=redis_server.port)
    try:
        await backend.start()
        warned = [
            e for e in logged if "another message codec" in e.get("log_format", "")
        ]
        assert len(warned) == 1 and warned[0]["nodes"] == "oldnode"
        second = RedisBackend(reactor, port=redis_server.port)
        logged.clear()
        await second.start()
        warned = [
            e for e in logged if "another message codec" in e.get("log_format", "")
        ]
        assert warned[0]["nodes"] == "oldnode"  # the upgraded one is not listed
        await second.stop()
    finally:
        globalLogPublisher.removeObserver(logged.append)
        await backend.stop()
        await raw.disconnect()


@pytest_twisted.ensureDeferred
async def test_sqlite_reads_history_the_previous_version_stored(tmp_path):
    """History kept on disk by the previous pushd is still replayed after
    an upgrade, in order, with its positions."""
    path = str(tmp_path / "old.db")
    backend = SqliteBackend(None, path)
    await backend.start()
    await backend.stop()
    # Closed before pushd opens the file again: pushd uses it exclusively.
    with closing(sqlite3.connect(path)) as db, db:
        db.execute(
            "INSERT INTO channels VALUES (?, ?, ?, ?)", (SAMPLE.key, "e90c4", 41, 1e10)
        )
        db.execute(
            "INSERT INTO messages VALUES (?, ?, ?, ?)",
            (SAMPLE.key, 41, LEGACY_SQLITE, 1e10),
        )
    backend = SqliteBackend(None, path)
    await backend.start()
    try:
        keep = Retention(size=50, ttl=60)
        result = await backend.history(SAMPLE.key, 40, "e90c4", 10, keep)
        [old] = result.messages
        assert (old.data, old.id, old.offset, old.epoch) == (
            SAMPLE.data,
            SAMPLE.id,
            41,
            "e90c4",
        )
        newer = await backend.publish(Message(SAMPLE.channel, "e", 2, "n"), keep)
        assert (newer.offset, newer.epoch) == (42, "e90c4")
    finally:
        await backend.stop()


@pytest.mark.parametrize(
    "message",
    [
        Message("c1", "m", {"s": "0001", "p": "x" * 60}, "0123456789abcdef"),
        Message("c1", "m", 'a string, "quoted"\n', "id1"),
        Message("c1", "m", None, "id1"),
        Message("ch", "App\\Events\\X", [1, 2.5, True, None, {"ü": "日本"}], "id1"),
        Message("c1", "m", {"a": 1}, "id1", user_id="ann"),
        Message("c1", "m", {"a": 1}, "id1", offset=3, epoch="e1"),
        Message("c1", "m", "<b>", "id1", content_type="text/html"),
        Message("presence-x", "pushd:member_added", {"user_id": "u"}, "id1"),
        Message("c1", "pushd:channel_deleted", None, "id1"),
    ],
)
def test_outgoing_frame_is_the_frame_encoded(message):
    """Subscribers get the same bytes whichever way the frame is written:
    the shortcut for plain messages equals encoding ``Message.frame()``."""
    assert Outgoing(message).json == encode_json(message.frame())
    assert json.loads(Outgoing(message).json) == message.frame()


def test_each_wire_form_is_built_once_per_publish():
    """Subscribers on several transports share one message: each transport's
    frame is built once, however many of its subscribers there are and in
    whatever order they come (the fan-out's encode-once)."""
    message = Message("news", "e", {"n": 1}, "id1")
    outgoing = Outgoing(message)
    built: list[str] = []

    def make(kind):
        return lambda source: built.append(kind) or (kind, source)

    for _ in range(3):  # three subscribers of each kind, interleaved
        assert outgoing.wire("ws", make("ws")) == ("ws", outgoing.json)
        assert outgoing.wire_of("pusher", make("pusher")) == ("pusher", message)
        assert outgoing.wire("sse", make("sse")) == ("sse", outgoing.json)
    assert built == ["ws", "pusher", "sse"]
