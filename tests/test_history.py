"""History and recovery after reconnect, over real sockets, memory and Redis."""

import json

import treq
from clients import connect_ws
from pytest_twisted import ensureDeferred

from pushd.history import HistoryRule, Retention

HISTORY = (HistoryRule("chat-*", Retention(size=20, ttl=60)),)


async def publish(server, channel, data):
    response = await treq.post(
        server.url + "/api/channels/%s/messages" % channel,
        json={"event": "e", "data": data},
        headers=server.auth(),
    )
    assert response.code == 202, await response.text()


@ensureDeferred
async def test_reconnect_gets_exactly_what_it_missed(start_server, backend_for):
    """Disconnect mid-stream, publish, reconnect with the last position:
    the missing messages once, in order, then live ones with no gap."""
    server = await start_server(backend=backend_for(), history=HISTORY)
    client = await server.connected()
    client.send({"type": "subscribe", "channel": "chat-1"})
    reply = await client.next_of("subscribed")
    assert (reply["offset"], reply["epoch"]) == (0, "")
    for n in range(3):
        await publish(server, "chat-1", n)
    seen = [await client.next_of("message") for _ in range(3)]
    assert [m["offset"] for m in seen] == [1, 2, 3]
    last = seen[-1]
    await client.close()
    for n in range(3, 8):
        await publish(server, "chat-1", n)
    again = await server.connected()
    again.send(
        {
            "type": "subscribe",
            "channel": "chat-1",
            "since": {"offset": last["offset"], "epoch": last["epoch"]},
        }
    )
    reply = await again.next_of("subscribed")
    assert (reply["recovered"], reply["offset"], reply["epoch"]) == (
        True,
        8,
        last["epoch"],
    )
    replayed = [await again.next_of("message") for _ in range(5)]
    assert [m["data"] for m in replayed] == [3, 4, 5, 6, 7]
    await publish(server, "chat-1", 8)
    live = await again.next_of("message")
    assert (live["data"], live["offset"]) == (8, 9)
    again.assert_nothing_queued()


@ensureDeferred
async def test_recovery_refused_when_history_is_gone(start_server, backend_for):
    """Too old a position or a foreign epoch: recovered false, plus what is kept."""
    rules = (HistoryRule("chat-*", Retention(size=3, ttl=60)),)
    server = await start_server(backend=backend_for(), history=rules)
    for n in range(6):
        await publish(server, "chat-2", n)
    client = await server.connected()
    client.send(
        {"type": "subscribe", "channel": "chat-2", "since": {"offset": 1, "epoch": "x"}}
    )
    reply = await client.next_of("subscribed")
    assert reply["recovered"] is False
    assert [(await client.next_of("message"))["data"] for _ in range(3)] == [3, 4, 5]
    epoch = reply["epoch"]
    other = await server.connected()
    other.send(
        {
            "type": "subscribe",
            "channel": "chat-2",
            "since": {"offset": 1, "epoch": epoch},
        }
    )
    reply = await other.next_of("subscribed")
    assert reply["recovered"] is False  # 2 was trimmed away
    assert [(await other.next_of("message"))["data"] for _ in range(3)] == [3, 4, 5]
    plain = await server.connected()
    plain.send(
        {"type": "subscribe", "channel": "news", "since": {"offset": 1, "epoch": epoch}}
    )
    reply = await plain.next_of("subscribed")
    assert reply == {"type": "subscribed", "channel": "news", "recovered": False}


@ensureDeferred
async def test_bad_since_is_refused(start_server):
    """A subscribe with a malformed 'since' gets an invalid_field error, not a wrong replay."""
    server = await start_server(history=HISTORY)
    client = await server.connected()
    for since in ({"offset": -1}, {"offset": "3"}, 5, {"offset": 1, "epoch": 7}):
        client.send({"type": "subscribe", "channel": "chat-1", "since": since})
        assert (await client.next_of("error"))["code"] == "invalid_field"


@ensureDeferred
async def test_history_over_rest(start_server, backend_for):
    """GET .../history returns the kept messages with their positions, on memory and Redis."""
    server = await start_server(backend=backend_for(), history=HISTORY)
    for n in range(5):
        await publish(server, "chat-3", {"n": n})

    async def get(path):
        response = await treq.get(server.url + path, headers=server.auth())
        return response.code, json.loads(await response.text())

    code, body = await get("/api/channels/chat-3/history")
    assert code == 200 and body["offset"] == 5
    assert [m["data"]["n"] for m in body["messages"]] == [0, 1, 2, 3, 4]
    epoch = body["epoch"]
    code, body = await get("/api/channels/chat-3/history?since=3&epoch=%s" % epoch)
    assert ([m["offset"] for m in body["messages"]], body["recovered"]) == (
        [4, 5],
        True,
    )
    code, body = await get("/api/channels/chat-3/history?limit=2")
    assert [m["offset"] for m in body["messages"]] == [4, 5]
    code, body = await get("/api/channels/news/history")
    assert (code, body["error"]) == (404, "not_found")
    code, body = await get("/api/channels/chat-3/history?since=x")
    assert (code, body["error"]) == (400, "invalid_field")


@ensureDeferred
async def test_recovery_across_pushd_restart(pushd_process, redis_server, tmp_path):
    """With Redis or SQLite, history and positions survive a pushd restart;
    with the memory backend the epoch changes and the client is told it
    cannot recover."""
    secret = "h" * 32
    config = tmp_path / "pushd.yaml"
    config.write_text(
        "api-secret: %s\nhistory:\n  - channel: 'chat-*'\n    size: 50\n"
        "    ttl: 60\n" % secret
    )
    on_disk = "sqlite:path=%s" % (tmp_path / "history.db")
    for backend, recovered in (
        (redis_server.spec(), True),
        (on_disk, True),
        ("memory", False),
    ):
        node = pushd_process(
            "-c",
            str(config),
            "--listen",
            "tcp:0:interface=127.0.0.1",
            "--backend",
            backend,
        )
        port = await node.port()
        client = await connect_ws(port)
        await client.next_of("connected")
        await client.subscribe("chat-r")
        url = "http://127.0.0.1:%d/api/channels/chat-r/messages" % port
        auth = {"Authorization": "Bearer " + secret}
        await treq.post(url, json={"event": "e", "data": "seen"}, headers=auth)
        seen = await client.next_of("message")
        await client.close()
        await treq.post(url, json={"event": "e", "data": "missed"}, headers=auth)
        node.kill()
        node = pushd_process(
            "-c",
            str(config),
            "--listen",
            "tcp:0:interface=127.0.0.1",
            "--backend",
            backend,
        )
        port = await node.port()
        client = await connect_ws(port)
        await client.next_of("connected")
        client.send(
            {
                "type": "subscribe",
                "channel": "chat-r",
                "since": {"offset": seen["offset"], "epoch": seen["epoch"]},
            }
        )
        reply = await client.next_of("subscribed")
        assert reply["recovered"] is recovered, backend
        if recovered:
            assert (await client.next_of("message"))["data"] == "missed"
        client.assert_nothing_queued()
        await client.close()
        node.kill()
