"""Hostile input and authorization holes (issue 11), each attacked over real
sockets against a real pushd; every test here failed before its fix."""

from __future__ import annotations

import json

import pytest
import pytest_twisted
import treq
from pytest_twisted import ensureDeferred
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.logger import globalLogPublisher

from pushd.auth import channel_signature
from pushd.backends.memory import MemoryBackend
from pushd.errors import BackendUnavailable, InvalidJSON
from pushd.history import HistoryRule, Retention
from pushd.testing import eventually

SECRET = "test-api-secret-that-is-at-least-32-bytes"


@pytest.fixture
def log_events():
    events: list = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def tracebacks(events):
    return [e for e in events if "log_failure" in e]


async def post(server, path, raw: bytes, headers=None):
    response = await treq.post(
        server.url + path,
        data=raw,
        headers={
            **server.auth(),
            "Content-Type": "application/json",
            **(headers or {}),
        },
    )
    return response.code, json.loads(await response.text() or "null")


async def publish_raw(server, channel, raw: bytes):
    return await post(server, "/api/channels/%s/messages" % channel, raw)


# -- 1. private-channel signature confusion --------------------------------------


@ensureDeferred
async def test_signature_for_one_private_channel_does_not_open_another(
    start_server,
):
    """A signature the app made for private-team:42 cannot be re-split into
    private-team plus channel_data "42"; names with ':' are refused."""
    server = await start_server()
    client = await server.connected()
    signed = channel_signature(SECRET, client.connection_id, "private-team:42")
    client.send(
        {
            "type": "subscribe",
            "channel": "private-team",
            "auth": signed,
            "channel_data": "42",
        }
    )
    error = await client.next_of("error")
    assert (error["code"], error["channel"]) == ("forbidden", "private-team")
    for name in ("private-team:42", "private-a:b:c", "presence-x:y"):
        client.send(
            {
                "type": "subscribe",
                "channel": name,
                "auth": channel_signature(SECRET, client.connection_id, name),
            }
        )
        assert (await client.next_of("error"))["code"] == "invalid_channel"
    # Pusher-style signing still works for names without ':'.
    good = channel_signature(SECRET, client.connection_id, "private-team")
    client.send({"type": "subscribe", "channel": "private-team", "auth": "key:" + good})
    assert (await client.next_of("subscribed"))["channel"] == "private-team"


# -- 5. event names -------------------------------------------------------------


@ensureDeferred
async def test_event_names_cannot_forge_sse_fields(start_server):
    """An event name with a line break is refused over REST and as a client
    event, so it cannot forge events or ids in SSE streams; names real apps
    use (Laravel's) still go through."""
    server = await start_server(client_events=True)
    forged = "client-x\n\nid: forged\nevent: pushd:close"
    code, body = await publish_raw(
        server, "news", json.dumps({"event": forged, "data": 1}).encode()
    )
    assert (code, body["error"]) == (400, "invalid_field")
    for name in ("a b", "tab\there", "caf\u00e9", "x" * 201, "nul\x00"):
        code, body = await publish_raw(
            server, "news", json.dumps({"event": name, "data": 1}).encode()
        )
        assert code == 400, name
    sender = await server.connected()
    auth = channel_signature(SECRET, sender.connection_id, "private-chat")
    sender.send({"type": "subscribe", "channel": "private-chat", "auth": auth})
    await sender.next_of("subscribed")
    sender.send(
        {"type": "client_event", "channel": "private-chat", "event": forged, "data": 1}
    )
    assert (await sender.next_of("error"))["code"] == "invalid_field"
    reader = await server.connected()
    await reader.subscribe("orders")
    for name in ("App\\Events\\OrderShipped", ".order.shipped", "client-typing"):
        code, _ = await publish_raw(
            server, "orders", json.dumps({"event": name, "data": name}).encode()
        )
        assert code == 202
        assert (await reader.next_of("message"))["event"] == name


def test_sse_writer_refuses_line_breaks_in_any_field():
    """Whatever upstream checked, the SSE writer never writes CR or LF
    inside a field."""
    from pushd.transports.sse import _sse_body

    assert _sse_body(b'{"a":1}', "ok") == b'event: ok\ndata: {"a":1}\n\n'
    for event, data in (("a\nb", b"{}"), ("a\rb", b"{}"), ("ok", b"{}\nid: x")):
        with pytest.raises(ValueError):
            _sse_body(data, event)


