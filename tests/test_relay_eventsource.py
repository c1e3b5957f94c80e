"""EventSource on relay subscriber locations (nchan's behaviour), over real
sockets, parsed as the WHATWG EventSource algorithm parses a stream."""

import re

import treq
from pytest_twisted import ensureDeferred
from twisted.internet import reactor
from twisted.internet.defer import DeferredQueue
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol

from pushd.testing import eventually


class EventSourceClient(Protocol):
    """A raw HTTP/1.1 GET with ``Accept: text/event-stream``; the body is
    de-chunked and parsed line by line (CRLF, LF or CR end a line), fields
    ``id``, ``event``, ``data``; a blank line dispatches, as browsers do."""

    def __init__(self, path, headers=()):
        self.path, self.headers = path, headers
        self.events = DeferredQueue()
        self.status = None
        self.head = b""
        self.chunked = b""
        self.raw = b""  # the de-chunked stream, as sent
        self.pending = b""
        self.lost = False
        self.last_id = ""
        self._reset()

    def _reset(self):
        self.data, self.event = [], ""

    def connectionMade(self):
        lines = [
            "GET %s HTTP/1.1" % self.path,
            "Host: test",
            "Accept: text/event-stream",
        ] + ["%s: %s" % h for h in self.headers]
        self.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode())

    def dataReceived(self, data):
        if self.status is None:
            self.head += data
            if b"\r\n\r\n" not in self.head:
                return
            head, _, data = self.head.partition(b"\r\n\r\n")
            self.status = int(head.split(b" ")[1])
            self.head = head
        self.chunked += data
        while True:
            size_line, sep, rest = self.chunked.partition(b"\r\n")
            if not sep or not size_line:
                return
            size = int(size_line, 16)
            if size == 0 or len(rest) < size + 2:
                return
            self._body(rest[:size])
            self.chunked = rest[size + 2 :]

    def _body(self, data):
        self.raw += data
        self.pending += data
        while True:
            m = re.search(rb"\r\n|\r|\n", self.pending)
            if m is None or (m.group() == b"\r" and m.end() == len(self.pending)):
                return  # a lone CR at the end may be half of a CRLF
            line, self.pending = self.pending[: m.start()], self.pending[m.end() :]
            self._line(line.decode("utf-8"))

    def _line(self, line):
        if not line:
            if self.data:
                self.events.put(
                    {
                        "event": self.event or "message",
                        "data": "\n".join(self.data),
                        "id": self.last_id,
                    }
                )
            self._reset()
            return
        if line.startswith(":"):
            return
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "data":
            self.data.append(value)
        elif field == "event":
            self.event = value
        elif field == "id":
            self.last_id = value

    def connectionLost(self, reason):
        self.lost = True

    async def next(self, timeout=5):
        d = self.events.get()
        d.addTimeout(timeout, reactor)
        return await d

    async def take(self, count):
        return [await self.next() for _ in range(count)]


async def open_stream(server, path, headers=()):
    client = EventSourceClient(path, headers)
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", server.port), client)
    server.streams = [*getattr(server, "streams", []), client]
    return client


async def pub(server, channel, body, headers=None):
    response = await treq.post(
        server.url + "/publisher/" + channel,
        data=body,
        headers={"Content-Type": "text/plain", **server.auth(), **(headers or {})},
    )
    assert response.code in (201, 202), await response.content()
    return response.code


@ensureDeferred
async def test_stored_then_live_events_in_order_with_ids(start_server):
    """An EventSource page gets the stored messages from the oldest, then
    live ones, in publish order, each with an id to resume from."""
    server = await start_server()
    for n in range(3):
        await pub(server, "es", b"stored %d" % n)
    stream = await open_stream(server, "/subscriber/es")
    stored = await stream.take(3)
    assert stream.status == 200 and b"text/event-stream" in stream.head
    assert [e["data"] for e in stored] == ["stored 0", "stored 1", "stored 2"]
    assert [e["event"] for e in stored] == ["message"] * 3
    ids = [e["id"] for e in stored]
    assert len(set(ids)) == 3 and all(re.fullmatch(r"\d+\.\w+", i) for i in ids)
    await eventually(lambda: server.hub.local_subscribers("es") == 1)
    assert await pub(server, "es", b"live 3") == 201
    await pub(server, "es", b"live 4")
    live = await stream.take(2)
    assert [e["data"] for e in live] == ["live 3", "live 4"]
    assert int(live[0]["id"].split(".")[0]) == int(ids[-1].split(".")[0]) + 1


