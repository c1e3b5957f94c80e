"""What an operator sees and bounds: /metrics, /api/stats, connection limits
(docs/operations.md), against real pushd servers and real clients."""

from __future__ import annotations

import json
import re

import treq
from pytest_twisted import ensureDeferred
from test_api import call
from test_sse import open_stream

from pushd.apps import App
from pushd.testing import eventually

ADMIN = "operator-secret-0123456789"


async def scrape(server, secret=ADMIN):
    response = await treq.get(
        server.url + "/metrics", headers={"Authorization": "Bearer " + secret}
    )
    assert response.code == 200, await response.text()
    return await response.text()


def value(text: str, name: str, **labels) -> float:
    """The sample ``name{labels}`` in Prometheus text; 0 when absent."""
    for line in text.splitlines():
        match = re.match(r"^(\w+)(?:\{(.*)\})? (\S+)$", line)
        if not match or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if all(found.get(k) == str(v) for k, v in labels.items()):
            return float(match.group(3))
    return 0.0


@ensureDeferred
async def test_metrics_are_for_the_operator_only(start_server):
    """/metrics answers the admin-secret only: an app's secret (which must not
    see other apps' figures) gets 403, no credentials 401; without an
    admin-secret configured it is off (403)."""
    off = await start_server()
    response = await treq.get(off.url + "/metrics", headers=off.auth())
    assert (response.code, (await response.json())["error"]) == (403, "forbidden")

    server = await start_server(admin_secret=ADMIN)
    assert (await treq.get(server.url + "/metrics")).code == 401
    response = await treq.get(server.url + "/metrics", headers=server.auth())
    assert response.code == 403
    text = await scrape(server)
    assert "# TYPE pushd_messages_published_total counter" in text


@ensureDeferred
async def test_metrics_move_when_things_happen(start_server):
    """Connect, publish, a refused key, a rate-limit disconnect: each moves
    its metric, by transport, app and code."""
    server = await start_server(
        admin_secret=ADMIN, client_key="good-key", client_burst=2, client_rate=0.1
    )
    before = await scrape(server)
    assert value(before, "pushd_connections", transport="ws", app="default") == 0

    client = await server.connected("?key=good-key")
    await client.subscribe("news")
    code, _, _ = await call(
        server, "POST", "/api/channels/news/messages", {"event": "e", "data": 1}
    )
    assert code == 202
    await client.next_of("message")
    text = await scrape(server)
    assert value(text, "pushd_connections", transport="ws", app="default") == 1
    assert value(text, "pushd_connections_opened_total", transport="ws") == 1
    assert value(text, "pushd_subscriptions") == 1
    assert value(text, "pushd_channels") == 1
    assert value(text, "pushd_messages_published_total", app="default") == 1
    assert value(text, "pushd_messages_delivered_total") == 1
    assert value(text, "pushd_publish_seconds_count") == 1
    assert value(text, "pushd_frames_sent_total", transport="ws") >= 3
    assert value(text, "pushd_bytes_sent_total", transport="ws") > 50
    assert value(text, "pushd_backend_up") == 1

    # A batch moves them per message, and the latency histogram stays whole:
    # every observation in a bucket, cumulative up to +Inf.
    code, _, _ = await call(
        server,
        "POST",
        "/api/batch",
        {"batch": [{"channel": "news", "event": "e", "data": n} for n in range(3)]},
    )
    assert code == 202
    for _ in range(3):
        await client.next_of("message")
    text = await scrape(server)
    assert value(text, "pushd_messages_published_total", app="default") == 4
    assert value(text, "pushd_messages_delivered_total") == 4
    assert value(text, "pushd_publish_seconds_count") == 4
    buckets = [
        value(text, "pushd_publish_seconds_bucket", le=le)
        for le in ("0.0001", "0.001", "0.01", "0.1", "1.0", "+Inf")
    ]
    assert buckets == sorted(buckets) and buckets[-1] == 4
    assert 0 < value(text, "pushd_publish_seconds_sum") < 4
    # Each message published is timed once; one the hub refuses is not.
    code, _, _ = await call(
        server,
        "POST",
        "/api/batch",
        {
            "batch": [
                {"channel": "news", "event": "e", "data": 5},
                {"channel": "news", "event": "no spaces allowed", "data": 6},
                {"channel": "news", "event": "e", "data": 7},
            ]
        },
    )
    assert code == 207
    text = await scrape(server)
    assert value(text, "pushd_messages_published_total", app="default") == 6
    assert value(text, "pushd_publish_seconds_count") == 6

    refused = await server.connect("?key=wrong")
    assert (await refused.wait_closed())[0] == 4001
    noisy = await server.connected("?key=good-key")
    for _ in range(10):
        noisy.send({"type": "ping"})
    assert (await noisy.wait_closed())[0] == 4108
    text = await scrape(server)
    assert (
        value(text, "pushd_connections_refused_total", reason="invalid_client_key") == 1
    )
    assert value(text, "pushd_disconnects_total", code="4108") == 1
    assert value(text, "pushd_connections", transport="ws", app="default") == 1


