"""The front door (pushd.frontdoor): publishes over keep-alive HTTP served
without Twisted Web, with the answers Twisted Web gives.

Most tests are differential: the same bytes go to a pushd with the front door
and to one without it (``http_fast_path=False``, every request through
Twisted Web), over real sockets, and the answers must be the same, byte for
byte once the Date header and the random message ids are masked.
"""

from __future__ import annotations

import io
import json
import re
import time

import pytest_twisted
from clients import TIMEOUT
from conftest import SECRET
from pytest_twisted import ensureDeferred
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol

from pushd.auth import request_text, sign
from pushd.testing import eventually

AUTH = b"Authorization: Bearer " + SECRET.encode() + b"\r\n"


def publish(channel: bytes = b"news", body: bytes | None = None, extra=b"") -> bytes:
    if body is None:
        body = b'{"event":"tick","data":{"n":1}}'
    return (
        b"POST /api/channels/" + channel + b"/messages HTTP/1.1\r\nHost: x\r\n" + AUTH
        + b"Content-Type: application/json\r\n" + extra
        + b"Content-Length: %d\r\n\r\n" % len(body) + body
    )  # fmt: skip


def post(path: bytes, body: bytes) -> bytes:
    return (
        b"POST " + path + b" HTTP/1.1\r\nHost: x\r\n" + AUTH
        + b"Content-Length: %d\r\n\r\n" % len(body) + body
    )  # fmt: skip


CLOSE = b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


class _Raw(Protocol):
    """Records every byte the server sends until it closes."""

    def __init__(self) -> None:
        self.received, self.done = b"", Deferred()

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason):
        self.done.callback(self.received)


async def connect(server) -> _Raw:
    proto = _Raw()
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", server.port), proto)
    return proto


async def exchange(server, *parts: bytes, timeout: float = TIMEOUT) -> bytes:
    """Send ``parts`` one write after another (each after the previous
    answers arrived when ``parts`` has several), return all the server
    sent until it closed."""
    proto = await connect(server)
    for i, part in enumerate(parts):
        if i:
            seen = len(proto.received)
            try:
                await eventually(
                    lambda s=seen: len(proto.received) > s or proto.done.called
                )
            except AssertionError:
                raise AssertionError("no answer to %r" % parts[i - 1]) from None
        proto.transport.write(part)
    d = Deferred()
    proto.done.addBoth(lambda r: (d.callback(r) if not d.called else None, r)[1])
    d.addTimeout(timeout, reactor)
    return await d


def masked(reply: bytes) -> bytes:
    reply = re.sub(rb"Date: [^\r]*\r\n", b"Date: -\r\n", reply)
    return re.sub(rb'"id":"[0-9a-f]+"', b'"id":"-"', reply)


def statuses(reply: bytes) -> list[int]:
    return [int(s) for s in re.findall(rb"HTTP/1\.[01] (\d{3}) ", reply)]


@pytest_twisted.async_yield_fixture
async def pair(start_server):
    """A pushd with the front door, and one without (Twisted Web only)."""
    fast = await start_server()
    slow = await start_server(http_fast_path=False)
    handed = []
    original = fast.site.twisted_protocol
    fast.site.twisted_protocol = lambda addr: handed.append(addr) or original(addr)
    fast.handed = handed
    yield fast, slow


async def same_answers(pair, *parts: bytes) -> bytes:
    fast, slow = pair
    answers = [masked(await exchange(s, *parts)) for s in (fast, slow)]
    assert answers[0] == answers[1]
    return answers[0]


@ensureDeferred
async def test_keep_alive_publishes_answered_as_twisted_web_does(pair):
    """A publisher's keep-alive connection gets the same status lines,
    headers and JSON for accepted and refused publishes (bad JSON, wrong or
    missing secret, bad channel, missing data, empty body), one request at
    a time, and the front door serves all of them itself."""
    parts = [
        publish(),
        publish(body=b"{not json"),
        publish(channel=b"a" * 300),
        publish(body=b'{"event":"x"}'),
        publish(body=b""),
        publish().replace(SECRET.encode(), b"wrong-secret"),
        publish().replace(AUTH, b""),
        post(b"/api/messages", b'{"channels":["a","b"],"event":"e","data":1}'),
        post(b"/api/batch", b'{"batch":[{"channel":"a","data":1},{"data":2}]}'),
        publish(extra=b"Connection: close\r\n"),
    ]  # fmt: skip
    reply = await same_answers(pair, *parts)
    assert statuses(reply) == [202, 400, 400, 400, 400, 403, 401, 202, 207, 202]
    assert reply.count(b"Content-Type: application/json\r\n") == len(parts)
    assert reply.count(b"Cache-Control: no-store\r\n") == len(parts)
    assert b"Connection: close\r\n" in reply.rsplit(b"HTTP/1.1 ", 1)[1]
    fast, _ = pair
    assert fast.handed == [], "the front door handed a publish to Twisted Web"