# -- 6. lone surrogates, NaN, Infinity ---------------------------------------------


@ensureDeferred
async def test_lone_surrogates_and_nan_are_refused_at_the_door(
    start_server, log_events
):
    """Data pushd could never write out (a lone surrogate, NaN, Infinity) is
    refused with 400 / an error frame; the channel keeps working for its
    subscribers, history included."""
    server = await start_server(
        client_events=True, history=(HistoryRule("h-*", Retention(10, 60)),)
    )
    reader = await server.connected()
    await reader.subscribe("h-1")
    for raw in (
        b'{"event": "e", "data": "\\ud800"}',
        b'{"event": "e", "data": {"\\udfff": 1}}',
        b'{"event": "e", "data": NaN}',
        b'{"event": "e", "data": [Infinity]}',
        b'{"event": "e", "data": -Infinity}',
    ):
        code, body = await publish_raw(server, "h-1", raw)
        assert (code, body["error"]) == (400, "invalid_json"), raw
    assert (
        await publish_raw(server, "h-1", b'{"event": "e", "data": "\\ud83d\\ude00"}')
    )[0] == 202
    assert (await reader.next_of("message"))["data"] == "\U0001f600"
    code, body = await post(
        server, "/api/messages", b'{"channels": ["h-1"], "event": "e", "data": NaN}'
    )
    assert code == 400
    response = await treq.get(
        server.url + "/api/channels/h-1/history", headers=server.auth()
    )
    assert response.code == 200
    assert [m["data"] for m in (await response.json())["messages"]] == ["\U0001f600"]
    sender = await server.connected()
    auth = channel_signature(SECRET, sender.connection_id, "private-c")
    sender.send({"type": "subscribe", "channel": "private-c", "auth": auth})
    await sender.next_of("subscribed")
    sender.proto.sendMessage(
        b'{"type": "client_event", "channel": "private-c", '
        b'"event": "client-x", "data": NaN}'
    )
    assert (await sender.next_of("error"))["code"] == "invalid_json"
    sender.proto.sendMessage(
        b'{"type": "client_event", "channel": "private-c", '
        b'"event": "client-x", "data": "\\udc00"}'
    )
    assert (await sender.next_of("error"))["code"] == "invalid_json"
    with pytest.raises(InvalidJSON):
        await server.hub.publish(server.app, ["h-1"], "e", float("nan"))
    assert tracebacks(log_events) == []


# -- 7. deep JSON -------------------------------------------------------------------


@ensureDeferred
async def test_deeply_nested_json_is_refused_without_a_traceback(
    start_server, log_events
):
    """5,000 nested arrays: an invalid_json error frame (the connection stays
    usable) and a 400 over REST, and nothing in the log but the refusal."""
    server = await start_server()
    client = await server.connected()
    deep = b"[" * 5000 + b"]" * 5000
    client.proto.sendMessage(b'{"type": "ping", "x": ' + deep + b"}")
    assert (await client.next_of("error"))["code"] == "invalid_json"
    client.proto.sendMessage(b"[" * 65 + b"]" * 65)  # one past max-json-depth
    assert (await client.next_of("error"))["code"] == "invalid_json"
    client.send({"type": "ping", "ref": 1})
    assert (await client.next_of("pong"))["ref"] == 1
    code, body = await publish_raw(
        server, "news", b'{"event": "e", "data": ' + deep + b"}"
    )
    assert (code, body["error"]) == (400, "invalid_json")
    nested = b'{"event": "e", "data": ' + b"[" * 63 + b"]" * 63 + b"}"
    assert (await publish_raw(server, "news", nested))[0] == 202
    assert tracebacks(log_events) == []


# -- 8. output other than messages ----------------------------------------------------


@ensureDeferred
async def test_replies_count_against_the_send_queue(start_server):
    """A client that never reads but keeps asking for replies (pongs with a
    large ref) is dropped once send-queue-bytes of them are queued; a
    reading client is unaffected."""
    server = await start_server(
        send_queue_bytes=64 * 1024,
        max_ref_bytes=60_000,
        client_rate=10_000,
        client_burst=10_000,
    )
    reader = await server.connected()
    await reader.subscribe("news")
    greedy = await server.connected()
    greedy.proto.transport.pauseProducing()  # stop reading
    ref = "r" * 50_000
    for _ in range(400):  # 20 MB of pongs: more than loopback buffers hold
        greedy.send({"type": "ping", "ref": ref})
        if greedy.closed.called or len(server.hub.sessions) < 2:
            break
    await server.wait_sessions(1, timeout=10)
    await server.hub.publish(server.app, ["news"], "e", "still here")
    assert (await reader.next_of("message"))["data"] == "still here"
    greedy.proto.transport.resumeProducing()
    await greedy.wait_closed()


