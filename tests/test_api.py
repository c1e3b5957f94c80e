"""The REST API over real HTTP (treq) against a real pushd."""

import json

import treq
from pytest_twisted import ensureDeferred
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol


async def call(server, method, path, body=None, headers=None, raw=None):
    headers = server.auth() if headers is None else headers
    data = (
        raw
        if raw is not None
        else (json.dumps(body).encode() if body is not None else None)
    )
    response = await treq.request(method, server.url + path, data=data, headers=headers)
    text = await response.text()
    return response.code, (json.loads(text) if text else None), response


@ensureDeferred
async def test_publish_returns_202_with_id_and_reaches_subscriber(start_server):
    """A publisher gets 202 with the message id, and a subscriber gets the message."""
    server = await start_server()
    client = await server.connected()
    await client.subscribe("news")
    code, body, response = await call(
        server,
        "POST",
        "/api/channels/news/messages",
        {"event": "e", "data": [1, "two", None]},
    )
    assert code == 202
    assert body["channels"] == ["news"] and len(body["id"]) == 16
    assert response.headers.getRawHeaders("content-type") == ["application/json"]
    frame = await client.next_of("message")
    assert (frame["id"], frame["data"]) == (body["id"], [1, "two", None])


@ensureDeferred
async def test_publish_to_several_channels(start_server):
    """POST /api/messages delivers one message, same id, to each named channel."""
    server = await start_server()
    a, b = await server.connected(), await server.connected()
    await a.subscribe("a")
    await b.subscribe("b")
    code, body, _ = await call(
        server,
        "POST",
        "/api/messages",
        {"channels": ["a", "b", "nobody"], "event": "x", "data": 1},
    )
    assert code == 202
    for client, channel in ((a, "a"), (b, "b")):
        frame = await client.next_of("message")
        assert (frame["channel"], frame["id"]) == (channel, body["id"])


@ensureDeferred
async def test_channel_listing_counts_subscribers(start_server):
    """Channel list and channel info show subscriber counts that follow
    clients leaving; an unknown channel reads as empty."""
    server = await start_server()
    clients = [await server.connected() for _ in range(3)]
    for client in clients:
        await client.subscribe("busy")
    await clients[0].subscribe("quiet")
    code, body, _ = await call(server, "GET", "/api/channels")
    assert code == 200
    assert body == {
        "channels": {"busy": {"subscribers": 3}, "quiet": {"subscribers": 1}}
    }
    code, body, _ = await call(server, "GET", "/api/channels/busy")
    assert body == {"channel": "busy", "occupied": True, "subscribers": 3}
    await clients[1].close()
    await server.wait_sessions(2)
    code, body, _ = await call(server, "GET", "/api/channels/busy")
    assert body["subscribers"] == 2
    code, body, _ = await call(server, "GET", "/api/channels/empty")
    assert body == {"channel": "empty", "occupied": False, "subscribers": 0}


@ensureDeferred
async def test_auth_refusals(start_server):
    """No secret: 401; wrong secret: 403; both with JSON bodies; nothing published."""
    server = await start_server()
    client = await server.connected()
    await client.subscribe("news")
    path, body = "/api/channels/news/messages", {"event": "e", "data": 1}
    for headers, status in [
        ({}, 401),
        ({"Authorization": "Bearer nope"}, 403),
        ({"Authorization": "Basic " + server.secret}, 401),
        ({"Authorization": "Bearer"}, 401),
    ]:
        code, reply, _ = await call(server, "POST", path, body, headers=headers)
        assert code == status, headers
        assert reply["error"] in ("unauthorized", "forbidden") and reply["message"]
    code, reply, _ = await call(server, "GET", "/api/channels", headers={})
    assert code == 401
    client.assert_nothing_queued()


@ensureDeferred
async def test_bad_requests_get_json_errors(start_server):
    """A malformed publish gets a JSON error saying what is wrong, never a 500 or a silent drop."""
    server = await start_server(max_channels_per_publish=2)
    cases = [
        ("POST", "/api/channels/news/messages", b"{not json", 400, "invalid_json"),
        ("POST", "/api/channels/news/messages", b"", 400, "invalid_json"),
        ("POST", "/api/channels/news/messages", b"[1]", 400, "invalid_field"),
        (
            "POST",
            "/api/channels/news/messages",
            b'{"event": "e"}',
            400,
            "missing_field",
        ),
        ("POST", "/api/channels/news/messages", b'{"data": 1}', 400, "missing_field"),
        (
            "POST",
            "/api/channels/news/messages",
            b'{"event": 5, "data": 1}',
            400,
            "invalid_field",
        ),
        (
            "POST",
            "/api/channels/bad%20name/messages",
            b'{"event": "e", "data": 1}',
            400,
            "invalid_channel",
        ),
        ("POST", "/api/messages", b'{"event": "e", "data": 1}', 400, "missing_field"),
        (
            "POST",
            "/api/messages",
            b'{"event": "e", "data": 1, "channels": []}',
            400,
            "missing_field",
        ),
        (
            "POST",
            "/api/messages",
            b'{"event": "e", "data": 1, "channels": ["a","b","c"]}',
            400,
            "invalid_field",
        ),
        (
            "POST",
            "/api/messages",
            b'{"event": "e", "data": 1, "channels": ["ok", "b d"]}',
            400,
            "invalid_channel",
        ),
        ("GET", "/api/channels/news/messages", None, 405, "method_not_allowed"),
        ("GET", "/api/nothing/here", None, 404, "not_found"),
        ("GET", "/nothing", None, 404, "not_found"),
    ]
    for method, path, raw, status, error in cases:
        code, body, _ = await call(server, method, path, raw=raw)
        assert (code, body["error"]) == (status, error), (path, raw, body)
        assert body["message"]


