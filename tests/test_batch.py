"""POST /api/batch: several messages, each to its own channel with its own
event, in one request; each validated and answered on its own."""

from pytest_twisted import ensureDeferred
from test_api import call


@ensureDeferred
async def test_batch_publishes_each_message_in_order(start_server):
    """Messages with different events and channels arrive, in order, each with
    the id its item was answered with."""
    server = await start_server()
    client = await server.connected()
    await client.subscribe("a")
    await client.subscribe("b")
    code, body, _ = await call(
        server,
        "POST",
        "/api/batch",
        {
            "batch": [
                {"channel": "a", "event": "first", "data": 1},
                {"channel": "b", "event": "second", "data": {"x": 2}},
                {"channel": "a", "event": "third", "data": None},
            ]
        },
    )
    assert code == 202
    assert [r["status"] for r in body["batch"]] == [202, 202, 202]
    assert [r["channel"] for r in body["batch"]] == ["a", "b", "a"]
    frames = [await client.next_of("message") for _ in range(3)]
    assert [(f["channel"], f["event"], f["data"], f["id"]) for f in frames] == [
        ("a", "first", 1, body["batch"][0]["id"]),
        ("b", "second", {"x": 2}, body["batch"][1]["id"]),
        ("a", "third", None, body["batch"][2]["id"]),
    ]


@ensureDeferred
async def test_bad_items_are_refused_alone(start_server):
    """An invalid item gets its own error; the valid ones are still published
    (207 Multi-Status)."""
    server = await start_server()
    client = await server.connected()
    await client.subscribe("ok")
    code, body, _ = await call(
        server,
        "POST",
        "/api/batch",
        {
            "batch": [
                {"channel": "bad channel", "event": "e", "data": 1},
                {"channel": "ok", "event": "e", "data": "delivered"},
                {"channel": "ok", "data": 1},
                "not an object",
                {"channel": "ok", "event": "pushd:x", "data": 1},
            ]
        },
    )
    assert code == 207
    assert [(r["status"], r.get("error")) for r in body["batch"]] == [
        (400, "invalid_channel"),
        (202, None),
        (400, "missing_field"),
        (400, "invalid_field"),
        (400, "invalid_field"),
    ]
    frame = await client.next_of("message")
    assert (frame["id"], frame["data"]) == (body["batch"][1]["id"], "delivered")
    client.assert_nothing_queued()


@ensureDeferred
async def test_batch_shape_and_size_are_checked(start_server):
    """No 'batch' list, an empty one, or more than max-batch items: 400 for the
    whole request, nothing published; and it needs the app's secret."""
    server = await start_server(max_batch=2)
    item = {"channel": "c", "event": "e", "data": 1}
    for payload in ({"messages": []}, {"batch": []}, {"batch": [item] * 3}, [item]):
        code, body, _ = await call(server, "POST", "/api/batch", payload)
        assert code == 400, payload
        assert body["error"] in ("missing_field", "invalid_field")
    code, _, _ = await call(server, "POST", "/api/batch", {"batch": [item]}, headers={})
    assert code == 401


@ensureDeferred
async def test_too_deep_data_is_refused_per_item(start_server):
    """An item whose data nests deeper than max-json-depth is refused alone
    (400 invalid_json); the others are published."""
    server = await start_server(max_json_depth=4)
    client = await server.connected()
    await client.subscribe("ok")
    deep: object = 1
    for _ in range(5):
        deep = [deep]
    code, body, _ = await call(
        server,
        "POST",
        "/api/batch",
        {
            "batch": [
                {"channel": "ok", "event": "e", "data": deep},
                {"channel": "ok", "event": "e", "data": [[[1]]]},
            ]
        },
    )
    assert code == 207
    assert [(r["status"], r.get("error")) for r in body["batch"]] == [
        (400, "invalid_json"),
        (202, None),
    ]
    assert (await client.next_of("message"))["data"] == [[[1]]]
    client.assert_nothing_queued()