@ensureDeferred
async def test_ref_is_capped(start_server):
    """A ref larger than max-ref-bytes is refused, not echoed."""
    server = await start_server(max_ref_bytes=100)
    client = await server.connected()
    client.send({"type": "ping", "ref": "x" * 200})
    error = await client.next_of("error")
    assert (error["code"], error.get("orig"), "ref" in error) == (
        "invalid_field",
        "ping",
        False,
    )
    client.send({"type": "ping", "ref": {"n": 1}})
    assert (await client.next_of("pong"))["ref"] == {"n": 1}


class _StalledBackend(MemoryBackend):
    """Subscribing to ``stall-*`` waits until the test releases it, as a
    Redis subscribe does while Redis is slow."""

    def __init__(self) -> None:
        super().__init__()
        self.stalled: list[Deferred] = []

    def subscribe(self, channel, deliver):
        if "/stall-" not in channel:
            return super().subscribe(channel, deliver)
        d: Deferred = Deferred()
        self.stalled.append(d)
        d.addCallback(
            lambda _: super(_StalledBackend, self).subscribe(channel, deliver)
        )
        return d


@ensureDeferred
async def test_frames_waiting_behind_a_slow_backend_are_bounded(start_server):
    """A client that keeps sending while its subscribe waits on the backend
    cannot make the server hold its frames without bound (64 KB frames of
    nested lists parse to megabytes each): past max-pending-bytes each frame
    is refused with rate_limited, and once the backend answers the frames
    that waited are handled in order."""
    backend = _StalledBackend()
    server = await start_server(
        backend=backend,
        max_pending_bytes=200_000,
        client_rate=10_000,
        client_burst=10_000,
    )
    client = await server.connected()
    client.send({"type": "subscribe", "channel": "stall-1"})
    await eventually(lambda: len(backend.stalled) == 1)
    junk = b'{"type": "ping", "x": [' + b"[]," * 20_000 + b"[]]}"
    for _ in range(10):  # 600 KB: three fit, seven must be refused
        client.proto.sendMessage(junk)
    for _ in range(7):
        assert (await client.next_of("error"))["code"] == "rate_limited"
    session = server.hub.sessions[client.connection_id]
    assert session._pending_bytes <= 200_000
    client.send({"type": "ping", "ref": "last"})
    backend.stalled[0].callback(None)
    assert (await client.next_of("subscribed"))["channel"] == "stall-1"
    for _ in range(3):
        assert "ref" not in await client.next_of("pong")
    assert (await client.next_of("pong"))["ref"] == "last"


# -- 10. listen backlog -------------------------------------------------------------


def test_listeners_get_a_large_backlog_unless_the_endpoint_sets_one():
    """Every listener gets listen-backlog; an endpoint's own backlog= wins."""
    from pushd.tap import with_backlog

    assert with_backlog("tcp:8000", 4096) == "tcp:8000:backlog=4096"
    assert with_backlog("tcp:8000:backlog=10", 4096) == "tcp:8000:backlog=10"
    assert with_backlog("unix:/run/p.sock", 99) == "unix:/run/p.sock:backlog=99"
    assert with_backlog("systemd:domain=INET:index=0", 99).endswith("index=0")


@ensureDeferred
async def test_running_listeners_use_the_backlog(tmp_path):
    """The ports pushd really opens listen with the configured backlog."""
    from twisted.internet import reactor

    from pushd.tap import Options, makeService

    options = Options()
    options.parseOptions(
        [
            "--api-secret",
            SECRET,
            "--listen-backlog",
            "777",
            "-l",
            "tcp:0:interface=127.0.0.1",
            "-l",
            "tcp:0:interface=127.0.0.1:backlog=12",
        ]
    )
    service = makeService(options, reactor)
    service.startService()
    try:
        results = await service.listening()
        assert sorted(port.backlog for _, port in results) == [12, 777]
    finally:
        await service.stopService()


# -- 12. hub leak on a failing backend ------------------------------------------------


