"""Who may use the HTTP push relay: publishers prove an app's secret, from
any address; apps never cross; subscribers identify as on every transport.
All over real sockets, from 127.0.0.1 (as behind a reverse proxy)."""

import time

import pytest
import treq
from pytest_twisted import ensureDeferred
from twisted.logger import globalLogPublisher

from pushd.apps import app_from_mapping
from pushd.auth import make_user_token, request_text, sign
from pushd.testing import eventually
from pushd.transports.relay import location_from_mapping

APPS = (
    {"id": "one", "key": "one-key-1", "secret": "one-secret-that-is-long"},
    {"id": "two", "key": "two-key-2", "secret": "two-secret-that-is-long"},
)
ONE = {"Authorization": "Bearer one-secret-that-is-long"}
TWO = {"Authorization": "Bearer two-secret-that-is-long"}


def two_apps(**settings):
    return {"apps": tuple(app_from_mapping(a) for a in APPS), **settings}


async def request(server, method, path, body=None, headers=None):
    response = await treq.request(
        method, server.url + path, data=body, headers=headers or {}
    )
    return response.code, await response.content(), response


def located(*raw):
    return tuple(location_from_mapping(r) for r in raw)


POLL = {"type": "subscriber", "prefix": "/poll/", "polling": "interval"}
PUB = {"type": "publisher", "prefix": "/publisher/"}


@ensureDeferred
async def test_loopback_without_credentials_is_refused(start_server):
    """A request from 127.0.0.1 without credentials publishes, creates and
    deletes nothing: behind a reverse proxy every request is from loopback."""
    server = await start_server()
    assert (await request(server, "POST", "/publisher/news", b"x", server.auth()))[
        0
    ] == 202
    for method in ("POST", "PUT", "DELETE", "GET"):
        code, body, response = await request(server, method, "/publisher/news", b"y")
        assert code == 401, method
        assert response.headers.getRawHeaders("content-type") == ["application/json"]
        assert b'"error":"unauthorized"' in body
    code, _, _ = await request(
        server, "DELETE", "/publisher/news", headers={"Authorization": "Bearer wrong"}
    )
    assert code == 403
    code, text, _ = await request(server, "GET", "/publisher/news", None, server.auth())
    assert code == 200 and b"queued messages: 1" in text  # still there, unchanged


@ensureDeferred
async def test_signed_requests_publish_and_cannot_be_replayed(start_server):
    """A signed request (X-Pushd-Key/Timestamp/Signature, as on the REST API)
    publishes for its app; the same signature a second time is refused."""
    server = await start_server(**two_apps(relay_locations=located(POLL, PUB)))
    timestamp = "%d" % time.time()
    signature = sign(
        APPS[1]["secret"],
        request_text(b"POST", b"/publisher/signed", timestamp, b"hello"),
    )
    headers = {
        "X-Pushd-Key": "two-key-2",
        "X-Pushd-Timestamp": timestamp,
        "X-Pushd-Signature": signature,
    }
    assert (await request(server, "POST", "/publisher/signed", b"hello", headers))[
        0
    ] == 202
    code, body, _ = await request(
        server, "POST", "/publisher/signed", b"hello", headers
    )
    assert code == 401 and b"replay" in body
    code, body, _ = await request(server, "GET", "/poll/signed?key=two-key-2")
    assert (code, body) == (200, b"hello")


@ensureDeferred
async def test_apps_never_cross_either_way(start_server):
    """Each app's secret publishes to and deletes its own app's channel of
    a name, and each app's key reads only its own."""
    server = await start_server(**two_apps(relay_locations=located(POLL, PUB)))
    assert (await request(server, "POST", "/publisher/news", b"for one", ONE))[0] == 202
    assert (await request(server, "POST", "/publisher/news", b"for two", TWO))[0] == 202
    for key, body in (("one-key-1", b"for one"), ("two-key-2", b"for two")):
        code, got, _ = await request(server, "GET", "/poll/news?key=" + key)
        assert (code, got) == (200, body)
    code, _, _ = await request(server, "DELETE", "/publisher/news", headers=TWO)
    assert code == 200
    code, got, _ = await request(server, "GET", "/poll/news?key=one-key-1")
    assert (code, got) == (200, b"for one")  # app two's delete left app one's
    assert (await request(server, "GET", "/poll/news?key=two-key-2"))[0] == 304
    code, text, _ = await request(server, "GET", "/publisher/news", headers=ONE)
    assert code == 200 and b"queued messages: 1" in text
    assert (await request(server, "GET", "/publisher/news", headers=TWO))[0] == 404
    assert (await request(server, "DELETE", "/publisher/news", headers=ONE))[0] == 200
    assert (await request(server, "GET", "/poll/news?key=one-key-1"))[0] == 304


