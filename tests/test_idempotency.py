"""Idempotency keys over the REST API (the store contract is in
pushd.testing.IdempotencyContract, run for every backend)."""

import treq
from pytest_twisted import ensureDeferred

from pushd.testing import eventually


async def post(server, body, key=None, path="/api/channels/news/messages"):
    headers = server.auth()
    if key is not None:
        headers["Idempotency-Key"] = key
    response = await treq.post(server.url + path, json=body, headers=headers)
    return response.code, await response.json()


@ensureDeferred
async def test_retries_with_the_same_key_publish_once(start_server):
    """A publish retried with the same key (header or body field) is
    delivered once and every retry gets the first answer; another key
    publishes again."""
    server = await start_server()
    client = await server.connected()
    await client.subscribe("news")
    body = {"event": "e", "data": 1}
    first = await post(server, body, key="order-1")
    assert first[0] == 202
    assert await post(server, body, key="order-1") == first
    again = await post(server, {**body, "idempotency_key": "order-1"})
    assert again == first
    other = await post(server, {**body, "data": 2}, key="order-2")
    assert other[0] == 202 and other[1]["id"] != first[1]["id"]
    assert (await client.next_of("message"))["data"] == 1
    assert (await client.next_of("message"))["data"] == 2
    await eventually(lambda: True)
    client.assert_nothing_queued()


@ensureDeferred
async def test_bad_idempotency_keys_are_refused(start_server):
    """Keys that are too long, contain spaces, or disagree between header
    and body get 400 and publish nothing."""
    server = await start_server()
    body = {"event": "e", "data": 1}
    for key in ("x" * 201, "has space"):
        code, error = await post(server, body, key=key)
        assert (code, error["error"]) == (400, "invalid_field")
    code, error = await post(server, {**body, "idempotency_key": "b"}, key="a")
    assert (code, error["error"]) == (400, "invalid_field")