class _FailingBackend(MemoryBackend):
    """history, and joining presence channels, fail while ``broken`` is set."""

    broken = True

    def history(self, *args, **kwargs):
        if self.broken:
            raise BackendUnavailable("history store down")
        return super().history(*args, **kwargs)

    def join(self, channel, *args, **kwargs):
        if self.broken and "/presence-" in channel:
            from twisted.internet.defer import fail

            return fail(BackendUnavailable("membership store down"))
        return super().join(channel, *args, **kwargs)


@ensureDeferred
async def test_failed_subscribe_leaves_nothing_behind(start_server):
    """When history or membership fail during a subscribe the client gets
    backend_unavailable, and nothing stays held: no session collecting every
    later message, no backend subscription nobody uses; a retry once the
    backend is back works normally."""
    from pushd.auth import make_user_token

    backend = _FailingBackend()
    server = await start_server(
        backend=backend, history=(HistoryRule("h-*", Retention(10, 60)),)
    )
    client = await server.connected("?token=" + make_user_token(SECRET, "ann"))
    await eventually(lambda: "default/personal-ann" in backend._subscribers)
    client.send({"type": "subscribe", "channel": "h-1"})
    assert (await client.next_of("error"))["code"] == "backend_unavailable"
    auth = channel_signature(SECRET, client.connection_id, "presence-room")
    client.send({"type": "subscribe", "channel": "presence-room", "auth": auth})
    assert (await client.next_of("error"))["code"] == "backend_unavailable"
    assert set(server.hub._channels) == {"default/personal-ann"}
    assert set(backend._subscribers) == {"default/personal-ann"}
    session = server.hub.sessions[client.connection_id]
    assert set(session.identities) == session.subscriptions == {"personal-ann"}
    backend.broken = False
    client.send({"type": "subscribe", "channel": "h-1"})
    assert (await client.next_of("subscribed"))["channel"] == "h-1"
    await server.hub.publish(server.app, ["h-1"], "e", 1)
    assert (await client.next_of("message"))["data"] == 1
    client.assert_nothing_queued()


# -- 13. api-secret warning -----------------------------------------------------------


def test_no_generated_secret_warning_when_apps_are_configured(tmp_path, log_events):
    """With `apps` configured no api-secret is needed, and none is generated
    or logged; without either, one is."""
    from pushd.tap import Options, makeService

    path = tmp_path / "pushd.yaml"
    path.write_text(
        "apps:\n  - {id: a1, key: key-aaaaaaaa, secret: secret-aaaaaaaa}\n"
        "listen: ['tcp:0:interface=127.0.0.1']\n"
    )
    options = Options()
    options.parseOptions(["--config", str(path)])
    makeService(options)
    assert not [e for e in log_events if "generated one" in e.get("log_format", "")]
    options = Options()
    options.parseOptions(["-l", "tcp:0:interface=127.0.0.1"])
    makeService(options)
    assert [e for e in log_events if "generated one" in e.get("log_format", "")]


# -- 9. REST bodies and slow clients --------------------------------------------------


class _Raw(Protocol):
    """A raw TCP client: records what the server answers and when it closes."""

    def __init__(self, first: bytes = b""):
        self.first, self.received, self.done = first, b"", Deferred()

    def connectionMade(self):
        if self.first:
            self.transport.write(self.first)

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason):
        self.done.callback(self.received)


async def raw_client(server, first: bytes = b"") -> _Raw:
    proto = _Raw(first)
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", server.port), proto)
    return proto


async def answer_within(proto: _Raw, seconds: float) -> bytes:
    d = Deferred()
    proto.done.addBoth(lambda r: (d.callback(r) if not d.called else None, r)[1])
    d.addTimeout(seconds, reactor)
    return await d


@ensureDeferred
async def test_declared_oversized_body_is_refused_before_it_is_sent(start_server):
    """A request declaring a 50 MB body gets 413 at once, without the server
    waiting for (or buffering) any of it."""
    server = await start_server(max_message_size=1000)
    proto = await raw_client(
        server,
        b"POST /api/channels/news/messages HTTP/1.1\r\nHost: x\r\n"
        b"Authorization: Bearer " + SECRET.encode() + b"\r\n"
        b"Content-Type: application/json\r\nContent-Length: 52428800\r\n\r\n",
    )
    reply = await answer_within(proto, 3)
    assert reply.startswith(b"HTTP/1.1 413 ")
    assert b'"body_too_large"' in reply