@ensureDeferred
async def test_pipelined_requests_answered_in_order(pair):
    """Requests sent back to back in one write (pipelining), publishes and
    others mixed, are all answered, in order, as Twisted Web answers them."""
    parts = publish() * 3 + b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n" + publish()
    reply = await same_answers(pair, parts + CLOSE)
    assert statuses(reply) == [202, 202, 202, 200, 202, 200]


@ensureDeferred
async def test_publish_then_other_requests_on_one_connection(pair):
    """After publishes, a request for another route on the same connection
    (handed to Twisted Web) is answered, and so are publishes after it;
    the other way round too."""
    health = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    reply = await same_answers(pair, publish(), health, publish(), CLOSE)
    assert statuses(reply) == [202, 200, 202, 200]
    reply = await same_answers(pair, health, publish(), publish(), CLOSE)
    assert statuses(reply) == [200, 202, 202, 200]
    fast, _ = pair
    assert len(fast.handed) == 2


@ensureDeferred
async def test_http_1_0_and_connection_close(pair):
    """An HTTP/1.0 publish is answered in HTTP/1.0 and the connection closed
    (keep-alive or not, as Twisted Web does); HTTP/1.1 with Connection:
    close gets ``Connection: close`` and a close; what follows is ignored."""
    old = publish().replace(b"HTTP/1.1", b"HTTP/1.0")
    reply = await same_answers(pair, old + publish())
    assert reply.startswith(b"HTTP/1.0 202 Accepted\r\n")
    assert statuses(reply) == [202]
    alive = publish(extra=b"Connection: keep-alive\r\n").replace(b"1.1", b"1.0")
    assert statuses(await same_answers(pair, alive)) == [202]
    close = publish(extra=b"Connection: close\r\n")
    reply = await same_answers(pair, close + publish())
    assert statuses(reply) == [202] and b"Connection: close\r\n" in reply


@ensureDeferred
async def test_malformed_and_unusual_requests_answered_as_before(pair):
    """A bad request line, headers over Twisted Web's limit, a body over
    max-message-size, a chunked body, Expect: 100-continue, a duplicated
    Content-Length, a query string, another method, a leading empty line
    and a percent-encoded channel each get Twisted Web's own answer."""
    cases = [
        b"NOT A REQUEST\r\n\r\n",
        b"POST /api/channels/a/messages HTTP/1.1\r\nX-Big: "
        + b"y" * 20000 + b"\r\n\r\n",
        publish(body=b"x" * 70000),
        b"POST /api/channels/a/messages HTTP/1.1\r\nHost: x\r\n" + AUTH
        + b"Transfer-Encoding: chunked\r\n\r\n"
        + b'1c\r\n{"event":"tick","data":"hi"}\r\n0\r\n\r\n' + CLOSE,
        publish(extra=b"Expect: 100-continue\r\n") + CLOSE,
        publish(extra=b"Content-Length: 5\r\n") + CLOSE,
        publish().replace(b"/messages", b"/messages?x=1") + CLOSE,
        publish().replace(b"POST", b"PUT") + CLOSE,
        b"\r\n" + publish() + CLOSE,
        publish(channel=b"bad%20name") + CLOSE,
    ]  # fmt: skip
    replies = [await same_answers(pair, case) for case in cases]
    assert [statuses(r) for r in replies] == [
        [400],
        [],  # Twisted Web closes without an answer
        [413],
        [202, 200],
        [100, 202, 200],
        [400],
        [202, 200],
        [405, 200],
        [202, 200],
        [400, 200],
    ]


@ensureDeferred
async def test_signed_requests_and_idempotency_keys(pair):
    """Signed requests (X-Pushd-Signature) and idempotency keys work on the
    front door as on Twisted Web: the second use of a signature is refused,
    a repeated key gets the first message's id."""
    body = b'{"event":"e","data":1}'
    uri = b"/api/channels/news/messages"
    ts = "%.6f" % time.time()
    signed = (
        b"POST " + uri + b" HTTP/1.1\r\nHost: x\r\nX-Pushd-Timestamp: "
        + ts.encode() + b"\r\nX-Pushd-Signature: "
        + sign(SECRET, request_text(b"POST", uri, ts, body)).encode()
        + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    )  # fmt: skip
    key = b"Idempotency-Key: order-17\r\n"
    for server in pair:
        reply = await exchange(server, signed, signed, publish(extra=key) * 2 + CLOSE)
        assert statuses(reply) == [202, 401, 202, 202, 200]
        assert b"already used" in reply
        ids = re.findall(rb'"id":"([0-9a-f]+)"', reply)
        assert ids[1] == ids[2]


@ensureDeferred
async def test_subscribers_get_what_the_front_door_published(pair):
    """Messages published through the front door reach WebSocket
    subscribers, in order."""
    fast, _ = pair
    client = await fast.connected()
    await client.subscribe("news")
    bodies = [b'{"event":"tick","data":%d}' % n for n in range(5)]
    reply = await exchange(fast, b"".join(publish(body=b) for b in bodies) + CLOSE)
    assert statuses(reply) == [202] * 5 + [200]
    got = [(await client.next_of("message"))["data"] for _ in bodies]
    assert got == list(range(5))