@ensureDeferred
async def test_slow_consumer_disconnect_is_counted(start_server):
    """A client that stops reading is dropped with 4109, and counted."""
    server = await start_server(
        admin_secret=ADMIN,
        send_queue_bytes=256 * 1024,
        max_message_size=512 * 1024,
    )
    fast = await server.connected()
    slow = await server.connected()
    await fast.subscribe("firehose")
    await slow.subscribe("firehose")
    slow.proto.transport.pauseProducing()  # stop reading from the socket
    blob = "x" * 200_000
    for n in range(100):  # 20 MB: more than loopback's buffers can hide
        await server.hub.publish(server.app, ["firehose"], "blob", {"n": n, "b": blob})
        await fast.next_of("message")  # paced by the reading client, not by time
    await server.wait_sessions(1, timeout=10)
    slow.proto.transport.resumeProducing()
    # The 4109 close frame sits behind the stalled backlog; the client may
    # see the connection dropped instead.  The server counts what it did.
    await slow.wait_closed()
    assert value(await scrape(server), "pushd_disconnects_total", code="4109") == 1


@ensureDeferred
async def test_webhook_drops_are_counted(start_server):
    """Past webhook-queue, events are dropped: pushd_webhooks_dropped_total
    (the attribute that used to be the only record) moves."""
    from pushd.webhooks import target_from_mapping

    target = target_from_mapping(
        {"url": "http://127.0.0.1:9/hook", "events": ["channel_occupied"]}
    )
    server = await start_server(
        admin_secret=ADMIN, webhooks=(target,), webhook_queue=1, webhook_timeout=5
    )
    client = await server.connected()
    for name in ("a", "b", "c"):
        await client.subscribe(name)
    await eventually(lambda: server.hub.webhooks.dropped >= 1)
    text = await scrape(server)
    assert value(text, "pushd_webhooks_dropped_total") == server.hub.webhooks.dropped
    assert value(text, "pushd_webhook_queue") == 1


@ensureDeferred
async def test_backend_down_shows_in_metrics(start_server, redis_server):
    """Redis killed: pushd_backend_up goes to 0; back: 1, one reconnect."""
    from twisted.internet import reactor

    from pushd.backends.redis import RedisBackend

    backend = RedisBackend(reactor, port=redis_server.port)
    server = await start_server(backend=backend, admin_secret=ADMIN)
    assert value(await scrape(server), "pushd_backend_up") == 1
    assert value(await scrape(server), "pushd_backend_commands_total") > 0
    redis_server.stop()
    await eventually(lambda: not backend.state()["up"], 10)
    text = await scrape(server)
    assert (value(text, "pushd_backend_up"), value(text, "pushd_ready")) == (0, 0)
    redis_server.start()
    await eventually(lambda: backend.state()["up"], 15)
    text = await scrape(server)
    assert value(text, "pushd_backend_up") == 1
    assert value(text, "pushd_backend_reconnects_total") == 1


APPS = (
    App("chat", "chat-key-123", "chat-secret-123"),
    App("news", "news-key-123", "news-secret-123"),
)


def bearer(secret):
    return {"Authorization": "Bearer " + secret}