@ensureDeferred
async def test_trickled_headers_idle_connections_and_bodies_time_out(start_server):
    """Headers trickled a byte at a time, a connection that sends nothing,
    and a body that never completes are each answered 408 and closed at
    their deadline, while a normal request on a fresh connection works."""
    from twisted.internet.task import LoopingCall

    server = await start_server(http_header_timeout=0.5, http_body_timeout=0.5)
    idle = await raw_client(server)
    trickle = await raw_client(server, b"GET /health HTTP/1.1\r\n")
    drip = LoopingCall(lambda: trickle.transport.write(b"X"))
    drip.start(0.05)
    body = await raw_client(
        server,
        b"POST /api/channels/news/messages HTTP/1.1\r\nHost: x\r\n"
        b"Authorization: Bearer " + SECRET.encode() + b"\r\n"
        b"Content-Length: 100\r\n\r\n{",
    )
    drip_body = LoopingCall(lambda: body.transport.write(b" "))
    drip_body.start(0.05)
    try:
        for proto in (idle, trickle, body):
            reply = await answer_within(proto, 5)
            assert reply.startswith(b"HTTP/1.1 408 "), reply
            assert b'"request_timeout"' in reply
    finally:
        drip.stop()
        drip_body.stop()
    response = await treq.get(server.url + "/health")
    assert response.code == 200


@ensureDeferred
async def test_long_lived_responses_outlive_the_request_deadlines(start_server):
    """Deadlines cover reading a request, not answering it: an SSE stream
    stays open well past them."""
    server = await start_server(http_header_timeout=0.2, sse_heartbeat=0.1)
    proto = await raw_client(
        server,
        b"GET /sse?channel=news HTTP/1.1\r\nHost: x\r\n"
        b"Accept: text/event-stream\r\n\r\n",
    )
    await eventually(lambda: proto.received.count(b": keepalive") >= 6)
    assert not proto.done.called
    proto.transport.loseConnection()
    await proto.done


# -- 4. history replay applies targeting ------------------------------------------------


@pytest_twisted.async_yield_fixture(params=["memory", "redis", "sqlite"])
async def any_backend(request, tmp_path):
    """Memory, Redis (fresh redis-server) or SQLite (fresh file)."""
    if request.param == "memory":
        yield lambda: None
    elif request.param == "sqlite":
        from pushd.backends.sqlite import SqliteBackend

        yield lambda: SqliteBackend(reactor, str(tmp_path / "h.db"))
    else:
        from pushd.backends.redis import RedisBackend

        redis = request.getfixturevalue("redis_server")
        yield lambda: RedisBackend(reactor, port=redis.port)
        # Stop the pushd while its Redis is still there (see backend_for).
        await request.getfixturevalue("start_server").stop_all()


@ensureDeferred
async def test_history_replay_keeps_users_and_exclude(start_server, any_backend):
    """A message for ann only is not replayed to bob when he subscribes with
    `since`, and a message excluding a connection is not replayed to it;
    everyone still gets what was for everyone, on every backend."""
    from pushd.auth import make_user_token

    server = await start_server(
        backend=any_backend(), history=(HistoryRule("h-*", Retention(10, 60)),)
    )
    ann = await server.connected("?token=" + make_user_token(SECRET, "ann"))
    for data, extra in (
        ("all", {}),
        ("ann only", {"users": ["ann"]}),
        ("not ann's tab", {"exclude": ann.connection_id}),
    ):
        code, _ = await post(
            server,
            "/api/channels/h-1/messages",
            json.dumps({"event": "e", "data": data, **extra}).encode(),
        )
        assert code == 202
    bob = await server.connected("?token=" + make_user_token(SECRET, "bob"))
    for client, expected in (
        (bob, ["all", "not ann's tab"]),
        (ann, ["all", "ann only"]),
    ):
        client.send({"type": "subscribe", "channel": "h-1", "since": {"offset": 0}})
        reply = await client.next_of("subscribed")
        assert reply["recovered"] is True
        got = [(await client.next_of("message"))["data"] for _ in expected]
        assert got == expected
        await server.hub.publish(server.app, ["h-1"], "e", "live")
        assert (await client.next_of("message"))["data"] == "live"


# -- 11. SQLite faults ------------------------------------------------------------------