@ensureDeferred
async def test_a_location_that_names_its_app_refuses_the_others(start_server):
    """A location configured with ``app`` serves that app only: another
    app's secret or key is refused, whatever it is valid for elsewhere."""
    server = await start_server(
        **two_apps(
            relay_locations=located(
                {**POLL, "prefix": "/one/poll/", "app": "one"},
                {**PUB, "prefix": "/one/pub/", "app": "one"},
            )
        )
    )
    code, body, _ = await request(server, "POST", "/one/pub/c", b"x", TWO)
    assert (code, b"another app" in body) == (403, True)
    assert (await request(server, "POST", "/one/pub/c", b"x", ONE))[0] == 202
    code, body, _ = await request(server, "GET", "/one/poll/c?key=two-key-2")
    assert (code, b"another app" in body) == (403, True)
    assert (await request(server, "GET", "/one/poll/c?key=one-key-1"))[1] == b"x"


@ensureDeferred
async def test_subscribers_follow_the_apps_key_and_token_rules(start_server):
    """As WebSocket (4001/4006...) and SSE (401) refuse: no or a wrong key,
    no token where the app refuses anonymous clients, a bad or expired
    token, a disallowed origin.  A valid token reads."""
    secret = "strict-secret-is-long"
    app = app_from_mapping(
        {"id": "strict", "key": "strict-key", "secret": secret, "anonymous": False}
    )
    server = await start_server(
        apps=(app,),
        allowed_origins=("https://ok.example",),
        relay_locations=located(POLL, PUB),
    )
    auth = {"Authorization": "Bearer " + secret}
    assert (await request(server, "POST", "/publisher/c", b"data", auth))[0] == 202
    token = make_user_token(secret, "ann")
    expired = make_user_token(secret, "ann", ttl=-10)
    cases = [
        ("", {}, 401, "invalid_client_key"),
        ("?key=wrong", {}, 401, "invalid_client_key"),
        ("?key=strict-key", {}, 401, "token_required"),
        ("?key=strict-key&token=pushd1.x.y", {}, 401, "invalid_token"),
        ("?key=strict-key&token=" + expired, {}, 401, "token_expired"),
        (
            "?key=strict-key&token=" + token,
            {"Origin": "https://evil.example"},
            403,
            "forbidden",
        ),
    ]
    for query, headers, status, error in cases:
        code, body, response = await request(
            server, "GET", "/poll/c" + query, headers=headers
        )
        assert (code, b'"error":"%s"' % error.encode() in body) == (status, True), query
        assert response.headers.getRawHeaders("content-type") == ["application/json"]
    code, body, _ = await request(
        server,
        "GET",
        "/poll/c?key=strict-key&token=" + token,
        headers={"Origin": "https://ok.example"},
    )
    assert (code, body) == (200, b"data")


@ensureDeferred
async def test_open_location_needs_no_credentials_and_is_warned_about(start_server):
    """``auth: none`` opens a location explicitly, and start says so."""
    warnings = []

    def observe(event):
        if event.get("log_level").name == "warn" and "relay" in str(
            event.get("log_format")
        ):
            warnings.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        server = await start_server(
            client_key="the-client-key",
            relay_locations=located({**POLL, "auth": "none"}, {**PUB, "auth": "none"}),
        )
    finally:
        globalLogPublisher.removeObserver(observe)
    assert {(w["kind"], w["url"]) for w in warnings} == {
        ("subscriber", "/poll/(.+)"),
        ("publisher", "/publisher/(.+)"),
    }
    assert (await request(server, "POST", "/publisher/open", b"hi"))[0] == 202
    assert (await request(server, "GET", "/poll/open"))[1] == b"hi"


@pytest.mark.parametrize(
    "location,message",
    [
        ({**PUB, "auth": "none"}, "must name its app"),
        ({**PUB, "app": "three"}, "no app 'three'"),
        ({**PUB, "auth": "maybe"}, "auth must be app"),
    ],
)
def test_location_apps_are_checked_at_start(tmp_path, capsys, location, message):
    """An open location among several apps, or one naming an unknown app,
    stops the server at start with one line."""
    import yaml

    from pushd.tap import Options

    path = tmp_path / "pushd.yaml"
    path.write_text(yaml.safe_dump({"apps": list(APPS), "relay-locations": [location]}))
    with pytest.raises(SystemExit):
        Options().parseOptions(["--config", str(path)])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


@ensureDeferred
async def test_post_that_reaches_waiting_subscribers_says_how_many(start_server):
    """201, and the body counts the subscribers the message reached (they
    answer and leave at once; the count must not read 0)."""
    server = await start_server()
    await request(server, "POST", "/publisher/count", b"seed", server.auth())
    first = await treq.get(server.url + "/subscriber/count")
    since = {
        "If-Modified-Since": first.headers.getRawHeaders("last-modified")[0],
        "If-None-Match": first.headers.getRawHeaders("etag")[0],
    }
    waiting = [
        treq.get(server.url + "/subscriber/count", headers=since) for _ in range(3)
    ]
    await eventually(lambda: server.hub.local_subscribers("count") == 3)
    code, text, _ = await request(
        server, "POST", "/publisher/count", b"now", server.auth()
    )
    assert code == 201 and b"active subscribers: 3\r\n" in text, text
    assert [await (await w).content() for w in waiting] == [b"now"] * 3
    code, text, _ = await request(
        server, "POST", "/publisher/count", b"later", server.auth()
    )
    assert code == 202 and b"active subscribers: 0\r\n" in text