@ensureDeferred
async def test_resume_with_last_event_id_and_the_query_parameter(start_server):
    """A reconnecting EventSource (Last-Event-ID) or a polyfill
    (?last_event_id=) gets exactly what followed that event."""
    server = await start_server()
    for n in range(5):
        await pub(server, "resume", b"m%d" % n)
    first = await open_stream(server, "/subscriber/resume")
    seen = await first.take(5)
    resume_from = seen[1]["id"]
    by_header = await open_stream(
        server, "/subscriber/resume", [("Last-Event-ID", resume_from)]
    )
    assert [e["data"] for e in await by_header.take(3)] == ["m2", "m3", "m4"]
    by_query = await open_stream(
        server, "/subscriber/resume?last_event_id=" + resume_from
    )
    assert [e["data"] for e in await by_query.take(3)] == ["m2", "m3", "m4"]
    await eventually(lambda: server.hub.local_subscribers("resume") == 3)
    await pub(server, "resume", b"m5")
    for stream in (first, by_header, by_query):
        assert (await stream.next())["data"] == "m5"
        assert stream.events.pending == []  # nothing twice


@ensureDeferred
async def test_multi_line_bodies_and_injection_attempts(start_server):
    """A body with CR, LF and CRLF line breaks arrives as one event with
    its lines; it can never end the event early or forge id/event fields."""
    server = await start_server()
    await pub(server, "lines", b"one\ntwo\r\nthree\rfour")
    await pub(server, "lines", b"x\n\nid: 999\nevent: evil\ndata: forged")
    stream = await open_stream(server, "/subscriber/lines")
    first, second = await stream.take(2)
    assert first["data"] == "one\ntwo\nthree\nfour"
    assert second["data"] == "x\n\nid: 999\nevent: evil\ndata: forged"
    assert second["event"] == "message" and second["id"] != "999"
    assert b"\r" not in stream.raw
    assert b"data: one\ndata: two\ndata: three\ndata: four\n\n" in stream.raw


@ensureDeferred
async def test_x_eventsource_event_names_the_event(start_server):
    """A publish with X-EventSource-Event sets the event type a page listens
    for (addEventListener); a name with control codes is refused."""
    server = await start_server()
    await pub(server, "typed", b"42", {"X-EventSource-Event": "price"})
    await pub(server, "typed", b"plain")
    stream = await open_stream(server, "/subscriber/typed")
    events = await stream.take(2)
    assert [(e["event"], e["data"]) for e in events] == [
        ("price", "42"),
        ("message", "plain"),
    ]
    assert b"event: price\n" in stream.raw and b"event: message" not in stream.raw
    response = await treq.post(
        server.url + "/publisher/typed",
        data=b"x",
        headers={"X-EventSource-Event": "a\tb", **server.auth()},
    )
    assert response.code == 400


@ensureDeferred
async def test_event_streams_follow_the_apps_identification_rules(start_server):
    """Without the app's key the stream is refused with 401 and a JSON body,
    like any other transport; with it, it opens."""
    server = await start_server(client_key="the-client-key")
    await pub(server, "keyed", b"hello")
    refused = await open_stream(server, "/subscriber/keyed")
    await eventually(lambda: refused.status is not None)
    assert refused.status == 401 and b"application/json" in refused.head
    stream = await open_stream(server, "/subscriber/keyed?key=the-client-key")
    assert (await stream.next())["data"] == "hello"