@ensureDeferred
async def test_oversized_body_is_413_and_server_keeps_serving(start_server):
    """A body over max-message-size gets 413, and the server keeps serving others."""
    server = await start_server(max_message_size=1000)
    big = json.dumps({"event": "e", "data": "x" * 5000}).encode()
    code, body, _ = await call(server, "POST", "/api/channels/news/messages", raw=big)
    assert (code, body["error"]) == (413, "body_too_large")
    code, _, _ = await call(
        server, "POST", "/api/channels/news/messages", {"event": "e", "data": "small"}
    )
    assert code == 202


class _RawHTTP(Protocol):
    def __init__(self, request: bytes):
        self.request, self.received, self.done = request, b"", Deferred()

    def connectionMade(self):
        self.transport.write(self.request)

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason):
        self.done.callback(self.received)


@ensureDeferred
async def test_oversized_chunked_body_is_413(start_server, secret):
    """A chunked body with no Content-Length is cut off at the limit too."""
    server = await start_server(max_message_size=1000)
    chunk = b"x" * 800
    request = (
        b"POST /api/channels/news/messages HTTP/1.1\r\nHost: x\r\n"
        b"Authorization: Bearer " + secret.encode() + b"\r\n"
        b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        + (b"320\r\n" + chunk + b"\r\n") * 5
        + b"0\r\n\r\n"
    )
    proto = _RawHTTP(request)
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", server.port), proto)
    reply = await proto.done
    assert reply.startswith(b"HTTP/1.1 413 ")
    assert b'"body_too_large"' in reply


@ensureDeferred
async def test_root_and_health(start_server):
    """Load balancers and people find pushd alive at / and /health."""
    server = await start_server()
    code, body, _ = await call(server, "GET", "/health", headers={})
    assert (code, body) == (200, {"status": "ok"})
    code, body, _ = await call(server, "GET", "/", headers={})
    assert body["server"] == "pushd"


@ensureDeferred
async def test_api_routing_keeps_each_api_its_error_shape(start_server):
    """One router serves both APIs: a wrong native path gets pushd's JSON
    404, a wrong Thunderpush path gets Thunderpush's shape, and a
    Thunderpush client keeps working next to native clients."""
    server = await start_server()
    code, body, _ = await call(server, "GET", "/api/no/such/route")
    assert (code, body["error"]) == (404, "not_found")
    assert "/api/no/such/route" in body["message"]
    code, body, _ = await call(server, "GET", "/api")
    assert (code, body["error"]) == (404, "not_found")
    code, body, _ = await call(server, "GET", "/api/1.0.0/k/nothing/here/")
    assert code == 404 and body["status"] == 404 and "error" not in body
    code, body, _ = await call(server, "GET", "/api/1.0.0/k/users/", headers={})
    assert (code, body) == (401, {"message": "Wrong API key/secret.", "status": 401})
    code, body, _ = await call(server, "GET", "/api/users")
    assert (code, body) == (200, {"online": 0})


@ensureDeferred
async def test_publish_route_reads_any_spelling_of_the_channel_and_json_bodies(
    start_server,
):
    """The hot publish route (served without Klein, pushd.api.front) and the
    routed one agree: a percent-encoded channel name reaches the decoded
    channel, a JSON body sent as a form Content-Type is still read as JSON,
    and a route it does not serve (trailing slash) is still a JSON 404."""
    server = await start_server()
    client = await server.connected()
    await client.subscribe("a,b")
    await client.subscribe("plain")
    code, body, _ = await call(
        server, "POST", "/api/channels/a%2Cb/messages", {"event": "e", "data": 1}
    )
    assert (code, body["channels"]) == (202, ["a,b"])
    assert (await client.next_of("message"))["channel"] == "a,b"
    headers = server.auth()
    headers["Content-Type"] = ["application/x-www-form-urlencoded"]
    code, body, _ = await call(
        server,
        "POST",
        "/api/channels/plain/messages",
        headers=headers,
        raw=b'{"event": "e", "data": "x=1&y=2"}',
    )
    assert (code, body["channels"]) == (202, ["plain"])
    frame = await client.next_of("message")
    assert (frame["channel"], frame["data"]) == ("plain", "x=1&y=2")
    code, body, _ = await call(
        server, "POST", "/api/channels/plain/messages/", {"event": "e", "data": 1}
    )
    assert code == 404 and body["error"] == "not_found"