@ensureDeferred
async def test_sqlite_survives_its_shared_memory_file_being_truncated(
    pushd_process, tmp_path
):
    """WAL's -shm file truncated under a running pushd used to kill it with
    SIGBUS and nothing logged; now there is no such file to lose, and
    publishing and history go on."""
    import os

    db = tmp_path / "history.db"
    config = tmp_path / "pushd.yaml"
    config.write_text(
        "api-secret: %s\nhistory:\n  - {channel: 'h-*', size: 10, ttl: 60}\n" % SECRET
    )
    node = pushd_process(
        "-c",
        str(config),
        "-l",
        "tcp:0:interface=127.0.0.1",
        "--backend",
        "sqlite:path=%s" % db,
    )
    url = "http://127.0.0.1:%d/api/channels/h-1" % await node.port()
    auth = {"Authorization": "Bearer " + SECRET}
    for n in range(3):
        response = await treq.post(
            url + "/messages", json={"event": "e", "data": n}, headers=auth
        )
        assert response.code == 202
        shm = str(db) + "-shm"
        if os.path.exists(shm):
            os.truncate(shm, 0)  # the fault: disk full, or someone's cleanup
    response = await treq.get(url + "/history", headers=auth)
    assert [m["data"] for m in (await response.json())["messages"]] == [0, 1, 2]
    assert node.proc.poll() is None


@ensureDeferred
async def test_sqlite_startup_errors_name_the_file(pushd_process, tmp_path):
    """A database pushd cannot open, or one another pushd is using, stops the
    server at start with exit status 1 and a log line naming the file."""
    missing = tmp_path / "no-such-dir" / "h.db"
    node = pushd_process(
        "-l",
        "tcp:0:interface=127.0.0.1",
        "--backend",
        "sqlite:path=%s" % missing,
        name="missing",
    )
    assert await node.wait_exit() == 1
    assert "cannot use %s" % missing in node.log()
    db = tmp_path / "shared.db"
    first = pushd_process(
        "-l",
        "tcp:0:interface=127.0.0.1",
        "--backend",
        "sqlite:path=%s" % db,
        name="first",
    )
    await first.port()
    second = pushd_process(
        "-l",
        "tcp:0:interface=127.0.0.1",
        "--backend",
        "sqlite:path=%s" % db,
        name="second",
    )
    assert await second.wait_exit() == 1
    assert "cannot use %s: database is locked" % db in second.log()
    assert first.proc.poll() is None


# -- 2. replay of signed REST requests ---------------------------------------------------


def signed_headers(timestamp: str, path: str, body: bytes) -> dict:
    from pushd.auth import request_text, sign

    return {
        "Content-Type": "application/json",
        "X-Pushd-Timestamp": timestamp,
        "X-Pushd-Signature": sign(
            SECRET, request_text(b"POST", path.encode(), timestamp, body)
        ),
    }


@ensureDeferred
async def test_signed_request_replayed_on_another_node_is_refused(
    start_server, redis_server
):
    """A signed request accepted by one node is refused as a replay by every
    other node sharing the Redis backend."""
    import time

    from pushd.backends.redis import RedisBackend

    one = await start_server(backend=RedisBackend(reactor, port=redis_server.port))
    two = await start_server(backend=RedisBackend(reactor, port=redis_server.port))
    path = "/api/channels/news/messages"
    body = b'{"event": "e", "data": 1}'
    headers = signed_headers("%d" % time.time(), path, body)
    try:
        first = await treq.post(one.url + path, data=body, headers=headers)
        assert first.code == 202
        for server in (two, one):
            again = await treq.post(server.url + path, data=body, headers=headers)
            assert again.code == 401
            assert "replay" in (await again.json())["message"]
    finally:
        await start_server.stop_all()


@ensureDeferred
async def test_signed_request_timestamps_are_strict(start_server):
    """Timestamps that are not plain Unix seconds (nan, inf, exponents,
    signs) are refused even when correctly signed."""
    server = await start_server()
    path = "/api/channels/news/messages"
    body = b'{"event": "e", "data": 1}'
    for timestamp in ("nan", "NaN", "inf", "1e9", "-5", " 1", "0x10", ""):
        response = await treq.post(
            server.url + path, data=body, headers=signed_headers(timestamp, path, body)
        )
        assert response.code == 401, timestamp
        assert (await response.json())["error"] == "unauthorized"


# -- 3. SSE connection ids are issued by the server -----------------------------------------


