"""The Basic HTTP Push Relay Protocol (hbpush / nchan) with real HTTP clients."""

import pytest
import treq
from pytest_twisted import ensureDeferred

from pushd.testing import eventually
from pushd.transports.relay import location_from_mapping


async def pub(
    server, channel, body, content_type="text/plain", method="POST", path=None
):
    """Publishes as the default app (its API secret)."""
    response = await treq.request(
        method,
        server.url + (path or "/publisher/") + channel,
        data=body,
        headers={"Content-Type": content_type, **server.auth()},
    )
    return response.code, await response.content(), response


def sub(server, channel, since=None, path="/subscriber/"):
    """Starts the GET now (a Deferred), so a test can publish while it waits."""
    headers = {}
    if since is not None:
        headers = {"If-Modified-Since": since[0], "If-None-Match": since[1]}
    return treq.get(server.url + path + channel, headers=headers)


def cache_of(response):
    return (
        response.headers.getRawHeaders("last-modified")[0],
        response.headers.getRawHeaders("etag")[0],
    )


async def subscribers_waiting(server, channel, count=1):
    """Until ``count`` sessions (relay subscribers included) are on
    ``channel``: a publish from then on must reach them."""
    await eventually(lambda: server.hub.local_subscribers(channel) == count)


@ensureDeferred
async def test_messages_step_through_in_order_with_their_content_types(start_server):
    """Relay subscribers step through messages in order with their content types, and wait for the next one."""
    server = await start_server()
    bodies = [
        (b"one", "text/plain"),
        (b'{"n": 2}', "application/json"),
        (b"\x89PNG\x00\xff", "image/png"),
    ]
    for body, content_type in bodies:
        code, info, _ = await pub(server, "steps", body, content_type)
        assert code == 202 and b"queued messages" in info
    since = None
    for body, content_type in bodies:  # same second: the Etag tells them apart
        response = await sub(server, "steps", since)
        assert response.code == 200
        assert await response.content() == body
        assert response.headers.getRawHeaders("content-type") == [content_type]
        since = cache_of(response)
    waiting = sub(server, "steps", since)  # nothing newer: long-polls
    answered = []
    waiting.addCallback(lambda r: answered.append(r) or r)
    await subscribers_waiting(server, "steps")
    assert answered == []
    code, _, _ = await pub(server, "steps", b"four")
    assert code == 201  # a waiting subscriber got it
    response = await waiting
    assert (response.code, await response.content()) == (200, b"four")


@ensureDeferred
async def test_interval_polling_answers_304_at_once(start_server):
    """Interval-polling relay subscribers get 304 at once when nothing is new."""
    server = await start_server(
        relay_locations=(
            location_from_mapping(
                {"type": "subscriber", "url": "/poll/(.+)/", "polling": "interval"}
            ),
            location_from_mapping({"type": "publisher", "prefix": "/pub/"}),
        )
    )
    response = await sub(server, "c/", path="/poll/")
    assert response.code == 304
    await pub(server, "c", b"x", path="/pub/")
    response = await sub(server, "c/", path="/poll/")
    assert (response.code, await response.content()) == (200, b"x")
    response = await sub(server, "c/", cache_of(response), path="/poll/")
    assert response.code == 304
    assert (
        await treq.get(server.url + "/publisher/c")
    ).code == 404  # default locations off


@ensureDeferred
async def test_channel_info_put_get_and_create_on_post(start_server):
    """Relay publishers create channels with PUT and see queued messages and waiting subscribers."""
    server = await start_server(
        relay_locations=(
            location_from_mapping(
                {"type": "publisher", "prefix": "/publisher/", "create_on_post": False}
            ),
            location_from_mapping({"type": "subscriber", "prefix": "/subscriber/"}),
        )
    )
    assert (await pub(server, "strict", b"x"))[0] == 403
    assert (await pub(server, "strict", None, method="GET"))[0] == 404
    code, _, _ = await pub(server, "strict", None, method="PUT")
    assert code == 200
    waiting = sub(server, "strict")
    await subscribers_waiting(server, "strict")
    response = await treq.get(
        server.url + "/publisher/strict",
        headers={"Accept": "application/json", **server.auth()},
    )
    info = await response.json()
    assert (response.code, info["messages"], info["subscribers"]) == (200, 0, 1)
    assert info["last_requested"] >= 0
    assert (await pub(server, "strict", b"now"))[0] == 201
    assert await (await waiting).content() == b"now"
    code, text, _ = await pub(server, "strict", None, method="GET")
    assert b"queued messages: 1" in text and b"active subscribers: 0" in text


@ensureDeferred
async def test_delete_wakes_waiting_subscribers_with_410(start_server):
    """Deleting a relay channel answers waiting subscribers 410 and forgets its messages."""
    server = await start_server()
    await pub(server, "doomed", b"old")
    first = await sub(server, "doomed")
    waiting = [sub(server, "doomed", cache_of(first)) for _ in range(2)]
    await subscribers_waiting(server, "doomed", 2)
    code, _, _ = await pub(server, "doomed", None, method="DELETE")
    assert code == 200
    assert [(await w).code for w in waiting] == [410, 410]
    assert (await pub(server, "doomed", None, method="GET"))[0] == 404
    assert (await pub(server, "doomed", None, method="DELETE"))[0] == 404
    await pub(server, "doomed", b"new")  # a new channel: the old message is gone
    assert await (await sub(server, "doomed")).content() == b"new"


