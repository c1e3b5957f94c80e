"""Server-Sent Events over real HTTP, with an EventSource-like client."""

import json
from urllib.parse import quote

import pytest
import treq
from pytest_twisted import ensureDeferred
from twisted.internet import reactor
from twisted.internet.defer import DeferredQueue
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol

from pushd.auth import channel_signature, make_user_token
from pushd.history import HistoryRule, Retention
from pushd.testing import eventually

SECRET = "test-api-secret-that-is-at-least-32-bytes"


class EventStream(Protocol):
    """A raw HTTP/1.1 GET that parses the event stream as EventSource does:
    ``id``, ``event``, ``data`` fields, blank line ends an event, ``:`` comments."""

    def __init__(self, path, headers=()):
        self.path, self.headers = path, headers
        self.events = DeferredQueue()
        self.status = None
        self.head = b""
        self.buffer = b""
        self.comments = 0
        self.last_id = ""
        self.lost = False

    def connectionMade(self):
        lines = [
            "GET %s HTTP/1.1" % self.path,
            "Host: test",
            "Accept: text/event-stream",
        ]
        lines += ["%s: %s" % h for h in self.headers]
        self.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode())

    def dataReceived(self, data):
        if self.status is None:
            self.head += data
            if b"\r\n\r\n" not in self.head:
                return
            head, _, data = self.head.partition(b"\r\n\r\n")
            self.status = int(head.split(b" ")[1])
            self.response_head = head.decode()
            if b"chunked" in head.lower():
                self.chunked = True
        self.buffer += data
        self._parse()

    def _body(self):
        # de-chunk what we have (Twisted sends the stream chunked)
        out, rest = b"", self.buffer
        while True:
            size_line, sep, after = rest.partition(b"\r\n")
            if not sep:
                break
            size = int(size_line, 16)
            if size == 0 or len(after) < size + 2:
                break
            out += after[:size]
            rest = after[size + 2 :]
        return out, rest

    def _parse(self):
        body, self.buffer = self._body()
        self.text = getattr(self, "text", "") + body.decode()
        while "\n\n" in self.text:
            block, self.text = self.text.split("\n\n", 1)
            event = {"event": "message", "data": []}
            for line in block.split("\n"):
                if line.startswith(":"):
                    self.comments += 1
                    continue
                field, _, value = line.partition(": ")
                if field == "data":
                    event["data"].append(value)
                elif field == "id":
                    event["id"] = self.last_id = value
                elif field in ("event", "retry"):
                    event[field] = value
            if event["data"]:
                event["data"] = json.loads("\n".join(event["data"]))
                self.events.put(event)

    def connectionLost(self, reason):
        self.lost = True

    async def next(self, timeout=5):
        d = self.events.get()
        d.addTimeout(timeout, reactor)
        return await d

    async def next_of(self, name):
        event = await self.next()
        assert event["event"] == name, event
        return event


async def open_stream(server, query, headers=()):
    stream = EventStream("/sse?" + query, headers)
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", server.port), stream)
    server.streams = [*getattr(server, "streams", []), stream]
    return stream


async def close(server, stream):
    stream.transport.loseConnection()
    await eventually(lambda: stream.lost)


async def publish(server, channel, event, data):
    response = await treq.post(
        server.url + "/api/channels/%s/messages" % channel,
        json={"event": event, "data": data},
        headers=server.auth(),
    )
    assert response.code == 202


@ensureDeferred
async def test_sse_stream_delivers_messages_from_every_channel(start_server):
    """An SSE client gets messages from every channel it subscribed to."""
    server = await start_server(sse_heartbeat=0.2)
    stream = await open_stream(server, "channel=news&channel=sport")
    hello = await stream.next_of("pushd:connected")
    assert stream.status == 200 and "text/event-stream" in stream.response_head
    assert hello["data"]["connection_id"]
    subscribed = {
        (await stream.next_of("pushd:subscribed"))["data"]["channel"] for _ in "ab"
    }
    assert subscribed == {"news", "sport"}
    await publish(server, "news", "headline", {"t": 1})
    await publish(server, "sport", "score", [1, 0])
    first, second = await stream.next(), await stream.next()
    assert (first["event"], first["data"]["data"]) == ("headline", {"t": 1})
    assert (second["event"], second["data"]["channel"]) == ("score", "sport")
    await eventually(lambda: stream.comments >= 2)  # heartbeats
    await close(server, stream)
    await server.wait_sessions(0)  # a client that went away leaves nothing behind
    assert server.hub.local_subscribers("news") == 0


@ensureDeferred
async def test_sse_resume_with_last_event_id_has_no_gap_or_duplicate(start_server):
    """An SSE client resuming with Last-Event-ID misses nothing and gets nothing twice."""
    server = await start_server(history=(HistoryRule("chat-*", Retention(50, 60)),))
    stream = await open_stream(server, "channel=chat-a&channel=chat-b")
    await stream.next_of("pushd:connected")
    await stream.next_of("pushd:subscribed")
    await stream.next_of("pushd:subscribed")
    for n in range(3):
        await publish(server, "chat-a", "e", n)
    await publish(server, "chat-b", "e", "b0")
    seen = [await stream.next() for _ in range(4)]
    last_id = seen[-1]["id"]
    assert "chat-a=3." in last_id and "chat-b=1." in last_id
    await close(server, stream)
    for n in range(3, 6):
        await publish(server, "chat-a", "e", n)
    await publish(server, "chat-b", "e", "b1")
    resumed = await open_stream(
        server, "channel=chat-a&channel=chat-b", [("Last-Event-ID", last_id)]
    )
    await resumed.next_of("pushd:connected")
    got = []
    while len(got) < 4:
        event = await resumed.next()
        if event["event"] == "pushd:subscribed":
            assert event["data"]["recovered"] is True
        else:
            got.append(event["data"]["data"])
    assert sorted(got, key=str) == sorted([3, 4, 5, "b1"], key=str)
    assert [g for g in got if g != "b1"] == [3, 4, 5]
    # the polyfill way: lastEventId as a query parameter
    again = await open_stream(server, "channel=chat-a&lastEventId=" + quote(last_id))
    await again.next_of("pushd:connected")
    assert (await again.next_of("pushd:subscribed"))["data"]["recovered"] is True
    assert [(await again.next())["data"]["data"] for _ in range(3)] == [3, 4, 5]