@ensureDeferred
async def test_stats_on_two_nodes(start_server, redis_server):
    """Two nodes on one Redis: the operator sees both nodes with their lease
    age, every app's figures across the cluster and this node's connections;
    an app sees only itself."""
    from twisted.internet import reactor

    from pushd.backends.redis import RedisBackend

    nodes = [
        await start_server(
            backend=RedisBackend(reactor, port=redis_server.port),
            apps=APPS,
            admin_secret=ADMIN,
        )
        for _ in range(2)
    ]
    chat_a = await nodes[0].connected("?key=chat-key-123")
    await chat_a.subscribe("room-1")
    chat_b = await nodes[1].connected("?key=chat-key-123")
    await chat_b.subscribe("room-2")
    news = await nodes[1].connected("?key=news-key-123")
    await news.subscribe("headlines")

    code, stats, _ = await call(nodes[0], "GET", "/api/stats", headers=bearer(ADMIN))
    assert code == 200
    assert stats["node"]["connections"] == 1
    assert stats["node"]["connections_by_transport"] == {"ws": 1}
    assert stats["node"]["backend"]["up"] is True
    assert stats["node"]["ready"] is True
    ids = sorted(n["id"] for n in stats["cluster"]["nodes"])
    assert ids == sorted(s.hub.node_id for s in nodes)
    assert all(0 <= n["lease_age_seconds"] < 30 for n in stats["cluster"]["nodes"])
    assert stats["apps"]["chat"]["cluster"]["channels"] == 2
    assert stats["apps"]["news"]["cluster"]["channels"] == 1
    assert stats["apps"]["chat"]["node"]["connections"] == 1
    assert stats["apps"]["news"]["node"]["connections"] == 0

    code, mine, _ = await call(
        nodes[1], "GET", "/api/stats", headers=bearer("news-secret-123")
    )
    assert code == 200
    assert mine["app"] == "news"
    assert mine["node"]["connections"] == 1
    assert mine["cluster"] == {"channels": 1, "users_online": 0, "nodes": 2}
    assert "apps" not in mine and "chat" not in str(mine)
    code, _, _ = await call(nodes[1], "GET", "/api/stats", headers=bearer("nope"))
    assert code == 403


@ensureDeferred
async def test_max_connections_refuses_websocket_and_sse_and_counts(start_server):
    """Past max-connections a WebSocket is closed with 4100 and an SSE stream
    gets 503 with Retry-After; a place freed is taken again."""
    server = await start_server(admin_secret=ADMIN, max_connections=1)
    first = await server.connected()
    refused = await server.connect()
    assert (await refused.wait_closed())[0] == 4100
    response = await treq.get(server.url + "/sse?channel=x")
    assert response.code == 503
    assert response.headers.getRawHeaders("retry-after") == ["5"]
    assert (await response.json())["error"] == "over_capacity"
    text = await scrape(server)
    assert value(text, "pushd_connections_refused_total", reason="max_connections") == 2
    await first.close()
    await server.wait_sessions(0)
    await server.connected()


@ensureDeferred
async def test_per_app_limit(start_server):
    """max-connections-per-app: one app full does not refuse another."""
    server = await start_server(
        apps=APPS, admin_secret=ADMIN, max_connections_per_app=1
    )
    await server.connected("?key=chat-key-123")
    refused = await server.connect("?key=chat-key-123")
    assert (await refused.wait_closed())[0] == 4100
    await server.connected("?key=news-key-123")
    assert (
        value(
            await scrape(server),
            "pushd_connections_refused_total",
            reason="max_connections_per_app",
        )
        == 1
    )


@ensureDeferred
async def test_per_ip_limit_through_a_trusted_proxy(start_server):
    """Behind a trusted proxy, X-Forwarded-For names the client: each client
    IP has its own allowance; from an untrusted peer the header is ignored."""
    trusted = await start_server(
        admin_secret=ADMIN, max_connections_per_ip=1, trusted_proxies=_nets("127.0.0.1")
    )
    one = await stream(trusted, "203.0.113.7")
    assert one.status == 200
    again = await treq.get(
        trusted.url + "/sse?channel=x", headers={"X-Forwarded-For": "203.0.113.7"}
    )
    assert again.code == 503
    other = await stream(trusted, "198.51.100.1, 203.0.113.9")
    assert other.status == 200
    assert (
        value(
            await scrape(trusted),
            "pushd_connections_refused_total",
            reason="max_connections_per_ip",
        )
        == 1
    )

    direct = await start_server(max_connections_per_ip=1)
    assert (await stream(direct, "203.0.113.7")).status == 200
    forged = await treq.get(
        direct.url + "/sse?channel=x", headers={"X-Forwarded-For": "192.0.2.1"}
    )
    assert forged.code == 503  # still 127.0.0.1: the header is not trusted


@ensureDeferred
async def test_connect_rate_per_ip(start_server):
    """A reconnect storm from one IP: past connect-burst-per-ip at once, new
    connections are refused (4100) until the rate refills."""
    server = await start_server(
        admin_secret=ADMIN, connect_rate_per_ip=0.01, connect_burst_per_ip=2
    )
    for _ in range(2):
        client = await server.connected()
        await client.close()
    refused = await server.connect()
    assert (await refused.wait_closed())[0] == 4100
    assert (
        value(
            await scrape(server),
            "pushd_connections_refused_total",
            reason="connect_rate_per_ip",
        )
        == 1
    )