@ensureDeferred
async def test_concurrent_subscribers_all_get_each_message(start_server):
    """Every waiting relay subscriber gets the next message."""
    server = await start_server()
    await pub(server, "fan", b"seed")
    since = cache_of(await sub(server, "fan"))
    waiting = [sub(server, "fan", since) for _ in range(5)]
    await subscribers_waiting(server, "fan", 5)
    await pub(server, "fan", b"everyone")
    assert [await (await w).content() for w in waiting] == [b"everyone"] * 5


@ensureDeferred
async def test_one_channel_space_with_websocket_and_rest(start_server):
    """HTTP publishers reach WebSocket subscribers and the other way round."""
    server = await start_server()
    client = await server.connected()
    await client.subscribe("shared")
    await pub(server, "shared", b"from hbpush", "text/plain")
    frame = await client.next_of("message")
    assert (frame["data"], frame["content_type"]) == ("from hbpush", "text/plain")
    since = cache_of(await sub(server, "shared"))
    waiting = sub(server, "shared", since)
    await subscribers_waiting(server, "shared", 2)
    response = await treq.post(
        server.url + "/api/channels/shared/messages",
        json={"event": "e", "data": {"k": 1}},
        headers=server.auth(),
    )
    assert response.code == 202
    answer = await waiting
    assert answer.headers.getRawHeaders("content-type") == ["application/json"]
    assert await answer.json() == {"k": 1}
    assert (await client.next_of("message"))["data"] == {"k": 1}
    await pub(server, "shared", None, method="DELETE")
    assert (await client.next_of("channel_deleted"))["channel"] == "shared"


@ensureDeferred
async def test_subscriber_that_leaves_while_waiting_leaks_nothing(start_server):
    """A relay subscriber that gives up while waiting leaves no session or count behind."""
    server = await start_server()
    await pub(server, "leave", b"seed")
    since = cache_of(await sub(server, "leave"))
    waiting = sub(server, "leave", since)
    await subscribers_waiting(server, "leave")
    assert len(server.hub.sessions) == 1 and server.hub.local_subscribers("leave") == 1
    waiting.cancel()  # the client gives up and closes its connection
    await server.wait_sessions(0)
    assert server.hub.local_subscribers("leave") == 0
    _code, text, _ = await pub(server, "leave", None, method="GET")
    assert b"active subscribers: 0" in text


@ensureDeferred
async def test_refusals(start_server):
    """Wrong methods get 405 with Allow, and private or presence channels are refused over the relay."""
    server = await start_server()
    response = await treq.post(server.url + "/subscriber/c", data=b"x")
    assert response.code == 405 and response.headers.getRawHeaders("allow") == ["GET"]
    response = await treq.request(
        "PATCH", server.url + "/publisher/c", headers=server.auth()
    )
    assert response.code == 405
    assert (await sub(server, "private-x")).code == 403
    assert (await pub(server, "presence-x", b"x"))[0] == 403


@pytest.mark.parametrize(
    "raw,message",
    [
        ({"type": "subscriber", "url": "/(unclosed"}, "not a valid pattern"),
        ({"type": "subscriber", "url": "/no-group/"}, "exactly one group"),
        ({"type": "relay", "prefix": "/x/"}, "publisher or subscriber"),
        ({"type": "subscriber", "prefix": "x/"}, "prefix (starting with /)"),
        (
            {"type": "subscriber", "prefix": "/x/", "polling": "sometimes"},
            "long or interval",
        ),
    ],
)
def test_bad_locations_fail_at_start_with_one_line(tmp_path, capsys, raw, message):
    """A wrong relay-locations entry fails at start with one line naming the problem."""
    import yaml

    from pushd.tap import Options

    path = tmp_path / "pushd.yaml"
    path.write_text(yaml.safe_dump({"relay-locations": [raw]}))
    with pytest.raises(SystemExit):
        Options().parseOptions(["--config", str(path)])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "relay-locations" in err and message in err


@ensureDeferred
async def test_publishers_need_an_app_secret_wherever_they_come_from():
    """Publishing needs the app's secret, from any address: a wrong secret
    is refused, the right one names the app."""
    from twisted.internet.address import IPv4Address
    from twisted.internet.task import Clock
    from twisted.web.test.requesthelper import DummyRequest

    from pushd.backends.memory import MemoryBackend
    from pushd.config import Config
    from pushd.errors import Forbidden, Unauthorized
    from pushd.hub import Hub
    from pushd.transports.relay import Relay, default_locations
    from pushd.transports.relay_publisher import publisher_app

    hub = Hub(MemoryBackend(), Clock(), Config(api_secret="s" * 32))
    relay = Relay(hub, default_locations())
    location = relay.locations[1]
    for host in ("192.168.1.1", "127.0.0.1"):
        request = DummyRequest([b"publisher", b"news"])
        request.getClientAddress = lambda host=host: IPv4Address("TCP", host, 40000)
        with pytest.raises(Unauthorized):
            await publisher_app(relay, location, request)
        request.requestHeaders.setRawHeaders(b"authorization", [b"Bearer " + b"x" * 32])
        with pytest.raises(Forbidden):
            await publisher_app(relay, location, request)
        request.requestHeaders.setRawHeaders(b"authorization", [b"Bearer " + b"s" * 32])
        assert (await publisher_app(relay, location, request)).id == "default"