@ensureDeferred
async def test_sse_follows_the_websocket_rules(start_server):
    """Keys, tokens and private-channel signatures: the signature names the
    id the server issued, and travels in a POST, not the URL."""
    server = await start_server(client_key="ck-12345678")
    for query, status, code in [
        ("channel=x", 401, "invalid_client_key"),
        ("key=nope&channel=x", 401, "invalid_client_key"),
        ("key=ck-12345678&token=forged&channel=x", 401, "invalid_token"),
    ]:
        response = await treq.get(server.url + "/sse?" + query)
        assert (response.code, (await response.json())["error"]) == (status, code), (
            query
        )
    token = make_user_token(SECRET, "ann")
    stream = await open_stream(server, "key=ck-12345678&token=%s" % token)
    hello = (await stream.next_of("pushd:connected"))["data"]
    assert set(hello) == {"type", "connection_id", "stream_secret", "user_id"}
    assert hello["user_id"] == "ann"
    conn_id = hello["connection_id"]
    for channel, auth in (
        ("private-room", channel_signature(SECRET, conn_id, "private-room")),
        ("private-no", channel_signature(SECRET, "another-id", "private-no")),
    ):
        response = await treq.post(
            server.url + "/sse/frames",
            json={
                "key": "ck-12345678",
                "connection_id": conn_id,
                "stream_secret": hello["stream_secret"],
                "frame": {"type": "subscribe", "channel": channel, "auth": auth},
            },
        )
        assert response.code == 202
    replies = {}
    for _ in range(2):
        event = await stream.next()
        replies[event["data"]["channel"]] = event["event"]
    assert replies == {"private-room": "pushd:subscribed", "private-no": "pushd:error"}
    await publish(server, "private-room", "e", "secret")
    assert (await stream.next())["data"]["data"] == "secret"
    await treq.delete(server.url + "/api/users/ann", headers=server.auth())
    closed = await stream.next_of("pushd:close")
    assert closed["data"]["code"] == 4010


@ensureDeferred
async def test_eventsource_reconnects_and_resumes_by_itself(start_server, tmp_path):
    """A real EventSource implementation (the `eventsource` package, as
    browsers behave): when the stream drops it reconnects, sends Last-Event-ID,
    and gets what it missed, once, then live messages."""
    import os
    import shutil
    import subprocess

    here = os.path.dirname(__file__)
    polyfill = os.path.join(here, "js", "node_modules", "eventsource")
    node = shutil.which("node")
    if node is None or not os.path.isdir(polyfill):
        pytest.skip("needs node and `npm ci --prefix tests/js` (.ci/run does both)")
    server = await start_server(history=(HistoryRule("chat-*", Retention(50, 60)),))
    out_path = tmp_path / "events.txt"
    with open(out_path, "wb") as out:
        proc = subprocess.Popen(
            [
                node,
                os.path.join(here, "js", "eventsource_client.js"),
                server.url + "/sse?channel=chat-e",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:

        def lines():
            return [
                json.loads(x)
                for x in out_path.read_text().splitlines()
                if x.startswith("{")
            ]

        def data():
            return [x["data"] for x in lines() if "data" in x]

        await eventually(lambda: any("subscribed" in x for x in lines()), timeout=10)
        for n in (1, 2):
            await publish(server, "chat-e", "tick", n)
        await eventually(lambda: data() == [1, 2], timeout=10)
        server.hub.close_all(1001, "restarting")  # the stream drops
        await eventually(lambda: not server.hub.sessions, timeout=5)
        for n in (3, 4):  # published while the client is away
            await publish(server, "chat-e", "tick", n)
        await eventually(
            lambda: len(server.hub.sessions) == 1, timeout=10
        )  # it came back
        await publish(server, "chat-e", "tick", "last")
        await eventually(lambda: data() == [1, 2, 3, 4, "last"], timeout=10)
        subscribed = [x["subscribed"] for x in lines() if "subscribed" in x]
        assert subscribed[-1]["recovered"] is True
        assert lines()[-1]["lastEventId"].startswith("chat-e=5.")
    finally:
        proc.kill()
        proc.wait()


@ensureDeferred
async def test_sse_client_that_stops_reading_is_dropped(start_server):
    """The same slow-consumer limit as WebSocket: a stalled SSE client is
    dropped past send-queue-bytes, a reading one gets everything."""
    server = await start_server(
        send_queue_bytes=256 * 1024, max_message_size=512 * 1024
    )
    fast = await open_stream(server, "channel=firehose")
    slow = await open_stream(server, "channel=firehose")
    for stream in (fast, slow):
        await stream.next_of("pushd:connected")
        await stream.next_of("pushd:subscribed")
    slow.transport.pauseProducing()
    blob = "x" * 200_000
    got = []
    for n in range(100):
        await server.hub.publish(
            server.app, ["firehose"], "blob", {"n": n, "blob": blob}
        )
        # Paced by the reading client, not by time.
        got.append((await fast.next_of("blob"))["data"]["data"]["n"])
    await server.wait_sessions(1, timeout=10)
    assert got == list(range(100))
    slow.transport.resumeProducing()