@ensureDeferred
async def test_slow_headers_and_bodies_after_a_publish_time_out(start_server):
    """On a connection that already published, a request whose headers (or
    body) do not arrive within http-header-timeout (http-body-timeout) is
    answered 408 and closed, as on a fresh connection."""
    server = await start_server(http_header_timeout=0.3, http_body_timeout=0.3)
    for partial in (b"POST /api/chan", publish()[:-3]):
        started = time.monotonic()
        reply = await exchange(server, publish(), partial)
        assert statuses(reply) == [202, 408], reply
        assert b'"request_timeout"' in reply
        assert time.monotonic() - started < 3


@ensureDeferred
async def test_idle_keep_alive_connections_time_out(pair):
    """A publisher's keep-alive connection left idle past the site's idle
    timeout is closed, as Twisted Web closes its own."""
    for server in pair:
        server.site.timeOut = 0.3
        started = time.monotonic()
        reply = await exchange(server, publish())
        assert statuses(reply) == [202]
        assert 0.3 <= time.monotonic() - started < 3


@ensureDeferred
async def test_a_flood_of_pipelined_publishes_is_read_as_answers_are(start_server):
    """A client that pipelines thousands of publishes without reading the
    answers gets every answer, in order, once it reads (the server stops
    reading while its answers are not taken)."""
    server = await start_server()
    proto = await connect(server)
    proto.transport.pauseProducing()  # read nothing for now
    count = 3000
    proto.transport.write(publish() * count + CLOSE)
    await eventually(lambda: True)
    proto.transport.resumeProducing()
    reply = await proto.done
    assert statuses(reply) == [202] * count + [200]


@ensureDeferred
async def test_publishes_through_redis_pipelined(start_server, redis_server):
    """On the Redis backend (each publish waits for Redis), pipelined
    publishes are answered in order and delivered in order; with Redis
    gone, a publish is answered 503 backend_unavailable."""
    from pushd.backends.redis import RedisBackend

    server = await start_server(RedisBackend(reactor, port=redis_server.port))
    client = await server.connected()
    await client.subscribe("news")
    bodies = [b'{"event":"tick","data":%d}' % n for n in range(20)]
    reply = await exchange(server, b"".join(publish(body=b) for b in bodies) + CLOSE)
    assert statuses(reply) == [202] * 20 + [200]
    got = [(await client.next_of("message"))["data"] for _ in bodies]
    assert got == list(range(20))
    # A publisher that leaves before its answer costs nobody else anything.
    proto = await connect(server)
    proto.transport.write(publish(body=b'{"event":"tick","data":99}'))
    proto.transport.loseConnection()
    assert (await client.next_of("message"))["data"] == 99
    assert statuses(await exchange(server, publish() + CLOSE)) == [202, 200]
    # Redis gone: the failure reaches the publisher as Twisted Web gave it.
    redis_server.stop()
    await eventually(lambda: server.hub.unready_reason() is not None, 10)
    keyed = publish(extra=b"Idempotency-Key: k1\r\n")
    reply = await exchange(server, publish() + keyed + CLOSE)
    assert statuses(reply) == [503, 503, 200]
    assert b'"backend_unavailable"' in reply


@ensureDeferred
async def test_access_log_lines_match(start_server):
    """With access-log, a publish served by the front door is logged like
    one served by Twisted Web: the client behind a trusted proxy, credentials
    in the query redacted."""
    from pushd.config import _networks

    lines = []
    for fast in (True, False):
        server = await start_server(
            access_log=True,
            trusted_proxies=_networks(["127.0.0.1"]),
            http_fast_path=fast,
        )
        server.site._logFile = io.StringIO()
        forwarded = b"X-Forwarded-For: 203.0.113.77\r\nUser-Agent: probe/1\r\n"
        signed_url = publish(extra=forwarded).replace(
            b"/messages", b"/messages?token=s3"
        )
        await exchange(server, signed_url + CLOSE)
        await eventually(lambda s=server: s.site._logFile.getvalue().count("\n") == 2)
        lines.append(re.sub(r"\[[0-9][^]]*\]", "[-]", server.site._logFile.getvalue()))
    assert lines[0] == lines[1]
    assert lines[0].startswith(
        '"203.0.113.77" - - [-] "POST /api/channels/news/messages?token=[redacted]'
        ' HTTP/1.1" 202 '
    )
    assert '"probe/1"' in lines[0]


def test_fast_path_setting_in_config():
    """http-fast-path is a setting (true by default) that can turn the front
    door off."""
    from pushd.config import Config

    assert Config().http_fast_path is True
    assert Config.from_mapping({"http-fast-path": False}).http_fast_path is False
    assert json.dumps(Config().http_fast_path) == "true"