async def stream(server, forwarded_for):
    """An SSE stream whose request says it was forwarded for these IPs."""
    opened = await open_stream(
        server, "channel=x", [("X-Forwarded-For", forwarded_for)]
    )
    await eventually(lambda: opened.status is not None)
    return opened


def _nets(*items):
    from pushd.config import Config

    return Config.from_mapping({"trusted-proxies": list(items)}).trusted_proxies


def test_client_ip_believes_only_trusted_proxies():
    """Forwarding headers name the client only when the peer is a trusted
    proxy; the nearest untrusted hop wins, so a client cannot pick its IP by
    prepending addresses; garbage means the peer itself."""
    from pushd.limits import client_ip

    proxies = _nets("10.0.0.0/8", "127.0.0.1")
    assert client_ip("198.51.100.4", "1.2.3.4", None, proxies) == "198.51.100.4"
    assert client_ip("10.1.1.1", "1.2.3.4, 203.0.113.5", None, proxies) == "203.0.113.5"
    assert (
        client_ip("10.1.1.1", "203.0.113.5, 10.2.2.2", None, proxies) == "203.0.113.5"
    )
    assert (
        client_ip(
            "127.0.0.1",
            None,
            'for=192.0.2.60;proto=https, for="[2001:db8::1]:4711"',
            proxies,
        )
        == "2001:db8::1"
    )
    assert (
        client_ip("127.0.0.1", None, 'for="192.0.2.43:47011"', proxies) == "192.0.2.43"
    )
    assert client_ip("127.0.0.1", "not-an-ip", None, proxies) == "127.0.0.1"
    assert client_ip("127.0.0.1", "1.2.3.4", None, ()) == "127.0.0.1"


@ensureDeferred
async def test_pusher_clients_count_against_the_same_limits(start_server):
    """A Pusher client (/app/{key}) past max-connections gets Pusher's
    pusher:error 4100 (over capacity) and the close, like native clients."""
    from clients import connect_ws

    server = await start_server(client_key="pusher-key-123", max_connections=1)
    native = await server.connected("?key=pusher-key-123")
    pusher = await connect_ws(server.port, "?protocol=7", path="/app/pusher-key-123")
    server.clients.append(pusher)
    frame = await pusher.next()
    assert frame["event"] == "pusher:error"
    error = (
        frame["data"] if isinstance(frame["data"], dict) else json.loads(frame["data"])
    )
    assert error["code"] == 4100
    assert (await pusher.wait_closed())[0] == 4100
    await native.close()
    await server.wait_sessions(0)
    welcome = await connect_ws(server.port, "?protocol=7", path="/app/pusher-key-123")
    server.clients.append(welcome)
    assert (await welcome.next())["event"] == "pusher:connection_established"


@ensureDeferred
async def test_access_log_names_the_client_behind_a_trusted_proxy(start_server):
    """With trusted-proxies, the access log shows the client's IP from
    X-Forwarded-For, not the proxy's; an untrusted peer's header is not used."""
    import io

    trusted = await start_server(access_log=True, trusted_proxies=_nets("127.0.0.1"))
    plain = await start_server(access_log=True)
    lines = []
    for server in (trusted, plain):
        server.site._logFile = io.StringIO()
        response = await treq.get(
            server.url + "/health", headers={"X-Forwarded-For": "203.0.113.77"}
        )
        assert response.code == 200
        await response.content()
        await eventually(lambda s=server: s.site._logFile.getvalue())
        lines.append(server.site._logFile.getvalue())
    assert lines[0].startswith('"203.0.113.77" - - ')
    assert lines[1].startswith('"127.0.0.1" - - ')


@ensureDeferred
async def test_access_log_never_shows_credentials_from_the_query(start_server):
    """Client tokens (WebSocket/SSE clients can't send headers) and Pusher
    request signatures (replayable for 600 s) travel in query strings; the
    access log, read by more people than hold the secret, shows them
    redacted and keeps the rest of the URI."""
    import io

    server = await start_server(access_log=True)
    server.site._logFile = io.StringIO()
    query = "?key=public-key&token=tok-SECRET-1&auth_signature=sig-SECRET-2&x=1"
    response = await treq.get(server.url + "/health" + query)
    assert response.code == 200
    await response.content()
    await eventually(lambda: server.site._logFile.getvalue())
    line = server.site._logFile.getvalue()
    assert "SECRET" not in line
    assert (
        "/health?key=public-key&token=[redacted]&auth_signature=[redacted]&x=1" in line
    )