async def post_frame(server, hello: dict, frame: dict, key=None, secret=None):
    body = {
        "connection_id": hello["connection_id"],
        "stream_secret": secret or hello["stream_secret"],
        "frame": frame,
    }
    if key is not None:
        body["key"] = key
    response = await treq.post(server.url + "/sse/frames", json=body)
    return response.code, await response.json()


@ensureDeferred
async def test_sse_cannot_take_over_another_connections_id(start_server):
    """A closed WebSocket's id and channel signature, replayed in an SSE
    query string, no longer open its private channel: the server issues SSE
    ids (random, never the proposed one) and signatures in URLs are not
    read."""
    from test_sse import open_stream

    server = await start_server()
    victim = await server.connected()
    signature = channel_signature(SECRET, victim.connection_id, "private-room")
    victim.send({"type": "subscribe", "channel": "private-room", "auth": signature})
    await victim.next_of("subscribed")
    await victim.close()
    await server.wait_sessions(0)
    stream = await open_stream(
        server,
        "connection_id=%s&channel=private-room&auth=private-room:%s"
        % (victim.connection_id, signature),
    )
    hello = (await stream.next_of("pushd:connected"))["data"]
    assert hello["connection_id"] != victim.connection_id
    assert len(hello["connection_id"]) >= 22  # 128 random bits
    refused = await stream.next_of("pushd:error")
    assert (refused["data"]["code"], refused["data"]["channel"]) == (
        "forbidden",
        "private-room",
    )
    await server.hub.publish(server.app, ["private-room"], "e", "secret")
    await server.hub.publish(server.app, ["news"], "e", "marker")
    assert server.hub.local_subscribers("private-room") == 0


@ensureDeferred
async def test_sse_adds_private_channels_by_post_with_its_stream_secret(
    start_server,
):
    """An SSE client subscribes to private channels with POST /sse/frames:
    the app signs the server-issued id, the stream secret authorizes the
    POST, replies and messages arrive on the stream; a wrong secret or a
    closed stream is refused."""
    from test_sse import close, open_stream

    server = await start_server()
    stream = await open_stream(server, "channel=news")
    hello = (await stream.next_of("pushd:connected"))["data"]
    await stream.next_of("pushd:subscribed")
    auth = channel_signature(SECRET, hello["connection_id"], "private-room")
    frame = {"type": "subscribe", "channel": "private-room", "auth": auth}
    assert await post_frame(server, hello, frame) == (202, {"accepted": True})
    reply = await stream.next_of("pushd:subscribed")
    assert reply["data"]["channel"] == "private-room"
    await server.hub.publish(server.app, ["private-room"], "e", "for the stream")
    assert (await stream.next())["data"]["data"] == "for the stream"
    code, body = await post_frame(server, hello, frame, secret="x" * 64)
    assert (code, body["error"]) == (401, "unauthorized")
    other = await open_stream(server, "channel=news")
    other_hello = (await other.next_of("pushd:connected"))["data"]
    code, _ = await post_frame(
        server, hello, frame, secret=other_hello["stream_secret"]
    )
    assert code == 401  # one stream's secret does not drive another
    await close(server, stream)
    await server.wait_sessions(1)
    code, body = await post_frame(server, hello, {"type": "ping"})
    assert (code, body["error"]) == (404, "not_found")


@ensureDeferred
async def test_sse_frames_reach_the_stream_from_another_node(
    start_server, redis_server
):
    """Behind a load balancer the POST may reach another node: the frame
    travels to the node holding the stream; ids are unique across nodes."""
    from test_sse import open_stream

    from pushd.backends.redis import RedisBackend

    one = await start_server(backend=RedisBackend(reactor, port=redis_server.port))
    two = await start_server(backend=RedisBackend(reactor, port=redis_server.port))
    try:
        stream = await open_stream(one, "channel=news")
        hello = (await stream.next_of("pushd:connected"))["data"]
        await stream.next_of("pushd:subscribed")
        await eventually(lambda: bool(one.hub._streams))
        assert await two.hub.connection_live(hello["connection_id"])
        auth = channel_signature(SECRET, hello["connection_id"], "private-room")
        frame = {"type": "subscribe", "channel": "private-room", "auth": auth}
        assert (await post_frame(two, hello, frame))[0] == 202
        assert (await stream.next_of("pushd:subscribed"))["data"]["channel"] == (
            "private-room"
        )
        await two.hub.publish(two.app, ["private-room"], "e", "across nodes")
        assert (await stream.next())["data"]["data"] == "across nodes"
    finally:
        await start_server.stop_all()
